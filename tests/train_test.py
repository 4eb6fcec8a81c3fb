"""End-to-end runs of the training loop, in-process, on the smoke preset (digits, seconds)."""
import glob
import json
import os
from unittest import mock

import numpy as np
import tensorflow as tf

from maxl_tf import config as config_lib
from maxl_tf import errors
from maxl_tf import inputs
from maxl_tf import train
from tests import smoke_util


def _scalar_tags(logdir):
    tags = set()
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


def _read(path):
    with open(path, "rb") as f:
        return f.read()


class SmokeRunTest(tf.test.TestCase):

    def test_maxl_run_writes_events_checkpoint_and_results(self):
        logdir = os.path.join(self.get_temp_dir(), "maxl")
        results = train.train_and_evaluate(smoke_util.smoke_config(logdir), progress=False)

        self.assertEqual(results["epochs_completed"], 2)
        self.assertTrue(results["complete"])
        self.assertEqual(results["psi"], [7, 3])
        accuracies = [record["test/acc"] for record in results["history"]]
        self.assertAllClose(results["test_accuracy"], np.mean(accuracies))
        on_disk = json.loads(_read(os.path.join(logdir, "results.json")))
        self.assertEqual(on_disk["history"], results["history"])
        self.assertTrue(os.path.isfile(os.path.join(logdir, "flags.cfg")))
        self.assertIn("--method=maxl", _read(os.path.join(logdir, "flags.cfg")).decode())
        self.assertIsNotNone(tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints")))
        self.assertContainsSubset(
            {"train/pri_loss", "train/aux_loss", "train/pri_acc", "train/aux_acc", "meta/loss",
             "meta/loss_before", "meta/loss_after", "meta/entropy", "test/loss", "test/acc",
             "lr/evaluator", "lr/generator", "perf/images_per_s", "labels/aux_used_mean", "labels/aux_entropy_mean",
             "train/trunk_grad_cosine", "train/grad_norm_evaluator", "meta/grad_norm_generator"},
            _scalar_tags(logdir))
        last = results["history"][-1]
        self.assertLen(last["labels/aux_used_per_pri"], 2)
        self.assertBetween(last["labels/aux_used_per_pri"][0], 1, 7)
        self.assertLen(last["labels/aux_entropy_per_pri"], 2)
        self.assertBetween(last["labels/aux_entropy_per_pri"][0], 0.0, 1.0)
        self.assertBetween(last["train/trunk_grad_cosine"], -1.0, 1.0)
        # smoke.cfg halves the learning rates every epoch.
        self.assertAllClose([r["lr/evaluator"] for r in results["history"]], [0.01, 0.005])

        # Running a complete experiment again trains nothing and returns the same results.
        again = train.train_and_evaluate(smoke_util.smoke_config(logdir), progress=False)
        self.assertEqual(again["history"], results["history"])

    def test_baselines_run_with_their_targets(self):
        for method in ("single", "human", "random"):
            with self.subTest(method=method):
                logdir = os.path.join(self.get_temp_dir(), method)
                config = smoke_util.smoke_config(logdir, method=method, epochs=1)
                record = train.train_and_evaluate(config, progress=False)["history"][0]
                self.assertNotIn("meta/loss", record)
                if method == "single":   # no auxiliary task: no auxiliary metrics, not flat zeros
                    self.assertNotIn("train/aux_loss", record)
                    self.assertNotIn("labels/aux_used_per_pri", record)
                else:
                    self.assertGreater(record["train/aux_loss"], 0.0)
                    # Fixed labels use every class of psi=[7, 3] on 200 examples.
                    self.assertEqual(record["labels/aux_used_per_pri"], [7, 3])

    def test_meta_split_only_for_maxl(self):
        config = smoke_util.smoke_config(self.get_temp_dir())
        maxl = inputs.prepare(config_lib.validate(config))
        self.assertLen(maxl.train_indices, 180)
        self.assertLen(maxl.meta_indices, 20)
        self.assertEmpty(np.intersect1d(maxl.train_indices, maxl.meta_indices))
        single = inputs.prepare(config_lib.validate(smoke_util.smoke_config(self.get_temp_dir(), method="single")))
        self.assertLen(single.train_indices, 200)

    def test_alternating_schedule_runs_an_epoch_of_each(self):
        logdir = os.path.join(self.get_temp_dir(), "alternating")
        config = smoke_util.smoke_config(logdir, epochs=1, schedule="alternating", meta_split=0.0)
        record = train.train_and_evaluate(config, progress=False)["history"][0]
        self.assertIn("meta/loss", record)
        self.assertIn("train/pri_loss", record)


class MetaEveryTest(tf.test.TestCase):
    """--meta_every=K and each hypergradient: the generator steps where it should, and a run
    stopped mid-epoch resumes to the uninterrupted run's results."""

    def test_generator_steps_after_every_kth_evaluator_step_of_the_run(self):
        # 2 epochs of 11 steps, K = 3: after global steps 3, 6, ..., 21, across the epoch boundary.
        follows = [(epoch, step) for epoch in range(2) for step in range(11)
                   if train.generator_step_follows(3, 11, epoch, step)]
        self.assertEqual(follows, [(0, 2), (0, 5), (0, 8), (1, 0), (1, 3), (1, 6), (1, 9)])
        self.assertEqual([s for s in range(11) if train.generator_step_follows(1, 11, 0, s)], list(range(11)))
        # Longer than an epoch: every other epoch's last step.
        self.assertEqual([e for e in range(4) if train.generator_step_follows(22, 11, e, 10)], [1, 3])

    def test_stopped_mid_epoch_resumes_to_identical_results(self):
        def numbers(results):
            return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in results["history"]]

        # 5 steps per epoch, generator steps after global steps 3, 6 and 9; stopped after global
        # step 7 (epoch 2, step 2): the resumed epoch starts between its two generator steps.
        for hypergradient in config_lib.HYPERGRADIENTS:
            with self.subTest(hypergradient):
                def config(name):
                    return smoke_util.smoke_config(os.path.join(self.get_temp_dir(), hypergradient, name),
                                                   hypergradient=hypergradient, meta_every=3)

                reference = train.train_and_evaluate(config("reference"), progress=False)
                for record in reference["history"]:   # a smoke run: the meta step ran, and is finite
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


