"""Workers sharing a sweep: the launcher, the claims inside a run directory, and main.py started
twice on one sweep (every run trained once, the results a single worker's), a killed worker's run
taken over once its heartbeat lapsed, and resources checked before any run trains."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from maxl_tf import errors
from maxl_tf.experiment import claims
from maxl_tf.experiment import rundir
from maxl_tf.experiment import train
from tests import smoke_util

SWEEP = (
    f"--flagfile={smoke_util.SMOKE_FLAGFILE}",
    "--epochs=1",
    "--method=single,random",
    "--seeds=0,1",
    "--noexport",
)
# One run whose epochs are long enough (38 steps) to kill its worker mid-epoch.
LONG_RUN = dict(method="single", epochs=3, max_train_examples=600, batch_size=16, export=False)
LONG_RUN_FLAGS = (f"--flagfile={smoke_util.SMOKE_FLAGFILE}", *(f"--{key}={value}" for key, value in LONG_RUN.items()))
HEARTBEAT = 3.0  # seconds; --heartbeat_timeout shortened for the test


def _launch(*args) -> list:
    return [sys.executable, "-m", "maxl_tf.launch", *args]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=smoke_util.REPO)


def _numbers(logdir: str) -> dict:
    """results.json without timings, which legitimately differ between processes."""
    with open(os.path.join(logdir, "results.json")) as f:
        results = json.load(f)
    history = [{k: v for k, v in record.items() if not k.startswith("perf/")} for record in results["history"]]
    return {"history": history, "test_accuracy": results["test_accuracy"], "complete": results["complete"]}


def _read_until(process: subprocess.Popen, text: str, lines: list) -> float:
    """Reads process's stdout into lines until one contains text; returns when (monotonic)."""
    for line in process.stdout:
        lines.append(line)
        if text in line:
            return time.monotonic()
    raise AssertionError(f"{text!r} never came; output:\n{''.join(lines)[-3000:]}")


