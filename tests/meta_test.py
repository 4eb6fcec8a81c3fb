"""The generator's meta-gradient: exact second order, checked against finite differences."""

from unittest import mock

import keras
import numpy as np
import tensorflow as tf

from maxl_tf.core import hierarchy
from maxl_tf.core import meta
from maxl_tf.models import pixels
from maxl_tf.models import vgg
from tests import float64_case
from tests import tolerances

PSI = (2, 3)
INNER_LR = 0.1


def _pixels(normalised):
    """The raw pixels the networks' first layer (pixels.Normalise) maps to these values."""
    return 255.0 * (pixels.PIXEL_MEAN + pixels.PIXEL_STD * normalised)


class MetaGradientTest(float64_case.Float64TestCase):
    def setUp(self):
        super().setUp()
        self.evaluator = vgg.build_evaluator((8, 8, 1), 2, sum(PSI), "vgg_small", 0.05)
        self.generator = vgg.build_generator((8, 8, 1), sum(PSI), "vgg_small", 0.05)
        self.images = tf.constant(_pixels(np.random.default_rng(0).normal(size=(6, 8, 8, 1))))
        self.labels = tf.constant([0, 1, 0, 1, 1, 0])
        self.mask = tf.constant(hierarchy.psi_mask(PSI), tf.float64)

    def _meta(self, entropy_weight):
        return meta.second_order_meta_gradient(
            self.evaluator, self.generator, self.images, self.labels, self.mask, INNER_LR, 2.0, entropy_weight
        )

    def _central_difference(self, variable, index, entropy_weight, eps=1e-6):
        original = variable.numpy()
        values = []
        for sign in (1, -1):
            shifted = original.copy()
            shifted[index] += sign * eps
            variable.assign(shifted)
            values.append(float(self._meta(entropy_weight)[1]["meta_loss"]))
        variable.assign(original)
        return (values[0] - values[1]) / (2 * eps)

    def _check_against_finite_differences(self, entropy_weight, eps=1e-6):
        grads, _ = self._meta(entropy_weight)
        rng = np.random.default_rng(1)
        checked = 0
        # The generator's output layer and a trunk convolution, several entries of each.
        for position in (-2, 0):
            variable, grad = self.generator.trainable_variables[position], grads[position].numpy()
            for flat in rng.choice(grad.size, 4, replace=False):
                index = np.unravel_index(flat, grad.shape)
                numeric = self._central_difference(variable, index, entropy_weight, eps)
                # The difference's truncation is eps^2 f''' (1e-12) where the loss is smooth, O(eps)
                # relative where a ReLU or max-pool kink lies within eps; its rounding is about
                # 40 u64 |meta loss| / eps = 1e-9 for |meta loss| <= 0.22 (measured: 8e-11).
                self.assertAllClose(grad[index], numeric, rtol=eps, atol=1e-9)
                checked += abs(numeric) > 1e-8  # above that rounding
        self.assertGreater(checked, 2, "too few non-zero entries were compared")

    def test_matches_central_differences_with_entropy(self):
        self._check_against_finite_differences(entropy_weight=0.2)

    def test_matches_central_differences_through_lookahead_alone(self):
        # Without the entropy term, the only path from the generator to the meta loss is the
        # second-order one: the generated labels change the lookahead's inner gradient.
        self._check_against_finite_differences(entropy_weight=0.0)
        grads, _ = self._meta(entropy_weight=0.0)
        self.assertGreater(float(tf.linalg.global_norm(grads)), 1e-6)  # non-zero: 10^10 float64 roundings

    def test_lookahead_leaves_the_evaluator_untouched(self):
        before = [v.numpy().copy() for v in self.evaluator.variables]
        _, stats = self._meta(entropy_weight=0.2)
        for old, variable in zip(before, self.evaluator.variables):
            self.assertAllEqual(old, variable.numpy())  # weights and batch-norm moving statistics
        # The lookahead step lowers the principal loss on the meta batch.
        self.assertLess(float(stats["loss_after"]), float(stats["loss_before"]))

    def test_meta_loss_is_principal_loss_after_plus_weighted_entropy(self):
        _, stats = self._meta(entropy_weight=0.2)
        self.assertAllClose(stats["meta_loss"], stats["loss_after"] + 0.2 * stats["entropy"])


