"""Claims: exclusive, kept alive by heartbeats, taken over once stale, released, picked in order.

Holders that must die or pause are child processes (they import maxl_tf.experiment.claims only, no
TensorFlow, so they start in a fraction of a second); races between workers of one process are
threads. Timeouts are a fraction of a second. A holder killed with SIGKILL and not yet reaped is
a zombie whose PID still exists, so observers must judge it by its heartbeat, as a worker on
another host would; once reaped, a worker on this machine sees its process gone.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from unittest import mock

import tensorflow as tf

from maxl_tf import errors
from maxl_tf.experiment import claims
from tests import smoke_util

TIMEOUT = 0.5  # seconds; heartbeats every TIMEOUT / 4

# A worker in a child process. "hold": claims argv[1], says so, then reports "lost" when its
# claim is taken over. "race": claims each of argv[1:] as soon as the file `go` appears, says
# which it won, and holds them until its stdin closes.
_CHILD = r"""
import os, sys, time
from maxl_tf.experiment import claims
mode, timeout, run_dirs = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
worker = claims.Worker(timeout, worker_id="child")
if mode == "hold":
    claim = worker.claim(run_dirs[0])
    print("claimed", claim.generation, flush=True)
    while not claim.lost:
        time.sleep(0.01)
    print("lost", flush=True)
else:
    go = os.path.join(os.path.dirname(run_dirs[0]), "go")
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.001)
    won = [d for d in run_dirs if worker.claim(d) is not None]
    print(" ".join(won), flush=True)
    sys.stdin.read()
