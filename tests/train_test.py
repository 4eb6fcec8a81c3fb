"""End-to-end runs of the training loop, in-process, on the smoke preset (digits, seconds)."""

import dataclasses
import glob
import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import api_pb2 as hparams_api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
import tensorflow as tf

from maxl_tf import errors
from maxl_tf import predict
from maxl_tf.core import hierarchy
from maxl_tf.core import labels as labels_lib
from maxl_tf.core import methods
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import inputs
from maxl_tf.experiment import rundir
from maxl_tf.experiment import sweep
from maxl_tf.experiment import train
from tests import smoke_util
from tests import tolerances


def _scalar_tags(logdir):
    tags = set()
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


def _session_status(events) -> list:
    """The HParams session-end statuses in a run's events (TensorBoard shows the first)."""
    return [
        hparams_metadata.parse_session_end_info_plugin_data(content).status
        for tag, content in events.PluginTagToContent(hparams_metadata.PLUGIN_NAME).items()
        if tag == hparams_metadata.SESSION_END_INFO_TAG
    ]


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.slow
class SmokeRunTest(tf.test.TestCase):
    def test_maxl_run_writes_events_checkpoint_and_results(self):
        logdir = os.path.join(self.get_temp_dir(), "maxl")
        smoke_util.copy_run(smoke_util.finished_run(), logdir)
        results = json.loads(_read(os.path.join(logdir, "results.json")))

        self.assertEqual(results["epochs_completed"], 2)
        self.assertTrue(results["complete"])
        self.assertEqual(results["psi"], [7, 3])
        accuracies = [record["test/acc"] for record in results["history"]]
        self.assertAllClose(results["test_accuracy"], np.mean(accuracies))
        self.assertTrue(os.path.isfile(os.path.join(logdir, "flags.cfg")))
        self.assertIn("--method=maxl", _read(os.path.join(logdir, "flags.cfg")).decode())
        self.assertIsNotNone(tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints")))
        self.assertContainsSubset(
            {
                "train/pri_loss",
                "train/aux_loss",
                "train/pri_acc",
                "train/aux_acc",
                "meta/loss",
                "meta/loss_before",
                "meta/loss_after",
                "meta/entropy",
                "test/loss",
                "test/acc",
                "lr/evaluator",
                "lr/generator",
                "perf/images_per_s",
                "labels/aux_used_mean",
                "labels/aux_entropy_mean",
                "train/trunk_grad_cosine",
                "train/grad_norm_evaluator",
                "meta/grad_norm_generator",
            },
            _scalar_tags(logdir),
        )
        last = results["history"][-1]
        self.assertLen(last["labels/aux_used_per_pri"], 2)
        self.assertBetween(last["labels/aux_used_per_pri"][0], 1, 7)
        self.assertLen(last["labels/aux_entropy_per_pri"], 2)
        self.assertBetween(last["labels/aux_entropy_per_pri"][0], 0.0, 1.0)
        self.assertBetween(last["train/trunk_grad_cosine"], -1.0, 1.0)
        # smoke.cfg halves the learning rates every epoch.
        self.assertAllClose([r["lr/evaluator"] for r in results["history"]], [0.01, 0.005])

        # Running a complete experiment again trains nothing and returns what results.json holds.
        again = train.train_and_evaluate(smoke_util.smoke_config(logdir), progress=False)
        self.assertEqual(again["history"], results["history"])

    def test_hparams_and_final_metric_are_in_the_events(self):
        logdir = os.path.join(self.get_temp_dir(), "single")
        config = smoke_util.smoke_config(logdir, method="single", epochs=1)
        results = train.train_and_evaluate(config, progress=False)

        events = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
        events.Reload()
        [start] = [
            hparams_metadata.parse_session_start_info_plugin_data(content)
            for tag, content in events.PluginTagToContent(hparams_metadata.PLUGIN_NAME).items()
            if tag == hparams_metadata.SESSION_START_INFO_TAG
        ]
        self.assertEqual(start.group_name, config_lib.resolve(config).name)
        written = {
            key: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
            for key, value in start.hparams.items()
        }
        self.assertEqual(written["method"], "single")
        self.assertEqual(written["lr"], 0.01)
        self.assertIs(written["augment"], False)
        # A baseline's row leaves out what single-task ignores: the generator's settings, aux, psi.
        self.assertEqual(set(written), set(config.experiment()) - methods.SINGLE.ignored_fields)
        self.assertNotIn("generator_lr", written)
        self.assertEqual(_session_status(events), [hparams_api_pb2.STATUS_SUCCESS])
        [final] = events.Tensors(train.FINAL_METRIC)
        self.assertEqual(final.step, 1)
        self.assertAllClose(tf.make_ndarray(final.tensor_proto), results["test_accuracy"])
        # A single-task run exports no generator, and serves principal probabilities only.
        self.assertFalse(os.path.exists(os.path.join(logdir, "generator.keras")))
        serving = tf.saved_model.load(os.path.join(logdir, "serving"))
        served = serving.serve(tf.zeros([2, 8, 8, 1], tf.uint8))
        self.assertEqual(set(served), {"principal"})
        self.assertAllClose(tf.reduce_sum(served["principal"], axis=1), [1.0, 1.0])

    def test_exports_are_compact_and_load_anywhere(self):
        """--keep_checkpoints checkpoints; a SavedModel holding each weight once; .keras files
        that load in a process that never imported maxl_tf, equal to the trained networks."""
        logdir = os.path.join(self.get_temp_dir(), "bounded")
        train.train_and_evaluate(smoke_util.smoke_config(logdir, keep_checkpoints=1), progress=False)
        self.assertLen(glob.glob(os.path.join(logdir, "checkpoints", "ckpt-*.index")), 1)
        saved = tf.train.load_checkpoint(os.path.join(logdir, "serving", "variables", "variables"))
        stored = [key for key in saved.get_variable_to_shape_map() if key != "_CHECKPOINTABLE_OBJECT_GRAPH"]
        _, state, _ = rundir.load_run(logdir)
        self.assertLen(stored, len(state.evaluator.weights) + len(state.generator.weights))

        # Raw pixels in (uint8 here), probabilities out: the pipeline's normalisation is inside.
        images = np.random.default_rng(0).integers(0, 256, size=(4, 8, 8, 1)).astype(np.uint8)
        out = os.path.join(self.get_temp_dir(), "fresh.npz")
        script = f"""
import sys, keras, numpy as np
images = np.load({out!r} + ".in.npy")
evaluator = keras.saving.load_model({os.path.join(logdir, "evaluator.keras")!r})
generator = keras.saving.load_model({os.path.join(logdir, "generator.keras")!r})
assert not any(name.startswith("maxl_tf") for name in sys.modules), "maxl_tf was imported"
np.savez({out!r}, principal=evaluator(images, training=False)[0], auxiliary=generator(images, training=False),
         from_floats=evaluator(images.astype("float32"), training=False)[0])
"""
        np.save(out + ".in.npy", images)
        process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        self.assertEqual(process.returncode, 0, process.stderr[-2000:])
        fresh = np.load(out)
        expected = tf.nn.softmax(state.evaluator(images.astype("float32"), training=False)[0])
        # The portable files compute with Keras' own layers (Rescaling, Conv2D, batch norm): float32
        # sums in other orders, up to 288 terms (3 x 3 x 32 channels) in 5 layers, lambda sqrt(5 x 288)
        # u32 with lambda = 3: 7e-6 of outputs of size <= 1 (measured: 2e-7). The probabilities' sum
        # adds two of them: 4 roundings.
        atol = 3 * tolerances.probabilistic_error(5 * 288, tolerances.FLOAT32)
        self.assertAllClose(fresh["principal"], expected, rtol=0, atol=atol)
        self.assertAllClose(fresh["from_floats"], expected, rtol=0, atol=atol)
        self.assertAllClose(fresh["principal"].sum(axis=1), np.ones(4), rtol=0, atol=4 * tolerances.FLOAT32)
        generated = state.generator(images.astype("float32"), training=False)
        self.assertAllClose(fresh["auxiliary"], generated, rtol=0, atol=atol * max(1.0, float(np.abs(generated).max())))

        # README's example, exactly as printed but for the run's directory, in a fresh process.
        with open(os.path.join(smoke_util.REPO, "README.md")) as f:
            example = next(b for b in f.read().split("```python\n")[1:] if "tf.saved_model.load" in b)
        example = example.split("```")[0].replace("runs/digits_pri2_aux10_maxl_seed0", logdir)
        process = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=300)
        self.assertEqual(process.returncode, 0, process.stderr[-2000:])
        self.assertRegex(process.stdout, r"^\[[01 ]+\] \[[0-9 ]+\]\n$")

    def test_noexport_runs_are_complete_and_export_when_asked(self):
        logdir = os.path.join(self.get_temp_dir(), "noexport")
        run = config_lib.resolve(smoke_util.smoke_config(logdir, method="single", epochs=1, export=False))
        train.train_and_evaluate(run, progress=False)
        self.assertFalse(any(os.path.exists(os.path.join(logdir, name)) for name in ("evaluator.keras", "serving")))
        with mock.patch("builtins.print") as printed:
            sweep.run([run], lambda c, claim=None: self.fail("a complete --noexport run was trained again"))
        self.assertIn("skipped (complete)", " ".join(str(call.args[0]) for call in printed.call_args_list))
        image = os.path.join(self.get_temp_dir(), "image.png")
        tf.io.write_file(image, tf.io.encode_png(tf.zeros([8, 8, 1], tf.uint8)))
        with self.assertRaisesRegex(errors.Error, r"no complete exported networks .*flags\.cfg --export, which"):
            predict.predict(logdir, [image])
        # --export is bookkeeping: the same run, asked for its networks, writes them from its last checkpoint.
        with mock.patch("builtins.print") as printed:
            train.train_and_evaluate(dataclasses.replace(run.config, export=True), progress=False)
        self.assertIn("writing them from the final checkpoint", str(printed.call_args_list))
        self.assertTrue(rundir.exports_intact(run.config))
        self.assertLen(predict.predict(logdir, [image])[1], 1)

    def test_baselines_run_with_their_targets(self):
        for method in ("single", "human", "random"):
            with self.subTest(method=method):
                logdir = os.path.join(self.get_temp_dir(), method)
                config = smoke_util.smoke_config(logdir, method=method, epochs=1, export=False)
                record = train.train_and_evaluate(config, progress=False)["history"][0]
                self.assertNotIn("meta/loss", record)
                if method == "single":  # no auxiliary task: no auxiliary metrics, not flat zeros
                    self.assertNotIn("train/aux_loss", record)
                    self.assertNotIn("labels/aux_used_per_pri", record)
                else:
                    self.assertGreater(record["train/aux_loss"], 0.0)
                    # Fixed labels use every class of psi=[7, 3] on 200 examples.
                    self.assertEqual(record["labels/aux_used_per_pri"], [7, 3])

    def test_meta_split_only_for_maxl(self):
        config = smoke_util.smoke_config(self.get_temp_dir())
        maxl = inputs.prepare(config_lib.resolve(config))
        self.assertLen(maxl.train_indices, 180)
        self.assertLen(maxl.meta_indices, 20)
        self.assertEmpty(np.intersect1d(maxl.train_indices, maxl.meta_indices))
        single = inputs.prepare(config_lib.resolve(smoke_util.smoke_config(self.get_temp_dir(), method="single")))
        self.assertLen(single.train_indices, 200)

    def test_alternating_schedule_runs_an_epoch_of_each(self):
        logdir = os.path.join(self.get_temp_dir(), "alternating")
        config = smoke_util.smoke_config(logdir, epochs=1, schedule="alternating", meta_split=0.0, export=False)
        record = train.train_and_evaluate(config, progress=False)["history"][0]
        self.assertIn("meta/loss", record)
        self.assertIn("train/pri_loss", record)


