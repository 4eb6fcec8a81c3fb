"""MAXL from Python: a backbone of your own, a tf.data pipeline, model.fit.

Trains on scikit-learn's digits (bundled, offline): 10 principal classes (the digits), 3 learned
auxiliary classes each. The backbone is any Keras model that returns features; the two networks
each get their own copy. Tiny settings run in seconds on a CPU:

    python examples/train_own_backbone.py --epochs=2 --examples=300
"""

import argparse

import keras
import numpy as np
from sklearn import datasets
import tensorflow as tf

import maxl_tf


def backbone(input_shape):
    """Any Keras model from images to a feature map or vector; here a small conv net."""
    images = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 16.0)(images)  # digits' pixels are 0..16
    for filters in (16, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    return keras.Model(images, x, name="own_backbone")


def pipeline(images, labels, batch_size, seed):
    """(images, labels) batches, reshuffled every epoch."""
    return (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(labels), seed=seed)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--examples", type=int, default=0, help="use only this many examples (0: all 1797)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    digits = datasets.load_digits()
    images = digits.images[..., None].astype("float32")  # [N, 8, 8, 1]
    labels = digits.target.astype("int64")
    if args.examples:
        images, labels = images[: args.examples], labels[: args.examples]
    order = np.random.default_rng(args.seed).permutation(len(labels))
    test, meta, train = np.split(order, [len(order) // 5, len(order) // 5 + len(order) // 10])

    psi = maxl_tf.psi.uniform(pri=10, aux=30)
    model = maxl_tf.MAXL(
        evaluator=maxl_tf.heads.multitask(backbone((8, 8, 1)), pri=10, psi=psi),
        generator=maxl_tf.heads.generator(backbone((8, 8, 1)), psi=psi),
        psi=psi,
        hypergradient="second_order",
        entropy_weight=0.2,
    )
    model.compile(
        evaluator_optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        generator_optimizer=keras.optimizers.SGD(1e-3),
    )
    model.fit(
        pipeline(images[train], labels[train], args.batch_size, args.seed),
        meta_data=pipeline(images[meta], labels[meta], args.batch_size, args.seed + 1),
        validation_data=pipeline(images[test], labels[test], args.batch_size, args.seed),
        epochs=args.epochs,
        callbacks=[maxl_tf.callbacks.LabelUsage(probe=(images[train[:64]], labels[train[:64]]))],
        verbose=2,
    )
    result = model.evaluate(images[test], labels[test], verbose=0, return_dict=True)
    print(f"test accuracy {result['accuracy']:.4f} on {len(test)} digits")


if __name__ == "__main__":
    main()