class FusedBatchNormTest(tf.test.TestCase):
    """vgg.BatchNormalization runs TensorFlow's fused kernel in float32, Keras' ops in float64.

    The finite-difference tests above run in float64, so they check Keras' path; these check
    that the fused path computes the same function, gradient of gradient included: with respect
    to the incoming gradient (the meta step's path, fused by vgg._fused_batch_norm_backward),
    the input and the scale (TensorFlow's composite).
    """

    def test_layer_matches_keras_forward_statistics_and_second_order(self):
        values = np.random.default_rng(0).normal(1.0, 3.0, size=(6, 4, 4, 5))

        def outputs(cls, dtype):
            x = tf.constant(values, dtype)
            layer = cls(momentum=0.9, epsilon=1e-5, dtype=dtype)
            layer.build(x.shape)
            layer.set_weights([np.linspace(0.5, 2.0, 5), np.linspace(-1.0, 1.0, 5), np.full(5, 0.3), np.full(5, 2.0)])
            weights = [v.value for v in layer.trainable_variables]
            moving = [v.value for v in layer.non_trainable_variables]
            with tf.GradientTape() as outer:
                outer.watch([x, *weights])
                with tf.GradientTape() as inner:
                    inner.watch([x, *weights])
                    y, new_moving = layer.stateless_call(weights, moving, x, training=True)
                    loss = tf.reduce_sum(tf.sin(y) * tf.cos(x))
                input_grad, *grads = inner.gradient(loss, [x, *weights])
                fast = [w - 0.1 * g for w, g in zip(weights, grads)]
                fast_y = layer.stateless_call(fast, moving, x, training=True)[0]
                # Through the fast weights: the backward's gradient in its incoming gradient.
                # Through the input gradient: in the input and the scale as well.
                meta_loss = tf.reduce_sum(tf.cos(x) * fast_y**2) + tf.reduce_sum(tf.sin(x) * input_grad)
            second_order = outer.gradient(meta_loss, [x, *weights])
            return {
                "y": y,
                "moving": new_moving,
                "input_grad": input_grad,
                "grads": grads,
                "second_order_input": second_order[0],
                "second_order_weights": second_order[1:],
                "inference": layer(x, training=False),
            }

        fused = outputs(vgg.BatchNormalization, "float32")
        reference = outputs(keras.layers.BatchNormalization, "float64")  # Keras' path, exact
        # float32 against exact float64: per channel, sums of N = 96 terms (6 x 4 x 4) in about 3
        # passes (forward, backward, second order), rounding errors of independent sign:
        # lambda sqrt(3 N) u32 with lambda = 3, 3e-6 of the scale (measured: 9e-7). TensorFlow's
        # own composite for the second derivative in the input (unchanged by vgg.py) cancels
        # terms up to N times its size: N times that, 3e-4 (measured: 1.0e-4).
        per_pass = 3 * tolerances.probabilistic_error(3 * 96, tolerances.FLOAT32)
        for name in fused:
            tolerance = 96 * per_pass if name == "second_order_input" else per_pass
            for f, r in zip(tf.nest.flatten(fused[name]), tf.nest.flatten(reference[name])):
                scale = float(tf.reduce_max(tf.abs(r)))
                self.assertAllClose(tf.cast(f, tf.float64), r, rtol=0, atol=tolerance * scale, msg=name)

    def test_meta_gradient_matches_keras_batch_norm(self):
        psi, images = (2, 3), tf.constant(_pixels(np.random.default_rng(0).normal(size=(6, 8, 8, 1))), tf.float32)
        labels, mask = tf.constant([0, 1, 0, 1, 1, 0]), tf.constant(hierarchy.psi_mask(psi))
        results = []
        for cls in (vgg.BatchNormalization, keras.layers.BatchNormalization):
            with mock.patch.object(vgg, "BatchNormalization", cls):
                keras.utils.set_random_seed(0)
                evaluator = vgg.build_evaluator((8, 8, 1), 2, sum(psi), "vgg_small", 0.125)
                generator = vgg.build_generator((8, 8, 1), sum(psi), "vgg_small", 0.125)
            self.assertEqual(type(evaluator.get_layer("trunk_block1_conv1_bn")), cls)
            results.append(meta.second_order_meta_gradient(evaluator, generator, images, labels, mask, INNER_LR))
        (fused_grads, fused_stats), (keras_grads, keras_stats) = results
        # Two float32 computations of the same function, summing in other orders: sums of up to
        # 384 terms (6 images x 64 pixels), errors of independent sign, lambda sqrt(n) u32 with
        # lambda = 3 over n = 4 x 384 (the losses: 3 forward passes and the inner backward; 7e-6,
        # measured 2.5e-6) and n = 5 x 384 (the gradient adds the second-order pass; 8e-6 of the
        # largest entry, measured 5.6e-7). Biases right before batch norm have round-off
        # gradients: all entries are compared at the scale of the largest.
        self.assertAllClose(
            fused_stats, keras_stats, rtol=3 * tolerances.probabilistic_error(4 * 384, tolerances.FLOAT32)
        )
        scale = max(float(tf.reduce_max(tf.abs(g))) for g in keras_grads)
        atol = 3 * tolerances.probabilistic_error(5 * 384, tolerances.FLOAT32) * scale
        for fused, reference in zip(fused_grads, keras_grads):
            self.assertAllClose(fused, reference, rtol=0, atol=atol)


if __name__ == "__main__":
    tf.test.main()