@pytest.mark.slow
class LabelChangeTest(tf.test.TestCase):
    """The generator's hard labels of the training images, tracked per epoch in the checkpoint."""

    def _stored(self, logdir, name):
        checkpoint = tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints"))
        return tf.train.load_variable(checkpoint, f"{name}/.ATTRIBUTES/VARIABLE_VALUE")

    def test_changes_are_counted_against_the_stored_labels(self):
        logdir = os.path.join(self.get_temp_dir(), "changes")
        history = train.train_and_evaluate(smoke_util.smoke_config(logdir, epochs=3, export=False), progress=False)[
            "history"
        ]
        first, latest = self._stored(logdir, "first_labels"), self._stored(logdir, "previous_labels")
        self.assertLen(first, 200)  # every training image, the meta split's too
        # The latest labels are the final generator's, recomputed here from the checkpoint.
        run, state, run_data = rundir.load_run(logdir)
        mask_table = tf.constant(hierarchy.psi_mask(run.config.psi))
        recomputed = np.concatenate(
            [
                labels_lib.hard_generated_labels(state.generator, b["images"], b["labels"], mask_table, False).numpy()
                for b in run_data.train.evaluation_batches(50)
            ]
        )
        self.assertAllEqual(latest, recomputed)
        self.assertAllClose(history[-1]["labels/changed_since_first"], np.mean(latest != first))
        # Epoch 1 is the first: nothing changed since it. Epoch 2's previous labels are epoch 1's.
        self.assertEqual(history[0]["labels/changed_since_first"], 0.0)
        self.assertEqual(history[1]["labels/changed_since_previous"], history[1]["labels/changed_since_first"])
        for record in history:
            for key in ("labels/changed_since_previous", "labels/changed_since_first"):
                self.assertBetween(record[key], 0.0, 1.0)
                self.assertAllClose(record[key] * 200, round(record[key] * 200))  # a count of images
        self.assertContainsSubset({"labels/changed_since_previous", "labels/changed_since_first"}, _scalar_tags(logdir))

    def test_baselines_have_no_generator_labels(self):
        logdir = os.path.join(self.get_temp_dir(), "random")
        record = train.train_and_evaluate(
            smoke_util.smoke_config(logdir, method="random", epochs=1, export=False), progress=False
        )["history"][0]
        self.assertNotIn("labels/changed_since_first", record)

    def test_training_mode_labels_run_under_their_own_name(self):
        logdir = os.path.join(self.get_temp_dir(), "bn")
        config = smoke_util.smoke_config(logdir, epochs=1, generator_labels_bn="training", export=False)
        self.assertEqual(config_lib.resolve(config).name, "digits_pri2_aux10_maxl_labelsbntraining_seed0")
        record = train.train_and_evaluate(config, progress=False)["history"][0]
        self.assertBetween(record["labels/changed_since_previous"], 0.0, 1.0)
        # The default keeps the names of existing runs.
        self.assertEqual(config_lib.resolve(smoke_util.smoke_config(logdir)).name, "digits_pri2_aux10_maxl_seed0")


