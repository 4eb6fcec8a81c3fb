"""main.py as a user runs it: bad input, interruption and resume, replay from flags.cfg."""

import json
import logging as std_logging
import os
import signal
import subprocess
import sys
import time
import tomllib

from absl.testing import parameterized
import pytest
import tensorflow as tf

from maxl_tf import cli
from maxl_tf import errors
from maxl_tf import main
from maxl_tf.experiment import config as config_lib
from tests import smoke_util

# Long enough epochs (34 steps of 16) that signals land mid-epoch; four, so that the second
# signal (in epoch 3) leaves an epoch to resume.
RESUME = dict(epochs=4, max_train_examples=600, batch_size=16, export=False)
RESUME_FLAGS = ("--flagfile=" + smoke_util.SMOKE_FLAGFILE, *(f"--{key}={value}" for key, value in RESUME.items()))


def _checkpoints(directory) -> list:
    """The checkpoints the index lists (none before the first save, or while the index is rewritten)."""
    try:
        return tf.train.get_checkpoint_state(directory).all_model_checkpoint_paths
    except (AttributeError, tf.errors.OpError):
        return []


def _numbers(results_path):
    """The results of results.json: all but timings and the log directory, which legitimately differ."""
    with open(results_path) as f:
        results = json.load(f)
    history = [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in results["history"]]
    return {"history": history, "test_accuracy": results["test_accuracy"], "psi": results["psi"]}


class ValidationTest(parameterized.TestCase):
    """Every flag check, in-process (fast); the CLI test below shows how they reach the user."""

    @parameterized.parameters(
        (dict(dataset="imagenet"), "--dataset=imagenet"),
        (dict(method="magic"), "--method=magic"),
        (dict(model="resnet"), "--model=resnet"),
        (dict(dataset="digits", pri=3, aux=10), "--pri=3"),
        (dict(dataset="cifar10", pri=10, aux=15), "--pri=10 --aux=15"),
        (dict(dataset="cifar100", pri=3, aux=10, psi="5,1"), "--psi=5,1"),
        (dict(dataset="cifar100", pri=3, aux=10, psi="5,1,5"), "summing to --aux=10"),
        (dict(dataset="cifar100", pri=3, aux=10, psi="5,x,4"), "comma-separated integers"),
        (dict(dataset="cifar100", pri=3, aux=10, psi="4,2,4", method="human"), "--method=human"),
        (dict(dataset="cifar10", pri=10, aux=20, method="human"), "--method=human"),
        (dict(batch_size=0), "--batch_size=0"),
        (dict(epochs=-3), "--epochs=-3"),
        (dict(meta_split=1.0), r"--meta_split=1.0: must be in \[0, 1\)"),
        (dict(meta_split=-0.1), "--meta_split=-0.1"),
        (dict(lr=0.0), "--lr=0.0"),
        (dict(entropy_weight=-1.0), "--entropy_weight=-1.0"),
        (dict(jit=True), "--jit: XLA has no deterministic max-pool gradient"),
        (dict(hypergradient="third_order"), "--hypergradient=third_order: unknown"),
        (dict(meta_every=0), "--meta_every=0: must be a positive integer"),
        (dict(hypergradient="implicit", neumann_terms=-1), "--neumann_terms=-1: must not be negative"),
        (dict(neumann_terms=10), "--neumann_terms=10: only --hypergradient=implicit uses it"),
        (dict(schedule="alternating", meta_every=10), "--meta_every=10: --schedule=alternating already"),
        (
            dict(schedule="alternating", hypergradient="implicit"),
            "--hypergradient=implicit: .* use --schedule=interleaved",
        ),
    )
    def test_bad_flag_is_named(self, overrides, message):
        with self.assertRaisesRegex(errors.Error, message):
            if "psi" in overrides:  # the flag's text, as main.py parses it
                overrides = dict(overrides, psi=config_lib.parse_psi(overrides["psi"]))
            config_lib.resolve(config_lib.Config(**overrides))

    def test_paper_defaults_validate(self):
        self.assertEqual(config_lib.resolve(config_lib.Config()).config.psi, (5,) * 20)
        self.assertEqual(config_lib.resolve(config_lib.Config(pri=3, aux=10)).config.psi, (5, 1, 4))
        self.assertEqual(config_lib.resolve(config_lib.Config(jit=True, deterministic=False)).config.psi, (5,) * 20)

    def test_hypergradient_settings_name_the_run(self):
        def name(**fields):
            return config_lib.resolve(config_lib.Config(dataset="cifar10", pri=10, aux=20, **fields)).name

        self.assertEqual(name(), "cifar10_pri10_aux20_maxl_seed0")
        self.assertEqual(
            name(hypergradient="first_order", meta_every=10), "cifar10_pri10_aux20_maxl_first_order_every10_seed0"
        )
        self.assertEqual(name(hypergradient="implicit"), "cifar10_pri10_aux20_maxl_implicit_seed0")
        self.assertEqual(name(hypergradient="implicit", neumann_terms=0), "cifar10_pri10_aux20_maxl_implicit0_seed0")
        self.assertEqual(name(method="single", meta_every=10), "cifar10_pri10_aux20_single_seed0")


