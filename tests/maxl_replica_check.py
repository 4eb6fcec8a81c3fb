"""Run as its own process by maxl_model_test.py (two logical CPU devices must exist before
TensorFlow initialises): fits MAXL for a few steps on one device and on a MirroredStrategy of
two CPU replicas, in float64, from the same weights on the same batches, and prints one JSON
line: the relative difference of the final weights, how far they moved, and the largest relative
difference of the epoch's logs (Keras' metrics are float32), the gradient norms apart.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras
import numpy as np

from maxl_tf.models import maxl
from maxl_tf.models import vgg

PSI = (3, 2)
BATCH, STEPS = 8, 3


def fit(strategy, synchronized_bn, initial, data, meta):
    with strategy.scope():
        evaluator = vgg.build_evaluator(
            (8, 8, 1), len(PSI), sum(PSI), "vgg_small", 0.125, synchronized_bn=synchronized_bn
        )
        generator = vgg.build_generator((8, 8, 1), sum(PSI), "vgg_small", 0.125, synchronized_bn=synchronized_bn)
        evaluator.set_weights(initial[0])
        generator.set_weights(initial[1])
        # L2 weight decay: L1's sign(w) of a bias that batch norm cancels (its gradient is rounding
        # noise around 0) would flip with the last bit, one device against two.
        model = maxl.MAXL(evaluator, generator, psi=PSI, generator_weight_decay_type="l2")
        model.compile(keras.optimizers.SGD(0.1), keras.optimizers.SGD(0.05))
    history = model.fit(data, meta_data=meta, epochs=1, verbose=0)
    weights = [v.numpy() for v in evaluator.weights + generator.weights]
    return weights, {k: v[0] for k, v in history.history.items()}


def main():
    keras.config.set_dtype_policy("float64")
    keras.utils.set_random_seed(0)
    initial = (
        vgg.build_evaluator((8, 8, 1), len(PSI), sum(PSI), "vgg_small", 0.125).get_weights(),
        vgg.build_generator((8, 8, 1), sum(PSI), "vgg_small", 0.125).get_weights(),
    )
    rng = np.random.default_rng(0)

    def batches():
        images = rng.uniform(0, 255, size=(STEPS * BATCH, 8, 8, 1))  # raw pixels (models/pixels.py)
        labels = rng.integers(0, len(PSI), STEPS * BATCH)
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH)

    data, meta = batches(), batches()
    one, one_logs = fit(tf.distribute.get_strategy(), False, initial, data, meta)
    two, two_logs = fit(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), True, initial, data, meta)
    a = np.concatenate([np.ravel(w) for w in two])
    b = np.concatenate([np.ravel(w) for w in one])
    changed = np.concatenate([np.ravel(w) for w in initial[0] + initial[1]])

    def difference(keys):
        return max(abs(two_logs[k] - one_logs[k]) / max(abs(one_logs[k]), 1e-12) for k in keys)

    report = {
        "weights": float(np.linalg.norm(a - b) / np.linalg.norm(b)),
        "moved": float(np.linalg.norm(b - changed) / np.linalg.norm(changed)),
        "logs": difference(k for k in one_logs if "grad_norm" not in k),
        # Of the step's summed gradient (steps._step_grad_norm): the same on one and two replicas.
        "grad_norms": difference(("grad_norm", "meta_grad_norm")),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