"""


def _child(mode: str, *run_dirs, timeout=TIMEOUT) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, mode, str(timeout), *run_dirs],
        cwd=smoke_util.REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _kill(process: subprocess.Popen) -> None:
    """SIGKILL, and reap."""
    if process.poll() is None:
        process.kill()
    process.communicate()


def _kill_leaving_a_zombie(process: subprocess.Popen) -> None:
    """SIGKILL without reaping: the PID stays taken until _kill reaps it."""
    process.send_signal(signal.SIGKILL)
    while _process_state(process.pid) != "Z":
        time.sleep(0.005)


def _process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _generations(run_dir: str) -> list:
    return sorted(int(n) for n in os.listdir(claims.claims_dir(run_dir)) if n.isdigit())


def _read(run_dir: str, generation: int) -> dict:
    with open(os.path.join(claims.claims_dir(run_dir), str(generation))) as f:
        return json.load(f)


def _write_foreign_claim(run_dir: str, content: bytes) -> None:
    """A claim written by a worker on another host that has since died."""
    os.makedirs(claims.claims_dir(run_dir))
    with open(os.path.join(claims.claims_dir(run_dir), "0"), "wb") as f:
        f.write(content)


def _dead_claim() -> bytes:
    return json.dumps(
        {"state": "held", "worker": "elsewhere:1", "machine": "another host", "pid": 1, "generation": 0, "beat": 3}
    ).encode()


def _race(claim_fns) -> list:
    """Calls every fn at once from its own thread; returns their results."""
    barrier, results = threading.Barrier(len(claim_fns)), [None] * len(claim_fns)

    def run(i):
        barrier.wait()
        results[i] = claim_fns[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(claim_fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


class ClaimTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.parent = self.get_temp_dir()
        self.held = []

    def tearDown(self):
        for claim in self.held:
            claim.release()
        super().tearDown()

    def _hold(self, claim):
        if claim is not None:
            self.held.append(claim)
        return claim

    def test_claim_is_exclusive(self):
        run = os.path.join(self.parent, "run")  # need not exist yet
        first = self._hold(claims.Worker(TIMEOUT, worker_id="a").claim(run))
        self.assertEqual(first.generation, 0)
        self.assertIsNone(first.previous)
        self.assertEqual(_read(run, 0)["worker"], "a")
        self.assertEqual(_read(run, 0)["state"], "held")
        self.assertIsNone(claims.Worker(TIMEOUT, worker_id="b").claim(run))
        self.assertIsNone(claims.Worker(TIMEOUT, worker_id="a").claim(run))  # held is held, by anyone
        self.assertEqual(_generations(run), [0])
        self.assertEqual(os.listdir(claims.claims_dir(run)), ["0"])  # no temporary file left behind

    def test_concurrent_claimers_one_wins(self):
        for round_number in range(100):
            run = os.path.join(self.parent, f"run{round_number}")
            workers = [claims.Worker(TIMEOUT, worker_id=f"w{i}") for i in range(6)]
            won = [self._hold(c) for c in _race([lambda w=w: w.claim(run) for w in workers]) if c]
            self.assertLen(won, 1, f"round {round_number}")
            self.assertEqual(_generations(run), [0])
            self.assertEqual(_read(run, 0)["worker"], won[0]._worker_id)

    def test_concurrent_processes_one_wins(self):
        runs = [os.path.join(self.parent, f"run{i}") for i in range(20)]
        children = [_child("race", *runs) for _ in range(4)]
        try:
            for child in children:
                self.assertEqual(child.stdout.readline().strip(), "ready")
            open(os.path.join(self.parent, "go"), "w").close()
            won = [child.stdout.readline().split() for child in children]
        finally:
            for child in children:
                _kill(child)
        self.assertCountEqual(sum(won, []), runs)  # every run won, by exactly one process
        for run in runs:
            self.assertEqual(_generations(run), [0])

    def test_heartbeat_keeps_a_claim_beyond_the_timeout(self):
        run = os.path.join(self.parent, "run")
        holder = _child("hold", run)
        try:
            self.assertEqual(holder.stdout.readline().split(), ["claimed", "0"])
            observer = claims.Worker(TIMEOUT)
            end = time.monotonic() + 4 * TIMEOUT
            while time.monotonic() < end:
                self.assertIsNone(observer.claim(run))
                time.sleep(0.02)
            self.assertGreaterEqual(_read(run, 0)["beat"], 8)  # every TIMEOUT / 4, over 2 s
            self.assertEqual(_generations(run), [0])
        finally:
            _kill(holder)

    def test_dead_holder_is_taken_over_after_the_timeout_and_not_before(self):
        run = os.path.join(self.parent, "run")
        holder = _child("hold", run)
        self.assertEqual(holder.stdout.readline().split(), ["claimed", "0"])
        _kill_leaving_a_zombie(holder)
        observer = claims.Worker(TIMEOUT)
        first_seen = time.monotonic()
        claim = None
        try:
            while claim is None:
                claim = self._hold(observer.claim(run))
                waited = time.monotonic() - first_seen
                time.sleep(0.01)
        finally:
            _kill(holder)
        self.assertGreaterEqual(waited, TIMEOUT)
        self.assertLess(waited, TIMEOUT + 0.5)
        self.assertEqual(claim.generation, 1)
        self.assertEqual(claim.previous["worker"], "child")

    def test_dead_holder_on_this_machine_is_taken_over_at_once(self):
        run = os.path.join(self.parent, "run")
        holder = _child("hold", run, timeout=3600)
        self.assertEqual(holder.stdout.readline().split(), ["claimed", "0"])
        observer = claims.Worker(3600)
        self.assertIsNone(observer.claim(run))  # alive
        holder.send_signal(signal.SIGKILL)
        _kill(holder)
        claim = self._hold(observer.claim(run))
        self.assertEqual(claim.generation, 1)
        self.assertEqual(claim.previous["pid"], holder.pid)

    def test_two_observers_of_a_stale_claim_one_takes_over(self):
        runs = [os.path.join(self.parent, f"run{i}") for i in range(30)]
        for run in runs:
            _write_foreign_claim(run, _dead_claim())
        observers = [claims.Worker(TIMEOUT, worker_id=f"o{i}") for i in range(2)]
        for observer in observers:
            for run in runs:
                self.assertEqual(observer.observe(run).state, claims.HELD)  # first sight
        time.sleep(TIMEOUT)
        for run in runs:
            self.assertEqual(observers[0].observe(run).state, claims.STALE)
            won = [self._hold(c) for c in _race([lambda o=o: o.claim(run) for o in observers]) if c]
            self.assertLen(won, 1)
            self.assertEqual(_generations(run), [0, 1])
            self.assertEqual(won[0].previous["worker"], "elsewhere:1")

    def test_unparseable_claim_is_taken_over_without_waiting_the_timeout(self):
        """A damaged generation file holds no heartbeat: a lone worker takes the run over after
        one recheck, not after --heartbeat_timeout."""
        run = os.path.join(self.parent, "run")
        _write_foreign_claim(run, b"\x00 not json")
        observer = claims.Worker(3600)
        start = time.monotonic()
        claim = self._hold(observer.claim(run))
        self.assertLess(time.monotonic() - start, 2 * claims.UNPARSEABLE_RECHECK_SECONDS + 1)
        self.assertEqual(claim.previous, {})
        self.assertEqual(claim.generation, 1)

    def test_a_torn_read_of_a_live_heartbeat_is_not_a_takeover(self):
        """Unparseable at the first read, whole at the recheck (a heartbeat's write in progress):
        the claim is judged by its heartbeat as before."""
        run = os.path.join(self.parent, "run")
        _write_foreign_claim(run, b'{"state": "he')
        path = os.path.join(claims.claims_dir(run), "0")
        sleep = time.sleep

        def heartbeat_lands(seconds):
            with open(path, "wb") as f:
                f.write(_dead_claim())
            sleep(seconds)

        with mock.patch.object(claims.time, "sleep", heartbeat_lands):
            self.assertIsNone(claims.Worker(3600).claim(run))

    def test_a_dangling_claims_link_is_one_line(self):
        run = os.path.join(self.parent, "run")
        os.makedirs(run)
        os.symlink(os.path.join(self.parent, "gone"), claims.claims_dir(run))
        with self.assertRaisesRegex(errors.Error, r"claims is a symbolic link to .*gone, which does not exist; remove"):
            claims.Worker(TIMEOUT).claim(run)

    def test_superseded_holder_learns_it(self):
        run = os.path.join(self.parent, "run")
        holder = _child("hold", run)
        try:
            self.assertEqual(holder.stdout.readline().split(), ["claimed", "0"])
            holder.send_signal(signal.SIGSTOP)  # paused, not dead: looks dead from outside
            observer = claims.Worker(TIMEOUT)
            claim = None
            while claim is None:
                claim = self._hold(observer.claim(run))
                time.sleep(0.01)
            holder.send_signal(signal.SIGCONT)
            resumed = time.monotonic()
            self.assertEqual(holder.stdout.readline().strip(), "lost")
            self.assertLess(time.monotonic() - resumed, TIMEOUT)  # at its next heartbeat
            self.assertEqual(holder.wait(timeout=5), 0)
            self.assertEqual(_generations(run), [0, 1])  # the old holder wrote no release over it
            self.assertTrue(claim.verify())
        finally:
            _kill(holder)

    def test_verify_sees_a_takeover_at_once(self):
        run = os.path.join(self.parent, "run")
        claim = self._hold(claims.Worker(3600).claim(run))
        self.assertTrue(claim.verify())
        self.assertFalse(claim.lost)
        with open(os.path.join(claims.claims_dir(run), "1"), "wb") as f:  # another worker's takeover
            f.write(_dead_claim())
        self.assertFalse(claim.verify())
        self.assertTrue(claim.lost)
        claim.release()
        self.assertEqual(_generations(run), [0, 1])  # a lost claim releases nothing

    def test_release_frees_the_run_at_once(self):
        run = os.path.join(self.parent, "run")
        with claims.Worker(3600, worker_id="a").claim(run) as claim:
            self.assertEqual(claim.generation, 0)
        claim.release()  # a second release does nothing
        self.assertEqual(_generations(run), [0, 1])
        self.assertEqual(_read(run, 1)["state"], "released")
        other = claims.Worker(3600, worker_id="b")
        self.assertEqual(other.observe(run).state, claims.FREE)
        again = self._hold(other.claim(run))
        self.assertEqual(again.generation, 2)
        self.assertIsNone(again.previous)

    def test_an_infinite_timeout_holds_the_claim_and_never_goes_stale(self):
        """--heartbeat_timeout=inf (or any timeout beyond what a wait takes): the heartbeat thread
        lives on (it died of an OverflowError, leaving the run unguarded), the claim is never stale
        to an observer, and it is released as any."""
        run = os.path.join(self.parent, "run")
        for timeout in (float("inf"), 1e300):
            with self.subTest(timeout), claims.Worker(timeout, worker_id="a").claim(run) as claim:
                time.sleep(0.2)
                self.assertTrue(claim._thread.is_alive())
                observer = claims.Worker(timeout, worker_id="b")
                self.assertEqual(observer.observe(run).state, claims.HELD)
                self.assertIsNone(observer.claim(run))
            self.assertFalse(claim._thread.is_alive())
            self.assertEqual(claims.Worker(timeout).observe(run).state, claims.FREE)

    def test_unwritable_run_directory_is_one_line(self):
        not_a_directory = os.path.join(self.parent, "file")
        open(not_a_directory, "w").close()
        run = os.path.join(not_a_directory, "run")
        with self.assertRaisesRegex(
            errors.Error, f"cannot claim {run} \\(Not a directory\\); a sweep's --logdir must be a writable directory"
        ):
            claims.Worker(TIMEOUT).claim(run)


class PickerTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.runs = [os.path.join(self.get_temp_dir(), f"r{i}") for i in range(5)]
        self.complete = set()

    def _is_complete(self, run_dir):
        return run_dir in self.complete

    def test_single_worker_claims_every_run_in_order(self):
        worker, order = claims.Worker(TIMEOUT), []
        while (claim := worker.wait_for_run(self.runs, self._is_complete)) is not None:
            order.append(claim.run_dir)
            self.complete.add(claim.run_dir)
            claim.release()
        self.assertEqual(order, self.runs)

    def test_skips_complete_and_held_runs(self):
        r0, r1, r2, r3, r4 = self.runs
        self.complete.add(r1)
        other = claims.Worker(TIMEOUT, worker_id="other").claim(r2)
        worker = claims.Worker(TIMEOUT)
        first = worker.next_run(self.runs, self._is_complete)
        self.assertEqual(first.run_dir, r0)
        self.assertEqual(
            worker.survey(self.runs, self._is_complete),
            {r0: claims.HELD, r1: claims.COMPLETE, r2: claims.HELD, r3: claims.FREE, r4: claims.FREE},
        )
        second = worker.next_run(self.runs, self._is_complete)
        self.assertEqual(second.run_dir, r3)
        self.assertFalse(os.path.exists(claims.claims_dir(r1)))  # complete: never claimed
        for claim in (first, second):
            self.complete.add(claim.run_dir)
            claim.release()
        self.assertEqual(worker.next_run(self.runs, self._is_complete).run_dir, r4)
        self.complete.add(r4)
        self.assertIsNone(worker.next_run(self.runs, self._is_complete))  # r2 held, the rest complete

        def finish_r2():
            time.sleep(TIMEOUT)
            self.complete.add(r2)
            other.release()

        threading.Thread(target=finish_r2).start()
        start = time.monotonic()
        self.assertIsNone(worker.wait_for_run(self.runs, self._is_complete))  # all complete
        self.assertGreaterEqual(time.monotonic() - start, TIMEOUT)

    def test_a_run_completed_before_the_claim_landed_is_let_go(self):
        worker = claims.Worker(TIMEOUT)

        def complete_first_on_claim(run_dir):
            if run_dir == self.runs[0] and os.path.exists(claims.claims_dir(run_dir)):
                self.complete.add(run_dir)  # its holder finished it just now
            return run_dir in self.complete

        claim = worker.next_run(self.runs[:2], complete_first_on_claim)
        self.assertEqual(claim.run_dir, self.runs[1])
        claim.release()
        self.assertEqual(_read(self.runs[0], 1)["state"], "released")

    def test_waiting_worker_takes_over_a_dead_workers_run(self):
        self.complete.update(self.runs[1:])
        holder = _child("hold", self.runs[0])
        self.assertEqual(holder.stdout.readline().split(), ["claimed", "0"])
        _kill_leaving_a_zombie(holder)
        worker = claims.Worker(TIMEOUT)
        start = time.monotonic()
        try:
            claim = worker.wait_for_run(self.runs, self._is_complete)
        finally:
            _kill(holder)
        self.assertGreaterEqual(time.monotonic() - start, TIMEOUT)
        self.assertEqual((claim.run_dir, claim.generation), (self.runs[0], 1))
        claim.release()


if __name__ == "__main__":
    tf.test.main()
