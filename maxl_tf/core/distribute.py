"""Data-parallel training: which strategy runs the steps, and the cross-replica sums they need.

Every replica sees an equal slice of the global batch. The steps divide their per-replica mean
losses by the number of replicas, so the sum over replicas of their gradients (what the Keras
optimiser all-reduces) is the gradient of the global batch's mean loss. The meta step also
all-reduces the lookahead's inner gradient and the generator's label usage, so each replica takes
the same lookahead that one device would take on the whole batch (meta.py). Batch norm uses
synchronised statistics across replicas (models/vgg.py). With one replica every helper here is the
identity and costs nothing.
"""

import json
import os

import tensorflow as tf

from maxl_tf import errors


def make_strategy(kind: str, batch_size: int) -> tf.distribute.Strategy:
    """The tf.distribute strategy for --strategy=kind, which must split batch_size evenly.

    mirrored uses every visible GPU; on a machine without GPUs it uses every logical CPU device
    (one, unless the CPU was split with tf.config.set_logical_device_configuration, as the tests do).
    multi_worker reads the cluster from the TF_CONFIG environment variable.

    Raises:
      errors.Error: the strategy cannot start here, or its replicas cannot split the batch.
    """
    if kind == "none":
        strategy = tf.distribute.get_strategy()
    elif kind == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
    elif kind == "multi_worker":
        try:
            cluster = json.loads(os.environ.get("TF_CONFIG", ""))["cluster"]["worker"]
        except (ValueError, KeyError, TypeError):
            raise errors.Error(
                "--strategy=multi_worker needs the TF_CONFIG environment variable, e.g. "
                'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}\' (see BUILD.md).'
            ) from None
        if not cluster:
            raise errors.Error("TF_CONFIG lists no workers; --strategy=multi_worker needs at least one.")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        raise errors.Error(f"--strategy={kind}: unknown; use none, mirrored or multi_worker.")
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise errors.Error(
            f"--batch_size={batch_size}: must be a multiple of the {replicas} replicas of "
            f"--strategy={kind}, so every replica gets an equal slice."
        )
    return strategy


def distribute_dataset(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """Splits each global batch into per-replica slices (every worker builds the same batches and
    keeps its own slices); without a mirrored strategy, the dataset itself."""
    if not isinstance(strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)):
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def any_replica(strategy: tf.distribute.Strategy, flag):
    """Whether `flag` is true on any replica of any worker (a collective: call it on all)."""
    votes = strategy.run(lambda f: tf.cast(f, tf.int32), args=(flag,))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, votes, axis=None) > 0


def num_replicas() -> int:
    """Replicas in sync of the strategy in scope (1 outside any)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_share(loss):
    """A replica's mean loss divided by the replica count: summed over replicas, the global mean."""
    replicas = num_replicas()
    return loss if replicas == 1 else loss / replicas


def all_reduce_mean(values):
    """Mean over replicas of a tensor or a list of tensors, differentiable (the gradient of an
    all-reduce sum is an all-reduce sum); the identity with one replica."""
    replicas = num_replicas()
    context = tf.distribute.get_replica_context()
    if replicas == 1 or context is None:
        return values
    summed = context.all_reduce(tf.distribute.ReduceOp.SUM, values)
    if isinstance(values, (list, tuple)):
        return [v / replicas for v in summed]
    return summed / replicas


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files (always, except non-chief multi-workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (
        task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
    )
