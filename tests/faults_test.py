"""Fault injection: each kind of fault BUILD.md's "Faults" table lists, injected, then the rerun.

The finished smoke run is trained once per test session (smoke_util.finished_run); each test
damages a copy of it (or trains one with a fault mocked in: a read-only directory and a full
disk are mocked, as root writes everywhere) and checks the promise: one `error:` line naming the
path and the fix, nothing already written lost, and after the rerun a complete run equal to an
uninterrupted one.
"""

import errno
import json
import os
import shutil
import signal
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf

from maxl_tf import errors
from maxl_tf import predict
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import exports
from maxl_tf.experiment import rundir
from maxl_tf.experiment import state as state_lib
from maxl_tf.experiment import sweep
from maxl_tf.experiment import train
from maxl_tf.models import vgg
from tests import smoke_util


def _numbers(logdir):
    """results.json without timings, which legitimately differ between runs."""
    with open(os.path.join(logdir, "results.json")) as f:
        results = json.load(f)
    history = [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in results["history"]]
    return {"history": history, "test_accuracy": results["test_accuracy"], "complete": results["complete"]}


def _config(logdir):
    return config_lib.resolve(smoke_util.smoke_config(logdir)).config


def _checkpoints(logdir):
    state = tf.train.get_checkpoint_state(os.path.join(logdir, "checkpoints"))
    return [os.path.basename(p) for p in state.all_model_checkpoint_paths]


def _custom_gradient_names() -> set:
    from tensorflow.python.framework import ops as tf_ops

    return {name for name in tf_ops._gradient_registry._registry if name.startswith("CustomGradient-")}


class _Killed(BaseException):
    """Stands for kill -9 at a chosen moment: nothing after it runs."""


