"""Prints the numbers behind the mixed-precision tests' bounds (docs/measurements.md, issue 28).

    PYTHONPATH=. python tests/mixed_precision_probe.py bounds        # what the tests compare, in this process
    PYTHONPATH=. python tests/mixed_precision_probe.py sensitivity   # the float32 gradient under small perturbations
    PYTHONPATH=. python tests/mixed_precision_probe.py emulation     # half-precision rounding at one place at a time

Run `bounds` under TF_NUM_INTRAOP_THREADS and TF_ENABLE_ONEDNN_OPTS to see each setting's numbers.
`sensitivity` and `emulation` show why the bounds are not multiples of u: the first-order
meta-gradient of hypergradient_test's MixedPrecisionTest moves by whole percents when its inputs
move by far less than a rounding, and half-precision rounding at different places of the
generator does not add up.
"""

import json
import sys

import keras
import numpy as np
import tensorflow as tf

from maxl_tf.core import hierarchy
from maxl_tf.core import meta
from maxl_tf.models import vgg
from maxl_tf.models.names import ARCHITECTURES
from tests import hypergradient_test
from tests import precision_test
from tests import tolerances

PSI = (3, 2)
HALF = (("mixed_bfloat16", None), ("mixed_float16", 2.0**10))


def _relative(result, reference):
    return float(np.linalg.norm(np.subtract(result, reference)) / np.linalg.norm(reference))


def bounds():
    """Each mixed-precision check's measured value beside its bound."""
    rows = {}
    case = hypergradient_test.MixedPrecisionTest()
    for function in (meta.first_order_meta_gradient, meta.implicit_meta_gradient):
        reference, reference_stats, entropy = case._gradient(function, "float32")
        terms = [reference.numpy() - entropy]
        if function is not meta.implicit_meta_gradient:
            terms.append(entropy)
        floor = tolerances.cosine_floor(tolerances.halfway_to_nearest_wrong(reference.numpy(), terms))
        for precision, loss_scale in HALF:
            grads, stats, _ = case._gradient(function, precision, loss_scale)
            rows[f"{function.__name__} {precision}"] = {
                "cosine": round(hypergradient_test._cosine([grads], [reference]), 5),
                "cosine_floor": round(floor, 4),
                "meta_loss_error": float(f"{_relative(stats['meta_loss'], reference_stats['meta_loss']):.2g}"),
                "meta_loss_rtol": round(
                    tolerances.probabilistic_error(
                        tolerances.VGG_SMALL_LABEL_ROUNDINGS, tolerances.UNIT_ROUNDOFF[precision]
                    ),
                    4,
                ),
            }
    reference, reference_stats, entropy = precision_test._meta_gradient("float32", float32_lookahead=False)
    floor = tolerances.cosine_floor(
        tolerances.halfway_to_nearest_wrong(reference.numpy(), [reference.numpy() - entropy, entropy])
    )
    for precision, loss_scale in HALF:
        grads, stats, _ = precision_test._meta_gradient(precision, loss_scale)
        half_lookahead, _, _ = precision_test._meta_gradient(precision, loss_scale, float32_lookahead=False)
        rows[f"second_order_meta_gradient {precision}"] = {
            "cosine": round(precision_test._cosine(grads, reference), 5),
            "cosine_floor": round(floor, 4),
            "distance_twin": round(precision_test._distance(grads, reference), 4),
            "distance_half_lookahead": round(precision_test._distance(half_lookahead, reference), 4),
            "meta_loss_error": float(f"{_relative(stats['meta_loss'], reference_stats['meta_loss']):.2g}"),
        }
    unscaled, _, _ = precision_test._meta_gradient("mixed_float16", None, float32_lookahead=False)
    scaled, _, _ = precision_test._meta_gradient("mixed_float16", 2.0**12, float32_lookahead=False)
    rows["loss scale 2^12, float16 lookahead"] = {
        "distance_scaled_unscaled": round(precision_test._distance(scaled, unscaled), 4),
        "float16_error": round(precision_test._distance(unscaled, reference), 4),
    }
    return rows


