"""The training steps: what each one updates, by how much, and what it leaves alone."""

import keras
import numpy as np
import tensorflow as tf

from maxl_tf import errors
from maxl_tf.core import evaluator as evaluator_lib
from maxl_tf.core import hierarchy
from maxl_tf.core import losses
from maxl_tf.core import meta
from maxl_tf.core import steps
from maxl_tf.models import vgg
from tests.tolerances import FLOAT64

PSI = (2, 3)


def _batch(seed=0, size=8):
    rng = np.random.default_rng(seed)
    return {
        "images": tf.constant(rng.uniform(0, 255, size=(size, 8, 8, 1)), tf.float32),  # raw pixels
        "labels": tf.constant(rng.integers(0, 2, size), tf.int64),
        "aux_labels": tf.constant([0, 2, 1, 3, 0, 4, 1, 2][:size], tf.int64),
    }


class StepsTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        keras.utils.set_random_seed(0)
        self.evaluator = vgg.build_evaluator((8, 8, 1), 2, sum(PSI), "vgg_small", 0.125)
        self.generator = vgg.build_generator((8, 8, 1), sum(PSI), "vgg_small", 0.125)

    def _task(self, method, entropy_weight=0.2):
        return steps.Task(
            method=method,
            num_pri=2,
            num_aux=sum(PSI),
            mask_table=tf.constant(hierarchy.psi_mask(PSI)),
            entropy_weight=entropy_weight,
        )

    def test_evaluator_step_is_one_sgd_step_on_both_losses(self):
        batch, task = _batch(), self._task("human")
        weights = [v.value for v in self.evaluator.trainable_variables]
        with tf.GradientTape() as tape:
            tape.watch(weights)
            outputs, _ = self.evaluator.stateless_call(
                weights, [v.value for v in self.evaluator.non_trainable_variables], batch["images"], training=True
            )
            pri, aux = evaluator_lib.outputs(outputs)
            loss = losses.focal_loss(pri, tf.one_hot(batch["labels"], 2)) + losses.focal_loss(
                aux, tf.one_hot(batch["aux_labels"], 5)
            )
        expected = [w - 0.1 * g for w, g in zip(weights, tape.gradient(loss, weights))]
        _, assigned = steps.evaluator_step(self.evaluator, keras.optimizers.SGD(0.1), None, batch, task)
        # The step rounds each weight (u |w|, |w| <= 1), and its gradient, another graph's float32
        # sums of up to 512 terms (8 images x 64 pixels), differs by lambda sqrt(512) u |g| with
        # lambda = 3 (4e-6 |g|), times lr 0.1: 5e-7 for |g| <= 1, 1e-6 for |g| <= 2.
        for want, variable in zip(expected, self.evaluator.trainable_variables):
            self.assertAllClose(want, variable, atol=1e-6)
        self.assertAllEqual(assigned, batch["aux_labels"])

    def test_single_task_step_ignores_auxiliary_head(self):
        evaluator = vgg.build_evaluator((8, 8, 1), 2, 0, "vgg_small", 0.125)
        metrics, assigned = steps.evaluator_step(
            evaluator, keras.optimizers.SGD(0.1), None, _batch(), self._task("single")
        )
        self.assertNotIn("train/aux_loss", metrics)  # no auxiliary task: nothing logged for one
        self.assertIsNone(assigned)

    def test_generator_step_applies_meta_gradient_and_weight_decay(self):
        for decay_type in ("l1", "l2"):
            with self.subTest(decay_type=decay_type):
                keras.utils.set_random_seed(0)
                generator = vgg.build_generator((8, 8, 1), sum(PSI), "vgg_small", 0.125)
                batch, task, lr, wd = _batch(1), self._task("maxl"), 0.5, 0.01
                before = [v.numpy().copy() for v in generator.trainable_variables]
                grads, _ = meta.second_order_meta_gradient(
                    self.evaluator, generator, batch["images"], batch["labels"], task.mask_table, 0.01
                )
                steps.generator_step(
                    generator,
                    keras.optimizers.SGD(lr),
                    self.evaluator,
                    batch,
                    task,
                    0.01,
                    weight_decay=wd,
                    weight_decay_type=decay_type,
                )
                # The meta-gradient, recomputed inside the step: float32 sums of up to 512 terms
                # in about 5 passes, lambda sqrt(5 x 512) u |g| with lambda = 3 (9e-6 |g|), times
                # lr 0.5: 1e-5 for |g| <= 2; the weights' own rounding, u |w|, is 100 times less.
                for w, g, variable in zip(before, grads, generator.trainable_variables):
                    decay = np.sign(w) if decay_type == "l1" else w
                    self.assertAllClose(w - lr * (g.numpy() + wd * decay), variable, atol=1e-5)

    def test_evaluation_step_returns_sums(self):
        out = steps.evaluation_step(self.evaluator, _batch(size=5), self._task("single"))
        self.assertEqual(float(out["count"]), 5.0)
        self.assertBetween(float(out["correct"]), 0.0, 5.0)
        self.assertGreater(float(out["loss_sum"]), 0.0)

    def test_trunk_gradient_cosine_is_a_cosine_and_leaves_state(self):
        before = [v.numpy().copy() for v in self.evaluator.variables]
        cosine = float(steps.trunk_gradient_cosine(self.evaluator, self.generator, _batch(), self._task("maxl")))
        self.assertBetween(cosine, -1.0, 1.0)
        self.assertNotEqual(cosine, 0.0)
        for old, variable in zip(before, self.evaluator.variables):
            self.assertAllEqual(old, variable)
        self.assertEqual(float(steps.trunk_gradient_cosine(self.evaluator, None, _batch(), self._task("single"))), 0.0)