@pytest.mark.slow
class FinishedRunFaultsTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = os.path.join(tf.test.TestCase().get_temp_dir(), "faults")
        shutil.rmtree(cls.root, ignore_errors=True)
        cls.finished = smoke_util.finished_run()
        cls.expected = _numbers(cls.finished)
        cls.images = []
        rng = np.random.default_rng(0)
        for i in range(3):
            path = os.path.join(cls.root, f"image{i}.png")
            tf.io.write_file(path, tf.io.encode_png(rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)))
            cls.images.append(path)
        cls.predictions = predict.predict(cls.finished, cls.images)[1]

    def _copy(self, name):
        logdir = os.path.join(self.root, name)
        shutil.rmtree(logdir, ignore_errors=True)
        return smoke_util.copy_run(self.finished, logdir)

    def _assert_complete_and_usable(self, logdir):
        self.assertEqual(_numbers(logdir), self.expected)
        self.assertTrue(rundir.exports_intact(_config(logdir)))
        self.assertEqual(
            [{k: v for k, v in p.items() if k != "probability"} for p in predict.predict(logdir, self.images)[1]],
            self.predictions,
        )
        self.assertFalse(os.path.exists(os.path.join(logdir, exports.STAGING)))

    def test_exports_cut_short_or_missing_are_written_again_by_the_rerun(self):
        """A complete run whose evaluator.keras was cut to 0 bytes and whose serving/ and
        classes.json are gone: the sweep does not skip it, it exports again from the final
        checkpoint, and predict gives what it gave."""
        logdir = self._copy("cut_short")
        with open(os.path.join(logdir, exports.EVALUATOR), "w"):
            pass
        shutil.rmtree(os.path.join(logdir, exports.SERVING))
        os.remove(os.path.join(logdir, exports.CLASSES))
        config = _config(logdir)
        self.assertFalse(rundir.exports_intact(config))
        with self.assertRaisesRegex(errors.Error, "no complete exported networks.*--export, which finishes the run"):
            predict.predict(logdir, self.images)
        with mock.patch("builtins.print") as printed:
            sweep.run(
                [config_lib.resolve(config)],
                lambda run, claim=None: train.train_and_evaluate(run, progress=False, claim=claim),
            )
        lines = " ".join(str(call.args[0]) for call in printed.call_args_list)
        self.assertNotIn("skipped (complete)", lines)
        self.assertIn("already complete", lines)
        self.assertIn("exports missing or incomplete; writing them from the final checkpoint", lines)
        self._assert_complete_and_usable(logdir)

    def test_an_export_truncated_on_disk_is_caught_by_its_size(self):
        logdir = self._copy("truncated")
        path = os.path.join(logdir, exports.SERVING, "saved_model.pb")
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        self.assertFalse(rundir.exports_intact(_config(logdir)))
        train.train_and_evaluate(_config(logdir), progress=False)
        self._assert_complete_and_usable(logdir)

    def test_kill_while_exports_are_moved_into_place(self):
        """Killed after the evaluator was renamed into place, before the rest: results.json still
        says epoch 1 of 2, and the rerun ends as an uninterrupted run. Neither run leaves a traced
        graph registered: TensorFlow's gradient registry would keep each traced tf.custom_gradient,
        and its graph, for the life of the process (a sweep grew run by run, docs/measurements.md)."""
        logdir = os.path.join(self.root, "killed_exporting")
        publish = rundir.publish_exports
        registered_before = _custom_gradient_names()

        def killed_midway(target, staging):
            os.replace(os.path.join(staging, exports.EVALUATOR), os.path.join(target, exports.EVALUATOR))
            raise _Killed

        with mock.patch.object(rundir, "publish_exports", killed_midway), self.assertRaises(_Killed):
            train.train_and_evaluate(_config(logdir), progress=False)
        self.assertFalse(_numbers(logdir)["complete"])
        self.assertIs(rundir.publish_exports, publish)
        train.train_and_evaluate(_config(logdir), progress=False)
        self._assert_complete_and_usable(logdir)
        self.assertEqual(_custom_gradient_names(), registered_before)

    def test_the_damaged_checkpoint_advice_resumes_from_the_earlier_one(self):
        """A damaged latest checkpoint: the error names it and the earlier one; deleting it as told
        resumes from the earlier one (epoch 1's), not from scratch, to the same results. A
        ckpt-N_temp folder a kill during a save left is cleaned."""
        logdir = self._copy("damaged_checkpoint")
        directory = os.path.join(logdir, "checkpoints")
        earlier, latest = _checkpoints(logdir)
        with open(os.path.join(directory, latest + ".data-00000-of-00001"), "r+b") as f:
            f.truncate(10)
        config = _config(logdir)
        with self.assertRaisesRegex(
            errors.Error,
            rf"checkpoint .*{latest} is unreadable \(.*\)\. Delete .*{latest}\.\* to resume from {earlier}, "
            rf"the checkpoint before it, or .*checkpoints to start over\.",
        ):
            train.train_and_evaluate(config, progress=False)
        for path in tf.io.gfile.glob(os.path.join(directory, latest + ".*")):
            os.remove(path)
        os.makedirs(os.path.join(directory, "ckpt-77_temp"))
        with mock.patch("builtins.print") as printed:
            train.train_and_evaluate(config, progress=False)
        self.assertIn("resuming at epoch 2 step 0", " ".join(str(c.args[0]) for c in printed.call_args_list))
        self.assertEqual(_checkpoints(logdir), [earlier, latest])
        self.assertFalse(os.path.exists(os.path.join(directory, "ckpt-77_temp")))
        self._assert_complete_and_usable(logdir)

    def test_checkpoint_of_other_shapes_blames_the_data(self):
        """The images changed size since the checkpoint was saved: the data is blamed, not the file."""
        logdir = self._copy("other_shapes")
        config = _config(logdir)
        state = state_lib.TrainState(config, (16, 16, 1), num_labelled=180)
        with self.assertRaisesRegex(errors.Error, r"holds networks of other shapes .* the data changed since"):
            rundir.restore(state.checkpoint(), logdir)

    def test_a_lambda_in_a_keras_file_is_refused_by_predict(self):
        """predict loads the .keras files in safe mode: a crafted one with a lambda is refused
        before its code runs."""
        logdir = self._copy("lambda")
        marker = os.path.join(self.root, "lambda_ran")
        inputs = keras.Input((8, 8, 1))
        outputs = keras.layers.Lambda(lambda x: x + len(open(marker, "w").name) * 0)(inputs)  # noqa: SIM115
        keras.Model(inputs, outputs).save(os.path.join(logdir, exports.EVALUATOR))
        os.remove(marker)
        rundir.write_atomically(
            os.path.join(logdir, rundir.EXPORTS_MANIFEST),
            json.dumps({exports.EVALUATOR: os.path.getsize(os.path.join(logdir, exports.EVALUATOR))}),
        )
        with self.assertRaisesRegex(errors.Error, r"evaluator.keras cannot be loaded in Keras' safe mode"):
            predict.predict(logdir, self.images)
        self.assertFalse(os.path.exists(marker))

    def test_predict_never_loads_serving(self):
        """serving/ is a TensorFlow graph (loading one runs what it holds): predict reads the .keras
        files only, so a replaced saved_model.pb changes nothing."""
        logdir = self._copy("crafted_serving")
        path = os.path.join(logdir, exports.SERVING, "saved_model.pb")
        size = os.path.getsize(path)
        with open(path, "wb") as f:
            f.write(b"\xff" * size)  # the manifest's size: only loading it would notice
        with mock.patch.object(tf.saved_model, "load", side_effect=AssertionError("serving/ loaded")):
            predictions = predict.predict(logdir, self.images)[1]
        self.assertEqual(predictions, self.predictions)

    def test_an_index_whose_checkpoints_are_all_gone_is_refused(self):
        """Not a silent restart from scratch: the index names a checkpoint whose files are gone."""
        logdir = self._copy("checkpoints_gone")
        for path in tf.io.gfile.glob(os.path.join(logdir, "checkpoints", "ckpt-*")):
            os.remove(path)
        with self.assertRaisesRegex(errors.Error, r"lists ckpt-\d+, whose files are gone, and no earlier checkpoint"):
            rundir.check(_config(logdir))


