"""--engine=ray: a sweep's runs as Ray tasks, on a local Ray or a running cluster.

Each task trains one run in a subprocess of main.py, given the run's resolved flags
(Config.to_flagfile), so everything a run does on its own holds on Ray too: it claims the run as
any sweep worker does (claims.py; plain workers and Ray tasks on one log directory never train a
run twice), resumes from its checkpoint, and ends with main.py's exit status and `error:` line.

The driver (main.py) imports neither TensorFlow nor data: the machine it runs on may have no GPU
and no data set. It skips the runs the serial sweep skips (sweep.finished: complete on the same
data, exports whole), submits the rest, prints a line per finished run, and
retries a run whose worker or node died, or whose training process was killed, up to
MAX_ATTEMPTS times: the retry resumes from the run's last checkpoint. A run that ends with an
error of its own (bad input, a diverged loss) is not retried. Ctrl-C or SIGTERM asks every running
run to stop at its next step after a checkpoint; rerunning the command finishes the sweep.

Ray is imported only here, and only for --engine=ray (pip install .[ray]).
"""

import contextlib
import dataclasses
import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from maxl_tf import errors
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import rundir
from maxl_tf.experiment import sweep

MAX_ATTEMPTS = 4  # a run's first attempt and three retries after its worker died
_POLL_SECONDS = 0.2  # how often a task looks at its training process (and at a cancellation)
_PR_SET_PDEATHSIG = 1  # prctl(2)
_CONNECT_SECONDS = 10  # to reach a cluster's address


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one attempt at a run ended, as its task saw it."""

    returncode: int  # main.py's exit status; negative: killed by that signal
    message: str = ""  # its last `error:` or `stopped:` line
    line: str = ""  # main.py's line for the run, after `[1/1] `: `<run>: done, <metric>, <seconds> s; ...`
    results: dict | None = None  # results.json, once complete


def import_ray():
    """Ray, or one line saying how to install it."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # read at import: each run's lines, not "[repeated 2x ...]"
    try:
        import ray
    except ImportError:
        raise errors.Error(
            "--engine=ray needs Ray, which is not installed; install it with pip install .[ray] "
            "in the project's folder (or leave --engine=serial)."
        ) from None
    return ray


def check_resources(gpus_per_run: float | None, cpus_per_run: float) -> None:
    """Refuses what Ray would refuse or wait for forever, before Ray starts."""
    if gpus_per_run is not None and (gpus_per_run < 0 or (gpus_per_run > 1 and gpus_per_run != int(gpus_per_run))):
        raise errors.Error(
            f"--gpus_per_run={gpus_per_run:g}: must be a fraction of one GPU (e.g. 0.25: four runs share a "
            f"GPU) or a whole number of GPUs."
        )
    if not cpus_per_run > 0:
        raise errors.Error(f"--cpus_per_run={cpus_per_run:g}: must be a positive number of CPUs, e.g. 1.")


def run_flags(config: config_lib.Config, heartbeat_timeout: float) -> list:
    """main.py's arguments that train exactly this one run (no sweep lists)."""
    lines = config.to_flagfile().splitlines()
    return [line for line in lines if not line.startswith("#")] + [
        "--noprogress",
        f"--heartbeat_timeout={heartbeat_timeout!r}",
    ]


