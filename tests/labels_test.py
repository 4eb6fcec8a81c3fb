"""Tests for maxl_tf.core.labels: each method's auxiliary targets."""

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from maxl_tf.core import hierarchy
from maxl_tf.core import label_health
from maxl_tf.core import labels
from maxl_tf.data import registry
from maxl_tf.models import vgg
from tests.tolerances import FLOAT32
from tests.tolerances import probabilistic_error


class FixedLabelsTest(tf.test.TestCase, parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.cifar100 = registry.get("cifar100").levels()
        self.cifar10 = registry.get("cifar10").levels()
        self.fine = np.random.default_rng(0).integers(0, 100, size=6000)

    @parameterized.parameters("single", "maxl")
    def test_unused_methods_get_zeros(self, method):
        out = labels.fixed_aux_labels(method, self.cifar100, 20, 100, (5,) * 20, self.fine[:50], seed=1)
        self.assertEqual(out.dtype, np.int64)
        self.assertAllEqual(out, np.zeros(50))

    def test_human(self):
        # Apple (0), bear (3), bed (5), bicycle (8) for (3, 10): their 10-class labels 5, 0, 6, 9,
        # which sit at the same slots under psi [5, 1, 4].
        out = labels.fixed_aux_labels("human", self.cifar100, 3, 10, (5, 1, 4), np.asarray([0, 3, 5, 8]), seed=0)
        self.assertAllEqual(out, [5, 0, 6, 9])
        # (20, 100): apple and pear are the 1st and 4th fine labels of superclass 4 (slots 20..24).
        out = labels.fixed_aux_labels("human", self.cifar100, 20, 100, (5,) * 20, np.asarray([0, 57]), seed=0)
        self.assertAllEqual(out, [20, 23])
        for pri, aux in ((3, 10), (10, 20), (20, 100)):
            psi = hierarchy.human_psi(self.cifar100, pri, aux)
            self.assertAllEqual(
                labels.fixed_aux_labels("human", self.cifar100, pri, aux, psi, self.fine, seed=3),
                hierarchy.human_aux_labels(self.cifar100, pri, aux, self.fine),
            )

    def test_human_targets_are_one_hot_of_fixed_labels(self):
        fine = np.asarray([0, 3, 5, 8, 2])
        aux_labels = labels.fixed_aux_labels("human", self.cifar100, 3, 10, (5, 1, 4), fine, seed=0)
        batch = {"images": None, "labels": self.cifar100.labels_at(3, fine), "aux_labels": aux_labels}
        targets = labels.auxiliary_targets("human", batch, 10).numpy()
        expected = np.zeros((5, 10), np.float32)
        expected[np.arange(5), [5, 0, 6, 9, 4]] = 1.0
        self.assertAllEqual(targets, expected)
        self.assertEqual(targets.dtype, np.float32)

    def test_random_is_fixed_per_seed(self):
        psi = (5, 1, 4)
        first = labels.fixed_aux_labels("random", self.cifar100, 3, 10, psi, self.fine, seed=11)
        again = labels.fixed_aux_labels("random", self.cifar100, 3, 10, psi, self.fine, seed=11)
        other = labels.fixed_aux_labels("random", self.cifar100, 3, 10, psi, self.fine, seed=12)
        self.assertEqual(first.dtype, np.int64)
        self.assertAllEqual(first, again)
        # A different seed redraws: most labels of the multi-class blocks change.
        multi = self.cifar100.labels_at(3, self.fine) != 1
        self.assertGreater(np.mean(first[multi] != other[multi]), 0.5)

    def test_random_is_not_the_human_assignment(self):
        psi = (5, 1, 4)
        random = labels.fixed_aux_labels("random", self.cifar100, 3, 10, psi, self.fine, seed=0)
        human = hierarchy.human_aux_labels(self.cifar100, 3, 10, self.fine)
        # Vegetations own a single auxiliary class: every apple is at slot 5, as in Human.
        self.assertAllEqual(random[self.fine == 0], np.full(np.sum(self.fine == 0), 5))
        # Images of one fine class get different random labels (drawn per image, not per class).
        bears = random[self.fine == 3]
        self.assertGreater(len(np.unique(bears)), 1)
        self.assertLess(np.mean(random == human), 0.5)

    @parameterized.parameters(
        ("cifar100", 3, 10, (5, 1, 4)),
        ("cifar100", 3, 20, (10, 3, 7)),
        ("cifar100", 20, 100, (5,) * 20),
        ("cifar10", 10, 50, (5,) * 10),
        ("cifar10", 10, 15, (2, 1, 2, 1, 2, 1, 2, 1, 2, 1)),
    )
    def test_random_within_blocks_and_roughly_uniform(self, dataset, pri, aux, psi):
        data = registry.get(dataset).levels()
        fine = np.random.default_rng(1).integers(0, data.finest, size=20000 if aux == 100 else 6000)
        out = labels.fixed_aux_labels("random", data, pri, aux, psi, fine, seed=5)
        principal = data.labels_at(pri, fine)
        mask = hierarchy.psi_mask(psi)
        self.assertAllEqual(mask[principal, out], np.ones(len(fine)))
        offsets = hierarchy.block_offsets(psi)
        for p, n in enumerate(psi):
            counts = np.bincount(out[principal == p] - offsets[p], minlength=n)
            self.assertLen(counts, n)  # nothing outside the block
            self.assertTrue(np.all(counts > 0), msg=f"block {p}: {counts}")
            mean = counts.mean()
            self.assertAllInRange(counts, 0.7 * mean, 1.3 * mean)


def _tiny_generator(aux):
    tf.keras.utils.set_random_seed(0)
    return vgg.build_generator((8, 8, 1), aux, "vgg_small", 0.125)


class MaxlTargetsTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.psi = (5, 1, 4)
        self.mask_table = tf.constant(hierarchy.psi_mask(self.psi))
        self.generator = _tiny_generator(sum(self.psi))
        rng = np.random.default_rng(0)
        self.batch = {
            "images": tf.constant(rng.normal(size=(6, 8, 8, 1)), tf.float32),
            "labels": tf.constant([0, 1, 2, 0, 2, 1], tf.int64),
            "aux_labels": tf.zeros([6], tf.int64),
        }

    def test_generated_labels_in_blocks(self):
        out = labels.generated_labels(
            self.generator, self.batch["images"], self.batch["labels"], self.mask_table, training=False
        ).numpy()
        self.assertEqual(out.shape, (6, 10))
        # Each float32 probability is off by about 8 u (shift, exp, sum, division), their sum of <= 5 by 16 u.
        self.assertAllClose(out.sum(-1), np.ones(6), rtol=16 * FLOAT32)
        outside = hierarchy.psi_mask(self.psi)[self.batch["labels"].numpy()] == 0
        self.assertTrue(np.all(out[outside] == 0.0))
        # Principal class 1 owns one auxiliary class: its label is exactly one-hot at slot 5.
        self.assertAllEqual(out[[1, 5]], np.eye(10, dtype=np.float32)[[5, 5]])
        # Elsewhere probabilities are strictly inside their block and match the block softmax
        # of the generator's logits.
        logits = self.generator(self.batch["images"], training=False).numpy()
        row0 = np.exp(logits[0, :5] - logits[0, :5].max())
        # Two float32 softmaxes, 8 u each, whose shifts may differ: exp's argument then rounds
        # differently, by u |x| for logits x.
        self.assertAllClose(out[0, :5], row0 / row0.sum(), rtol=(16 + 2 * np.abs(logits[0, :5]).max()) * FLOAT32)
        self.assertTrue(np.all(out[0, :5] > 0))

    def test_maxl_targets_equal_generated_labels_and_stop_gradient(self):
        with tf.GradientTape(persistent=True) as tape:
            targets = labels.auxiliary_targets("maxl", self.batch, 10, self.generator, self.mask_table)
            generated = labels.generated_labels(
                self.generator, self.batch["images"], self.batch["labels"], self.mask_table, training=False
            )
            weighted = tf.reduce_sum(targets * tf.range(10, dtype=tf.float32))
            weighted_generated = tf.reduce_sum(generated * tf.range(10, dtype=tf.float32))
        self.assertAllClose(targets, generated, rtol=16 * FLOAT32)  # the same softmax, at most its 16 u apart
        grads = tape.gradient(weighted, self.generator.trainable_variables)
        self.assertNotEmpty(grads)
        self.assertTrue(all(g is None for g in grads))
        # Contrast: the same labels without the stop-gradient do reach the generator.
        grads_generated = tape.gradient(weighted_generated, self.generator.trainable_variables)
        self.assertTrue(any(g is not None and np.any(g.numpy()) for g in grads_generated))
        del tape

    def test_maxl_targets_leave_batch_norm_statistics(self):
        before = [v.numpy().copy() for v in self.generator.non_trainable_variables]
        labels.auxiliary_targets("maxl", self.batch, 10, self.generator, self.mask_table)
        after = [v.numpy() for v in self.generator.non_trainable_variables]
        self.assertNotEmpty(before)
        for b, a in zip(before, after):
            self.assertAllEqual(b, a)

    def test_training_mode_targets_use_batch_statistics_and_move_the_moving_ones(self):
        before = [v.numpy().copy() for v in self.generator.non_trainable_variables]
        targets = labels.auxiliary_targets(
            "maxl", self.batch, 10, self.generator, self.mask_table, generator_training=True
        )
        moved = [v.numpy().copy() for v in self.generator.non_trainable_variables]
        self.assertTrue(any(np.any(b != m) for b, m in zip(before, moved)))  # as PyTorch's train mode
        # The same labels from a stateless diagnostic pass, which leaves the statistics alone.
        for variable, value in zip(self.generator.non_trainable_variables, before):
            variable.assign(value)
        diagnostic = labels.auxiliary_targets(
            "maxl", self.batch, 10, self.generator, self.mask_table, generator_training=True, update_statistics=False
        )
        # The same forward in two graphs: batch statistics over 384 values (6 images x 64 pixels) summed
        # in other orders, lambda sqrt(384) u32 with lambda = 3, of probabilities <= 1.
        self.assertAllClose(diagnostic, targets, rtol=0, atol=3 * probabilistic_error(384, FLOAT32))
        for variable, value in zip(self.generator.non_trainable_variables, before):
            self.assertAllEqual(variable.numpy(), value)
        # Batch statistics differ from the initial moving ones (mean 0, variance 1).
        inference = labels.auxiliary_targets("maxl", self.batch, 10, self.generator, self.mask_table)
        self.assertNotAllClose(inference, targets)
        hard = labels.hard_generated_labels(
            self.generator, self.batch["images"], self.batch["labels"], self.mask_table, training=True
        )
        self.assertAllEqual(hard, np.argmax(targets.numpy(), axis=-1))

    def test_single_has_no_targets(self):
        self.assertIsNone(labels.auxiliary_targets("single", self.batch, 10))
        self.assertIsNone(labels.auxiliary_targets("single", self.batch, 10, self.generator, self.mask_table))

    def test_random_targets_are_one_hot(self):
        batch = dict(self.batch, aux_labels=tf.constant([3, 5, 9, 0, 6, 5], tf.int64))
        targets = labels.auxiliary_targets("random", batch, 10).numpy()
        self.assertAllEqual(targets, np.eye(10, dtype=np.float32)[[3, 5, 9, 0, 6, 5]])


class UsageSummaryTest(tf.test.TestCase):
    """Label-usage diagnostics from hand-written argmax counts."""

    def test_counts_per_block(self):
        # psi = [4, 2, 1]: block 0 uses classes 0 and 2 equally (entropy log 2 / log 4 = 0.5),
        # block 1 puts everything on one class (0), block 2 has a single class (1 once used).
        out = label_health.usage_summary(np.array([6, 0, 6, 0, 0, 9, 3]), (4, 2, 1))
        self.assertEqual(out["labels/aux_used_per_pri"], [2, 1, 1])
        self.assertAllClose(out["labels/aux_used_mean"], 4 / 3)
        self.assertAllClose(out["labels/aux_entropy_per_pri"], [0.5, 0.0, 1.0])
        self.assertAllClose(out["labels/aux_entropy_mean"], 0.5)

    def test_uneven_use_and_empty_blocks(self):
        # Block 0: p = [3/4, 1/4], entropy (-.75 log .75 - .25 log .25) / log 2; block 1 unseen.
        out = label_health.usage_summary(np.array([3, 1, 0, 0, 0]), (2, 3))
        expected = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25)) / np.log(2)
        self.assertAllClose(out["labels/aux_entropy_per_pri"], [expected, 0.0])
        self.assertEqual(out["labels/aux_used_per_pri"], [2, 0])

    def test_uniform_use_is_one(self):
        out = label_health.usage_summary(np.full(20, 7), (5,) * 4)
        self.assertAllClose(out["labels/aux_entropy_per_pri"], [1.0] * 4)
        self.assertEqual(out["labels/aux_used_per_pri"], [5] * 4)

    def test_collapse_is_fewer_than_half_of_a_block_used(self):
        # psi (4, 2, 1, 3): 1 of 4 collapses, 1 of 2 does not, a block of one never does, 1 of 3 does.
        self.assertEqual(label_health.collapsed_classes([1, 1, 1, 1], (4, 2, 1, 3)), [0, 3])
        self.assertEqual(label_health.collapsed_classes([2, 1, 1, 2], (4, 2, 1, 3)), [])
        summary = label_health.usage_summary(np.array([9, 0, 0, 0, 5, 5]), (4, 2))
        self.assertEqual(
            label_health.collapse_warning(summary, (4, 2)),
            "warning: auxiliary labels collapsing: 1 of 2 principal classes label fewer than half their "
            "auxiliary classes: 0 (1 of 4); the entropy weight (--entropy_weight) counters it",
        )
        self.assertEqual(label_health.collapse_warning(label_health.usage_summary(np.ones(6), (4, 2)), (4, 2)), "")


