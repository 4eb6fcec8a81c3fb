"""--engine=ray: a sweep's runs as Ray tasks give the serial sweep's results, a killed Ray worker's
run is retried and resumes exactly, a run failing on bad input is reported and not retried, and
without Ray the command says how to install it.

The sweep test connects to a local Ray of 2 CPUs started here; the bad-input test lets the
command start its own, as on a user's machine.
"""

import contextlib
import functools
import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
import unittest
from unittest import mock

from absl import flags
import pytest
import tensorflow as tf

from maxl_tf import cli
from maxl_tf import errors
from maxl_tf import main
from maxl_tf.experiment import claims
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import ray_engine
from maxl_tf.experiment import rundir
from tests import smoke_util
from tests import sweep_test

try:
    import ray
except ImportError:
    ray = None

HEARTBEAT = 8.0  # --heartbeat_timeout shortened: a waiting worker polls claims every 2 s
# Two runs, long enough (3 epochs) to kill one's worker after its first checkpoint.
SWEEP = (
    f"--flagfile={smoke_util.SMOKE_FLAGFILE}",
    "--method=single",
    "--seeds=0,1",
    "--epochs=3",
    f"--heartbeat_timeout={HEARTBEAT:g}",
    "--noexport",
)
LONG_EPOCHS = 12
KILLED = "digits_pri2_aux10_single_seed0"
HELD = "digits_pri2_aux10_single_seed1"  # held by a plain worker when the Ray sweep starts


def _numbers(logdir: str) -> dict:
    """results.json without timings, which legitimately differ between processes."""
    with open(os.path.join(logdir, "results.json")) as f:
        results = json.load(f)
    history = [{k: v for k, v in record.items() if not k.startswith("perf/")} for record in results["history"]]
    return {"history": history, "test_accuracy": results["test_accuracy"], "complete": results["complete"]}


def _epochs_done(logdir: str) -> int:
    try:
        with open(os.path.join(logdir, "results.json")) as f:
            return len(json.load(f)["history"])
    except (OSError, ValueError):
        return 0