def _die_with_parent(parent: int) -> None:
    """In the training process, before exec: unblock the stop signals (Ray's worker blocks them
    and a child inherits the mask), give them their default action (a Ray started from a
    background job, `cmd &`, passes SIGINT on ignored, and an ignored signal stays so across exec),
    and die when the task's worker dies (Linux), so a killed worker leaves no training process
    behind holding the run's claim."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    for stop in (signal.SIGINT, signal.SIGTERM):  # ignored where Ray was started by a background job
        signal.signal(stop, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the worker died before the request was made
            os._exit(128 + signal.SIGKILL)


def _relay(source, destination, last: dict, run_line: str | None = None) -> None:
    """Copies a stream line by line, remembering its last error line.

    On stdout, main.py's `[1/1] <run>: ...` lines are kept back (the driver prints the last as
    the sweep's `[k/N]` line), and so is the one-run table after them: the driver prints the
    sweep's table.
    """
    for line in source:
        if run_line and line.startswith(run_line):
            last["line"] = line.strip().removeprefix("[1/1] ")
            continue
        if last["line"] and (not line.strip() or line.startswith("|")):
            continue
        destination.write(line)
        destination.flush()
        if line.startswith(("error:", "stopped:")):
            last["message"] = line.strip()


@contextlib.contextmanager
def _cancellable():
    """Lets the driver's ray.cancel reach the task as KeyboardInterrupt.

    Ray raises it with _thread.interrupt_main, which does nothing where Python does not handle
    SIGINT: in the workers of a Ray started from a script (`cmd &` starts the driver, and with it
    the local Ray, with SIGINT ignored) or by a scheduler that ignores it. For the task's duration
    SIGINT gets Python's default handler, as in a worker started from a terminal.
    """
    try:
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the worker's main thread: Ray runs tasks there, so never seen
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def train_run(config: config_lib.Config, name: str, main_py: str, cwd: str, heartbeat_timeout: float) -> Outcome:
    """The body of a run's Ray task: main.py trains the run in a process of its own; its lines
    go to the driver prefixed with the run's name (config_lib.Run.name: the task gets the Config
    alone, and its process resolves the run again from the flags).

    A cancellation (the driver's Ctrl-C or SIGTERM) arrives as KeyboardInterrupt, however the
    worker was started (_cancellable); it is passed on to the training process as SIGINT, which
    stops it after a checkpoint, and waited for.
    """
    with _cancellable():
        return _train_run(config, name, main_py, cwd, heartbeat_timeout)


def _train_run(config: config_lib.Config, name: str, main_py: str, cwd: str, heartbeat_timeout: float) -> Outcome:
    for path, what in ((main_py, "main.py"), (cwd, "the command's working directory")):
        if not os.path.exists(path):
            return Outcome(
                2,
                f"error: {what} {path} does not exist on this node ({os.uname().nodename}); every node "
                f"of the Ray cluster must see the project and --logdir at the same paths (a shared file system).",
            )
    process = subprocess.Popen(
        [sys.executable, main_py, *run_flags(config, heartbeat_timeout)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        start_new_session=True,  # only the task's own SIGINT reaches it, once
        preexec_fn=functools.partial(_die_with_parent, os.getpid()),
    )
    last = {"message": "", "line": ""}
    relays = [
        threading.Thread(target=_relay, args=(process.stdout, sys.stdout, last, f"[1/1] {name}: ")),
        threading.Thread(target=_relay, args=(process.stderr, sys.stderr, last)),
    ]
    for relay in relays:
        relay.start()
    try:
        while process.poll() is None:  # polled: Ray's cancellation lands between Python statements
            time.sleep(_POLL_SECONDS)
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        process.wait()
    for relay in relays:
        relay.join()
    results = rundir.completed_results(config) if process.returncode == 0 else None
    return Outcome(process.returncode, last["message"], last["line"], results)


def worth_retrying(outcome: Outcome) -> bool:
    """A run whose training process was killed (the OOM killer, a preempted node) or stopped by a
    signal the sweep did not send resumes from its checkpoint; one that failed on its own (bad
    input: 2, a diverged loss: 1) would fail the same way again."""
    stop_signals = {128 + signal.SIGINT, 128 + signal.SIGTERM}
    return outcome.returncode < 0 or outcome.returncode in stop_signals


def _connect(ray, address: str, project: str):
    """Connects to the cluster at address (else RAY_ADDRESS), or starts a local Ray for this command.

    The tasks import maxl_tf from project, the folder of the main.py that runs, like the driver
    does, rather than whatever installed copy a worker's Python would find first.
    """
    where = f"--ray_address={address}" if address else f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS', '')}"
    fix = (
        "start one there with ray start --head, or leave --ray_address and RAY_ADDRESS empty for a Ray on this machine"
    )
    _check_reachable(address or os.environ.get("RAY_ADDRESS", ""), where, fix)
    try:
        ray.init(address=address or None, runtime_env={"env_vars": {"PYTHONPATH": project}})
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise errors.Error(f"{where}: cannot connect to a Ray cluster ({errors.first_line(e)}); {fix}.") from None


def _check_reachable(address: str, where: str, fix: str) -> None:
    """Refuses a host:port nothing listens on, at once: Ray itself retries it for minutes."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # empty, "auto", "local", or a ray:// client address: left to Ray
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_SECONDS).close()
    except OSError as e:
        raise errors.Error(f"{where}: no Ray cluster answers there ({e.strerror or e}); {fix}.") from None