@pytest.mark.slow
class StartUpTest(tf.test.TestCase, parameterized.TestCase):
    """What a user sees first: help, and flag mistakes caught before TensorFlow starts."""

    def _run(self, *args):
        return smoke_util.run_recording_imports(os.path.join(smoke_util.REPO, "main.py"), *args)

    def test_help_exits_0(self):
        code, stdout, _, _ = self._run("--help")
        self.assertEqual(code, 0)
        self.assertIn("Train MAXL or a baseline", stdout)
        self.assertIn("--pri", stdout)

    def test_help_groups_the_flags_a_first_run_needs_and_points_at_helpfull(self):
        _, stdout, _, imported = self._run("--help")
        for title, names in main.HELP_GROUPS:
            section = stdout.split(f"\n{title}:\n", 1)[1].split("\n\n", 1)[0]
            for name in names:
                self.assertRegex(section, rf"(?m)^  --(\[no\])?{name}: ", msg=f"{name} under {title}")
        self.assertIn("--helpfull", stdout.strip().splitlines()[-1])
        self.assertNotIn("--heartbeat_timeout", stdout)  # the rest wait for --helpfull
        _, full, _, _ = self._run("--helpfull")
        self.assertIn("--heartbeat_timeout", full)
        self.assertFalse(imported)

    def _closed_pipe(self, *command):
        """(exit status, stderr) of a command whose stdout reader went away at once, as `| head -1`."""
        process = subprocess.Popen(
            [sys.executable, *command],
            cwd=smoke_util.REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=smoke_util.REPO),
        )
        process.stdout.close()
        stderr = process.stderr.read().decode()
        return process.wait(timeout=60), stderr

    def test_a_closed_pipe_ends_quietly(self):
        code, stderr = self._closed_pipe(os.path.join(smoke_util.REPO, "main.py"), "--help")
        self.assertEqual(code, 128 + signal.SIGPIPE, stderr)
        self.assertEqual(stderr, "")
        # The launcher keeps reading its workers (they would block on a full pipe) and drops the lines.
        worker = "for i in range(20000): print(i)"
        code, stderr = self._closed_pipe("-m", "maxl_tf.launch", "--workers=2", "--", sys.executable, "-c", worker)
        self.assertIn(code, (0, 128 + signal.SIGPIPE), stderr)
        self.assertEqual(stderr, "")

    def test_tensorflow_datasets_warnings_are_kept_out(self):
        """Offline, tfds warns through absl ("Variant folder ... has no dataset_info.json") before
        our own error line says the data is missing; its errors still show, and our warnings."""

        def record(path, level):
            return std_logging.LogRecord("absl", level, path, 1, "message", None, None)

        tfds_file = "/site-packages/tensorflow_datasets/core/utils/file_utils.py"
        self.assertFalse(cli._third_party_chatter(record(tfds_file, std_logging.WARNING)))
        self.assertTrue(cli._third_party_chatter(record(tfds_file, std_logging.ERROR)))
        self.assertTrue(cli._third_party_chatter(record("/repo/maxl_tf/train.py", std_logging.WARNING)))

    def test_a_default_dataset_error_suggests_your_own_images(self):
        code, _, stderr, imported = self._run("--pri=2", "--aux=10")
        self.assertEqual(code, 2, stderr)
        self.assertEqual(len(stderr.strip().splitlines()), 1, stderr)
        self.assertIn("--dataset=folder --data_dir=", stderr)
        self.assertFalse(imported)
        _, _, stderr, _ = self._run("--dataset=cifar10", "--pri=2", "--aux=10")
        self.assertNotIn("--dataset=folder", stderr)  # a data set named on purpose gets no hint

    def test_predict_given_a_folder_says_what_it_takes(self):
        code, _, stderr, imported = smoke_util.run_recording_imports(
            "maxl_tf.predict", "--logdir=runs/x", os.path.join(smoke_util.REPO, "flags")
        )
        self.assertEqual(code, 2, stderr)
        self.assertRegex(stderr.strip(), r"^error: .*flags is a folder; predict takes image files .*flags/\*\.jpg\.$")
        self.assertFalse(imported)

    def test_console_command_trains_and_runs_the_tools(self):
        """The maxl-tf script of `pip install .` calls pyproject's entry point so; `maxl-tf report`
        is the report."""
        with open(os.path.join(smoke_util.REPO, "pyproject.toml"), "rb") as f:
            target = tomllib.load(f)["project"]["scripts"]["maxl-tf"]
        module, function = target.split(":")
        script = f"import sys; sys.argv[0] = 'maxl-tf'; from {module} import {function}; {function}()"

        def console(*args):
            return smoke_util.run_python("-c", script, *args, timeout=60)

        training = console("--help")
        self.assertEqual(training.returncode, 0, training.stderr)
        self.assertIn("Train MAXL or a baseline", training.stdout)
        report = console("report", "--help")
        self.assertEqual(report.returncode, 0, report.stderr)
        self.assertIn("--out:", report.stdout)
        missing = console("report")
        self.assertEqual(missing.returncode, 2)
        self.assertRegex(missing.stderr.strip(), r"^error: pass a folder of runs")

    @parameterized.named_parameters(
        ("typo_in_a_value", ("--batch_size=abc",), r"^error: flag --batch_size=abc: .*See --help\.$"),
        ("unknown_flag", ("--bach_size=10",), r"^error: Unknown command line flag 'bach_size'"),
        (
            "missing_flagfile",
            ("--flagfile=/nonexistent/preset.cfg",),
            r"^error: --flagfile=/nonexistent/preset.cfg: cannot open it \(No such file or directory\); pass",
        ),
        ("bad_choice", ("--method=magic",), r"^error: --method=magic: unknown"),
    )
    def test_flag_mistakes_are_one_line_without_tensorflow(self, args, pattern):
        code, _, stderr, imported = self._run(*args)
        self.assertEqual(code, 2, stderr)
        self.assertEqual(len(stderr.strip().splitlines()), 1, stderr)
        self.assertRegex(stderr.strip(), pattern)
        self.assertFalse(imported, "TensorFlow was imported before the flags were checked")

    def test_tensorflow_start_up_lines_are_kept_out(self):
        # Fails after TensorFlow started (the data is missing): the error line and nothing of its C++ start-up.
        code, _, stderr, imported = self._run("--data_dir=/nonexistent/cifar", "--logdir=/nonexistent/run")
        self.assertEqual(code, 2, stderr)
        self.assertTrue(imported)
        self.assertEqual(
            [line for line in stderr.splitlines() if line.strip()],
            [line for line in stderr.splitlines() if line.startswith("error: ")],
            stderr,
        )
        self.assertRegex(stderr.strip(), r"^error: .*--data_dir=/nonexistent/cifar")  # names the flag to fix


