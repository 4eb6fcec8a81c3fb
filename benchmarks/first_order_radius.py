"""How far first_order's finite difference strays from the exact hypergradient, by radius.

    PYTHONPATH=. python benchmarks/first_order_radius.py [--model=vgg16]

Builds one evaluator/generator pair in float64 and a float32 copy with the same weights, takes
the exact meta-gradient (second_order in float64) on one random batch, and prints the cosine with
it of the float32 second_order gradient and of the float32 first_order gradient at each radius.
The figures behind meta.FINITE_DIFFERENCE_RADIUS; docs/measurements.md has them.
"""

import argparse

import keras
import numpy as np
import tensorflow as tf

from maxl_tf.core import hierarchy
from maxl_tf.core import meta
from maxl_tf.models import vgg

SHAPES = {"vgg_small": ((8, 8, 1), 0.5, 64, (7, 3)), "vgg16": ((32, 32, 3), 1.0, 16, (5,) * 20)}


def build(architecture, dtype):
    input_shape, width, _, psi = SHAPES[architecture]
    keras.config.set_dtype_policy(dtype)
    keras.utils.set_random_seed(0)
    evaluator = vgg.build_evaluator(input_shape, len(psi), sum(psi), architecture, width)
    generator = vgg.build_generator(input_shape, sum(psi), architecture, width)
    return evaluator, generator


def flat(tensors):
    return np.concatenate([np.ravel(t) for t in tensors])


def cosine(a, b):
    a, b = flat(a), flat(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="vgg_small")
    architecture = parser.parse_args().model
    input_shape, _, batch, psi = SHAPES[architecture]
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(batch, *input_shape))
    labels = tf.constant(rng.integers(0, len(psi), batch), tf.int64)
    mask = hierarchy.psi_mask(psi)
    args = (0.01, 2.0, 0.0)  # inner lr, focal gamma, no entropy term: the hypergradient's own path

    exact_models = build(architecture, "float64")
    exact, _ = meta.second_order_meta_gradient(
        *exact_models, tf.constant(images, tf.float64), labels, tf.constant(mask, tf.float64), *args
    )
    evaluator, generator = build(architecture, "float32")
    for ours, theirs in zip(
        evaluator.variables + generator.variables, exact_models[0].variables + exact_models[1].variables
    ):
        ours.assign(tf.cast(theirs, tf.float32))
    images, mask = tf.constant(images, tf.float32), tf.constant(mask)
    rows = [
        ("second_order, float32", meta.second_order_meta_gradient(evaluator, generator, images, labels, mask, *args))
    ]
    for radius in (1e-2, 1e-3, 1e-4):
        gradient = meta.first_order_meta_gradient(evaluator, generator, images, labels, mask, *args, radius=radius)
        rows.append((f"first_order, float32, radius {radius:g}", gradient))
    print(f"{architecture}, batch {batch}: cosine with the float64 second_order gradient")
    for name, (grads, _) in rows:
        print(f"  {name}: {cosine(grads, exact):.5f}")


if __name__ == "__main__":
    main()
