"""Mixed precision and XLA: the meta-gradient stays the float32 one, and the loop runs."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from maxl_tf.core import hierarchy
from maxl_tf.core import labels as labels_lib
from maxl_tf.core import losses
from maxl_tf.core import meta
from maxl_tf.experiment import train
from maxl_tf.models import pixels
from maxl_tf.models import vgg
from tests import smoke_util
from tests import tolerances

PSI = (3, 2)


ENTROPY_WEIGHT = 0.2  # w_H, meta's default


def _meta_gradient(precision, loss_scale=None, float32_lookahead=True):
    """(flat gradient, stats, flat entropy term w_H grad H: float32 only, else None)."""
    keras.utils.set_random_seed(0)  # same float32 weights whatever the compute precision
    evaluator = vgg.build_evaluator((8, 8, 1), len(PSI), sum(PSI), "vgg_small", 0.25, precision)
    generator = vgg.build_generator((8, 8, 1), sum(PSI), "vgg_small", 0.25, precision)
    twin = (
        vgg.build_evaluator((8, 8, 1), len(PSI), sum(PSI), "vgg_small", 0.25, "float32") if float32_lookahead else None
    )
    rng = np.random.default_rng(0)
    # Raw pixels whose normalised values (pixels.Normalise, the networks' first layer) are standard normal.
    images = tf.constant(255.0 * (pixels.PIXEL_MEAN + pixels.PIXEL_STD * rng.normal(size=(64, 8, 8, 1))), tf.float32)
    labels = tf.constant(rng.integers(0, len(PSI), 64), tf.int64)
    mask = tf.constant(hierarchy.psi_mask(PSI))
    grads, stats = meta.second_order_meta_gradient(
        evaluator,
        generator,
        images,
        labels,
        mask,
        0.1,
        entropy_weight=ENTROPY_WEIGHT,
        loss_scale=loss_scale,
        lookahead_model=twin,
    )
    flat = tf.concat([tf.reshape(tf.cast(g, tf.float32), [-1]) for g in grads], 0)
    entropy_term = None
    if precision == "float32":
        with tf.GradientTape() as tape:
            entropy = losses.entropy_regulariser(labels_lib.generated_labels(generator, images, labels, mask, True))
        entropy_term = ENTROPY_WEIGHT * np.concatenate(
            [np.ravel(g) for g in tape.gradient(entropy, generator.trainable_variables)]
        )
    return (flat if loss_scale is None else flat / loss_scale), stats, entropy_term


def _cosine(a, b):
    return float(tf.reduce_sum(a * b) / (tf.norm(a) * tf.norm(b)))


def _distance(a, b):
    """||a - b|| / ||b||."""
    return float(tf.norm(a - b) / tf.norm(b))


class MixedPrecisionTest(tf.test.TestCase):
    def test_half_precision_meta_gradient_points_the_float32_way(self):
        reference, reference_stats, entropy_term = _meta_gradient("float32", float32_lookahead=False)
        self.assertGreater(float(tf.norm(reference)), 1e-3)  # non-zero: 10^4 float32 roundings of its O(1) losses
        # As in hypergradient_test.py's MixedPrecisionTest: not a multiple of u, since half
        # precision moves this gradient mostly by the ReLU and max-pool decisions its rounding
        # flips; the bound is halfway (in angle) to the float32 gradient missing its smaller term,
        # the entropy term (57% of the norm: cos >= 0.96). Dropping it gives cos 0.85.
        distance = tolerances.halfway_to_nearest_wrong(
            reference.numpy(), [reference.numpy() - entropy_term, entropy_term]
        )
        for precision, loss_scale in (("mixed_bfloat16", None), ("mixed_float16", 2.0**10)):
            with self.subTest(precision):
                grads, stats, _ = _meta_gradient(precision, loss_scale)
                self.assertEqual(grads.dtype, tf.float32)  # float32 weights get float32 gradients
                self.assertGreaterEqual(_cosine(grads, reference), tolerances.cosine_floor(distance))
                # The twin's purpose, which no fixed bound separates at this size: a lookahead in
                # half precision adds its own flipped decisions to the generator's, and lands
                # farther from float32 (bfloat16: 0.23 of the norm against the twin's 0.10).
                half_lookahead, _, _ = _meta_gradient(precision, loss_scale, float32_lookahead=False)
                self.assertLess(_distance(grads, reference), _distance(half_lookahead, reference))
                # A forward value: rounding alone moves it, as much as the labels' sqrt(16) u
                # (tolerances.py): 1.6% in bfloat16, 0.2% in float16. Without the entropy term: 14%.
                rtol = tolerances.probabilistic_error(
                    tolerances.VGG_SMALL_LABEL_ROUNDINGS, tolerances.UNIT_ROUNDOFF[precision]
                )
                self.assertAllClose(stats["meta_loss"], reference_stats["meta_loss"], rtol=rtol)

    def test_loss_scale_inside_a_half_precision_lookahead_cancels_out(self):
        unscaled, _, _ = _meta_gradient("mixed_float16", None, float32_lookahead=False)
        scaled, _, _ = _meta_gradient("mixed_float16", 2.0**12, float32_lookahead=False)
        reference, _, _ = _meta_gradient("float32", float32_lookahead=False)
        # Scaling by a power of two is exact in float16 save where values leave its range, so the
        # scale moves the gradient only through float16's own range and rounding effects: by less
        # than float16 itself moves it from float32 (a scale left in the lookahead, or not undone,
        # moves it by orders of magnitude). That bounds the direction and the norm together; the
        # norms agree at least as closely, since | ||a|| - ||b|| | <= ||a - b||.
        float16_error = _distance(unscaled, reference)
        self.assertLess(_distance(scaled, unscaled), float16_error)
        self.assertAllClose(tf.norm(scaled), tf.norm(unscaled), rtol=float16_error)

    def test_logits_pooling_and_weights_stay_float32(self):
        evaluator = vgg.build_evaluator((8, 8, 1), 2, 5, "vgg_small", 0.25, "mixed_bfloat16")
        float32_layers = [layer for layer in evaluator.layers if "pool" in layer.name or "logits" in layer.name]
        self.assertLen(float32_layers, 5)  # three pools, two logit layers
        for layer in float32_layers:
            self.assertEqual(layer.compute_dtype, "float32", layer.name)
        conv = evaluator.get_layer("trunk_block1_conv1")
        self.assertEqual((conv.compute_dtype, conv.variable_dtype), ("bfloat16", "float32"))


@pytest.mark.slow
class LoopTest(tf.test.TestCase):
    def test_float16_run_scales_losses_and_counts_skipped_steps(self):
        config = smoke_util.smoke_config(self.get_temp_dir(), precision="mixed_float16", export=False)
        results = train.train_and_evaluate(config, progress=False)
        self.assertTrue(results["complete"])
        for record in results["history"]:
            self.assertTrue(np.isfinite(record["test/loss"]))
            self.assertIn("meta/skipped_steps", record)  # the dynamic scale starts high: some overflow

    def test_jit_iteration_equals_the_uncompiled_one(self):
        histories = []
        for jit in (False, True):
            config = smoke_util.smoke_config(
                os.path.join(self.get_temp_dir(), f"jit{jit}"), jit=jit, epochs=1, deterministic=False, export=False
            )  # XLA has no deterministic max-pool gradient
            histories.append(train.train_and_evaluate(config, progress=False)["history"])
        # XLA fuses and reorders the float32 sums: one epoch's 7 steps drift by at most
        # 7 x 3 sqrt(2048) u32 = 5.7e-5 (tolerances.training_drift).
        rtol = tolerances.training_drift(tolerances.SMOKE_STEPS_PER_EPOCH)
        for key in ("train/pri_loss", "meta/loss", "test/loss"):
            self.assertAllClose(histories[1][0][key], histories[0][0][key], rtol=rtol, msg=key)