class MetaEveryTest(tf.test.TestCase):
    """--meta_every=K: the generator steps where it should (and resumes mid-epoch, below)."""

    def test_generator_steps_after_every_kth_evaluator_step_of_the_run(self):
        # 2 epochs of 11 steps, K = 3: after global steps 3, 6, ..., 21, across the epoch boundary.
        follows = [
            (epoch, step)
            for epoch in range(2)
            for step in range(11)
            if train.generator_step_follows(3, 11, epoch, step)
        ]
        self.assertEqual(follows, [(0, 2), (0, 5), (0, 8), (1, 0), (1, 3), (1, 6), (1, 9)])
        self.assertEqual([s for s in range(11) if train.generator_step_follows(1, 11, 0, s)], list(range(11)))
        # Longer than an epoch: every other epoch's last step.
        self.assertEqual([e for e in range(4) if train.generator_step_follows(22, 11, e, 10)], [1, 3])


class EvalEveryTest(tf.test.TestCase):
    """--eval_every: fewer test passes, the same training and the same reported metric."""

    def test_skipped_test_passes_change_nothing_but_the_sampled_curve(self):
        logdirs = [tempfile.mkdtemp() for _ in range(2)]
        every, sampled = (
            train.train_and_evaluate(
                config_lib.resolve(smoke_util.smoke_config(logdir, method="single", epochs=7, eval_every=n)),
                progress=False,
            )
            for logdir, n in zip(logdirs, (1, 3))
        )
        # Epochs 3 and 6 by the count, 3 to 7 as the last five: only epochs 1 and 2 go untested.
        self.assertEqual([("test/acc" in r) for r in sampled["history"]], [False, False] + [True] * 5)
        self.assertEqual(sampled["test_accuracy"], every["test_accuracy"])
        for full, thin in zip(every["history"], sampled["history"]):
            self.assertEqual(full["train/pri_loss"], thin["train/pri_loss"])
            if "test/acc" in thin:
                self.assertEqual(full["test/acc"], thin["test/acc"])
        self.assertEqual(sampled["config"]["eval_every"], 3)


