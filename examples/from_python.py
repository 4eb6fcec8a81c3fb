"""README.md's "Use it from Python", verbatim (tests/examples_test.py keeps the two equal and runs it):
your backbone, your tf.data pipeline, fit with callbacks, save and load, export, serve.

    python examples/from_python.py   # in a scratch folder: it writes digits.keras, digits.csv, digits_export/
"""

import keras
import numpy as np
from sklearn import datasets
import tensorflow as tf

import maxl_tf

# Your data: raw pixels, uint8 or floats 0..255, [N, H, W, C], integer labels.
digits = datasets.load_digits()
images = np.round(digits.images * 255 / 16).astype(np.uint8)[..., None]  # [1797, 8, 8, 1]
labels = digits.target
train, meta, test = np.split(np.random.default_rng(0).permutation(len(labels)), [1200, 1400])


def pipeline(rows, seed=0):  # your own tf.data pipeline of (images, labels) batches
    return tf.data.Dataset.from_tensor_slices((images[rows], labels[rows])).shuffle(len(rows), seed=seed).batch(32)


def backbone():  # your network: it takes raw pixels and scales them itself
    pixels = keras.Input((8, 8, 1))
    x = keras.layers.Rescaling(1 / 255)(pixels)
    for filters in (16, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9)(x))  # Keras' 0.99 lags in short runs
    return keras.Model(pixels, x)


psi = maxl_tf.psi.uniform(pri=10, aux=30)  # 3 auxiliary classes per digit
model = maxl_tf.MAXL(
    evaluator=maxl_tf.heads.multitask(backbone(), pri=10, psi=psi),
    generator=maxl_tf.heads.generator(backbone(), psi=psi),  # a backbone of its own
    psi=psi,
)
model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), generator_optimizer=keras.optimizers.SGD(1e-3))
model.fit(
    pipeline(train),
    meta_data=pipeline(meta, seed=1),
    validation_data=pipeline(test),
    epochs=5,
    callbacks=[
        maxl_tf.callbacks.LabelUsage(),  # first, so the others see aux_used_mean and aux_entropy_mean
        keras.callbacks.ModelCheckpoint("digits.keras"),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=3),  # val_loss: the principal loss
        keras.callbacks.CSVLogger("digits.csv"),
    ],
    verbose=2,
)
model = keras.models.load_model("digits.keras")  # MAXL, both optimisers' state included: fit on
model.export("digits_export")  # what a command-line run leaves: .keras files, serving/, classes.json

serving = tf.saved_model.load("digits_export/serving")  # no maxl_tf needed; keep it in a variable
outputs = serving.serve(tf.constant(images[test[:4]]))  # uint8 or floats 0..255, any size
print(outputs["principal"].numpy().argmax(axis=1), labels[test[:4]])