def _training_process(logdir: str) -> int | None:
    """The PID of main.py training the run in logdir, if one is running."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                arguments = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if f"--logdir={logdir}" in arguments and any(a.endswith("main.py") for a in arguments):
            return int(pid)
    return None


def _read_lines(stream, lines: list) -> None:
    for line in stream:
        lines.append(line)


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


class RunFlagsTest(tf.test.TestCase):
    def test_a_runs_flags_replay_its_config_exactly(self):
        config = smoke_util.smoke_config("runs/sweep/run", method="maxl", seed=3, entropy_weight=0.1, psi=(4, 6))
        flag_values = flags.FlagValues()
        main.define_flags(flag_values)
        flag_values(["main.py", *ray_engine.run_flags(config, 7.5)])
        self.assertEqual(cli.config_from_flags(flag_values), config)
        self.assertEqual(flag_values.heartbeat_timeout, 7.5)
        self.assertEqual((flag_values.seeds, flag_values.pairs, flag_values.method), ("", "", "maxl"))

    def test_the_training_process_takes_the_stop_signals_its_worker_ignores(self):
        """A Ray worker of a driver started by `cmd &` ignores SIGINT (and a scheduler may make it
        ignore SIGTERM); an ignored signal stays so across exec, but not in the training process."""
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            child = subprocess.Popen(
                ["sleep", "60"], preexec_fn=functools.partial(ray_engine._die_with_parent, os.getpid())
            )
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        try:
            with open(f"/proc/{child.pid}/status") as f:
                ignored = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
            self.assertEqual(ignored & (1 << (signal.SIGINT - 1) | 1 << (signal.SIGTERM - 1)), 0)
            child.send_signal(signal.SIGTERM)
            self.assertEqual(child.wait(timeout=10), -signal.SIGTERM)
        finally:
            child.kill()
            child.wait()

    def test_only_a_killed_or_signalled_run_is_retried(self):
        retried = {code: ray_engine.worth_retrying(ray_engine.Outcome(code)) for code in (-9, 130, 143, 0, 1, 2, 75)}
        self.assertEqual(retried, {-9: True, 130: True, 143: True, 0: False, 1: False, 2: False, 75: False})

    def test_failed_runs_end_the_sweep_with_one_error_line(self):
        one = config_lib.resolve(smoke_util.smoke_config("runs/a", seed=0))
        other = config_lib.resolve(smoke_util.smoke_config("runs/b", seed=1))
        bad_input = ray_engine.Outcome(2, "error: --logdir=runs/a exists and is not a maxl_tf log directory")
        error = ray_engine._failure([(one, bad_input)], total=2)
        self.assertEqual((error.context, str(error), error.exit_code), (one.name, bad_input.message[7:], 2))
        error = ray_engine._failure([(one, bad_input), (other, ray_engine.Outcome(1, "error: loss is nan"))], total=3)
        self.assertEqual((error.context, error.exit_code), ("", 2))
        self.assertRegex(str(error), r"^2 of 3 runs failed \(their lines above\); fix them and rerun")

    def test_an_address_nothing_answers_is_one_line_at_once(self):
        with socket.socket() as listener:  # a port that was free a moment ago and is closed now
            listener.bind(("127.0.0.1", 0))
            port = listener.getsockname()[1]
        with self.assertRaisesRegex(errors.Error, rf"^--ray_address=127.0.0.1:{port}: no Ray cluster answers there"):
            ray_engine._check_reachable(f"127.0.0.1:{port}", f"--ray_address=127.0.0.1:{port}", "start one")
        ray_engine._check_reachable("ray://head:10001", "--ray_address", "")  # Ray's client: left to Ray

    def test_resources_ray_would_refuse_are_one_line(self):
        with self.assertRaisesRegex(errors.Error, r"^--gpus_per_run=1.5: must be a fraction of one GPU"):
            ray_engine.check_resources(1.5, 1)
        with self.assertRaisesRegex(errors.Error, r"^--cpus_per_run=0: must be a positive number"):
            ray_engine.check_resources(0.25, 0)
        ray_engine.check_resources(None, 0.5)
        ray_engine.check_resources(2, 1)


class _Reference:  # an ObjectRef's stand-in: hashable by identity
    def __init__(self, outcome):
        self.outcome = outcome


class _FakeRay:
    """Enough of Ray for the driver's loop (ray_engine._run_tasks): every submitted run's task ends
    at once, as if main.py had trained it; the submissions are recorded."""

    class exceptions:  # noqa: N801 (as Ray names it)
        RayError = RayTaskError = TaskCancelledError = type("NeverRaised", (Exception,), {})

    def __init__(self):
        self.submitted = []

    def nodes(self):
        return [{"Alive": True, "Resources": {"CPU": 2.0}}]

    def remote(self, **resources):
        fake = self

        class Task:
            def options(self, name):
                return self

            def remote(self, config, name, *args):
                fake.submitted.append(name)
                outcome = ray_engine.Outcome(0, line=f"{name}: done (resumed)", results={"run": name})
                return _Reference(outcome)

        return lambda function: Task()

    def wait(self, refs, num_returns, timeout):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref.outcome

    def cancel(self, ref, force=False):
        pass


class DriverDecisionTest(tf.test.TestCase):
    """The driver skips exactly what the serial sweep skips (sweep.finished); the rest goes to the
    runs' tasks, whose main.py repairs or refuses them (sweep_test.SkipDecisionTest)."""

    def setUp(self):
        super().setUp()
        self.resolved = config_lib.resolve(
            smoke_util.smoke_config(os.path.join(self.get_temp_dir(), self._testMethodName), method="single", epochs=1)
        )
        self.config, self.identity = self.resolved.config, self.resolved.identity

    def _drive(self) -> tuple:
        """(the runs submitted, the driver's output)."""
        fake, output = _FakeRay(), io.StringIO()
        with contextlib.redirect_stdout(output):
            ray_engine._run_tasks(fake, [self.resolved], "main.py", None, 1.0, HEARTBEAT)
        return fake.submitted, output.getvalue()

    def test_a_whole_run_is_skipped(self):
        sweep_test.complete_run(self.config, self.identity)
        submitted, output = self._drive()
        self.assertEqual(submitted, [])
        self.assertIn(f"[1/1] {self.resolved.name}: skipped (complete)", output)

    def test_a_truncated_export_goes_to_its_task(self):
        sweep_test.complete_run(self.config, self.identity)
        sweep_test.truncate_evaluator(self.config)
        submitted, output = self._drive()
        self.assertEqual(submitted, [self.resolved.name])
        self.assertNotIn("skipped", output)

    def test_a_run_on_other_data_goes_to_its_task(self):
        sweep_test.complete_run(self.config, self.identity, recorded=sweep_test.other_data(self.identity))
        submitted, output = self._drive()
        self.assertEqual(submitted, [self.resolved.name])
        self.assertNotIn("skipped", output)

    def test_data_the_driver_cannot_find_leaves_the_decision_to_the_task(self):
        sweep_test.complete_run(self.config, self.identity)
        no_data = errors.Error("no data on this machine")
        with mock.patch.object(config_lib.Run, "identity", new_callable=mock.PropertyMock, side_effect=no_data):
            submitted, _ = self._drive()
        self.assertEqual(submitted, [self.resolved.name])