class _StoppedMidEpoch:
    """A run of --meta_every=3 and HYPERGRADIENT stopped mid-epoch resumes to the uninterrupted
    run's results. One class per hypergradient, so that pytest-xdist spreads them over workers."""

    HYPERGRADIENT = ""

    def test_stopped_mid_epoch_resumes_to_identical_results(self):
        def numbers(results):
            return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in results["history"]]

        def config(name):
            return smoke_util.smoke_config(
                os.path.join(self.get_temp_dir(), name), hypergradient=self.HYPERGRADIENT, meta_every=3, export=False
            )

        # 5 steps per epoch, generator steps after global steps 3, 6 and 9; stopped after global
        # step 7 (epoch 2, step 2): the resumed epoch starts between its two generator steps.
        reference = train.train_and_evaluate(config("reference"), progress=False)
        for record in reference["history"]:  # a smoke run: the meta step ran, and is finite
            for name in ("meta/loss", "meta/loss_before", "meta/entropy", "meta/grad_norm_generator"):
                self.assertTrue(np.isfinite(record[name]), name)
            self.assertGreater(record["meta/grad_norm_generator"], 0.0)

        def stop_after_step_7(loop, stop, vote=True):
            return int(loop.state.global_step.numpy()) == 7

        with mock.patch.object(train, "stop_agreed", stop_after_step_7):
            with self.assertRaisesRegex(errors.Interrupted, "at epoch 2 step 2"):
                train.train_and_evaluate(config("stopped"), progress=False)
        resumed = train.train_and_evaluate(config("stopped"), progress=False)
        self.assertEqual(numbers(resumed), numbers(reference))