class RefusalTest(tf.test.TestCase):

    def _finished_run(self):
        logdir = os.path.join(self.get_temp_dir(), "run")
        train.train_and_evaluate(smoke_util.smoke_config(logdir, epochs=1), progress=False)
        return logdir

    def _snapshot(self, logdir):
        return {path: _read(path) for path in glob.glob(os.path.join(logdir, "**"), recursive=True)
                if os.path.isfile(path)}

    def test_different_experiment_in_existing_logdir_is_refused(self):
        logdir = self._finished_run()
        before = self._snapshot(logdir)
        with self.assertRaisesRegex(errors.Error, r"different experiment.*--seed"):
            train.train_and_evaluate(smoke_util.smoke_config(logdir, epochs=1, seed=1), progress=False)
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
        data_file = glob.glob(os.path.join(logdir, "checkpoints", "*.data-*"))[0]
        with open(data_file, "r+b") as f:
            f.truncate(100)
        before = self._snapshot(logdir)
        with self.assertRaisesRegex(errors.Error, "checkpoint .* is unreadable"):
            train.train_and_evaluate(smoke_util.smoke_config(logdir, epochs=1), progress=False)
        self.assertEqual(self._snapshot(logdir), before)

    def test_damaged_checkpoint_index_is_reported_not_restarted(self):
        logdir = self._finished_run()
        with open(os.path.join(logdir, "checkpoints", "checkpoint"), "w") as f:
            f.write("garbage {{{")
        before = self._snapshot(logdir)
        with self.assertRaisesRegex(errors.Error, "checkpoint index .* is missing or unreadable"):
            train.train_and_evaluate(smoke_util.smoke_config(logdir, epochs=1), progress=False)
        self.assertEqual(self._snapshot(logdir), before)
        os.remove(os.path.join(logdir, "checkpoints", "checkpoint"))
        with self.assertRaisesRegex(errors.Error, "checkpoint index .* is missing or unreadable"):
            train.train_and_evaluate(smoke_util.smoke_config(logdir, epochs=1), progress=False)

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
        results = train.train_and_evaluate(smoke_util.smoke_config(logdir, epochs=1), progress=False)
        self.assertTrue(results["complete"])
        self.assertIn("--lr=0.01", _read(os.path.join(logdir, "flags.cfg")).decode())

    def test_non_finite_loss_stops_before_saving(self):
        logdir = os.path.join(self.get_temp_dir(), "nan")
        with self.assertRaisesRegex(errors.NonFiniteLoss, r"non-finite loss at step \d+ \(epoch 1\)") as caught:
            train.train_and_evaluate(smoke_util.smoke_config(logdir, lr=1e30), progress=False)
        self.assertEqual(caught.exception.exit_code, 1)
        self.assertIsNone(tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints")))
        self.assertFalse(os.path.exists(os.path.join(logdir, "results.json")))


if __name__ == "__main__":
    tf.test.main()