class WithoutRayTest(tf.test.TestCase):
    def test_one_line_saying_how_to_install_it(self):
        blocked = (
            "import runpy, sys; sys.modules['ray'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')"
        )
        process = smoke_util.run_python(
            "-c", blocked, *smoke_util.main_command(*SWEEP, "--engine=ray")[1:], timeout=120
        )
        self.assertEqual(process.returncode, 2)
        self.assertEqual(
            process.stderr.strip().splitlines(),
            [
                "error: --engine=ray needs Ray, which is not installed; install it with pip install .[ray] "
                "in the project's folder (or leave --engine=serial)."
            ],
        )


@pytest.mark.slow
@unittest.skipIf(ray is None, "Ray is not installed (pip install .[ray])")
class RaySweepTest(tf.test.TestCase):
    """One local Ray of 2 CPUs and SWEEP's runs trained serially, the reference, for every test."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        cls.address = ray.get_runtime_context().gcs_address
        # SWEEP's runs trained in-process, with the numbers main.py's would have: run name -> logdir.
        cls.serial = {
            f"digits_pri2_aux10_single_seed{seed}": smoke_util.finished_run(
                method="single", epochs=3, seed=seed, export=False
            )
            for seed in (0, 1)
        }

    @classmethod
    def tearDownClass(cls):
        ray.shutdown()
        super().tearDownClass()

    def _start_on_ray(self, logdir: str, *flags) -> subprocess.Popen:
        return subprocess.Popen(
            smoke_util.main_command(
                *SWEEP, *flags, f"--logdir={logdir}", "--engine=ray", f"--ray_address={self.address}"
            ),
            cwd=smoke_util.REPO,
            env=dict(os.environ, PYTHONPATH=smoke_util.REPO, PYTHONUNBUFFERED="1"),  # the tasks' lines as they come
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def _wait_for_first_epoch(self, run_dir: str, process: subprocess.Popen) -> None:
        deadline = time.monotonic() + 240
        while _epochs_done(run_dir) < 1 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(_epochs_done(run_dir), 1, "the run did not save its first epoch (alone)")

    def _assert_equal_to_serial(self, logdir: str) -> None:
        for name, serial in self.serial.items():
            self.assertEqual(_numbers(f"{logdir}/{name}"), _numbers(serial), name)

    def test_results_equal_the_serial_sweeps_with_a_killed_worker_and_a_plain_workers_run(self):
        logdir = os.path.join(self.get_temp_dir(), "ray")
        # A plain worker of the same sweep holds one run: the Ray sweep must leave it alone until
        # it is released, then train it once.
        claim = claims.Worker(HEARTBEAT, worker_id="plain worker").claim(f"{logdir}/{HELD}")
        process = self._start_on_ray(logdir)
        output = {"stdout": [], "stderr": []}  # read as they come: the test waits for a line
        readers = [
            threading.Thread(target=_read_lines, args=(stream, output[name]), daemon=True)
            for name, stream in (("stdout", process.stdout), ("stderr", process.stderr))
        ]
        for reader in readers:
            reader.start()
        try:
            # Once the run saved its first epoch, kill its Ray worker (the training process's parent),
            # found while the epoch runs: its later epochs take a tenth of a second each on a quiet
            # machine, less than a scan of /proc after the first, and a run that finishes before the
            # kill leaves nothing to resume.
            run_dir, worker = f"{logdir}/{KILLED}", None
            deadline = time.monotonic() + 240
            while _epochs_done(run_dir) < 1 and process.poll() is None and time.monotonic() < deadline:
                if worker is None and (training := _training_process(run_dir)) is not None:
                    worker = _parent(training)
                time.sleep(0.005)
            self.assertEqual(_epochs_done(run_dir), 1, "the run did not save its first epoch (alone)")
            self.assertIsNotNone(worker, "the run's training process was not found")
            os.kill(worker, signal.SIGKILL)
            # Released once the held run's task found it held (under load its task may start late).
            deadline = time.monotonic() + 240
            while not any("waiting for 1 runs held by other workers" in line for line in list(output["stdout"])):
                self.assertLess(time.monotonic(), deadline, "the held run's task never found it held")
                time.sleep(0.05)
            self.assertEqual(_epochs_done(f"{logdir}/{HELD}"), 0)
            claim.release()
            process.wait(timeout=300)
            for reader in readers:
                reader.join(timeout=60)
            stdout, stderr = "".join(output["stdout"]), "".join(output["stderr"])
        finally:
            claim.release()
            if process.poll() is None:
                process.kill()
                process.communicate()
        self.assertEqual(process.returncode, 0, stderr[-3000:])
        self.assertRegex(
            stdout,
            rf"\[1/2\] {KILLED}: its Ray worker died \(.*\); retrying from its last checkpoint \(attempt 2 of 4\)",
        )
        self.assertRegex(stdout, rf"{KILLED}: .*resuming at epoch [23] step \d+")
        self.assertEqual(stdout.count("retrying"), 1)
        self.assertIn("waiting for 1 runs held by other workers", stdout)
        # The plain worker's claim and release (0, 1), then the Ray task's (2, 3): trained once.
        self.assertCountEqual(os.listdir(claims.claims_dir(f"{logdir}/{HELD}")), ["0", "1", "2", "3"])
        self._assert_equal_to_serial(logdir)
        # A line per finished run and the sweep's table, as the serial sweep prints them.
        self.assertRegex(stdout, rf"\[1/2\] {KILLED}: done \(resumed\), .*; results in ")
        self.assertRegex(stdout, rf"\[2/2\] {HELD}: done, .*; results in ")
        self.assertEqual(stdout.count("| dataset | pri |"), 1)

    def test_ctrl_c_stops_the_sweep_resumably_and_rerunning_finishes_it(self):
        name = HELD
        logdir = os.path.join(self.get_temp_dir(), name)  # one run (cheaper): its own log directory
        # Twelve epochs, so the stop lands mid-run even when Ray passes it on slowly (a stop after
        # the last epoch completes the run); its first three equal the serial run's.
        longer = ("--seeds=1", f"--epochs={LONG_EPOCHS}")
        process = self._start_on_ray(logdir, *longer)
        try:
            self._wait_for_first_epoch(logdir, process)
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        self.assertEqual(process.returncode, 128 + signal.SIGINT, stderr[-3000:])
        self.assertIn("stopping: each running run stops at its next step after a checkpoint", stdout)
        self.assertIn(f"[1/1] {name}: stopped", stdout)
        self.assertEqual(stderr.strip().splitlines()[-1], "stopped: interrupted; rerun the same command to resume.")
        self.assertLess(_epochs_done(logdir), LONG_EPOCHS)  # stopped mid-run, not finished

        rerun = self._start_on_ray(logdir, *longer)
        stdout, stderr = rerun.communicate(timeout=300)
        self.assertEqual(rerun.returncode, 0, stderr[-3000:])
        self.assertIn(f"[1/1] {name}: done (resumed)", stdout)
        self.assertEqual(_numbers(logdir)["history"][:3], _numbers(self.serial[name])["history"])

    def test_a_cut_export_is_rewritten_and_a_run_on_other_data_refused_as_serially(self):
        """What the serial sweep does (sweep_test.SkipDecisionTest), through Ray's driver and task."""
        logdir = smoke_util.copy_run(smoke_util.finished_run(), os.path.join(self.get_temp_dir(), "finished"))
        config = smoke_util.smoke_config(logdir)
        run_name = config_lib.resolve(config).name
        with open(os.path.join(logdir, "evaluator.keras"), "r+") as f:
            f.truncate(100)
        command = (f"--flagfile={smoke_util.SMOKE_FLAGFILE}", f"--logdir={logdir}", "--engine=ray")
        rerun = smoke_util.run_main(*command, f"--ray_address={self.address}")
        self.assertEqual(rerun.returncode, 0, rerun.stderr[-3000:])
        self.assertIn("exports missing or incomplete; writing them from the final checkpoint", rerun.stdout)
        self.assertIn(f"[1/1] {run_name}: done (resumed)", rerun.stdout)
        self.assertTrue(rundir.exports_intact(config))

        for name in ("config.json", "results.json"):  # the run now records other data than digits'
            path = os.path.join(logdir, name)
            with open(path) as f:
                recorded = json.load(f)
            recorded[rundir.DATA_KEY] = sweep_test.other_data(recorded[rundir.DATA_KEY])
            with open(path, "w") as f:
                json.dump(recorded, f)
        refused = smoke_util.run_main(*command, f"--ray_address={self.address}")
        self.assertEqual(refused.returncode, 2, refused.stderr[-3000:])
        self.assertRegex(
            refused.stderr.strip().splitlines()[-1],
            rf"^error: {run_name}: --logdir={logdir} holds a run on other data: package .*version=0\.0;",
        )
        self.assertIn(f"[1/1] {run_name}: failed: error: --logdir={logdir} holds a run on other data", refused.stdout)
        self.assertNotIn("skipped", refused.stdout)
        self.assertNotIn("Traceback", refused.stderr)

    def test_a_bad_input_run_fails_once_with_its_error_line(self):
        logdir = os.path.join(self.get_temp_dir(), "run")
        os.makedirs(logdir)
        open(os.path.join(logdir, "notes.txt"), "w").close()
        # No --ray_address: the command starts a Ray of its own, as on a user's machine.
        process = smoke_util.run_main(
            f"--flagfile={smoke_util.SMOKE_FLAGFILE}", "--method=single", f"--logdir={logdir}", "--engine=ray"
        )
        self.assertEqual(process.returncode, 2, process.stderr[-3000:])
        error = f"--logdir={logdir} exists and is not a maxl_tf log directory (no config.json)"
        self.assertEqual(
            process.stderr.strip().splitlines()[-1],
            f"error: digits_pri2_aux10_single_seed0: {error}; pass an empty or new --logdir.",
        )
        self.assertIn(f"[1/1] digits_pri2_aux10_single_seed0: failed: error: {error}", process.stdout)
        self.assertNotIn("retrying", process.stdout)
        self.assertNotIn("Traceback", process.stderr)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `cmd &` starts a background job


