"""Tests for maxl_tf.core.losses against numpy hand computations, including second-order gradients."""

from absl.testing import parameterized
import keras
import numpy as np
import tensorflow as tf

from maxl_tf.core import losses
from tests.tolerances import BFLOAT16
from tests.tolerances import FLOAT32
from tests.tolerances import FLOAT64

_LOGITS = np.asarray([[2.0, -1.0, 0.5, 0.0], [0.3, 0.3, -2.0, 1.5], [-0.7, 4.0, 1.0, -3.0]])
_ONE_HOT = np.asarray([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
_SOFT = np.asarray([[0.5, 0.25, 0.25, 0.0], [0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.9, 0.1]])


def _np_softmax(logits):
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _np_focal(logits, targets, gamma):
    p = _np_softmax(np.asarray(logits, np.float64))
    per_example = -np.sum(targets * (1.0 - p) ** gamma * np.log(p), axis=-1)
    return per_example.mean()


class FocalLossTest(tf.test.TestCase, parameterized.TestCase):
    def test_hand_computed_value(self):
        # First row by hand: p = softmax([2, -1, .5, 0]) with target class 0.
        z = np.exp([2.0, -1.0, 0.5, 0.0])
        p0 = z[0] / z.sum()
        row0_gamma2 = -((1 - p0) ** 2) * np.log(p0)
        loss = losses.focal_loss(tf.constant(_LOGITS[:1], tf.float64), _ONE_HOT[:1], gamma=2.0)
        # kappa n u: about 12 float64 roundings a side (softmax, 1 - p, the power, the log), which
        # (1 - p0)^2 amplifies by 2 p0 / (1 - p0) = 4.9 and log p0 by 1 / |log p0| = 2.9 (p0 = 0.71).
        self.assertAllClose(loss, row0_gamma2, rtol=5 * 24 * FLOAT64, atol=0)
        self.assertAllClose(float(loss), 0.0287718, rtol=0, atol=5e-8)  # the same, to its 7 printed decimals

    @parameterized.parameters(
        (2.0, "one_hot"), (2.0, "soft"), (0.0, "one_hot"), (0.0, "soft"), (1.0, "soft"), (0.5, "soft")
    )
    def test_against_numpy(self, gamma, which):
        targets = _ONE_HOT if which == "one_hot" else _SOFT
        # kappa n u: about 36 roundings (12 per row, the sums, the mean), amplified at most 5 times
        # by (1 - p)^gamma and log p where targets weigh them (p <= 0.71 there; gamma <= 2).
        for dtype, tol in ((tf.float64, 5 * 36 * FLOAT64), (tf.float32, 5 * 36 * FLOAT32)):
            loss = losses.focal_loss(tf.constant(_LOGITS, dtype), tf.constant(targets, dtype), gamma)
            self.assertEqual(loss.dtype, dtype)
            self.assertEqual(loss.shape, ())
            self.assertAllClose(loss, _np_focal(_LOGITS, targets, gamma), rtol=tol, atol=tol)

    @parameterized.parameters("one_hot", "soft")
    def test_gamma0_is_cross_entropy(self, which):
        targets = _ONE_HOT if which == "one_hot" else _SOFT
        ours = losses.focal_loss(tf.constant(_LOGITS), tf.constant(targets), gamma=0.0)
        log_p = np.log(_np_softmax(_LOGITS))
        # kappa n u: about 24 float64 roundings a side, log p amplifying by 1 / |log p| <= 2.9
        # where targets weigh it (p <= 0.71); the fused op is another such side; Keras computes
        # in float32, from logits rounded to float32 (u each, moving the loss by less than u).
        self.assertAllClose(ours, -np.mean(np.sum(targets * log_p, axis=-1)), rtol=3 * 48 * FLOAT64)
        fused = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(targets, _LOGITS))
        self.assertAllClose(ours, fused, rtol=3 * 48 * FLOAT64)
        keras_ce = keras.losses.CategoricalCrossentropy(from_logits=True)(
            tf.constant(targets, tf.float32), tf.constant(_LOGITS, tf.float32)
        )
        self.assertAllClose(ours, keras_ce, rtol=3 * 25 * FLOAT32)

    def test_focal_down_weights_easy_examples(self):
        gamma2 = losses.focal_loss(tf.constant(_LOGITS), _ONE_HOT, gamma=2.0)
        gamma0 = losses.focal_loss(tf.constant(_LOGITS), _ONE_HOT, gamma=0.0)
        self.assertLess(float(gamma2), float(gamma0))
        self.assertGreater(float(gamma2), 0.0)

    def test_half_precision_computed_in_float32(self):
        loss = losses.focal_loss(tf.constant(_LOGITS, tf.bfloat16), tf.constant(_ONE_HOT, tf.bfloat16))
        self.assertEqual(loss.dtype, tf.float32)
        # bfloat16 logits are rounded to 8 bits of mantissa before the float32 computation.
        rounded = tf.cast(tf.constant(_LOGITS, tf.bfloat16), tf.float64).numpy()
        self.assertAllClose(loss, _np_focal(rounded, _ONE_HOT, 2.0), rtol=5 * 36 * FLOAT32)  # as test_against_numpy

    @parameterized.parameters(0.5, 1.0, 2.0)
    def test_saturated_prediction_has_finite_gradients(self, gamma):
        # A margin of 100 makes p == 1.0 exactly in float32: (1 - p) ** gamma is at 0.
        logits = tf.constant([[100.0, 0.0, -5.0]])
        targets = tf.constant([[0.6, 0.4, 0.0]])
        with tf.GradientTape() as outer:
            outer.watch(targets)
            with tf.GradientTape() as inner:
                inner.watch(logits)
                loss = losses.focal_loss(logits, targets, gamma=gamma)
            grad = inner.gradient(loss, logits)
            scalar = tf.reduce_sum(grad * tf.constant([[1.0, 2.0, 3.0]]))
        mixed = outer.gradient(scalar, targets)
        # Loss: only the 0.4 on class 1 counts, with weight (1 - 0) ** gamma = 1 and log p = -100.
        # log-softmax gives -100 exactly (integers, and e^-100 is below float32's u at 1): one
        # rounding, of 0.4 to float32.
        self.assertAllClose(loss, 40.0, rtol=2 * FLOAT32, atol=0)
        # d/dlogits = (sum(y) p - y) weighted; here exactly [0.4, -0.4, 0] for both gammas: O(1)
        # float32 numbers, a few roundings each (4 u), times the reducing weights (<= 3) for mixed.
        self.assertAllClose(grad, [[0.4, -0.4, 0.0]], rtol=0, atol=4 * FLOAT32)
        self.assertAllClose(mixed, [[0.0, -1.0, -2.0]], rtol=0, atol=3 * 4 * FLOAT32)

    def test_first_order_gradient(self):
        # gamma=0: d loss / d logits = (p * sum(y) - y) / batch.
        logits = tf.constant(_LOGITS)
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = losses.focal_loss(logits, _SOFT, gamma=0.0)
        expected = (_np_softmax(_LOGITS) * _SOFT.sum(-1, keepdims=True) - _SOFT) / len(_LOGITS)
        # Entries p sum(y) - y cancel (down to 0.016 from 0.18): bound the absolute error, about
        # 16 float64 roundings (softmax, its backward, the product) of terms at most 1, over B.
        self.assertAllClose(tape.gradient(loss, logits), expected, rtol=0, atol=16 * FLOAT64)


class SecondOrderTest(tf.test.TestCase, parameterized.TestCase):
    """The meta-gradient needs d/d(targets) of d(loss)/d(logits) to exist and be right."""

    def setUp(self):
        super().setUp()
        # Weights for reducing the logits gradient to a scalar: a plain sum would be identically
        # zero for cross-entropy with targets summing to 1, hiding a wrong second derivative.
        self.weights = tf.constant(np.random.default_rng(0).normal(size=_LOGITS.shape))

    def _mixed_gradient(self, loss_fn, targets):
        logits, targets = tf.constant(_LOGITS), tf.constant(targets)
        with tf.GradientTape() as outer:
            outer.watch(targets)
            with tf.GradientTape() as inner:
                inner.watch(logits)
                loss = loss_fn(logits, targets)
            grad_logits = inner.gradient(loss, logits)
            scalar = tf.reduce_sum(grad_logits * self.weights)
        return outer.gradient(scalar, targets)

    def test_cross_entropy_second_order_analytic(self):
        # d/dy_j sum_k w_k (p_k sum(y) - y_k) / B = (sum_k w_k p_k - w_j) / B.
        mixed = self._mixed_gradient(lambda l, t: losses.focal_loss(l, t, gamma=0.0), _SOFT)
        w, p = self.weights.numpy(), _np_softmax(_LOGITS)
        expected = ((w * p).sum(-1, keepdims=True) - w) / len(_LOGITS)
        # A difference that can cancel: absolute error, 16 roundings of terms at most max |w|.
        self.assertAllClose(mixed, expected, rtol=0, atol=16 * FLOAT64 * np.abs(w).max())

    @parameterized.parameters(2.0, 0.0)
    def test_focal_second_order_against_finite_differences(self, gamma):
        mixed = self._mixed_gradient(lambda l, t: losses.focal_loss(l, t, gamma=gamma), _SOFT)
        self.assertIsNotNone(mixed)
        self.assertGreater(float(tf.reduce_max(tf.abs(mixed))), 1e-3)

        def first_order(targets):
            logits = tf.constant(_LOGITS)
            with tf.GradientTape() as tape:
                tape.watch(logits)
                loss = losses.focal_loss(logits, tf.constant(targets), gamma=gamma)
            return float(tf.reduce_sum(tape.gradient(loss, logits) * self.weights))

        eps = 1e-6
        numeric = np.zeros_like(_SOFT)
        for index in np.ndindex(*_SOFT.shape):
            up, down = _SOFT.copy(), _SOFT.copy()
            up[index] += eps
            down[index] -= eps
            numeric[index] = (first_order(up) - first_order(down)) / (2 * eps)
        # The loss is linear in the targets, so the central difference has no truncation error:
        # only rounding, about 30 float64 roundings of first_order (|value| <= 3) over eps.
        self.assertAllClose(mixed, numeric, rtol=0, atol=30 * FLOAT64 * 3 / eps)

    def test_fused_cross_entropy_has_no_second_order(self):
        """The trap the hand-written loss avoids: the fused op's mixed derivative is missing."""
        ours = self._mixed_gradient(lambda l, t: losses.focal_loss(l, t, gamma=0.0), _SOFT)
        self.assertGreater(float(tf.reduce_max(tf.abs(ours))), 1e-3)
        fused = self._mixed_gradient(lambda l, t: tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(t, l)), _SOFT)
        # TensorFlow 2.21 gives None (labels are not connected to the op's backprop output).
        # Should a later TensorFlow differentiate it properly, the contrast no longer holds and
        # only our loss's value, checked above, matters.
        if fused is not None and float(tf.reduce_max(tf.abs(fused))) > 0:
            self.skipTest(
                "this TensorFlow differentiates softmax_cross_entropy_with_logits twice "
                "with respect to the labels; nothing to contrast"
            )
        self.assertTrue(fused is None or not np.any(fused.numpy()))