def _node_resources(ray) -> list:
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def _resolve_gpus(gpus_per_run: float | None, cpus_per_run: float, nodes: list) -> float:
    """--gpus_per_run, or 1 where the cluster has GPUs; refuses a run no node can hold."""
    most_gpus = max((node.get("GPU", 0) for node in nodes), default=0)
    most_cpus = max((node.get("CPU", 0) for node in nodes), default=0)
    gpus = (1.0 if most_gpus else 0.0) if gpus_per_run is None else gpus_per_run
    if not any(node.get("GPU", 0) >= gpus and node.get("CPU", 0) >= cpus_per_run for node in nodes):
        raise errors.Error(
            f"--gpus_per_run={gpus:g} --cpus_per_run={cpus_per_run:g}: no node of the Ray cluster has that "
            f"much (the largest have {most_gpus:g} GPUs, {most_cpus:g} CPUs); ask for less per run."
        )
    return gpus


def run_sweep(
    runs: list,
    *,
    main_py: str,
    address: str = "",
    gpus_per_run: float | None = None,
    cpus_per_run: float = 1.0,
    heartbeat_timeout: float = 300.0,
) -> list:
    """Trains a sweep's runs as Ray tasks; returns their results.json contents, in the sweep's order.

    Args:
      runs: the sweep's resolved runs (sweep.expand).
      main_py: the path of main.py, the same on every node.
      address: a running cluster's address; empty: RAY_ADDRESS, else a local Ray for this command.
      gpus_per_run, cpus_per_run: what each run's task asks Ray for; gpus_per_run None: 1 where
        the cluster has GPUs, else 0.
      heartbeat_timeout: main.py's --heartbeat_timeout, passed on to every run.
    Raises:
      errors.Error: flags Ray cannot honour, a cluster it cannot reach, or runs that failed
        (the first one's error, or how many failed).
      errors.Interrupted: stopped by Ctrl-C or SIGTERM after every running run checkpointed.
    """
    check_resources(gpus_per_run, cpus_per_run)
    if any(run.config.strategy == "multi_worker" for run in runs):
        raise errors.Error(
            "--strategy=multi_worker with --engine=ray: a Ray task is one process; train a run on "
            "several GPUs with --strategy=mirrored and --gpus_per_run=N."
        )
    ray = import_ray()
    _connect(ray, address, os.path.dirname(main_py))
    try:
        return _run_tasks(ray, runs, main_py, gpus_per_run, cpus_per_run, heartbeat_timeout)
    finally:
        ray.shutdown()  # disconnects from a cluster; stops the Ray this command started