if __name__ == "__main__":
    tf.test.main()


class LabelSourceTest(tf.test.TestCase):
    """One interface for every method: what the loop asks of a source, and its targets."""

    def test_each_method_string_names_one_source(self):
        expected = {
            # name: (auxiliary, learned, uses_meta_data)
            "maxl": (True, True, True),
            "single": (False, False, False),
            "human": (True, False, False),
            "random": (True, False, False),
            "prototypical": (True, False, True),
        }
        for name, properties in expected.items():
            source = labels.source(name)
            self.assertEqual(source.name, name)
            self.assertEqual((source.auxiliary, source.learned, source.uses_meta_data), properties, name)
            self.assertIs(labels.source(source), source)
        with self.assertRaisesRegex(ValueError, "labels='magic'"):
            labels.source("magic")

    def test_fixed_labels_are_one_hot_and_need_them(self):
        batch = {"images": tf.zeros([3, 8, 8, 1]), "labels": tf.constant([0, 1, 1], tf.int64)}
        with self.assertRaisesRegex(ValueError, "aux_labels"):
            labels.Human().targets(batch, 4)
        batch["aux_labels"] = tf.constant([1, 2, 3], tf.int64)
        self.assertAllEqual(labels.Random().targets(batch, 4), np.eye(4)[[1, 2, 3]])
        self.assertIsNone(labels.Single().targets(batch, 4))

    def test_random_labels_stay_in_their_block_and_follow_the_seed(self):
        pri_labels = np.random.default_rng(0).integers(0, 3, 500)
        psi = (2, 1, 3)
        drawn = labels.Random().labels(pri_labels, psi, seed=4)
        self.assertAllEqual(drawn, labels.Random().labels(pri_labels, psi, seed=4))
        self.assertNotAllEqual(drawn, labels.Random().labels(pri_labels, psi, seed=5))
        self.assertAllEqual(hierarchy.owners(psi)[drawn], pri_labels)
        self.assertLen(np.unique(drawn), sum(psi))
