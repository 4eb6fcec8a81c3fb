"""Tests for maxl_tf.data: meta split, epoch order, augmentation and resumable pipelines."""

import numpy as np
import tensorflow as tf

from maxl_tf.core import streams
from maxl_tf.data import folder
from maxl_tf.data import pipeline as data
from maxl_tf.data import registry
from maxl_tf.data import source
from maxl_tf.data import tfds
from maxl_tf.models import pixels

_BLACK = 0.0  # the padding: a black raw pixel


class SplitMetaTest(tf.test.TestCase):
    def test_disjoint_covering_sizes(self):
        for n, expected_meta in ((1000, 100), (1797, 180), (55, 6), (7, 1)):
            train, meta = data.split_meta(n, 0.1, seed=0)
            self.assertLen(meta, expected_meta)
            self.assertLen(train, n - expected_meta)
            self.assertEmpty(np.intersect1d(train, meta))
            self.assertAllEqual(np.sort(np.concatenate([train, meta])), np.arange(n))
            # Returned sorted, so gathering keeps the data set's order.
            self.assertAllEqual(train, np.sort(train))
            self.assertAllEqual(meta, np.sort(meta))

    def test_other_fractions(self):
        train, meta = data.split_meta(200, 0.25, seed=3)
        self.assertLen(meta, 50)
        self.assertLen(train, 150)
        # A tiny fraction still holds out one example.
        train, meta = data.split_meta(20, 0.001, seed=3)
        self.assertLen(meta, 1)
        self.assertLen(train, 19)

    def test_fraction_zero_reuses_everything(self):
        train, meta = data.split_meta(37, 0.0, seed=0)
        self.assertAllEqual(train, np.arange(37))
        self.assertAllEqual(meta, np.arange(37))

    def test_deterministic_per_seed(self):
        train_a, meta_a = data.split_meta(1000, 0.1, seed=4)
        train_b, meta_b = data.split_meta(1000, 0.1, seed=4)
        self.assertAllEqual(train_a, train_b)
        self.assertAllEqual(meta_a, meta_b)
        _, meta_c = data.split_meta(1000, 0.1, seed=5)
        self.assertNotAllEqual(meta_a, meta_c)
        # Not simply the first or last 10%.
        self.assertNotAllEqual(meta_a, np.arange(100))
        self.assertNotAllEqual(meta_a, np.arange(900, 1000))


class EpochOrderTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.indices = np.asarray([3, 8, 10, 11, 20, 21, 40, 41, 42, 99])

    def test_permutation_of_indices(self):
        order = data.epoch_order(self.indices, 10, seed=0, epoch=0, stream=streams.TRAIN_STREAM)
        self.assertAllEqual(np.sort(order), self.indices)
        self.assertNotAllEqual(order, self.indices)

    def test_prefix_when_shorter(self):
        full = data.epoch_order(self.indices, 10, seed=0, epoch=2, stream=0)
        part = data.epoch_order(self.indices, 6, seed=0, epoch=2, stream=0)
        self.assertAllEqual(part, full[:6])
        self.assertLen(np.unique(part), 6)

    def test_deterministic(self):
        a = data.epoch_order(self.indices, 10, seed=1, epoch=3, stream=0)
        b = data.epoch_order(self.indices, 10, seed=1, epoch=3, stream=0)
        self.assertAllEqual(a, b)

    def test_differs_across_epochs_streams_seeds(self):
        base = data.epoch_order(np.arange(100), 100, seed=1, epoch=0, stream=0)
        for other in (
            data.epoch_order(np.arange(100), 100, seed=1, epoch=1, stream=0),
            data.epoch_order(np.arange(100), 100, seed=1, epoch=0, stream=1),
            data.epoch_order(np.arange(100), 100, seed=2, epoch=0, stream=0),
        ):
            self.assertAllEqual(np.sort(other), np.arange(100))
            self.assertNotAllEqual(other, base)
        epochs = [data.epoch_order(np.arange(100), 100, seed=1, epoch=e, stream=0) for e in range(5)]
        self.assertLen({tuple(e) for e in epochs}, 5)

    def test_cycles_when_longer(self):
        order = data.epoch_order(self.indices, 25, seed=0, epoch=0, stream=streams.META_STREAM)
        self.assertLen(order, 25)
        # Two full passes, each a permutation, then part of a third without repeats.
        self.assertAllEqual(np.sort(order[:10]), self.indices)
        self.assertAllEqual(np.sort(order[10:20]), self.indices)
        self.assertLen(np.unique(order[20:]), 5)
        self.assertTrue(np.all(np.isin(order[20:], self.indices)))
        # Passes are freshly shuffled, not one permutation repeated.
        self.assertNotAllEqual(order[:10], order[10:20])
        # The first pass is the order an epoch of exactly one pass would see.
        self.assertAllEqual(order[:10], data.epoch_order(self.indices, 10, 0, 0, streams.META_STREAM))

    def test_steps_per_epoch(self):
        self.assertEqual(data.steps_per_epoch(1000, 100), 10)
        self.assertEqual(data.steps_per_epoch(1050, 100), 10)
        self.assertEqual(data.steps_per_epoch(50, 100), 1)


