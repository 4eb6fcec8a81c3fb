"""tf.data pipelines over in-memory arrays, deterministic per (seed, epoch, step).

The whole data set lives in memory (CIFAR is 150 MB of uint8), so "shuffle" is a permutation
drawn from (seed, epoch) and "cache" is the array itself. Batches are gathered by index and
augmented with stateless random ops seeded by (seed, epoch, step): a run resumed at any step
of any epoch sees exactly the batches an uninterrupted run would have seen. Batches hold raw
pixels as float32 0..255: the networks scale their own input (models/pixels.py).
"""

import dataclasses

import numpy as np
import tensorflow as tf

from maxl_tf.core import streams
from maxl_tf.data import source as source_lib


@dataclasses.dataclass(frozen=True)
class Examples:
    """Examples of one split, labelled for one run.

    Attributes:
      images: [N, H, W, C] uint8: an array, or rows read from disk per batch (images.DiskImages).
      labels: [N] int64 principal labels.
      aux_labels: [N] int64 fixed auxiliary labels (human or random methods), else zeros.
    """

    images: np.ndarray
    labels: np.ndarray
    aux_labels: np.ndarray


def _rng(seed: int, *stream) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def split_meta(num_examples: int, fraction: float, seed: int):
    """Holds out a fraction of the training examples as the meta split (paper Section 4.1).

    Returns:
      (train_indices, meta_indices) into the training set. fraction=0 reuses the whole training
      set as meta data, as the authors' code does.
    """
    indices = np.arange(num_examples)
    if fraction == 0:
        return indices, indices
    order = _rng(seed, streams.SPLIT_STREAM).permutation(num_examples)
    num_meta = max(1, int(round(fraction * num_examples)))
    return np.sort(order[num_meta:]), np.sort(order[:num_meta])


def epoch_order(indices: np.ndarray, length: int, seed: int, epoch: int, stream: int) -> np.ndarray:
    """The first `length` example indices an epoch visits: fresh permutations of `indices`,
    concatenated when the epoch needs more examples than there are (a small meta split)."""
    passes = -(-length // len(indices))
    orders = [_rng(seed, stream, epoch, p).permutation(indices) for p in range(passes)]
    return np.concatenate(orders)[:length]


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch; the remainder is dropped so every step has the same shapes."""
    return max(1, num_examples // batch_size)


def augment(images, seed, augmentation: source_lib.Augmentation = source_lib.CIFAR_AUGMENTATION):
    """Random crop with zero padding and, where the data set allows it, horizontal flip, per image.

    Args:
      images: [batch, H, W, C] float32 pixels (padding is black, 0).
      seed: [2] int64 stateless seed.
      augmentation: the crop padding and whether to flip.
    """
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    p = augmentation.crop_padding
    # fmt: off
    padded = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]])                           # [B, H+2p, W+2p, C]
    offsets = tf.random.stateless_uniform([batch, 2], crop_seed, 0, 2 * p + 1, tf.int32)
    rows = offsets[:, :1] + tf.range(height)[None, :]                                   # [B, H]
    cols = offsets[:, 1:] + tf.range(width)[None, :]                                    # [B, W]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)                             # [B, H, W+2p, C]
    cropped = tf.gather(cropped, cols, axis=2, batch_dims=1)                            # [B, H, W, C]
    # fmt: on
    if not augmentation.horizontal_flip:
        return cropped
    flip = tf.random.stateless_uniform([batch], flip_seed) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(cropped, axis=[2]), cropped)


class Pipeline:
    """Builds per-epoch tf.data streams of batches from one split held in memory."""

    def __init__(self, examples: Examples, augmentation: source_lib.Augmentation = source_lib.CIFAR_AUGMENTATION):
        self._augmentation = augmentation
        if isinstance(examples.images, np.ndarray):
            self._images = tf.constant(examples.images)
            self._take = lambda indices: tf.gather(self._images, indices)
        else:  # streamed: only the batch's rows leave the disk
            rows, shape = examples.images, examples.images.shape[1:]

            def take(indices):
                batch = tf.numpy_function(lambda i: rows[i], [indices], tf.uint8, stateful=False)
                return tf.ensure_shape(batch, [None, *shape])

            self._take = take
        self._labels = tf.constant(examples.labels, tf.int64)
        self._aux_labels = tf.constant(examples.aux_labels, tf.int64)

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    def _gather(self, indices):
        return {
            "images": tf.cast(self._take(indices), tf.float32),
            "labels": tf.gather(self._labels, indices),
            "aux_labels": tf.gather(self._aux_labels, indices),
            "indices": indices,
        }

    def batches(self, order: np.ndarray, batch_size: int, *, augment_seed=None, first_step: int = 0):
        """Batches of `order` (length a multiple of batch_size) from step `first_step` on.

        Args:
          order: example indices in visiting order.
          augment_seed: None for no augmentation, else a (seed, epoch, stream) triple; step s of
            the epoch is augmented with the stateless seed (seed, (epoch * 2 + stream) * 2**24 + s).
        """
        index_batches = np.asarray(order, np.int64).reshape(-1, batch_size)  # [steps, B]
        dataset = tf.data.Dataset.from_tensor_slices(index_batches[first_step:])
        dataset = dataset.enumerate(start=first_step)

        def make_batch(step, indices):
            batch = self._gather(indices)
            if augment_seed is not None:
                seed, epoch, stream = augment_seed
                step_seed = tf.stack([tf.constant(seed, tf.int64), (epoch * 2 + stream) * 2**24 + step])
                batch["images"] = augment(batch["images"], step_seed, self._augmentation)
            return batch

        return dataset.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
            tf.data.AUTOTUNE
        )

    def evaluation_batches(self, batch_size: int):
        """Every example once, in order, the last batch possibly smaller."""
        dataset = tf.data.Dataset.range(len(self)).batch(batch_size)
        return dataset.map(self._gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