class EntropyRegulariserTest(tf.test.TestCase):
    def test_against_numpy(self):
        labels = np.asarray([[0.7, 0.2, 0.1, 0.0], [0.0, 0.5, 0.5, 0.0], [0.1, 0.1, 0.1, 0.7]])
        pbar = labels.mean(axis=0)  # [0.2667, 0.2667, 0.2333, 0.2333]
        expected = np.sum(pbar * np.log(pbar))
        # About 12 float64 roundings (the mean, 4 logs and products, the sum) of same-sign terms.
        self.assertAllClose(losses.entropy_regulariser(tf.constant(labels)), expected, rtol=16 * FLOAT64)
        self.assertAllClose(float(expected), -1.384070, rtol=0, atol=5e-7)  # to its 6 printed decimals

    def test_uniform_usage_is_minus_log_k(self):
        eye = np.eye(5, dtype=np.float32)
        # About 8 roundings (the mean, a log, a product, a sum of 5 or 7 same-sign terms), and
        # log's own error of a unit or two: 8 u in float32, 16 u in float64.
        self.assertAllClose(losses.entropy_regulariser(eye), -np.log(5.0), rtol=8 * FLOAT32)
        uniform = np.full((3, 7), 1.0 / 7, np.float64)
        self.assertAllClose(losses.entropy_regulariser(uniform), -np.log(7.0), rtol=16 * FLOAT64)

    def test_collapsed_usage_is_zero(self):
        same = np.tile([[0.0, 0.0, 1.0, 0.0]], (6, 1)).astype(np.float32)
        value = losses.entropy_regulariser(same)
        self.assertAllClose(value, 0.0, rtol=0, atol=1e-12)  # 1 * log(1 + 1e-12): the guard, at most
        self.assertTrue(np.isfinite(value.numpy()))

    def test_gradient_is_finite_with_unused_classes(self):
        labels = tf.constant(np.tile([[0.0, 1.0, 0.0]], (4, 1)))
        with tf.GradientTape() as tape:
            tape.watch(labels)
            value = losses.entropy_regulariser(labels)
        self.assertTrue(np.all(np.isfinite(tape.gradient(value, labels).numpy())))

    def test_half_precision(self):
        value = losses.entropy_regulariser(tf.constant(np.eye(4), tf.bfloat16))
        self.assertEqual(value.dtype, tf.float32)
        self.assertAllClose(value, -np.log(4.0), rtol=8 * FLOAT32)  # as uniform usage, in float32


class MaskedSoftmaxTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.logits = np.asarray([[1.0, 2.0, 3.0, 0.5, -1.0], [0.2, -0.3, 5.0, 1.0, 2.0], [4.0, 4.0, -2.0, 0.0, 9.0]])
        # psi [2,2,1] rows for principal labels 0, 1, 2.
        self.mask = np.asarray([[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]], np.float32)

    def test_block_softmax(self):
        out = losses.masked_softmax(tf.constant(self.logits), self.mask).numpy()
        expected = np.zeros_like(self.logits)
        expected[0, :2] = _np_softmax(self.logits[0, :2])
        expected[1, 2:4] = _np_softmax(self.logits[1, 2:4])
        expected[2, 4] = 1.0
        # About 8 float64 roundings (the shift, exp, the sum, the division), and exp's argument
        # off by u |x| <= 5 u: 16 u64.
        self.assertAllClose(out, expected, rtol=16 * FLOAT64, atol=0)
        # By hand: [e^1, e^2] / (e^1 + e^2) = [0.2689, 0.7311].
        self.assertAllClose(out[0, :2], [0.26894142, 0.73105858], rtol=0, atol=5e-9)  # to 8 printed decimals
        self.assertTrue(np.all(out[self.mask == 0] == 0.0))
        self.assertAllClose(out.sum(axis=-1), np.ones(3), rtol=16 * FLOAT64)

    def test_large_masked_logit_is_exactly_zero(self):
        # Masked logits far above the block must not leak probability (exp(0) or exp(large)).
        logits = np.asarray([[1000.0, 0.0, 1.0, 2.0]], np.float32)
        mask = np.asarray([[0, 1, 1, 1]], np.float32)
        out = losses.masked_softmax(tf.constant(logits), mask).numpy()
        self.assertEqual(out[0, 0], 0.0)
        # As test_block_softmax, in float32: 16 u32.
        self.assertAllClose(out[0, 1:], _np_softmax(np.asarray([0.0, 1.0, 2.0])), rtol=16 * FLOAT32)
        self.assertTrue(np.all(np.isfinite(out)))

    def test_block_far_below_masked_logit(self):
        # The allowed block is ~1000 below a masked logit: a global-max shift would underflow the
        # whole block to 0/0.
        logits = np.asarray([[5.0, -995.0, -996.0, -1000.0], [-1000.0, -1001.0, 30.0, 20.0]], np.float32)
        mask = np.asarray([[0, 1, 1, 1], [1, 1, 0, 0]], np.float32)
        out = losses.masked_softmax(tf.constant(logits), mask).numpy()
        self.assertTrue(np.all(np.isfinite(out)))
        # As test_block_softmax, in float32 (the shifts of these integer logits are exact): 16 u32.
        self.assertAllClose(out[0], [0.0, *_np_softmax(np.asarray([0.0, -1.0, -5.0]))], rtol=16 * FLOAT32)
        self.assertAllClose(out[1], [*_np_softmax(np.asarray([0.0, -1.0])), 0.0, 0.0], rtol=16 * FLOAT32)
        self.assertAllClose(out.sum(-1), [1.0, 1.0], rtol=16 * FLOAT32)

    def test_gradient_equals_block_softmax_gradient(self):
        # The max-shift is stop-gradient and clipped with tf.minimum: the Jacobian must still be
        # the softmax Jacobian of the block, including for the block's largest logit.
        logits = tf.constant(self.logits)
        with tf.GradientTape() as tape:
            tape.watch(logits)
            out = losses.masked_softmax(logits, self.mask)
        jacobian = tape.batch_jacobian(out, logits).numpy()  # [batch, aux, aux]
        for row, block in ((0, slice(0, 2)), (1, slice(2, 4)), (2, slice(4, 5))):
            p = _np_softmax(self.logits[row, block])
            expected = np.zeros((5, 5))
            expected[block, block] = np.diag(p) - np.outer(p, p)
            # Entries p_i (delta_ij - p_j), each p off by 16 u (test_block_softmax): 32 u64 of p_i <= 1.
            self.assertAllClose(jacobian[row], expected, rtol=0, atol=32 * FLOAT64)

    def test_dtypes(self):
        out64 = losses.masked_softmax(tf.constant(self.logits, tf.float64), self.mask)
        self.assertEqual(out64.dtype, tf.float64)
        out32 = losses.masked_softmax(tf.constant(self.logits, tf.float32), self.mask)
        self.assertEqual(out32.dtype, tf.float32)
        out_bf16 = losses.masked_softmax(tf.constant(self.logits, tf.bfloat16), self.mask)
        self.assertEqual(out_bf16.dtype, tf.float32)
        self.assertAllClose(out_bf16.numpy().sum(-1), np.ones(3), rtol=16 * FLOAT32)  # computed in float32
        self.assertTrue(np.all(out_bf16.numpy()[self.mask == 0] == 0.0))
        # bfloat16 moves each logit by at most 2^-8 |x| <= 2^-8 * 9, and a softmax's Jacobian has
        # row sums of magnitude 2 p (1 - p) <= 1/2.
        self.assertAllClose(out_bf16, out32, rtol=0, atol=0.5 * 9 * BFLOAT16)
        out_f16 = losses.masked_softmax(tf.constant(self.logits, tf.float16), self.mask)
        self.assertEqual(out_f16.dtype, tf.float32)


class AccuracyTest(tf.test.TestCase):
    def test_accuracy(self):
        self.assertAllClose(losses.accuracy(tf.constant(_LOGITS), [0, 3, 2]), 2.0 / 3.0)
        self.assertAllClose(losses.accuracy(tf.constant(_LOGITS), np.asarray([0, 3, 2], np.int32)), 2.0 / 3.0)


if __name__ == "__main__":
    tf.test.main()
