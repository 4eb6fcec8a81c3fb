"""The generator's meta-gradient: exact second order, checked against finite differences."""
import keras
import numpy as np
import tensorflow as tf

from maxl_tf import hierarchy
from maxl_tf import meta
from maxl_tf import models

PSI = (2, 3)
INNER_LR = 0.1


class MetaGradientTest(tf.test.TestCase):

    def setUp(self):
        super().setUp()
        # The global dtype policy, not only floatx: an earlier test may already have fixed it.
        keras.config.set_floatx("float64")
        keras.config.set_dtype_policy("float64")
        keras.utils.set_random_seed(0)
        self.evaluator = models.build_evaluator((8, 8, 1), 2, sum(PSI), "vgg_small", 0.05)
        self.generator = models.build_generator((8, 8, 1), sum(PSI), "vgg_small", 0.05)
        self.images = tf.constant(np.random.default_rng(0).normal(size=(6, 8, 8, 1)))
        self.labels = tf.constant([0, 1, 0, 1, 1, 0])
        self.mask = tf.constant(hierarchy.psi_mask(PSI), tf.float64)

    def tearDown(self):
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")
        super().tearDown()

    def _meta(self, entropy_weight):
        return meta.second_order_meta_gradient(self.evaluator, self.generator, self.images, self.labels,
                                               self.mask, INNER_LR, 2.0, entropy_weight)

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

    def _check_against_finite_differences(self, entropy_weight):
        grads, _ = self._meta(entropy_weight)
        rng = np.random.default_rng(1)
        checked = 0
        # The generator's output layer and a trunk convolution, several entries of each.
        for position in (-2, 0):
            variable, grad = self.generator.trainable_variables[position], grads[position].numpy()
            for flat in rng.choice(grad.size, 4, replace=False):
                index = np.unravel_index(flat, grad.shape)
                numeric = self._central_difference(variable, index, entropy_weight)
                self.assertAllClose(grad[index], numeric, rtol=1e-5, atol=1e-9)
                checked += abs(numeric) > 1e-8
        self.assertGreater(checked, 2, "too few non-zero entries were compared")

    def test_matches_central_differences_with_entropy(self):
        self._check_against_finite_differences(entropy_weight=0.2)

    def test_matches_central_differences_through_lookahead_alone(self):
        # Without the entropy term, the only path from the generator to the meta loss is the
        # second-order one: the generated labels change the lookahead's inner gradient.
        self._check_against_finite_differences(entropy_weight=0.0)
        grads, _ = self._meta(entropy_weight=0.0)
        self.assertGreater(float(tf.linalg.global_norm(grads)), 1e-6)

    def test_lookahead_leaves_the_evaluator_untouched(self):
        before = [v.numpy().copy() for v in self.evaluator.variables]
        _, stats = self._meta(entropy_weight=0.2)
        for old, variable in zip(before, self.evaluator.variables):
            self.assertAllEqual(old, variable.numpy())   # weights and batch-norm moving statistics
        # The lookahead step lowers the principal loss on the meta batch.
        self.assertLess(float(stats["loss_after"]), float(stats["loss_before"]))

    def test_meta_loss_is_principal_loss_after_plus_weighted_entropy(self):
        _, stats = self._meta(entropy_weight=0.2)
        self.assertAllClose(stats["meta_loss"], stats["loss_after"] + 0.2 * stats["entropy"])


if __name__ == "__main__":
    tf.test.main()
