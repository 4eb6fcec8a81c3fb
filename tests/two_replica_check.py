"""Run as its own process by distribute_test.py: two logical CPU devices must exist before
TensorFlow initialises, which no test in a shared process can arrange.

    python tests/two_replica_check.py            # one iteration, float64
    python tests/two_replica_check.py LOGDIR     # the smoke preset through train_and_evaluate

The first takes one MAXL iteration (evaluator step, then generator meta step) with each
hypergradient on one device and on a MirroredStrategy of two CPU replicas, each replica holding
half of the same global batch, in float64, and prints one JSON line of relative differences per
hypergradient. It runs eagerly: compiling the second-order graphs of two replicas takes six
times as long as running them, and the second check trains the compiled step. The second trains
the smoke preset with --strategy=mirrored under LOGDIR and prints its per-epoch losses, for the
test to compare with the one-device run. (One process cannot do both: its second strategy's
collectives would reuse the first's instance keys with another dtype.)
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras
import numpy as np

from maxl_tf.core import hierarchy
from maxl_tf.core import meta
from maxl_tf.core import methods
from maxl_tf.core import steps
from maxl_tf.models import vgg

PSI = (3, 2)
BATCH = 8


def build(synchronized_bn):
    keras.utils.set_random_seed(0)
    evaluator = vgg.build_evaluator((8, 8, 1), len(PSI), sum(PSI), "vgg_small", 0.125, synchronized_bn=synchronized_bn)
    generator = vgg.build_generator((8, 8, 1), sum(PSI), "vgg_small", 0.125, synchronized_bn=synchronized_bn)
    optimizers = []
    for model, lr in ((evaluator, 0.1), (generator, 0.05)):
        optimizer = keras.optimizers.SGD(lr)
        optimizer.build(model.trainable_variables)
        optimizers.append(optimizer)
    return evaluator, generator, optimizers


def meta_gradient(evaluator, generator, train_batch, meta_batch, task):
    """The task's hypergradient of this replica's share, as steps.generator_step computes it."""
    options = dict(gamma=task.gamma, entropy_weight=task.entropy_weight)
    if task.hypergradient == "implicit":
        return meta.implicit_meta_gradient(
            evaluator,
            generator,
            train_batch["images"],
            train_batch["labels"],
            meta_batch["images"],
            meta_batch["labels"],
            task.mask_table,
            0.1,
            neumann_terms=task.neumann_terms,
            **options,
        )
    function = {"second_order": meta.second_order_meta_gradient, "first_order": meta.first_order_meta_gradient}[
        task.hypergradient
    ]
    return function(evaluator, generator, meta_batch["images"], meta_batch["labels"], task.mask_table, 0.1, **options)


def iteration(evaluator, generator, optimizers, train_batch, meta_batch, task):
    steps.evaluator_step(evaluator, optimizers[0], generator, train_batch, task)
    meta_grads, stats = meta_gradient(evaluator, generator, train_batch, meta_batch, task)
    steps.generator_step(generator, optimizers[1], evaluator, meta_batch, task, 0.1, train_batch=train_batch)
    return meta_grads, stats["meta_loss"]


def relative(tensors, reference):
    """||a - b|| / ||b|| over all tensors together. (Per tensor would be noise: the biases of
    convolutions followed by batch norm have a gradient of exactly 0 up to rounding.)"""
    a = np.concatenate([np.ravel(t) for t in tensors])
    b = np.concatenate([np.ravel(t) for t in reference])
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
    keras.config.set_dtype_policy("float64")
    rng = np.random.default_rng(0)

    def batch():
        return {
            "images": tf.constant(rng.normal(size=(BATCH, 8, 8, 1))),
            "labels": tf.constant(rng.integers(0, len(PSI), BATCH), tf.int64),
            "aux_labels": tf.zeros([BATCH], tf.int64),
        }

    train_batch, meta_batch = batch(), batch()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    report = {"replicas": strategy.num_replicas_in_sync}
    for hypergradient in methods.HYPERGRADIENTS:
        task = steps.Task(
            "maxl", len(PSI), sum(PSI), tf.constant(hierarchy.psi_mask(PSI), tf.float64), hypergradient=hypergradient
        )
        # The implicit hypergradient differentiates batch norm's backward in its input, which
        # Keras' unsynchronised float64 moments get wrong at second order (meta.py): one device
        # uses the synchronised ones too, exact in float64.
        report[hypergradient] = compare(
            strategy, task, train_batch, meta_batch, single_synchronized_bn=hypergradient == "implicit"
        )
    print(json.dumps(report))


def compare(strategy, task, train_batch, meta_batch, single_synchronized_bn):
    """Relative differences between one device and the strategy's replicas of one iteration."""
    single = build(synchronized_bn=single_synchronized_bn)
    initial = {name: [v.numpy() for v in model.variables] for name, model in zip(("evaluator", "generator"), single)}
    single_grads, single_loss = iteration(*single, train_batch, meta_batch, task)

    with strategy.scope():
        mirrored = build(synchronized_bn=True)

    def halves(full):  # replica i gets examples [4i, 4i + 4) of the global batch
        return strategy.experimental_distribute_values_from_function(
            lambda context: {
                k: v[context.replica_id_in_sync_group * BATCH // 2 :][: BATCH // 2] for k, v in full.items()
            }
        )

    grads, loss = strategy.run(
        lambda t, m: iteration(*mirrored, t, m, task), args=(halves(train_batch), halves(meta_batch))
    )
    # Each replica's meta-gradient is of its share of the loss: they sum to the global one.
    mirrored_grads = [strategy.reduce("SUM", g, axis=None) for g in grads]
    mirrored_loss = strategy.reduce("MEAN", loss, axis=None)
    report = {
        "meta_gradient": relative(mirrored_grads, single_grads),
        "meta_loss": relative([mirrored_loss], [single_loss]),
        "meta_gradient_norm": float(tf.linalg.global_norm(single_grads)),
    }
    for name, (one, two) in {"evaluator": (single[0], mirrored[0]), "generator": (single[1], mirrored[1])}.items():
        # Compare the updates, which are small next to the weights themselves.
        report[name + "_update"] = relative(
            [v.numpy() - w for v, w in zip(two.variables, initial[name])],
            [v.numpy() - w for v, w in zip(one.variables, initial[name])],
        )
    return report


def train_mirrored(logdir):
    from maxl_tf.experiment import train
    from tests import smoke_util

    config = smoke_util.smoke_config(os.path.join(logdir, "mirrored"), strategy="mirrored", export=False)
    results = train.train_and_evaluate(config, progress=False)
    history = [
        {k: v for k, v in record.items() if k.startswith(("train/", "meta/", "test/"))} for record in results["history"]
    ]
    print(json.dumps(history))


if __name__ == "__main__":
    sys.exit(train_mirrored(sys.argv[1]) if len(sys.argv) > 1 else main())