class ModelsTest(tf.test.TestCase):
    def test_small_map_convolution_is_the_convolution_to_second_order(self):
        rng = np.random.default_rng(0)
        # 1 and 2: matrix products; 4: maps side by side (on this CPU), batches that do and do
        # not fill the rows of 8; 8: TensorFlow's kernel.
        for size, batch in ((1, 3), (2, 3), (4, 3), (4, 16), (4, 19), (8, 3)):
            with self.subTest(size=size, batch=batch):
                layer = vgg.Conv2D(5, 3, padding="same", dtype="float64")
                x = tf.constant(rng.normal(size=(batch, size, size, 4)))
                layer.build(x.shape)
                kernel = layer.kernel

                def second_order(conv):
                    with tf.GradientTape() as outer:
                        with tf.GradientTape() as inner:
                            inner.watch(x)
                            loss = tf.reduce_sum(tf.sin(conv(x, kernel)))
                        grad_x = inner.gradient(loss, x)
                        gradient_norm = tf.reduce_sum(grad_x**2)
                    return conv(x, kernel), outer.gradient(gradient_norm, kernel)

                reference = second_order(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"))
                # The same float64 sums in other orders: the longest, the kernel's gradient, sums
                # batch x pixels <= 304 terms, so n u64 of each output's largest entry (measured: 5e-16).
                for ours, theirs in zip(second_order(layer.convolution_op), reference):
                    atol = 304 * FLOAT64 * float(tf.reduce_max(tf.abs(theirs)))
                    self.assertAllClose(ours, theirs, rtol=0, atol=atol)

    def test_vgg16_matches_the_authors_layout(self):
        evaluator = vgg.build_evaluator((32, 32, 3), 20, 100)
        convs = [l for l in evaluator.layers if isinstance(l, keras.layers.Conv2D)]
        self.assertEqual([c.filters for c in convs], [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512])
        norms = [l for l in evaluator.layers if isinstance(l, keras.layers.BatchNormalization)]
        self.assertAllClose([(n.epsilon, n.momentum) for n in norms], [(1e-5, 0.9)] * 13)
        pri, aux = evaluator(tf.zeros((2, 32, 32, 3)))
        self.assertEqual(pri.shape, (2, 20))
        self.assertEqual(aux.shape, (2, 100))
        # Same trainable parameters as the PyTorch reference: VGG-16's 13 biased convolutions
        # (14,714,688), BN scale and shift (2 x 4,224), two Dense(512)-Dense(n) heads.
        trainable = sum(int(np.prod(v.shape)) for v in evaluator.trainable_variables)
        self.assertEqual(trainable, 14_714_688 + 8_448 + 2 * (512 * 512 + 512) + (512 * 20 + 20) + (512 * 100 + 100))

    def test_small_model_fits_digits_and_sizes_are_checked(self):
        generator = vgg.build_generator((8, 8, 1), 10, "vgg_small", 0.25)
        self.assertEqual(generator(tf.zeros((3, 8, 8, 1))).shape, (3, 10))
        with self.assertRaisesRegex(errors.Error, "--model=vgg16 .* at least 32x32"):
            vgg.build_evaluator((8, 8, 1), 2, 10, "vgg16")

    def test_trunk_variables_are_the_shared_ones(self):
        evaluator = vgg.build_evaluator((8, 8, 1), 2, 10, "vgg_small", 0.25)
        trunk = [evaluator.trainable_variables[i].path for i in evaluator_lib.trunk_variable_indices(evaluator)]
        self.assertLen(trunk, 3 * 4)  # conv kernel + bias, BN gamma + beta, per block
        self.assertTrue(all(p.startswith("trunk_") for p in trunk))


if __name__ == "__main__":
    tf.test.main()