class LauncherTest(tf.test.TestCase):
    def test_workers_are_pinned_prefixed_and_the_first_failure_is_the_status(self):
        worker = (
            "import os, sys; gpu = os.environ['CUDA_VISIBLE_DEVICES']; print('sees', gpu); "
            "sys.exit(3 if gpu == '5' else 0)"
        )
        process = subprocess.run(
            _launch("--workers=3", "--gpus=4,5", "--", sys.executable, "-c", worker),
            cwd=smoke_util.REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(process.returncode, 3, process.stderr)
        self.assertCountEqual(
            process.stdout.splitlines(), ["[worker 0] sees 4", "[worker 1] sees 5", "[worker 2] sees 4"]
        )

    def test_a_signal_reaches_every_worker_once(self):
        worker = (
            "import signal, sys, time\n"
            "got = []\n"
            "signal.signal(signal.SIGTERM, lambda s, f: got.append(s))\n"
            "print('ready', flush=True)\n"
            "while not got: time.sleep(0.01)\n"
            "time.sleep(0.3)\n"  # a second signal would land here
            "print('got', got, flush=True)\n"
        )
        process = subprocess.Popen(
            _launch("--workers=2", "--", sys.executable, "-c", worker),
            cwd=smoke_util.REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines = []
        for _ in range(2):
            _read_until(process, "ready", lines)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
        self.assertEqual(process.returncode, 0, stderr)
        self.assertCountEqual(stdout.splitlines(), [f"[worker {i}] got [{int(signal.SIGTERM)}]" for i in range(2)])

    def test_without_a_command_one_line(self):
        process = subprocess.run(
            _launch("--workers=2"), cwd=smoke_util.REPO, env=_env(), capture_output=True, text=True, timeout=60
        )
        self.assertEqual(process.returncode, 2)
        self.assertEqual(
            process.stderr.strip().splitlines(),
            [
                "error: no command to start; put it after --, e.g. python -m maxl_tf.launch --workers=2 "
                "-- python main.py --flagfile=flags/digits_sweep.cfg"
            ],
        )


class RunDirectoryTest(tf.test.TestCase):
    def test_a_claim_alone_does_not_make_a_directory_foreign(self):
        config = smoke_util.smoke_config(os.path.join(self.get_temp_dir(), "run"))
        claim = claims.Worker(60).claim(config.logdir)  # a worker claims a run before creating it
        try:
            rundir.check(config)
            open(os.path.join(config.logdir, "notes.txt"), "w").close()
            with self.assertRaisesRegex(errors.Error, "is not a maxl_tf log directory"):
                rundir.check(config)
        finally:
            claim.release()


class LostClaimTest(tf.test.TestCase):
    def test_a_run_taken_over_stops_without_writing_training(self):
        config = smoke_util.smoke_config(os.path.join(self.get_temp_dir(), "run"))
        claim = claims.Worker(0.4).claim(config.logdir)
        # Another worker's takeover: the next generation of the claim.
        with open(os.path.join(claims.claims_dir(config.logdir), "1"), "w") as f:
            f.write(json.dumps({"state": "held", "worker": "elsewhere"}))
        with self.assertRaisesRegex(errors.ClaimLost, "another worker took this run over"):
            train.train_and_evaluate(config, progress=False, claim=claim)
        claim.release()
        self.assertFalse(rundir.holds_training(config.logdir))  # no checkpoint, no results.json
        self.assertCountEqual(os.listdir(claims.claims_dir(config.logdir)), ["0", "1"])  # nor a release


@pytest.mark.slow
class SharedSweepTest(tf.test.TestCase):
    def test_two_workers_train_every_run_once_with_one_workers_results(self):
        root = self.get_temp_dir()
        single = smoke_util.run_main(*SWEEP, f"--logdir={root}/single")
        self.assertEqual(single.returncode, 0, single.stderr[-2000:])
        command = smoke_util.main_command(*SWEEP, f"--logdir={root}/shared", "--heartbeat_timeout=10")
        shared = subprocess.run(
            _launch("--workers=2", "--", *command),
            cwd=smoke_util.REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.assertEqual(shared.returncode, 0, shared.stderr[-2000:])
        names = sorted(os.listdir(f"{root}/single"))
        self.assertLen(names, 4)
        trained_by = {}
        for line in shared.stdout.splitlines():
            worker, _, text = line.partition("] ")
            name = text.split(":")[0]
            if text.endswith("; starting"):
                trained_by.setdefault(name, []).append(worker)
        self.assertCountEqual(trained_by, names)
        self.assertTrue(all(len(workers) == 1 for workers in trained_by.values()), trained_by)  # once each
        self.assertLen({workers[0] for workers in trained_by.values()}, 2)  # and both worked
        for name in names:
            self.assertEqual(_numbers(f"{root}/shared/{name}"), _numbers(f"{root}/single/{name}"), name)
        for worker in range(2):  # every worker prints the whole sweep's table
            self.assertEqual(shared.stdout.count(f"[worker {worker}] | digits | 2 | 10 | 7,3 | random |"), 1)

    def test_a_killed_workers_run_is_taken_over_once_its_heartbeat_lapses(self):
        root = self.get_temp_dir()
        reference = smoke_util.finished_run(**LONG_RUN)  # trained in-process: the same numbers as main.py's

        command = smoke_util.main_command(
            *LONG_RUN_FLAGS, f"--logdir={root}/shared", f"--heartbeat_timeout={HEARTBEAT}"
        )
        first = subprocess.Popen(
            command, cwd=smoke_util.REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        second = None
        try:
            _read_until(first, "epoch 1/3", [])  # a checkpoint to resume from; now in epoch 2
            # Killed and not yet reaped, its PID still exists: the second worker must judge its
            # claim by the heartbeat alone, as a worker on another host would.
            first.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            second = subprocess.Popen(
                command, cwd=smoke_util.REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            lines = []
            _read_until(second, "held by another worker", lines)
            took_over = _read_until(second, "taking over from worker", lines)
            stdout, stderr = second.communicate(timeout=300)
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.communicate()
        self.assertEqual(second.returncode, 0, stderr[-2000:])
        self.assertGreaterEqual(took_over - killed, HEARTBEAT)  # it first saw the claim after the kill
        self.assertRegex("".join(lines) + stdout, r"resuming at epoch 2 step \d+")
        self.assertEqual(_numbers(f"{root}/shared"), _numbers(reference))


@pytest.mark.slow
class ResourceCheckTest(tf.test.TestCase):
    def test_an_unavailable_embedder_stops_the_sweep_before_anything_trains(self):
        logdir = os.path.join(self.get_temp_dir(), "sweep")
        # No cached weights, and a proxy that refuses: the download fails at once, as offline.
        env = dict(
            _env(), KERAS_HOME=self.get_temp_dir(), HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9"
        )
        process = subprocess.run(
            smoke_util.main_command(
                f"--flagfile={smoke_util.SMOKE_FLAGFILE}", "--method=maxl,prototypical", f"--logdir={logdir}"
            ),
            cwd=smoke_util.REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(process.returncode, 2, process.stderr[-2000:])
        self.assertNotIn("Traceback", process.stderr)
        error_lines = [line for line in process.stderr.splitlines() if line.startswith("error:")]
        self.assertLen(error_lines, 1, process.stderr[-2000:])
        self.assertRegex(error_lines[0], r"^error: --embedder=imagenet: cannot load VGG16's ImageNet weights")
        self.assertNotIn("starting", process.stdout)
        self.assertFalse(os.path.exists(logdir))


if __name__ == "__main__":
    tf.test.main()