@pytest.mark.slow
class CommandLineTest(tf.test.TestCase, parameterized.TestCase):
    def _assert_one_line_error(self, process, exit_code, pattern):
        self.assertEqual(process.returncode, exit_code, process.stderr[-2000:])
        self.assertNotIn("Traceback", process.stderr)
        errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
        self.assertLen(errors, 1, process.stderr[-2000:])
        self.assertRegex(errors[0], pattern)

    @parameterized.named_parameters(
        ("unknown_dataset", ("--dataset=imagenet",), "--dataset=imagenet: unknown"),
        ("bad_pair", ("--dataset=cifar100", "--pri=3", "--aux=7"), "--pri=3 --aux=7"),
        ("bad_psi", ("--dataset=cifar100", "--pri=3", "--aux=10", "--psi=5,1,5"), "--psi=5,1,5"),
        ("unparsable_flag", ("--batch_size=abc",), "batch_size"),
        (
            "model_too_deep_for_digits",
            ("--flagfile=" + smoke_util.SMOKE_FLAGFILE, "--model=vgg16"),
            "--model=vgg16 pools 5 times",
        ),
        ("jit_without_nodeterministic", ("--flagfile=" + smoke_util.SMOKE_FLAGFILE, "--jit"), "--nodeterministic"),
    )
    def test_bad_input_exits_2_with_one_line(self, args, pattern):
        logdir = os.path.join(self.get_temp_dir(), "bad")
        process = smoke_util.run_main(*args, f"--logdir={logdir}")
        self._assert_one_line_error(process, 2, pattern)

    def test_several_methods_are_all_checked_before_any_trains(self):
        logdir = os.path.join(self.get_temp_dir(), "checked")
        process = smoke_util.run_main(
            f"--flagfile={smoke_util.SMOKE_FLAGFILE}", "--method=single,magic", f"--logdir={logdir}"
        )
        self._assert_one_line_error(process, 2, "--method=magic")
        self.assertFalse(os.path.exists(logdir))

    def test_paper_command_offline_says_how_to_provide_data(self):
        empty = os.path.join(self.get_temp_dir(), "empty")
        os.makedirs(empty)
        process = smoke_util.run_main(
            "--dataset=cifar100",
            "--pri=20",
            "--aux=100",
            f"--data_dir={empty}",
            "--nodownload",
            f"--logdir={self.get_temp_dir()}/paper",
        )
        self._assert_one_line_error(process, 2, "cifar-100-python.tar.gz")

    def test_non_finite_loss_exits_1(self):
        process = smoke_util.run_main(
            f"--flagfile={smoke_util.SMOKE_FLAGFILE}", "--lr=1e30", f"--logdir={self.get_temp_dir()}/nan"
        )
        self._assert_one_line_error(process, 1, r"non-finite loss at step \d+")