def _first_order(evaluator_perturbation=0.0, generator_perturbation=0.0, seed=1):
    """MixedPrecisionTest's float32 first-order gradient, the networks' weights moved by the given
    relative amounts (uniform, random signs)."""
    keras.utils.set_random_seed(0)
    evaluator = vgg.build_evaluator((8, 8, 1), len(PSI), sum(PSI), "vgg_small", 0.25, "float32")
    generator = vgg.build_generator((8, 8, 1), sum(PSI), "vgg_small", 0.25, "float32")
    rng = np.random.default_rng(seed)
    for model, size in ((evaluator, evaluator_perturbation), (generator, generator_perturbation)):
        for variable in model.trainable_variables:
            value = variable.numpy()
            variable.assign((value * (1 + size * rng.uniform(-1, 1, value.shape))).astype(np.float32))
    images, labels = _batches()[1]
    grads, _ = meta.first_order_meta_gradient(evaluator, generator, images, labels, _mask(), 0.1)
    return np.concatenate([np.ravel(g) for g in grads])


def _batches():
    rng = np.random.default_rng(0)
    return [
        (
            tf.constant(hypergradient_test._pixels(rng.normal(size=(64, 8, 8, 1))), tf.float32),
            tf.constant(rng.integers(0, len(PSI), 64), tf.int64),
        )
        for _ in range(2)
    ]


def _mask():
    return tf.constant(hierarchy.psi_mask(PSI))


def sensitivity():
    """Relative change of the float32 first-order gradient when one network's weights move."""
    reference = _first_order()
    rows = {}
    for exponent in (8, 11, 14, 17):
        rows[f"2^-{exponent}"] = {
            "evaluator": round(_relative(_first_order(evaluator_perturbation=2.0**-exponent), reference), 5),
            "generator": round(_relative(_first_order(generator_perturbation=2.0**-exponent), reference), 5),
        }
    return rows


_ROUNDING = {"at": (), "dtype": None}


class _Round(keras.layers.Layer):
    """Identity, or its input rounded to _ROUNDING's dtype where `where` is among its places;
    gradients pass as they are."""

    def __init__(self, where, **kwargs):
        super().__init__(**kwargs)
        self.where = where

    def call(self, x):
        dtype = _ROUNDING["dtype"] if self.where in _ROUNDING["at"] else None

        @tf.custom_gradient
        def rounded(x):
            y = tf.cast(tf.cast(x, dtype), x.dtype) if dtype is not None else tf.identity(x)
            return y, lambda dy: dy

        return rounded(x)


def _float32_generator_with_rounding():
    """vgg.build_generator's vgg_small at width 0.25 in float32, with _Round at each conv
    block's input, its convolution's output and its batch norm's output; same weights."""
    images = keras.Input((8, 8, 1))
    x = vgg.pixels.Normalise()(images)
    for block, (filters, _) in enumerate(ARCHITECTURES["vgg_small"], start=1):
        name = f"trunk_block{block}_conv1"
        x = _Round("input")(x)
        x = vgg.Conv2D(round(filters * 0.25), 3, padding="same", name=name)(x)
        x = _Round("conv")(x)
        x = vgg.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name + "_bn")(x)
        x = _Round("batch_norm")(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    hidden = keras.layers.Dense(x.shape[-1], activation="relu")(x)
    return keras.Model(images, keras.layers.Dense(sum(PSI))(hidden))


def _first_order_rounded(at, dtype):
    _ROUNDING.update(at=at, dtype=dtype)
    keras.utils.set_random_seed(0)
    evaluator = vgg.build_evaluator((8, 8, 1), len(PSI), sum(PSI), "vgg_small", 0.25, "float32")
    generator = _float32_generator_with_rounding()
    images, labels = _batches()[1]
    grads, _ = meta.first_order_meta_gradient(evaluator, generator, images, labels, _mask(), 0.1)
    return np.concatenate([np.ravel(g) for g in grads])


def emulation():
    """Relative change of the float32 first-order gradient when the generator's forward values
    are rounded to half precision at some places (gradients untouched)."""
    reference = _first_order_rounded((), None)
    places = (("input",), ("conv",), ("batch_norm",), ("input", "conv", "batch_norm"))
    return {
        dtype.name: {"+".join(at): round(_relative(_first_order_rounded(at, dtype), reference), 4) for at in places}
        for dtype in (tf.bfloat16, tf.float16)
    }


if __name__ == "__main__":
    part = sys.argv[1] if len(sys.argv) > 1 else "bounds"
    print(json.dumps({"bounds": bounds, "sensitivity": sensitivity, "emulation": emulation}[part](), indent=1))