@pytest.mark.slow
@unittest.skipIf(ray is None, "Ray is not installed (pip install .[ray])")
class BackgroundDriverTest(tf.test.TestCase):
    """A driver started from a script: SIGINT ignored in it, and so in the Ray it starts."""

    def test_ctrl_c_stops_the_runs_of_a_driver_started_with_sigint_ignored(self):
        logdir = os.path.join(self.get_temp_dir(), HELD)
        # No --ray_address: the driver starts its Ray, whose workers inherit SIGINT ignored.
        process = subprocess.Popen(
            smoke_util.main_command(
                *SWEEP, "--seeds=1", f"--epochs={LONG_EPOCHS}", f"--logdir={logdir}", "--engine=ray"
            ),
            cwd=smoke_util.REPO,
            env=dict(os.environ, PYTHONPATH=smoke_util.REPO, PYTHONUNBUFFERED="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_ignore_sigint,
        )
        try:
            deadline = time.monotonic() + 240
            while _epochs_done(logdir) < 1 and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertEqual(_epochs_done(logdir), 1, "the run did not save its first epoch")
            training = _training_process(logdir)
            sent = time.monotonic()
            process.send_signal(signal.SIGINT)
            stdout, stderr = process.communicate(timeout=180)
            stopped_in = time.monotonic() - sent
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        self.assertEqual(process.returncode, 128 + signal.SIGINT, stderr[-3000:])
        self.assertIn(f"[1/1] {HELD}: stopped", stdout)
        self.assertEqual(stderr.strip().splitlines()[-1], "stopped: interrupted; rerun the same command to resume.")
        self.assertLess(_epochs_done(logdir), LONG_EPOCHS)  # stopped mid-run, at a checkpoint: not trained on
        self.assertLess(stopped_in, 90)
        self.assertIsNotNone(training)
        self.assertFalse(os.path.exists(f"/proc/{training}"), "the run's training process outlived the sweep")
        self.assertNotIn("Traceback", stderr)


if __name__ == "__main__":
    tf.test.main()