@pytest.mark.slow
class ResumeTest(tf.test.TestCase):
    """Its own class, so that pytest-xdist runs it beside the other command-line tests."""

    def test_interrupted_runs_resume_to_identical_results(self):
        """Killed (SIGKILL) in epoch 2, resumed, the resumed process stopped (SIGTERM) in epoch 3,
        resumed again: the results equal the uninterrupted run's (4 epochs)."""
        root = self.get_temp_dir()
        reference = smoke_util.finished_run(**RESUME)  # trained in-process: the same numbers as main.py's
        expected = _numbers(f"{reference}/results.json")
        self.assertLen(expected["history"], 4)

        logdir = f"{root}/interrupted"
        checkpoints = f"{logdir}/checkpoints"
        stops = ((1, signal.SIGKILL, -signal.SIGKILL), (2, signal.SIGTERM, 128 + signal.SIGTERM))
        for epoch, signum, exit_code in stops:
            process = subprocess.Popen(
                smoke_util.main_command(*RESUME_FLAGS, f"--logdir={logdir}"),
                cwd=smoke_util.REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=dict(os.environ, PYTHONPATH=smoke_util.REPO),
            )
            deadline = time.time() + 120
            while time.time() < deadline and len(_checkpoints(checkpoints)) < epoch:  # epoch `epoch` saved
                time.sleep(0.02)
            time.sleep(0.3)  # into the next epoch
            process.send_signal(signum)
            stdout, stderr = process.communicate(timeout=120)
            self.assertEqual(process.returncode, exit_code, stderr[-2000:])
            if signum == signal.SIGTERM:
                self.assertIn("resuming at epoch 2", stdout)
                self.assertRegex(stderr, r"stopped: signal 15 (at|after) epoch \d")
                self.assertNotIn("Traceback", stderr)
        resumed = smoke_util.run_main(*RESUME_FLAGS, f"--logdir={logdir}")
        self.assertEqual(resumed.returncode, 0, resumed.stderr[-2000:])
        self.assertRegex(resumed.stdout, r"resuming at epoch [34] step")
        self.assertEqual(_numbers(f"{logdir}/results.json"), expected)

        # The saved flags replay the run: it is complete, so nothing is built or retrained.
        replay = smoke_util.run_main(f"--flagfile={reference}/flags.cfg")
        self.assertEqual(replay.returncode, 0, replay.stderr[-2000:])
        self.assertIn("skipped (complete)", replay.stdout)
        self.assertEqual(_numbers(f"{reference}/results.json"), expected)


if __name__ == "__main__":
    tf.test.main()