@pytest.mark.slow
class SecondOrderStoppedMidEpochTest(_StoppedMidEpoch, tf.test.TestCase):
    HYPERGRADIENT = "second_order"


@pytest.mark.slow
class FirstOrderStoppedMidEpochTest(_StoppedMidEpoch, tf.test.TestCase):
    HYPERGRADIENT = "first_order"


@pytest.mark.slow
class ImplicitStoppedMidEpochTest(_StoppedMidEpoch, tf.test.TestCase):
    HYPERGRADIENT = "implicit"

    def test_every_hypergradient_has_its_class(self):
        classes = (SecondOrderStoppedMidEpochTest, FirstOrderStoppedMidEpochTest, ImplicitStoppedMidEpochTest)
        self.assertCountEqual([c.HYPERGRADIENT for c in classes], methods.HYPERGRADIENTS)


@pytest.mark.slow
class RefusalTest(tf.test.TestCase):
    def _finished_run(self):
        logdir = os.path.join(self.get_temp_dir(), "run")
        return smoke_util.copy_run(smoke_util.finished_run(), logdir)

    def _snapshot(self, logdir):
        return {
            path: _read(path) for path in glob.glob(os.path.join(logdir, "**"), recursive=True) if os.path.isfile(path)
        }

    def test_different_experiment_in_existing_logdir_is_refused(self):
        logdir = self._finished_run()
        before = self._snapshot(logdir)
        with self.assertRaisesRegex(errors.Error, r"different experiment.*--seed"):
            train.train_and_evaluate(smoke_util.smoke_config(logdir, seed=1), progress=False)
        self.assertEqual(self._snapshot(logdir), before)

    def test_foreign_directory_is_refused(self):
        logdir = os.path.join(self.get_temp_dir(), "foreign")
        os.makedirs(logdir)
        with open(os.path.join(logdir, "notes.txt"), "w") as f:
            f.write("mine")
        with self.assertRaisesRegex(errors.Error, "not a maxl_tf log directory"):
            train.train_and_evaluate(smoke_util.smoke_config(logdir), progress=False)

    def test_unwritable_logdir_is_reported(self):
        blocker = os.path.join(self.get_temp_dir(), "a_file")
        with open(blocker, "w") as f:
            f.write("not a directory")
        with self.assertRaisesRegex(errors.Error, "cannot be written"):
            train.train_and_evaluate(smoke_util.smoke_config(os.path.join(blocker, "run")), progress=False)

    def test_corrupt_checkpoint_is_reported_and_kept(self):
        logdir = self._finished_run()
        latest = tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints"))
        with open(latest + ".data-00000-of-00001", "r+b") as f:
            f.truncate(100)
        before = self._snapshot(logdir)
        with self.assertRaisesRegex(errors.Error, "checkpoint .* is unreadable"):
            train.train_and_evaluate(smoke_util.smoke_config(logdir), progress=False)
        self.assertEqual(self._snapshot(logdir), before)

    def test_damaged_checkpoint_index_is_reported_not_restarted(self):
        logdir = self._finished_run()
        with open(os.path.join(logdir, "checkpoints", "checkpoint"), "w") as f:
            f.write("garbage {{{")
        before = self._snapshot(logdir)
        with self.assertRaisesRegex(errors.Error, "checkpoint index .* is missing or unreadable"):
            train.train_and_evaluate(smoke_util.smoke_config(logdir), progress=False)
        self.assertEqual(self._snapshot(logdir), before)
        os.remove(os.path.join(logdir, "checkpoints", "checkpoint"))
        with self.assertRaisesRegex(errors.Error, "checkpoint index .* is missing or unreadable"):
            train.train_and_evaluate(smoke_util.smoke_config(logdir), progress=False)

    def test_a_run_that_saved_nothing_does_not_block_the_next(self):
        logdir = os.path.join(self.get_temp_dir(), "failed")
        # Data that cannot serve the run: nothing is written at all.
        with self.assertRaisesRegex(errors.Error, "--batch_size=500: larger than"):
            train.train_and_evaluate(smoke_util.smoke_config(logdir, batch_size=500), progress=False)
        self.assertFalse(os.path.exists(logdir))
        # A run that diverges in its first epoch leaves flags but no training behind ...
        with self.assertRaises(errors.NonFiniteLoss):
            train.train_and_evaluate(smoke_util.smoke_config(logdir, lr=1e30), progress=False)
        self.assertTrue(os.path.isfile(os.path.join(logdir, "config.json")))
        # ... so another experiment may start there, and its flags replace the failed run's.
        results = train.train_and_evaluate(smoke_util.smoke_config(logdir, epochs=1, export=False), progress=False)
        self.assertTrue(results["complete"])
        self.assertIn("--lr=0.01", _read(os.path.join(logdir, "flags.cfg")).decode())

    def test_a_run_that_diverges_after_a_checkpoint_ends_its_session_as_failed(self):
        logdir = os.path.join(self.get_temp_dir(), "diverged")
        check_finite = train.check_finite

        def diverge_in_epoch_2(loop, epoch):
            if epoch == 1:
                raise errors.NonFiniteLoss("non-finite loss (made up by the test)")
            check_finite(loop, epoch)

        with mock.patch.object(train, "check_finite", diverge_in_epoch_2), self.assertRaises(errors.NonFiniteLoss):
            train.train_and_evaluate(smoke_util.smoke_config(logdir, method="single", export=False), progress=False)
        events = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
        events.Reload()
        self.assertEqual(_session_status(events), [hparams_api_pb2.STATUS_FAILURE])

    def test_non_finite_loss_stops_before_saving(self):
        logdir = os.path.join(self.get_temp_dir(), "nan")
        with self.assertRaisesRegex(errors.NonFiniteLoss, r"non-finite loss at step \d+ \(epoch 1\)") as caught:
            train.train_and_evaluate(smoke_util.smoke_config(logdir, lr=1e30), progress=False)
        self.assertEqual(caught.exception.exit_code, 1)
        self.assertIsNone(tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints")))
        self.assertFalse(os.path.exists(os.path.join(logdir, "results.json")))


if __name__ == "__main__":
    tf.test.main()