@pytest.mark.slow
class WriteFaultsTest(tf.test.TestCase):
    """A read-only directory or a full disk while the second epoch is saved (mocked: root writes
    everywhere): one error naming the directory, epoch 1's checkpoint and results intact, and the
    rerun completes as an uninterrupted run."""

    def _uninterrupted(self):
        return _numbers(smoke_util.finished_run())

    def _assert_epoch_one_kept_and_rerun_completes(self, logdir):
        self.assertEqual(_numbers(logdir)["history"], self._uninterrupted()["history"][:1])
        self.assertEqual([name for name in os.listdir(logdir) if name.endswith(".tmp")], [])
        train.train_and_evaluate(_config(logdir), progress=False)
        self.assertEqual(_numbers(logdir), self._uninterrupted())

    def test_read_only_checkpoint_directory(self):
        logdir = os.path.join(self.get_temp_dir(), "read_only")
        save = tf.train.CheckpointManager.save

        def refused_after_epoch_one(manager, *args, **kwargs):
            if manager.latest_checkpoint is not None:
                message = f"{manager.directory}/ckpt-10_temp; Permission denied"
                raise tf.errors.PermissionDeniedError(None, None, message)
            return save(manager, *args, **kwargs)

        with mock.patch.object(tf.train.CheckpointManager, "save", refused_after_epoch_one):
            with self.assertRaises(errors.Error) as raised:
                train.train_and_evaluate(_config(logdir), progress=False)
        self.assertEqual(raised.exception.exit_code, 2)
        self.assertRegex(
            str(raised.exception),
            rf"^cannot write a checkpoint into {logdir}/checkpoints \(PermissionDeniedError: .*Permission denied\); "
            r"free space on its disk or make it writable, then rerun the same command",
        )
        self._assert_epoch_one_kept_and_rerun_completes(logdir)

    def test_full_disk_while_results_are_written(self):
        logdir = os.path.join(self.get_temp_dir(), "full_disk")
        fsync, writes = os.fsync, []

        def full_on_the_second_results(fd):
            if os.readlink(f"/proc/self/fd/{fd}").endswith("results.json.tmp"):
                writes.append(fd)
                if len(writes) == 2:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return fsync(fd)

        with mock.patch.object(os, "fsync", full_on_the_second_results):
            with self.assertRaisesRegex(
                errors.Error, rf"^cannot write results.json into {logdir} \(OSError: .*No space left on device\)"
            ):
                train.train_and_evaluate(_config(logdir), progress=False)
        self._assert_epoch_one_kept_and_rerun_completes(logdir)

    def test_sigterm_after_the_last_epoch_completes_the_run(self):
        """A stop request that arrives while the last epoch is being saved: the run is complete,
        so it says so and returns (exit 0), not "Rerun the same command to resume" (exit 143)."""
        logdir = os.path.join(self.get_temp_dir(), "sigterm_at_the_end")
        write_exports = train.write_exports

        def signalled_while_exporting(loop):
            os.kill(os.getpid(), signal.SIGTERM)
            write_exports(loop)

        with mock.patch.object(train, "write_exports", signalled_while_exporting), mock.patch("builtins.print") as out:
            results = train.train_and_evaluate(_config(logdir), progress=False)
        self.assertTrue(results["complete"])
        self.assertIn(
            f"signal {int(signal.SIGTERM)} after the last epoch: the run is complete.",
            [str(c.args[0]) for c in out.call_args_list],
        )
        self.assertEqual(_numbers(logdir), self._uninterrupted())


class CustomGradientsReleasedTest(tf.test.TestCase):
    def test_names_registered_inside_are_forgotten_on_leaving(self):
        before = _custom_gradient_names()
        with vgg.custom_gradients_released():

            @tf.function
            def identity(x):
                return tf.custom_gradient(lambda x: (x, lambda dy: dy))(x)

            identity(tf.constant(1.0))
            self.assertLen(_custom_gradient_names() - before, 1)
        self.assertEqual(_custom_gradient_names(), before)


class QuotedErrorTest(tf.test.TestCase):
    def test_a_long_foreign_message_is_cut_at_a_word_end(self):
        error = tf.errors.DataLossError(None, None, "Checksum doesn't match: stored 1234, computed 5678 " * 10)
        quoted = errors.first_line(error, 14)
        self.assertEqual(quoted, "DataLossError: Checksum ...")
        self.assertEqual(errors.first_line(ValueError("short message"), 14), "ValueError: short message")
        self.assertEqual(errors.first_line(ValueError("x" * 30), 10), "ValueError: xxxxxxxxxx ...")
        quoted = errors.first_line(ValueError("Checksum doesn't match"), 16)
        self.assertEqual(quoted, "ValueError: Checksum doesn't ...")
