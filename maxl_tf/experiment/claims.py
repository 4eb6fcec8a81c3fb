"""Claims: several workers share one sweep's runs, on one host or on hosts sharing a file system.

A worker trains a run only while it holds the run's claim. A run's claims are numbered
generation files in `<run dir>/claims/`: 0, 1, 2, ...; the highest is the current one. Every
change of hands is the exclusive creation of the next generation, g + 1 where g is the highest
the worker saw:

- claiming a free run (no generation yet, or the highest is a release record),
- taking over a stale claim (its holder's heartbeat stopped),
- releasing (the holder writes a release record, so any worker may claim the run at once).

Exclusive creation is link(2) of a complete temporary file to the generation's name, which fails
if the name exists: the server decides it on NFS (every version) as the kernel does on a local
disk. open(2) with O_CREAT|O_EXCL is also atomic on NFSv3 and later, but the file would appear
before its content. A link whose reply was lost and retried reports EEXIST although it succeeded,
so then the temporary file's link count decides, as open(2)'s manual page describes. Generation
files are never deleted (a few bytes each), so the numbers stay contiguous and each generation is
created once.

Heartbeats and staleness, without synchronised clocks: the holder rewrites its generation file
in place with a counter every heartbeat_timeout / 4 seconds (a daemon thread). An observer
judges by its own clock: a claim whose content has not changed for heartbeat_timeout seconds of
the observer's watching is stale, so a worker that starts after a holder died waits one full
heartbeat_timeout before taking over. The heartbeat rewrites the same file rather than renaming
a new one over it because NFS's close-to-open consistency makes an open see the file's latest
content, while a new name-to-file mapping can hide behind the client's directory cache. One
shortcut: a claim written on this same machine (hostname, boot and PID namespace) by a process
that no longer exists is stale at once, so rerunning a killed single-worker sweep resumes the
run at once, as it did before claims. And a generation file that does not parse, twice a moment
apart, is stale at once: the protocol never leaves one so (see Worker._still_unparseable).

Guaranteed: no two workers ever create the same generation, so at any moment at most one holds
the newest. A superseded holder sees `lost` at its next heartbeat once its file system shows it
the newer generation (at once on a local disk; on NFS once the client's attribute cache expires,
acdirmax, 60 s by default), and `verify()` checks at once; the training loop calls it right
before each write. A holder that cannot write its heartbeat for heartbeat_timeout counts its
claim as lost, since others may have judged it stale.
Not guaranteed: that a superseded holder never writes. A holder paused for longer than
heartbeat_timeout (SIGSTOP, a suspended virtual machine, a network partition) looks dead, and
after waking it may write once between its last check and its next. No clock-free scheme tells
a paused worker from a dead one: choose heartbeat_timeout well above the longest pause expected
and above the file system's cache times.
"""

import json
import os
import secrets
import socket
import threading
import time
import typing

from maxl_tf import errors

CLAIMS_DIR = "claims"  # inside a run directory
BEATS_PER_TIMEOUT = 4  # heartbeats (and a waiting worker's polls) per heartbeat_timeout
MAX_POLL_SECONDS = 10  # a waiting worker sees other workers' runs complete at least this often
UNPARSEABLE_RECHECK_SECONDS = 1.0  # far longer than a torn read of one heartbeat's write lasts

# A run's state, as a worker sees it.
COMPLETE = "complete"  # the caller says so (its results are final)
HELD = "held"  # claimed by a live worker (or one this worker has not watched long enough)
FREE = "free"  # never claimed, or released
STALE = "stale"  # its holder's heartbeat stopped


class Observation(typing.NamedTuple):
    state: str  # HELD, FREE or STALE
    generation: int  # the highest generation; -1 when never claimed
    record: dict | None  # that generation's content; {} if unreadable