def _distinct_images(batch, height, width, channels):
    """Float images whose pixels are all distinct and differ from the padding."""
    values = np.arange(batch * height * width * channels, dtype=np.float32) + 1.0
    return values.reshape(batch, height, width, channels)


def _match_crop(output, image, pad=source.CIFAR_AUGMENTATION.crop_padding):
    """All (row, col, flipped) such that output equals the padded image cropped there."""
    height, width = image.shape[:2]
    padded = np.pad(image, [[pad, pad], [pad, pad], [0, 0]], constant_values=_BLACK)
    matches = []
    for r in range(2 * pad + 1):
        for c in range(2 * pad + 1):
            crop = padded[r : r + height, c : c + width]
            if np.array_equal(output, crop):
                matches.append((r, c, False))
            if np.array_equal(output, crop[:, ::-1]):
                matches.append((r, c, True))
    return matches


class AugmentTest(tf.test.TestCase):
    def test_shape_and_determinism(self):
        images = tf.constant(np.random.default_rng(0).normal(size=(5, 8, 8, 3)), tf.float32)
        seed = tf.constant([3, 17], tf.int64)
        a = data.augment(images, seed)
        b = data.augment(images, seed)
        self.assertEqual(a.shape, images.shape)
        self.assertEqual(a.dtype, tf.float32)
        self.assertAllEqual(a, b)
        c = data.augment(images, tf.constant([3, 18], tf.int64))
        self.assertNotAllEqual(a, c)

    def test_crop_is_translation_and_flip(self):
        images = _distinct_images(64, 6, 5, 2)
        out = data.augment(tf.constant(images), tf.constant([1, 2], tf.int64)).numpy()
        offsets, flips = [], []
        for i in range(64):
            matches = _match_crop(out[i], images[i])
            # Exactly one placement: the pixels are distinct and every crop overlaps the image.
            self.assertLen(matches, 1, msg=f"image {i}: {matches}")
            r, c, flipped = matches[0]
            offsets.append((r, c))
            flips.append(flipped)
            # Each image is cropped from itself, not from another image of the batch.
            inside = out[i][out[i] != _BLACK]
            self.assertTrue(np.all(np.isin(inside, images[i])))
        self.assertTrue(any(flips))
        self.assertFalse(all(flips))
        rows, cols = zip(*offsets)
        self.assertGreater(len(set(rows)), 4)
        self.assertGreater(len(set(cols)), 4)
        self.assertAllInRange(np.asarray(offsets), 0, 2 * source.CIFAR_AUGMENTATION.crop_padding)

    def test_digit_augmentation_shifts_without_flipping(self):
        images = _distinct_images(64, 6, 5, 1)
        mnist = registry.get("mnist").augmentation
        self.assertEqual(mnist, source.Augmentation(crop_padding=2, horizontal_flip=False))
        out = data.augment(tf.constant(images), tf.constant([1, 2], tf.int64), mnist).numpy()
        offsets = []
        for i in range(64):
            matches = _match_crop(out[i], images[i], pad=2)
            self.assertLen(matches, 1, msg=f"image {i}: {matches}")
            r, c, flipped = matches[0]
            self.assertFalse(flipped)
            offsets.append((r, c))
        # Shifts of up to 2 pixels each way, in many combinations.
        self.assertAllInRange(np.asarray(offsets), 0, 4)
        self.assertGreater(len(set(offsets)), 15)

    def test_per_data_set_defaults(self):
        built_in = [name for name in registry.names() if name != registry.FOLDER]
        flips = {name: registry.get(name).augmentation.horizontal_flip for name in built_in}
        self.assertEqual(
            flips,
            {
                "cifar100": True,
                "cifar10": True,
                "cifar10_1": True,
                "fashion_mnist": True,
                "mnist": False,
                "digits": False,
            },
        )
        # Fashion-MNIST's shifts stay within the 2 black pixels idx.pad_for_vgg adds.
        self.assertEqual(registry.get("fashion_mnist").augmentation.crop_padding, 2)
        self.assertEqual(registry.get("cifar10").augmentation.crop_padding, 4)
        # A user's own images (folder, tfds:NAME) get CIFAR's: natural photographs.
        self.assertEqual(folder.Folder.augmentation, source.CIFAR_AUGMENTATION)
        self.assertEqual(tfds.TfdsSource.augmentation, source.CIFAR_AUGMENTATION)
        self.assertEqual(source.CIFAR_AUGMENTATION, source.Augmentation(crop_padding=4, horizontal_flip=True))

    def test_padding_is_black(self):
        images = np.full((32, 8, 8, 1), 7.0, np.float32)
        out = data.augment(tf.constant(images), tf.constant([0, 9], tf.int64)).numpy()
        self.assertAllEqual(np.unique(out), [_BLACK, 7.0])
        # The networks' first layer maps black to exactly the normalised black the pipeline padded
        # with before networks took raw pixels, so augmented runs keep their numbers.
        normalise = pixels.Normalise()
        self.assertAllEqual(normalise(np.float32([[0.0, 255.0]])), [[-2.5, np.float32((1.0 - 0.5) / 0.2)]])


