"""Tests for maxl_tf.data.image_folder on tiny folders and mocked tfds sets written by the tests.

Images are constant-colour squares whose colour encodes (class, index), so the loaded pixels
say which file each example came from.
"""

import os
from unittest import mock

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from maxl_tf import errors
from maxl_tf.data import image_folder
from maxl_tf.data import loaders


def _colour(label: int, index: int) -> list:
    return [10 + 40 * label, 5 * index, 200]


def _write(path: str, pixels: np.ndarray) -> None:
    """Writes uint8 [h, w, c] as PNG, or as JPEG when the name says so."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    encode = tf.io.encode_jpeg if path.endswith(".jpg") else tf.io.encode_png
    tf.io.write_file(path, encode(pixels))


def _square(colour, size: int = 8) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.uint8), (size, size, len(colour))).copy()


class ImageFolderTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.get_temp_dir(), "images")

    def _make(self, counts: dict, root: str = None, size: int = 8) -> dict:
        """Writes counts[name] constant-colour PNGs per class; returns {name: [colours]}."""
        root = root or self.root
        colours = {}
        for label, (name, count) in enumerate(sorted(counts.items())):
            colours[name] = [_colour(label, i) for i in range(count)]
            for i, colour in enumerate(colours[name]):
                _write(os.path.join(root, name, f"{i:03d}.png"), _square(colour, size))
        return colours

    def _assert_constant_images(self, split: loaders.Split, class_count: int) -> list:
        """Every image is one of _colour(label, i); returns the (label, i) of each."""
        found = []
        for image, label in zip(split.images, split.labels):
            pixel = image[0, 0]
            self.assertAllEqual(image, np.broadcast_to(pixel, image.shape))
            self.assertEqual(pixel[0], 10 + 40 * label)
            self.assertEqual(pixel[2], 200)
            found.append((int(label), int(pixel[1]) // 5))
        self.assertAllInRange(split.labels, 0, class_count - 1)
        return found

    # --- layouts --------------------------------------------------------------------------------

    def test_held_out_fraction_is_stratified_and_seeded(self):
        self._make({"cat": 5, "dog": 5, "owl": 10})

        data = image_folder.load_folder(self.root, test_fraction=0.2)

        self.assertEqual(data.class_names, ("cat", "dog", "owl"))
        self.assertEqual(data.train.images.shape, (16, 8, 8, 3))
        self.assertEqual(data.test.images.shape, (4, 8, 8, 3))
        self.assertEqual(data.train.images.dtype, np.uint8)
        self.assertEqual(data.train.labels.dtype, np.int64)
        # ceil(0.2 * 20) = 4 test images, in proportion to the classes: 1 cat, 1 dog, 2 owls.
        self.assertAllEqual(np.bincount(data.test.labels, minlength=3), [1, 1, 2])
        train = self._assert_constant_images(data.train, 3)
        test = self._assert_constant_images(data.test, 3)
        everything = [(0, i) for i in range(5)] + [(1, i) for i in range(5)] + [(2, i) for i in range(10)]
        self.assertCountEqual(train + test, everything)
        self.assertIn("0.2 of each class held out", data.source)

        again = image_folder.load_folder(self.root, test_fraction=0.2)
        self.assertAllEqual(again.test.images, data.test.images)
        other = image_folder.load_folder(self.root, test_fraction=0.2, split_seed=1)
        self.assertAllEqual(np.bincount(other.test.labels, minlength=3), [1, 1, 2])
        self.assertNotAllEqual(other.test.images, data.test.images)

    def test_train_and_test_folders_are_used_as_given(self):
        self._make({"a": 3, "b": 2}, os.path.join(self.root, "train"))
        self._make({"a": 1, "b": 2}, os.path.join(self.root, "test"))

        data = image_folder.load_folder(self.root, test_fraction=0.5)

        self.assertEqual(data.class_names, ("a", "b"))
        self.assertCountEqual(self._assert_constant_images(data.train, 2), [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)])
        self.assertCountEqual(self._assert_constant_images(data.test, 2), [(0, 0), (1, 0), (1, 1)])
        self.assertIn("train/ and test/", data.source)

    def test_nested_folders_jpeg_and_ignored_files(self):
        _write(os.path.join(self.root, "a", "x.png"), _square([1, 2, 3]))
        _write(os.path.join(self.root, "a", "deeper", "y.PNG"), _square([4, 5, 6]))
        _write(os.path.join(self.root, "b", "z.jpg"), _square([120, 60, 30]))
        _write(os.path.join(self.root, "b", "w.jpg"), _square([120, 60, 30]))
        with open(os.path.join(self.root, "a", "notes.txt"), "w") as f:
            f.write("not an image")
        with open(os.path.join(self.root, "b", "._z.jpg"), "w") as f:  # macOS metadata, hidden
            f.write("not an image")
        os.makedirs(os.path.join(self.root, ".thumbnails", "c"))

        data = image_folder.load_folder(self.root, test_fraction=0.5)

        images = np.concatenate([data.train.images, data.test.images])
        labels = np.concatenate([data.train.labels, data.test.labels])
        self.assertEqual(data.class_names, ("a", "b"))
        self.assertAllEqual(sorted(labels), [0, 0, 1, 1])
        self.assertAllEqual(sorted(images[labels == 0][:, 0, 0].tolist()), [[1, 2, 3], [4, 5, 6]])
        # JPEG is lossy: a flat colour comes back within a few levels.
        self.assertAllClose(images[labels == 1], [_square([120, 60, 30])] * 2, atol=3)

    # --- size and channels ----------------------------------------------------------------------

    def _load_all(self, **kwargs) -> np.ndarray:
        """Train and test images together (tests here are about pixels, not the split)."""
        data = image_folder.load_folder(self.root, test_fraction=0.5, **kwargs)
        return np.concatenate([data.train.images, data.test.images])

    def test_small_images_of_one_size_are_kept(self):
        self._make({"a": 2, "b": 2}, size=12)
        self.assertEqual(self._load_all().shape, (4, 12, 12, 3))

    def test_larger_or_mixed_sizes_become_32(self):
        self._make({"a": 2, "b": 2}, size=64)
        images = self._load_all()
        self.assertEqual(images.shape, (4, 32, 32, 3))
        # Resizing keeps a flat colour exactly.
        self.assertCountEqual(
            [image[0, 0].tolist() for image in images], [_colour(0, 0), _colour(0, 1), _colour(1, 0), _colour(1, 1)]
        )
        self.assertAllEqual(images, np.broadcast_to(images[:, :1, :1], images.shape))

        _write(os.path.join(self.root, "a", "small.png"), _square([9, 9, 9], 8))
        _write(os.path.join(self.root, "b", "wide.png"), np.full((10, 20, 3), 77, np.uint8))
        images = self._load_all()
        self.assertEqual(images.shape, (6, 32, 32, 3))
        self.assertAllEqual(images[images[:, 0, 0, 0] == 9], [_square([9, 9, 9], 32)])
        self.assertAllEqual(images[images[:, 0, 0, 0] == 77], [_square([77, 77, 77], 32)])

    def test_image_size_resizes_everything(self):
        self._make({"a": 2, "b": 2}, size=12)
        _write(os.path.join(self.root, "a", "big.png"), _square([1, 2, 3], 50))
        images = self._load_all(image_size=16)
        self.assertEqual(images.shape, (5, 16, 16, 3))
        self.assertAllEqual(images[images[:, 0, 0, 0] == 1], [_square([1, 2, 3], 16)])

    def test_downscaling_averages_instead_of_sampling(self):
        # A 2-pixel checkerboard shrunk 4x must become its mean grey, not a sample of it.
        checker = (np.indices((64, 64)).sum(axis=0) % 2 * 200).astype(np.uint8)[..., None]
        _write(os.path.join(self.root, "a", "checker.png"), checker)
        _write(os.path.join(self.root, "a", "checker2.png"), checker)
        _write(os.path.join(self.root, "b", "flat.png"), np.full((64, 64, 1), 100, np.uint8))
        _write(os.path.join(self.root, "b", "flat2.png"), np.full((64, 64, 1), 100, np.uint8))
        images = self._load_all(image_size=16)
        self.assertEqual(images.shape, (4, 16, 16, 1))
        self.assertAllClose(images[..., 0].mean(axis=(1, 2)), [100] * 4, atol=1)
        self.assertLess(images.std(), 2)

    def test_channels(self):
        _write(os.path.join(self.root, "a", "grey.png"), np.full((8, 8, 1), 90, np.uint8))
        _write(os.path.join(self.root, "a", "grey_alpha.png"), _square([60, 0]))
        _write(os.path.join(self.root, "b", "grey.png"), np.full((8, 8, 1), 30, np.uint8))
        _write(os.path.join(self.root, "b", "grey2.png"), np.full((8, 8, 1), 20, np.uint8))
        # All grey (one with alpha): one channel, alpha dropped.
        self.assertCountEqual(self._load_all()[:, 0, 0].tolist(), [[90], [60], [30], [20]])
        # One colour image with alpha: three channels, grey replicated, alpha dropped.
        _write(os.path.join(self.root, "b", "rgba.png"), _square([1, 2, 3, 0]))
        images = self._load_all()
        self.assertEqual(images.shape, (5, 8, 8, 3))
        self.assertCountEqual(images[:, 0, 0].tolist(), [[90] * 3, [60] * 3, [30] * 3, [20] * 3, [1, 2, 3]])

    # --- the disk cache -------------------------------------------------------------------------

    def test_cache_spares_the_second_decode(self):
        self._make({"a": 3, "b": 3})
        cache_dir = os.path.join(self.get_temp_dir(), "cache")
        first = image_folder.load_folder(self.root, cache_dir=cache_dir)
        [cache_file] = os.listdir(cache_dir)
        self.assertIn(f"cached in {os.path.join(cache_dir, cache_file)}", first.source)

        with mock.patch.object(image_folder, "_decode", side_effect=AssertionError("decoded")):
            second = image_folder.load_folder(self.root, cache_dir=cache_dir)
        self.assertIn("from the cache", second.source)
        for a, b in ((first.train, second.train), (first.test, second.test)):
            self.assertAllEqual(a.images, b.images)
            self.assertAllEqual(a.labels, b.labels)

        # Another size is another key; a changed folder replaces the folder's cache file.
        image_folder.load_folder(self.root, image_size=4, cache_dir=cache_dir)
        _write(os.path.join(self.root, "b", "new.png"), _square([250, 250, 250]))
        third = image_folder.load_folder(self.root, cache_dir=cache_dir)
        self.assertLen(os.listdir(cache_dir), 1)
        self.assertNotEqual(os.listdir(cache_dir), [cache_file])
        self.assertEqual(len(third.train.labels) + len(third.test.labels), 7)

    def test_corrupt_cache_is_decoded_again(self):
        self._make({"a": 2, "b": 2})
        cache_dir = os.path.join(self.get_temp_dir(), "cache")
        first = image_folder.load_folder(self.root, test_fraction=0.5, cache_dir=cache_dir)
        [cache_file] = os.listdir(cache_dir)
        with open(os.path.join(cache_dir, cache_file), "wb") as f:
            f.write(b"truncated")
        again = image_folder.load_folder(self.root, test_fraction=0.5, cache_dir=cache_dir)
        self.assertIn("cached in", again.source)
        self.assertAllEqual(again.train.images, first.train.images)

    def test_unwritable_cache_only_costs_a_note(self):
        self._make({"a": 2, "b": 2})
        blocker = os.path.join(self.get_temp_dir(), "a_file")
        open(blocker, "w").close()
        data = image_folder.load_folder(self.root, test_fraction=0.5, cache_dir=os.path.join(blocker, "cache"))
        self.assertIn("not cached", data.source)
        self.assertLen(data.train.labels, 2)

    # --- bad input: one line naming the folder, file or flag ------------------------------------

    def _assert_error(self, pattern: str, **kwargs):
        with self.assertRaisesRegex(errors.Error, pattern) as caught:
            image_folder.load_folder(kwargs.pop("folder", self.root), **kwargs)
        self.assertEqual(caught.exception.exit_code, 2)
        self.assertNotIn("\n", str(caught.exception))

    def test_missing_folder(self):
        self._assert_error(rf"--data_dir={self.root} does not exist")

    def test_empty_folder(self):
        os.makedirs(self.root)
        self._assert_error(rf"{self.root} holds no class folders")

    def test_one_class(self):
        self._make({"only": 3})
        self._assert_error(r"one class folder \(only/\).*at least two")

    def test_class_folder_without_images(self):
        self._make({"a": 2, "b": 2})
        os.makedirs(os.path.join(self.root, "c", "sub"))
        open(os.path.join(self.root, "c", "readme.txt"), "w").close()
        self._assert_error(rf"{os.path.join(self.root, 'c')} holds no images")

    def test_undecodable_image_names_the_file(self):
        self._make({"a": 4, "b": 4})
        bad = os.path.join(self.root, "b", "broken.png")
        with open(os.path.join(self.root, "a", "000.png"), "rb") as f:
            content = f.read()
        with open(bad, "wb") as f:
            f.write(content[:30])
        self._assert_error(rf"{bad} cannot be decoded as an image \(Invalid PNG.*\): replace it")
        with open(bad, "wb") as f:
            f.write(b"hello")
        self._assert_error(rf"{bad} cannot be decoded.*Unknown image file format")

    def test_train_and_test_with_different_classes(self):
        self._make({"a": 2, "b": 2}, os.path.join(self.root, "train"))
        self._make({"a": 2, "c": 2}, os.path.join(self.root, "test"))
        test_dir = os.path.join(self.root, "test")
        self._assert_error(rf"{test_dir} has no class folder b that .*train has: train/ and test/ need")

    def test_train_without_test(self):
        self._make({"a": 2, "b": 2}, os.path.join(self.root, "train"))
        self._assert_error(r"has train/ but no test/")

    def test_folder_beside_train_and_test(self):
        self._make({"a": 2, "b": 2}, os.path.join(self.root, "train"))
        self._make({"a": 2, "b": 2}, os.path.join(self.root, "test"))
        self._make({"a": 2}, os.path.join(self.root, "extra"))
        self._assert_error(r"has extra/ beside train/ and test/")

    def test_image_outside_class_folders(self):
        self._make({"a": 2, "b": 2})
        _write(os.path.join(self.root, "stray.png"), _square([1, 1, 1]))
        self._assert_error(r"stray\.png is not in a class folder")

    def test_held_out_needs_two_images_per_class(self):
        self._make({"a": 4, "b": 1})
        self._assert_error(r"class b has 1 image\(s\).*at least 2 per class")

    def test_bad_test_fraction(self):
        self._make({"a": 4, "b": 4})
        self._assert_error(r"--test_fraction=0: must be between 0 and 1", test_fraction=0)
        self._assert_error(r"--test_fraction=1\.0: must be between", test_fraction=1.0)
        # 0.05 of 8 images is 1 test image for 2 classes.
        self._assert_error(r"--test_fraction=0\.05: gives 1 test and 7 training", test_fraction=0.05)

    def test_bad_image_size(self):
        self._make({"a": 2, "b": 2})
        self._assert_error(r"--image_size=0: must be a positive", image_size=0)


class TfdsTest(tf.test.TestCase):
    """tfds sets through tfds.testing.mock_data (it ignores label names: those come from the
    builder's own metadata, as for a real prepared set)."""

    def _prepared(self, name: str, splits=("train", "test"), num_examples: int = 6) -> str:
        """A tfds folder where `name` counts as prepared; mock_data supplies the examples."""
        data_dir = os.path.join(self.get_temp_dir(), "tfds")
        builder = tfds.builder(name, data_dir=data_dir)
        infos = [tfds.core.SplitInfo(name=s, shard_lengths=[num_examples], num_bytes=0) for s in splits]
        builder.info.set_splits(tfds.core.SplitDict(infos))
        builder.data_path.mkdir(parents=True, exist_ok=True)
        builder.info.write_to_directory(builder.data_path)
        return data_dir

    def test_set_with_train_and_test(self):
        data_dir = self._prepared("mnist")
        with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as download:
            with tfds.testing.mock_data(num_examples=6, data_dir=data_dir):
                data = image_folder.load_tfds("mnist", data_dir, download=False)
        download.assert_not_called()
        self.assertEqual(data.class_names, tuple(str(d) for d in range(10)))
        self.assertEqual(data.train.images.shape, (6, 28, 28, 1))  # 28x28 is kept
        self.assertEqual(data.test.images.shape, (6, 28, 28, 1))
        self.assertAllInRange(np.concatenate([data.train.labels, data.test.labels]), 0, 9)
        self.assertEqual(data.train.labels.dtype, np.int64)
        self.assertIn("tfds mnist/3.0.1", data.source)

    def test_known_examples_come_through_exactly(self):
        data_dir = self._prepared("mnist")

        def as_dataset(builder, split, **kwargs):
            offset = 0 if split == "train" else 100
            images = np.stack([np.full((28, 28, 1), offset + i, np.uint8) for i in range(4)])
            return tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(4) * 2 + (split == "test")})

        with tfds.testing.mock_data(data_dir=data_dir, as_dataset_fn=as_dataset):
            data = image_folder.load_tfds("mnist", data_dir, download=False)
        self.assertAllEqual(data.train.labels, [0, 2, 4, 6])
        self.assertAllEqual(data.test.labels, [1, 3, 5, 7])
        self.assertAllEqual(data.test.images[:, 5, 5, 0], [100, 101, 102, 103])

    def test_set_without_test_split_holds_out_a_fraction(self):
        data_dir = self._prepared("tf_flowers", splits=("train",), num_examples=20)

        def as_dataset(builder, split, **kwargs):
            # Varying sizes, as real photos have: each image's size and colour follow its index.
            def generator():
                for i in range(20):
                    yield {"image": np.full((40 + i, 50, 3), i, np.uint8), "label": i % 5}

            signature = {"image": tf.TensorSpec([None, None, 3], tf.uint8), "label": tf.TensorSpec([], tf.int64)}
            return tf.data.Dataset.from_generator(generator, output_signature=signature)

        with tfds.testing.mock_data(data_dir=data_dir, as_dataset_fn=as_dataset):
            data = image_folder.load_tfds("tf_flowers", data_dir, download=False, test_fraction=0.25)
        self.assertEqual(data.class_names, ("dandelion", "daisy", "tulips", "sunflowers", "roses"))
        self.assertEqual(data.train.images.shape, (15, 32, 32, 3))
        self.assertEqual(data.test.images.shape, (5, 32, 32, 3))
        self.assertAllEqual(sorted(data.test.labels), [0, 1, 2, 3, 4])
        # Image i is flat grey i with label i % 5.
        for split in (data.train, data.test):
            self.assertAllEqual(split.images[:, 0, 0, 0] % 5, split.labels)
        self.assertIn("held out", data.source)

    def _assert_error(self, pattern: str, name: str, data_dir: str = None, download: bool = False):
        with self.assertRaisesRegex(errors.Error, pattern) as caught:
            image_folder.load_tfds(name, data_dir, download=download)
        self.assertNotIn("\n", str(caught.exception))

    def test_unknown_name_suggests_close_ones(self):
        self._assert_error(r"--dataset=tfds:mnistt: tensorflow-datasets has no such data set \(close: mnist", "mnistt")

    def test_not_image_classification(self):
        data_dir = self._prepared("imdb_reviews")
        self._assert_error(
            r"tfds:imdb_reviews: not an image-classification set \(its features are .*text", "imdb_reviews", data_dir
        )

    def test_not_prepared_without_download(self):
        data_dir = os.path.join(self.get_temp_dir(), "empty")
        with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as download:
            self._assert_error(
                r"tfds:mnist: not prepared in .*empty: run with internet access and --download", "mnist", data_dir
            )
        download.assert_not_called()

    def test_download_failure(self):
        data_dir = os.path.join(self.get_temp_dir(), "empty")
        failure = ConnectionError("Name or service not known")
        with (
            mock.patch.object(loaders, "_offline", return_value=False),
            mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare", side_effect=failure),
        ):
            self._assert_error(
                r"Downloading tfds:mnist failed \(ConnectionError: Name or service not known\)",
                "mnist",
                data_dir,
                download=True,
            )

    def test_offline_does_not_try(self):
        data_dir = os.path.join(self.get_temp_dir(), "empty")
        with (
            mock.patch.object(loaders, "_offline", return_value=True),
            mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as download,
        ):
            self._assert_error(r"Cannot download tfds:mnist: no network", "mnist", data_dir, download=True)
        download.assert_not_called()


if __name__ == "__main__":
    tf.test.main()