def machine_id() -> str | None:
    """This machine, boot and PID namespace: processes with equal ids see each other's PIDs.

    None where that cannot be told (no /proc), which turns off the dead-process shortcut.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{socket.gethostname()}/{boot}/{namespace}"


def _process_exists(pid) -> bool:
    """False only when pid is certainly gone; a zombie or a reused PID counts as alive."""
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def claims_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CLAIMS_DIR)


def _top_generation(directory: str) -> int:
    """The highest generation in directory; -1 for none.

    The listing gives a start (opening a directory revalidates an NFS client's view of it); probing
    upward catches generations a cached listing missed, since they are contiguous.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return -1
    top = max((int(name) for name in names if name.isascii() and name.isdigit()), default=-1)
    while os.path.exists(os.path.join(directory, str(top + 1))):
        top += 1
    return top


def _create_exclusively(path: str, content: bytes) -> bool:
    """Creates path holding content; False if it already exists. See the module docstring."""
    temporary = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    with open(temporary, "xb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return os.stat(temporary).st_nlink == 2  # our link landed; only its reply was lost
    finally:
        os.unlink(temporary)


def _rewrite(path: str, content: bytes) -> None:
    """Overwrites path's content in place (same file; see the module docstring)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, content, 0)
        os.ftruncate(fd, len(content))
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse(content: bytes) -> dict:
    try:
        record = json.loads(content)
    except ValueError:  # torn by a concurrent heartbeat, or not ours
        return {}
    return record if isinstance(record, dict) else {}


def _record(state: str, worker_id: str, machine: str | None, generation: int, beat: int = 0) -> bytes:
    return json.dumps(
        {
            "state": state,
            "worker": worker_id,
            "machine": machine,
            "pid": os.getpid(),
            "generation": generation,
            "beat": beat,
        }
    ).encode()


def _cannot(run_dir: str, error: OSError) -> errors.Error:
    reason = error.strerror or errors.first_line(error)
    return errors.Error(
        f"cannot claim {run_dir} ({reason}); a sweep's --logdir must be a writable "
        f"directory on a file system with hard links (a local disk, NFS, Lustre)."
    )


class Claim:
    """This worker's hold on a run: heartbeats from a daemon thread until released or lost.

    Use it as a context manager, or call release() when the run ends however it ends (complete,
    stopped by a signal, failed), so that another worker may claim the run at once.
    """

    def __init__(
        self,
        run_dir: str,
        generation: int,
        worker_id: str,
        machine: str | None,
        heartbeat_timeout: float,
        previous: dict | None,
    ):
        self.run_dir = run_dir
        self.generation = generation
        self.previous = previous  # the stale claim this one took over, else None
        self._directory = claims_dir(run_dir)
        self._path = os.path.join(self._directory, str(generation))
        self._worker_id, self._machine = worker_id, machine
        self._timeout = heartbeat_timeout
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._released = False
        self._thread = threading.Thread(target=self._heartbeat, daemon=True, name=f"claim heartbeat {run_dir}")
        self._thread.start()

    @property
    def lost(self) -> bool:
        """Whether another worker took the run over (as of the last heartbeat or verify())."""
        return self._lost.is_set()

    def verify(self) -> bool:
        """Whether this worker still holds the run, checked on the file system now.

        Call it right before writing the run's files. A file system error leaves the answer to
        the heartbeat (which counts the claim lost once it cannot beat for heartbeat_timeout).
        """
        if not self._lost.is_set():
            try:
                if _top_generation(self._directory) != self.generation:
                    self._lost.set()
            except OSError:
                pass
        return not self._lost.is_set()

    def _heartbeat(self) -> None:
        last_beat, beat = time.monotonic(), 0
        # A timeout beyond what a wait can take (--heartbeat_timeout=inf: a claim never goes stale)
        # beats at the longest wait there is, rather than the thread dying of an OverflowError.
        while not self._stop.wait(min(self._timeout / BEATS_PER_TIMEOUT, threading.TIMEOUT_MAX)):
            if not self.verify():
                return
            try:
                beat += 1
                _rewrite(self._path, _record(HELD, self._worker_id, self._machine, self.generation, beat))
                last_beat = time.monotonic()
            except OSError:
                if time.monotonic() - last_beat >= self._timeout:
                    self._lost.set()
                    return

    def release(self) -> None:
        """Stops the heartbeat and, unless the claim was lost, frees the run for any worker.

        Safe to call twice. If the release record cannot be written, the claim goes stale and is
        taken over after heartbeat_timeout instead.
        """
        self._stop.set()
        self._thread.join()
        if self._released:
            return
        self._released = True
        try:
            if self.verify():
                next_path = os.path.join(self._directory, str(self.generation + 1))
                _create_exclusively(next_path, _record("released", self._worker_id, self._machine, self.generation + 1))
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()


class Worker:
    """One worker of a sweep: watches the runs' claims by its own clock and claims runs in order."""

    def __init__(self, heartbeat_timeout: float, worker_id: str | None = None):
        """
        Args:
          heartbeat_timeout: seconds without a heartbeat after which a claim is stale. Every
            worker of a sweep must use the same value.
          worker_id: written into claims for people reading them; default host:pid.
        """
        if not heartbeat_timeout > 0:
            raise ValueError(f"heartbeat_timeout must be positive, not {heartbeat_timeout}")
        self.heartbeat_timeout = heartbeat_timeout
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self._machine = machine_id()
        self._seen = {}  # run_dir -> (generation, content, this worker's clock when first seen)

    def observe(self, run_dir: str) -> Observation:
        """Reads run_dir's current claim and judges it. Raises errors.Error if unreadable."""
        directory = claims_dir(run_dir)
        try:
            generation = _top_generation(directory)
            if generation < 0:
                return Observation(FREE, -1, None)
            try:
                with open(os.path.join(directory, str(generation)), "rb") as f:
                    content = f.read()
            except FileNotFoundError:  # deleted under us: judged like any unreadable claim
                content = b""
        except OSError as e:
            raise _cannot(run_dir, e) from e
        record = _parse(content)
        if not record and self._still_unparseable(directory, generation, content):
            return Observation(STALE, generation, record)
        if record.get("state") == "released":
            return Observation(FREE, generation, record)
        if (
            self._machine is not None
            and record.get("machine") == self._machine
            and not _process_exists(record.get("pid"))
        ):
            return Observation(STALE, generation, record)
        now = time.monotonic()
        seen = self._seen.get(run_dir)
        if seen is None or seen[:2] != (generation, content):
            self._seen[run_dir] = (generation, content, now)
            return Observation(HELD, generation, record)
        return Observation(STALE if now - seen[2] >= self.heartbeat_timeout else HELD, generation, record)

    def _still_unparseable(self, directory: str, generation: int, content: bytes) -> bool:
        """Whether a generation file that did not parse still reads the same a moment later.

        The protocol never leaves a claim unparseable: a generation is linked complete, and a
        heartbeat rewrites it in place with content no shorter, so a read can catch one torn
        only for the time of one write. A file that still does not parse was damaged outside
        the protocol (or is not a claim) and holds no heartbeat to watch: waiting
        --heartbeat_timeout for it to change would wait for nothing. It is stale; a live holder
        it might have hidden learns at its next heartbeat that it lost the run.
        """
        time.sleep(min(UNPARSEABLE_RECHECK_SECONDS, self.heartbeat_timeout / BEATS_PER_TIMEOUT))
        try:
            with open(os.path.join(directory, str(generation)), "rb") as f:
                again = f.read()
        except OSError:
            again = b""
        return again == content

    def claim(self, run_dir: str) -> Claim | None:
        """Claims run_dir if it is free or stale.

        Returns:
          The claim, heartbeating; None if a live worker holds the run or another worker won
          the race for it.
        Raises:
          errors.Error: the run directory cannot be read or written.
        """
        seen = self.observe(run_dir)
        if seen.state == HELD:
            return None
        generation = seen.generation + 1
        directory = claims_dir(run_dir)
        if os.path.islink(directory) and not os.path.exists(directory):
            raise errors.Error(
                f"{directory} is a symbolic link to {os.readlink(directory)}, which does not exist; "
                f"remove the link, or create the folder it points to."
            )
        try:
            os.makedirs(directory, exist_ok=True)
            created = _create_exclusively(
                os.path.join(directory, str(generation)),
                _record(HELD, self.worker_id, self._machine, generation),
            )
        except OSError as e:
            raise _cannot(run_dir, e) from e
        if not created:
            return None
        return Claim(
            run_dir,
            generation,
            self.worker_id,
            self._machine,
            self.heartbeat_timeout,
            previous=seen.record if seen.state == STALE else None,
        )

    def survey(self, run_dirs: list, is_complete: typing.Callable[[str], bool]) -> dict:
        """{run_dir: COMPLETE, HELD, FREE or STALE}, in the order given."""
        return {run_dir: COMPLETE if is_complete(run_dir) else self.observe(run_dir).state for run_dir in run_dirs}

    def next_run(self, run_dirs: list, is_complete: typing.Callable[[str], bool]) -> Claim | None:
        """Claims the first run, in the sweep's order, that is neither complete nor held by a
        live worker (free or stale alike); None if there is none now.

        Args:
          run_dirs: the sweep's run directories, in the order to train them.
          is_complete: whether a run's results are final (e.g. its results.json is complete).
        """
        for run_dir, state in self.survey(run_dirs, is_complete).items():
            if state not in (FREE, STALE):
                continue
            claim = self.claim(run_dir)
            if claim is None:
                continue
            if is_complete(run_dir):  # its holder finished it between the survey and the claim
                claim.release()
                continue
            return claim
        return None

    def wait_for_run(self, run_dirs: list, is_complete: typing.Callable[[str], bool]) -> Claim | None:
        """Claims the next run, waiting while every incomplete run is held by a live worker.

        A waiting worker keeps watching the held runs, so it takes one over once its holder's
        heartbeat has been still for heartbeat_timeout.

        Returns:
          A claim, or None once every run is complete.
        """
        poll_seconds = min(self.heartbeat_timeout / BEATS_PER_TIMEOUT, MAX_POLL_SECONDS)
        while True:
            claim = self.next_run(run_dirs, is_complete)
            if claim is not None or all(is_complete(run_dir) for run_dir in run_dirs):
                return claim
            time.sleep(poll_seconds)