def _examples(n=23, size=8):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    return data.Examples(images, np.arange(n, dtype=np.int64) % 4, (np.arange(n, dtype=np.int64) * 7) % 5)


def _collect(dataset):
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset]


class PipelineTest(tf.test.TestCase):
    def test_batches_without_augmentation_gather_by_index(self):
        examples = _examples()
        pipeline = data.Pipeline(examples)
        order = data.epoch_order(np.arange(23), 20, seed=0, epoch=0, stream=0)
        batches = _collect(pipeline.batches(order, 5))
        self.assertLen(batches, 4)
        for step, batch in enumerate(batches):
            idx = order[step * 5 : (step + 1) * 5]
            self.assertAllEqual(batch["indices"], idx)
            self.assertAllEqual(batch["labels"], examples.labels[idx])
            self.assertAllEqual(batch["aux_labels"], examples.aux_labels[idx])
            self.assertAllEqual(batch["images"], examples.images[idx].astype(np.float32))  # raw pixels
            self.assertEqual(batch["images"].dtype, np.float32)

    def test_resume_matches_full_stream(self):
        examples = _examples()
        pipeline = data.Pipeline(examples)
        order = data.epoch_order(np.arange(23), 30, seed=5, epoch=2, stream=1)  # cycles
        seed = (5, 2, 1)
        full = _collect(pipeline.batches(order, 5, augment_seed=seed))
        self.assertLen(full, 6)
        # Augmentation is on: the images differ from the plain gather.
        plain = _collect(pipeline.batches(order, 5))
        self.assertNotAllClose(full[0]["images"], plain[0]["images"])
        for k in (0, 1, 3, 5):
            resumed = _collect(pipeline.batches(order, 5, augment_seed=seed, first_step=k))
            self.assertLen(resumed, 6 - k)
            for got, want in zip(resumed, full[k:]):
                for key in ("images", "labels", "aux_labels", "indices"):
                    self.assertAllEqual(got[key], want[key])
        # Run twice: identical.
        again = _collect(pipeline.batches(order, 5, augment_seed=seed))
        for got, want in zip(again, full):
            self.assertAllEqual(got["images"], want["images"])

    def test_augmentation_seed_per_epoch_and_stream(self):
        pipeline = data.Pipeline(_examples())
        order = np.arange(20)
        first = _collect(pipeline.batches(order, 10, augment_seed=(5, 0, 0)))
        for other_seed in ((5, 1, 0), (5, 0, 1), (6, 0, 0)):
            other = _collect(pipeline.batches(order, 10, augment_seed=other_seed))
            self.assertAllEqual(other[0]["indices"], first[0]["indices"])
            self.assertNotAllClose(other[0]["images"], first[0]["images"])

    def test_evaluation_batches_cover_everything_once(self):
        examples = _examples(n=23)
        batches = _collect(data.Pipeline(examples).evaluation_batches(5))
        self.assertEqual([len(b["labels"]) for b in batches], [5, 5, 5, 5, 3])
        indices = np.concatenate([b["indices"] for b in batches])
        self.assertAllEqual(indices, np.arange(23))
        self.assertAllEqual(np.concatenate([b["labels"] for b in batches]), examples.labels)
        self.assertAllEqual(np.concatenate([b["aux_labels"] for b in batches]), examples.aux_labels)
        images = np.concatenate([b["images"] for b in batches])
        self.assertAllEqual(images, examples.images.astype(np.float32))  # raw pixels

    def test_evaluation_batches_exact_multiple(self):
        batches = _collect(data.Pipeline(_examples(n=20)).evaluation_batches(5))
        self.assertEqual([len(b["labels"]) for b in batches], [5, 5, 5, 5])


if __name__ == "__main__":
    tf.test.main()