def _run_tasks(ray, runs, main_py, gpus_per_run, cpus_per_run, heartbeat_timeout) -> list:
    nodes = _node_resources(ray)
    gpus = _resolve_gpus(gpus_per_run, cpus_per_run, nodes)
    task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus, max_retries=0)(train_run)
    total = len(runs)
    numbers = {run.config.logdir: number for number, run in enumerate(runs, 1)}
    results_of, attempts, pending, failures = {}, {}, {}, []

    def say(run, outcome, results=None):
        print(sweep.outcome_line(numbers[run.config.logdir], total, run, outcome, results), flush=True)

    def submit(run):
        attempts[run.config.logdir] = attempts.get(run.config.logdir, 0) + 1
        ref = task.options(name=run.name).remote(run.config, run.name, main_py, os.getcwd(), heartbeat_timeout)
        pending[ref] = run

    with _StopRequests() as stopping:  # before the first submission: no signal is missed
        for run in runs:
            results = _finished_here(run)
            if results is not None:
                results_of[run.config.logdir] = results
                say(run, "skipped (complete)", results)
            else:
                submit(run)
        print(
            f"Ray: {len(pending)} runs as tasks of {cpus_per_run:g} CPU and {gpus:g} GPU each, on "
            f"{len(nodes)} node(s) with {sum(n.get('CPU', 0) for n in nodes):g} CPUs and "
            f"{sum(n.get('GPU', 0) for n in nodes):g} GPUs",
            flush=True,
        )
        while pending:
            stopping.honour(ray, pending)
            done, _ = ray.wait(list(pending), num_returns=1, timeout=_POLL_SECONDS)
            if not done:
                continue
            run = pending.pop(done[0])
            outcome, died = _result(ray, done[0])
            if outcome is not None and outcome.returncode == 0:
                results_of[run.config.logdir] = outcome.results
                if outcome.line:
                    print(f"[{numbers[run.config.logdir]}/{total}] {outcome.line}", flush=True)
                else:
                    say(run, "done", outcome.results)
            elif outcome is not None and not worth_retrying(outcome):
                failures.append((run, outcome))
                say(run, f"failed: {outcome.message or f'exit status {outcome.returncode}'}")
            elif stopping.signum is not None:
                say(run, "stopped" + (f" ({died})" if died else ""))
            elif attempts[run.config.logdir] < MAX_ATTEMPTS:
                why = died or f"its training process ended with status {outcome.returncode}"
                attempt = f"attempt {attempts[run.config.logdir] + 1} of {MAX_ATTEMPTS}"
                say(run, f"{why}; retrying from its last checkpoint ({attempt})")
                submit(run)
            else:
                why = died or f"its training process ended with status {outcome.returncode}"
                failures.append((run, Outcome(1, f"error: {why}, {MAX_ATTEMPTS} times; see its Ray logs")))
                say(run, f"failed: {why}, {MAX_ATTEMPTS} times")
    if stopping.signum is not None:
        raise errors.Interrupted("interrupted; rerun the same command to resume.", stopping.signum)
    if failures:
        raise _failure(failures, total)
    return [results_of[run.config.logdir] for run in runs]


def _finished_here(run: config_lib.Run) -> dict | None:
    """The run's results if the driver skips it: sweep.finished, the serial sweep's and the workers'
    decision. Where this machine cannot identify the run's data (not here: it is on the nodes),
    the driver cannot tell, and the run's task decides, as main.py does for any run."""
    try:
        return sweep.finished(run)
    except errors.Error:
        return None


def _result(ray, ref) -> tuple:
    """(the task's Outcome, None), or (None, why its worker or node died)."""
    try:
        return ray.get(ref), None
    except ray.exceptions.RayTaskError as e:  # the task's own code raised: a bug, not a lost worker
        return Outcome(1, f"error: the run's Ray task failed: {errors.first_line(e.cause or e)}"), None
    except ray.exceptions.TaskCancelledError:
        return Outcome(128 + signal.SIGINT, "stopped: cancelled before it started"), None
    except ray.exceptions.RayError as e:
        return None, f"its Ray worker died ({errors.first_line(e, 160)})"


def _failure(failures: list, total: int) -> errors.Error:
    """The error the sweep ends with: a single failed run's own, or a count."""
    if len(failures) == 1:
        run, outcome = failures[0]
        error = errors.Error(outcome.message.removeprefix("error: ") or f"exit status {outcome.returncode}")
        error.context = run.name
    else:
        error = errors.Error(
            f"{len(failures)} of {total} runs failed (their lines above); fix them and rerun the same "
            f"command: the complete runs are skipped."
        )
    error.exit_code = max(failures[0][1].returncode, 1)
    return error


class _StopRequests:
    """Ctrl-C and SIGTERM while the sweep runs, recorded and honoured by the driver's loop."""

    def __init__(self):
        self.received = []
        self.signum = None  # the first stop signal, once honoured

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._record) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _record(self, signum, frame):
        self.received.append(signum)

    def honour(self, ray, pending: dict) -> None:
        """The first signal: every running run stops at its next step after a checkpoint; the
        second: at once (each resumes from its last checkpoint)."""
        if self.received and self.signum is None:
            self.signum = self.received[0]
            print(
                "stopping: each running run stops at its next step after a checkpoint (Ctrl-C again: "
                "at once, from its last checkpoint); rerun the same command to resume",
                flush=True,
            )
            for ref in pending:
                ray.cancel(ref)
        elif len(self.received) > 1:
            del self.received[1:]
            for ref in pending:
                ray.cancel(ref, force=True)

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
