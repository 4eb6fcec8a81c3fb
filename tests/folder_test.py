"""Tests for maxl_tf.data.folder and tfds.TfdsSource (decoded, sized and cached by images.py) on
tiny folders and mocked tfds sets written by the tests, and for the faults a folder can hold.

Images are constant-colour squares whose colour encodes (class, index), so the loaded pixels
say which file each example came from.
"""

import io
import json
import os
import re
import shutil
import signal
import time
from unittest import mock

import numpy as np
from PIL import Image
import tensorflow as tf
import tensorflow_datasets as tfds

from maxl_tf import errors
from maxl_tf.data import folder
from maxl_tf.data import images as images_lib
from maxl_tf.data import source
from maxl_tf.data import tfds as tfds_source
from tests import smoke_util
from tests import tfds_fakes


def _load_folder(root: str, image_size: int = 0, test_fraction: float = 0.2, cache_dir: str = "", **options):
    """A folder as a run loads it; no cache unless cache_dir is given."""
    options = source.Options(
        data_dir=root, image_size=image_size, test_fraction=test_fraction, cache_dir=cache_dir, **options
    )
    return folder.Folder(options).load()


def _load_tfds(name: str, data_dir: str, download: bool, test_fraction: float = 0.2):
    options = source.Options(data_dir=data_dir or "", download=download, test_fraction=test_fraction, cache_dir="")
    return tfds_source.TfdsSource(name, options).load()


_UNPICKLED = []  # what the pickle trap records when something unpickles it


def _unpickled() -> None:
    _UNPICKLED.append("unpickled")


class _Trap:
    def __reduce__(self):
        return _unpickled, ()


def _pickled_npy() -> bytes:
    """A .npy of pickled objects whose unpickling would run code (here: record itself)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray([_Trap()], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def _cache_file(loaded: source.Loaded) -> str:
    """The cache file a load wrote or read, from its description."""
    return re.search(r"(?:cached in|from the cache) (\S+\.npy)", loaded.description).group(1)


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

    def _assert_constant_images(self, split: source.Split, class_count: int) -> list:
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

        data = _load_folder(self.root, test_fraction=0.2)

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
        self.assertIn("0.2 of each class held out", data.description)

        again = _load_folder(self.root, test_fraction=0.2)
        self.assertAllEqual(again.test.images, data.test.images)
        # The held-out images are images.hold_out's with seed 0 (the same for every run seed), in
        # listing order; another seed holds out others in the same proportions.
        labels = np.repeat([0, 1, 2], [5, 5, 10])
        _, test_idx = images_lib.hold_out(labels, 0.2, data.class_names, self.root)
        self.assertEqual(test, [everything[i] for i in test_idx])
        _, other_idx = images_lib.hold_out(labels, 0.2, data.class_names, self.root, seed=1)
        self.assertAllEqual(np.bincount(labels[other_idx], minlength=3), [1, 1, 2])
        self.assertNotAllEqual(other_idx, test_idx)

    def test_train_and_test_folders_are_used_as_given(self):
        self._make({"a": 3, "b": 2}, os.path.join(self.root, "train"))
        self._make({"a": 1, "b": 2}, os.path.join(self.root, "test"))

        data = _load_folder(self.root, test_fraction=0.5)

        self.assertEqual(data.class_names, ("a", "b"))
        self.assertCountEqual(self._assert_constant_images(data.train, 2), [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)])
        self.assertCountEqual(self._assert_constant_images(data.test, 2), [(0, 0), (1, 0), (1, 1)])
        self.assertIn("its own train and test splits", data.description)

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

        data = _load_folder(self.root, test_fraction=0.5)

        images = np.concatenate([data.train.images, data.test.images])
        labels = np.concatenate([data.train.labels, data.test.labels])
        self.assertEqual(data.class_names, ("a", "b"))
        self.assertAllEqual(sorted(labels), [0, 0, 1, 1])
        self.assertAllEqual(sorted(images[labels == 0][:, 0, 0].tolist()), [[1, 2, 3], [4, 5, 6]])
        # JPEG is lossy: a flat colour comes back within a few levels. encode_jpeg's quality 95
        # quantises a flat block's DC coefficients in steps of 2 (a quarter level each way), the
        # colour transform rounds to and from YCbCr (half a level each) and weighs chroma by up to
        # 1.77 (blue): 1.77 x 0.25 + 2 x 0.5 = 1.4 levels, 3 with the encoder's own rounding.
        self.assertAllClose(images[labels == 1], [_square([120, 60, 30])] * 2, rtol=0, atol=3)

    # --- size and channels ----------------------------------------------------------------------

    def _load_all(self, **kwargs) -> np.ndarray:
        """Train and test images together (tests here are about pixels, not the split)."""
        data = _load_folder(self.root, test_fraction=0.5, **kwargs)
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
        # The antialiased bilinear filter weighs a checker's 0s and 200s evenly, save at the image's
        # edges, and the uint8 result rounds by under a level: the mean within 1 of 100.
        self.assertAllClose(images[..., 0].mean(axis=(1, 2)), [100] * 4, rtol=0, atol=1)
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
        first = _load_folder(self.root, cache_dir=cache_dir)
        [cache_file] = [n for n in os.listdir(cache_dir) if n != "content"]
        self.assertEndsWith(cache_file, ".npy")
        self.assertIn(f"cached in {os.path.join(cache_dir, cache_file)}", first.description)

        with (
            mock.patch.object(images_lib, "decode_paths", side_effect=AssertionError("decoded")),
            mock.patch.object(images_lib, "read_header", side_effect=AssertionError("headers read")),
        ):
            second = _load_folder(self.root, cache_dir=cache_dir)
        self.assertIn(f"from the cache {os.path.join(cache_dir, cache_file)}", second.description)
        for a, b in ((first.train, second.train), (first.test, second.test)):
            self.assertAllEqual(a.images, b.images)
            self.assertAllEqual(a.labels, b.labels)

        # Another size is another key; so is a changed folder (the key is its content hash): its
        # old file stays until the size limit evicts it.
        _load_folder(self.root, image_size=4, cache_dir=cache_dir)
        self.assertLen(os.listdir(cache_dir), 3)  # two .npy and content/
        _write(os.path.join(self.root, "b", "new.png"), _square([250, 250, 250]))
        third = _load_folder(self.root, cache_dir=cache_dir)
        self.assertIn("cached in", third.description)
        self.assertLen(os.listdir(cache_dir), 4)
        self.assertIn(cache_file, os.listdir(cache_dir))
        self.assertNotEqual(os.path.basename(_cache_file(third)), cache_file)
        self.assertEqual(len(third.train.labels) + len(third.test.labels), 7)

    def test_cache_keeps_to_its_limit_least_recently_used_first(self):
        # Three folders of four images decoded at 256x256x3: 0.75 MB each, two fit in 2 MB.
        cache_dir = os.path.join(self.get_temp_dir(), "cache")
        roots = {name: os.path.join(self.get_temp_dir(), name) for name in ("first", "second", "third")}
        for size, root in enumerate(roots.values(), start=8):  # other images each (the cache is by content)
            self._make({"a": 2, "b": 2}, root, size=size)

        def load(name):
            # Files' times tick with the kernel's coarse clock (a few ms): loads closer than that
            # would tie, as a person's runs never do.
            time.sleep(0.05)
            return _load_folder(roots[name], image_size=256, test_fraction=0.5, cache_dir=cache_dir, cache_limit_mb=2)

        files = {name: _cache_file(load(name)) for name in ("first", "second")}
        self.assertGreater(os.path.getsize(files["first"]), 0.7 * 2**20)
        self.assertIn("from the cache", load("first").description)  # used: now "second" is the oldest
        files["third"] = _cache_file(load("third"))
        self.assertTrue(os.path.exists(files["first"]))
        self.assertTrue(os.path.exists(files["third"]))
        self.assertFalse(os.path.exists(files["second"]))
        # Evicted means decoded again (and now "first" is the least recently used).
        self.assertIn("cached in", load("second").description)
        cached = [n for n in os.listdir(cache_dir) if n != "content"]  # content/: the folders' file digests
        self.assertCountEqual(cached, [os.path.basename(files[n]) for n in ("second", "third")])

    def test_damaged_cache_is_decoded_again(self):
        self._make({"a": 2, "b": 2})
        cache_dir = os.path.join(self.get_temp_dir(), "cache")
        first = _load_folder(self.root, test_fraction=0.5, cache_dir=cache_dir)
        path = _cache_file(first)
        with open(path, "rb") as f:
            whole = f.read()
        damages = {
            "not a .npy": b"truncated",
            "cut short": whole[: len(whole) - 100],
            "pickled objects": _pickled_npy(),
        }
        for damage, content in damages.items():
            with self.subTest(damage):
                with open(path, "wb") as f:
                    f.write(content)
                again = _load_folder(self.root, test_fraction=0.5, cache_dir=cache_dir)
                self.assertIn(f"cached in {path}", again.description)
                self.assertAllEqual(again.train.images, first.train.images)
                self.assertAllEqual(again.test.images, first.test.images)
                with open(path, "rb") as f:
                    self.assertEqual(f.read(), whole)  # rewritten
        self.assertEqual(_UNPICKLED, [])

    def test_cache_holds_no_pickles(self):
        self._make({"a": 2, "b": 3})
        cache_dir = os.path.join(self.get_temp_dir(), "cache")
        data = _load_folder(self.root, test_fraction=0.4, cache_dir=cache_dir)
        cached = np.load(_cache_file(data), allow_pickle=False)
        self.assertEqual(cached.dtype, np.uint8)
        self.assertEqual(cached.shape, (5, 8, 8, 3))
        # Rows in listing order (class a, then b): held-out or not, each image is there.
        train_idx, test_idx = images_lib.hold_out(np.asarray([0, 0, 1, 1, 1]), 0.4, ("a", "b"), self.root)
        self.assertAllEqual(cached[train_idx], data.train.images)
        self.assertAllEqual(cached[test_idx], data.test.images)

    def test_unwritable_cache_only_costs_a_note(self):
        self._make({"a": 2, "b": 2})
        blocker = os.path.join(self.get_temp_dir(), "a_file")
        open(blocker, "w").close()
        data = _load_folder(self.root, test_fraction=0.5, cache_dir=os.path.join(blocker, "cache"))
        self.assertIn("not cached", data.description)
        self.assertLen(data.train.labels, 2)

    # --- bad input: one line naming the folder, file or flag ------------------------------------

    def _assert_error(self, pattern: str, **kwargs):
        with self.assertRaisesRegex(errors.Error, pattern) as caught:
            _load_folder(kwargs.pop("folder", self.root), **kwargs)
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
        # Cut inside its header: refused when the headers are read, before anything is decoded.
        with open(bad, "wb") as f:
            f.write(content[:30])
        self._assert_error(rf"{bad} cannot be read as an image \(.*\): replace it with a PNG or JPEG, or delete it")
        with open(bad, "wb") as f:
            f.write(b"hello")
        self._assert_error(rf"{bad} cannot be read as an image \(UnidentifiedImageError: cannot identify image file")
        # A whole header and cut pixels: refused by the decoder, still by name.
        with open(bad, "wb") as f:
            f.write(content[: len(content) - 20])
        self._assert_error(rf"{bad} cannot be decoded as an image \(.*\): replace it with a PNG or JPEG, or delete it")

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


class VerifiedCacheTest(tf.test.TestCase):
    """Each cache file carries an HMAC of its shape and pixels, checked whenever it is opened; a
    streamed set reads through the file it checked, whatever happens to the name meanwhile."""

    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.get_temp_dir(), "images")
        self.other = os.path.join(self.get_temp_dir(), "other_images")
        for root, offset in ((self.root, 0), (self.other, 3)):
            for label in range(2):
                for i in range(3):
                    _write(os.path.join(root, "ab"[label], f"{i}.png"), _square(_colour(label, i + offset)))
        self.cache_dir = os.path.join(self.get_temp_dir(), "cache")
        self.first = _load_folder(self.root, test_fraction=0.5, cache_dir=self.cache_dir)
        self.path = _cache_file(self.first)
        with open(self.path, "rb") as f:
            self.whole = f.read()

    def _assert_decoded_again(self, why: str, **options) -> source.Loaded:
        again = _load_folder(self.root, test_fraction=0.5, cache_dir=self.cache_dir, **options)
        self.assertIn(
            f"cached in {self.path} (the cache file there failed its check: {why}; decoded again)", again.description
        )
        self.assertAllEqual(again.train.images[:], self.first.train.images)
        self.assertAllEqual(again.test.images[:], self.first.test.images)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), self.whole)  # rewritten
        return again

    def test_another_sets_pixels_under_a_valid_header_are_decoded_again(self):
        other = _cache_file(_load_folder(self.other, test_fraction=0.5, cache_dir=self.cache_dir))
        with open(other, "rb") as f:
            planted = f.read()
        self.assertLen(planted, len(self.whole))
        self.assertNotEqual(planted, self.whole)
        with open(self.path, "wb") as f:  # same size, valid header and trailer: another set's file
            f.write(planted)
        self._assert_decoded_again("written for other data")
        # The same with the trailer made to name this file: the HMAC is over the name too.
        digest = os.path.basename(self.path)[: -len(".npy")]
        trailer = json.loads(planted[-images_lib._TRAILER :][len(images_lib._MAGIC) :])
        forged = planted[: -images_lib._TRAILER] + images_lib._trailer(digest, (6, 8, 8, 3), trailer["mac"])
        with open(self.path, "wb") as f:
            f.write(forged)
        self._assert_decoded_again("its checksum does not match its content", stream="on")

    def test_pixels_changed_in_place_are_decoded_again(self):
        changed = bytearray(self.whole)
        changed[200] ^= 0xFF  # one pixel of the first image
        with open(self.path, "wb") as f:
            f.write(bytes(changed))
        self._assert_decoded_again("its checksum does not match its content")
        with open(self.path, "wb") as f:
            f.write(bytes(changed))
        self._assert_decoded_again("its checksum does not match its content", stream="on")

    def test_a_file_of_another_shape_is_decoded_again_not_blamed_on_the_model(self):
        # Right image count, valid .npy, another shape: before, the run failed in --model's check.
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((6, 4, 4, 3), np.uint8))
        with open(self.path, "wb") as f:
            f.write(buffer.getvalue())
        self._assert_decoded_again("cut short or of another size")
        # With a self-consistent trailer of that shape, written under another user's key.
        digest = os.path.basename(self.path)[: -len(".npy")]
        with mock.patch.object(images_lib, "secret", return_value=b"someone else's key"):
            written = images_lib._write_rows(
                self.path, (6, 4, 4, 3), lambda out: out.__setitem__(slice(0, 6), np.zeros((6, 4, 4, 3)))
            )
            written.close()
        with open(self.path, "rb") as f:
            self.assertIn(f'"key": "{digest}"'.encode(), f.read())
        again = self._assert_decoded_again("its checksum does not match its content")
        self.assertEqual(again.train.images.shape[1:], (8, 8, 3))

    def test_the_checksum_is_checked_at_open_and_costs_one_read(self):
        # In memory: the file is read once (checked while it is copied into the array).
        with mock.patch.object(np, "load", side_effect=AssertionError("read twice")):
            again = _load_folder(self.root, test_fraction=0.5, cache_dir=self.cache_dir)
        self.assertIn(f"from the cache {self.path}", again.description)
        self.assertAllEqual(again.train.images, self.first.train.images)

    def test_a_streamed_set_survives_its_cache_file_being_deleted_or_evicted(self):
        for how in ("deleted", "evicted by another run's --cache_limit_mb"):
            with self.subTest(how):
                streamed = _load_folder(self.root, test_fraction=0.5, cache_dir=self.cache_dir, stream="on")
                self.assertTrue(streamed.streamed)
                if how == "deleted":
                    os.remove(self.path)
                else:
                    images_lib.trim_cache(self.cache_dir, 0)  # another run's trim, to nothing
                self.assertFalse(os.path.exists(self.path))
                self.assertAllEqual(streamed.train.images[:], self.first.train.images)
                self.assertAllEqual(streamed.test.images[np.arange(3)], self.first.test.images)
                _load_folder(self.root, test_fraction=0.5, cache_dir=self.cache_dir)  # write it again

    def test_a_freshly_written_file_evicted_before_it_is_read_back(self):
        # Another run's trim between this run's write and its read: it reads its own open file.
        trim = images_lib.trim_cache

        def trim_everything(cache_dir, limit_mb, keep=""):
            trim(cache_dir, 0)

        os.remove(self.path)
        for stream in ("on", "off"):
            with self.subTest(stream=stream), mock.patch.object(images_lib, "trim_cache", trim_everything):
                loaded = _load_folder(self.root, test_fraction=0.5, cache_dir=self.cache_dir, stream=stream)
                self.assertFalse(os.path.exists(self.path))
                self.assertAllEqual(loaded.train.images[:], self.first.train.images)

    def test_no_cache_file_runs_code(self):
        _UNPICKLED.clear()
        with open(self.path, "wb") as f:
            f.write(_pickled_npy())
        self._assert_decoded_again("not a C-order uint8 [N, H, W, C] array")
        self.assertEqual(_UNPICKLED, [])
        cached = np.load(self.path, allow_pickle=False)  # still a plain .npy, its checksum after the rows
        train_idx, _ = images_lib.hold_out(np.asarray([0, 0, 0, 1, 1, 1]), 0.5, ("a", "b"), self.root)
        self.assertAllEqual(cached[train_idx], self.first.train.images)


class FolderFaultsTest(tf.test.TestCase):
    """What a real folder can hold that would hang a run, list an image twice or under the wrong
    class, or fail deep in decoding: each is refused by one line naming the file and the fix."""

    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.get_temp_dir(), "images")
        self.cat, self.dog = os.path.join(self.root, "cat"), os.path.join(self.root, "dog")
        for label, class_dir in enumerate((self.cat, self.dog)):
            for i in range(3):
                _write(os.path.join(class_dir, f"{i}.png"), _square(_colour(label, i)))

    def _assert_refused(self, pattern: str, **options) -> None:
        """Loading refuses the folder with one line, before any image is decoded."""
        with (
            mock.patch.object(images_lib, "decode_paths", side_effect=AssertionError("decoded")),
            self.assertRaisesRegex(errors.Error, pattern) as caught,
        ):
            _load_folder(self.root, **options)
        self.assertEqual(caught.exception.exit_code, 2)
        self.assertNotIn("\n", str(caught.exception))

    def test_link_to_its_own_folder_is_a_loop(self):
        link = os.path.join(self.cat, "loop")
        os.symlink(".", link)
        self.addCleanup(os.remove, link)  # tf.test's temp-folder cleanup would walk the loop
        self._assert_refused(
            rf"^{re.escape(link)} is a link to {re.escape(os.path.realpath(self.cat))}, a folder that holds it "
            r"\(a loop\): remove the link\.$"
        )

    def test_link_to_a_folder_above_is_a_loop(self):
        link = os.path.join(self.cat, "up")
        os.symlink("..", link)
        self.addCleanup(os.remove, link)  # tf.test's temp-folder cleanup would walk the loop
        self._assert_refused(rf"^{re.escape(link)} is a link to {re.escape(os.path.realpath(self.root))}, .*a loop")

    def test_a_loop_stops_the_command_before_training(self):
        link = os.path.join(self.cat, "loop")
        os.symlink(".", link)
        self.addCleanup(os.remove, link)
        logdir = os.path.join(self.get_temp_dir(), "runs")
        process = smoke_util.run_main(
            "--dataset=folder", f"--data_dir={self.root}", "--pri=2", "--aux=4", f"--logdir={logdir}"
        )
        self.assertEqual(process.returncode, 2, process.stderr)
        self.assertRegex(process.stderr, r"^error: .*cat/loop is a link to .*\(a loop\): remove the link\.\n$")
        self.assertFalse(os.path.exists(logdir))

    def test_dangling_link(self):
        link = os.path.join(self.dog, "gone.png")
        os.symlink("moved_away.png", link)
        self._assert_refused(rf"^{re.escape(link)} is a link to moved_away\.png, which does not exist; remove it\.$")

    def test_fifo_named_like_an_image_is_refused_without_reading_it(self):
        fifo = os.path.join(self.dog, "x.png")
        os.mkfifo(fifo)

        def hung(signum, frame):
            raise AssertionError(f"{fifo} was opened: the run hangs on a pipe")

        previous = signal.signal(signal.SIGALRM, hung)
        signal.alarm(60)
        try:
            self._assert_refused(rf"^{re.escape(fifo)} is not a regular file \(a pipe, socket or device\); delete")
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

    def test_image_of_too_many_pixels_is_refused_from_its_header(self):
        big = os.path.join(self.dog, "big.png")
        Image.new("RGB", (300, 300), (1, 2, 3)).save(big)
        self._assert_refused(
            rf"^{re.escape(big)} is 300x300 pixels, more than the limit of 10,000 \(--max_image_pixels\): shrink "
            r"it, delete it, or raise --max_image_pixels\.$",
            max_pixels=10000,
        )
        # The limit itself is allowed.
        data = _load_folder(self.root, image_size=8, test_fraction=0.5, max_pixels=300 * 300)
        self.assertLen(np.concatenate([data.train.labels, data.test.labels]), 7)

    def test_image_deleted_after_listing(self):
        gone = os.path.join(self.dog, "1.png")
        listed = folder.Folder(source.Options(data_dir=self.root, test_fraction=0.5, cache_dir=""))
        self.assertLen(listed.listing().paths, 6)
        os.remove(gone)
        with self.assertRaisesRegex(
            errors.Error, rf"^{re.escape(gone)}: vanished while the data was read; run again once the folder is stable"
        ):
            listed.load()

    def test_image_deleted_after_its_header_was_read(self):
        gone = os.path.join(self.dog, "1.png")
        target_shape = images_lib.target_shape

        def delete_then_size(headers, image_size):
            os.remove(gone)  # between the headers and the pixels
            return target_shape(headers, image_size)

        with mock.patch.object(images_lib, "target_shape", delete_then_size):
            with self.assertRaisesRegex(errors.Error, rf"^{re.escape(gone)}: vanished while the data") as caught:
                _load_folder(self.root, test_fraction=0.5)
        self.assertNotIn("\n", str(caught.exception))

    def test_hidden_class_folder_is_named_where_it_matters(self):
        shutil.rmtree(self.dog)
        _write(os.path.join(self.root, ".secret", "0.png"), _square([1, 2, 3]))
        self._assert_refused(
            rf"^{re.escape(self.root)} holds one class folder \(cat/\) \(skipped: \.secret; names starting with "
            r"'\.' are hidden\): classification needs at least two"
        )

    def test_image_reachable_twice_through_a_link(self):
        twice = os.path.join(self.dog, "also_a_cat.png")
        os.symlink(os.path.join("..", "cat", "0.png"), twice)
        self._assert_refused(
            rf"^{re.escape(twice)} and {re.escape(os.path.join(self.cat, '0.png'))} are the same image \(through a "
            r"link\): it would be listed twice, perhaps under two classes; remove one\.$"
        )

    def test_folder_reachable_twice_through_a_link(self):
        link = os.path.join(self.dog, "cats_too")
        os.symlink(os.path.join("..", "cat"), link)
        self._assert_refused(rf"^{re.escape(link)} is the folder {re.escape(self.cat)} again \(through a link\)")

    def test_links_to_images_and_folders_elsewhere_are_followed(self):
        elsewhere = os.path.join(self.get_temp_dir(), "elsewhere")
        _write(os.path.join(elsewhere, "owls", "0.png"), _square(_colour(2, 0)))
        _write(os.path.join(elsewhere, "owls", "1.png"), _square(_colour(2, 1)))
        _write(os.path.join(elsewhere, "a_dog.png"), _square(_colour(1, 3)))
        os.symlink(os.path.join(elsewhere, "owls"), os.path.join(self.root, "owl"))
        os.symlink(os.path.join(elsewhere, "a_dog.png"), os.path.join(self.dog, "3.png"))
        data = _load_folder(self.root, test_fraction=0.5)
        self.assertEqual(data.class_names, ("cat", "dog", "owl"))
        labels = np.concatenate([data.train.labels, data.test.labels])
        self.assertAllEqual(np.bincount(labels), [3, 4, 2])
        colours = np.concatenate([data.train.images, data.test.images])[:, 0, 0]
        self.assertIn(_colour(1, 3), colours[labels == 1].tolist())
        self.assertIn(_colour(2, 1), colours[labels == 2].tolist())


def _as_stored(images: list, decoders) -> list:
    """The images as tfds stores them (PNG bytes): tfds:NAME asks for them undecoded, to read their
    headers and size them as a folder's images are."""
    assert isinstance(decoders["image"], tfds.decode.SkipDecoding), decoders
    return [tf.io.encode_png(image).numpy() for image in images]


class TfdsTest(tf.test.TestCase):
    """tfds sets through tfds.testing.mock_data (it ignores label names: those come from the
    builder's own metadata, as for a real prepared set)."""

    def _prepared(self, name: str, splits=("train", "test"), num_examples: int = 6) -> str:
        """A tfds folder where `name` counts as prepared; mock_data supplies the examples."""
        data_dir = os.path.join(self.get_temp_dir(), "tfds")
        tfds_fakes.fake_prepare(tfds.builder(name, data_dir=data_dir), splits, num_examples)
        return data_dir

    def test_set_with_train_and_test(self):
        data_dir = self._prepared("mnist")
        with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as download:
            with tfds.testing.mock_data(num_examples=6, data_dir=data_dir):
                data = _load_tfds("mnist", data_dir, download=False)
        download.assert_not_called()
        self.assertEqual(data.class_names, tuple(str(d) for d in range(10)))
        self.assertEqual(data.train.images.shape, (6, 28, 28, 1))  # 28x28 is kept
        self.assertEqual(data.test.images.shape, (6, 28, 28, 1))
        self.assertAllInRange(np.concatenate([data.train.labels, data.test.labels]), 0, 9)
        self.assertEqual(data.train.labels.dtype, np.int64)
        self.assertIn("tfds mnist/3.0.1", data.description)

    def test_known_examples_come_through_exactly(self):
        data_dir = self._prepared("mnist")

        def as_dataset(builder, split, decoders=None, **kwargs):
            offset = 0 if split == "train" else 100
            images = [np.full((28, 28, 1), offset + i, np.uint8) for i in range(4)]
            labels = np.arange(4) * 2 + (split == "test")
            return tf.data.Dataset.from_tensor_slices({"image": _as_stored(images, decoders), "label": labels})

        with tfds.testing.mock_data(data_dir=data_dir, as_dataset_fn=as_dataset):
            data = _load_tfds("mnist", data_dir, download=False)
        self.assertAllEqual(data.train.labels, [0, 2, 4, 6])
        self.assertAllEqual(data.test.labels, [1, 3, 5, 7])
        self.assertAllEqual(data.test.images[:, 5, 5, 0], [100, 101, 102, 103])

    def test_set_without_test_split_holds_out_a_fraction(self):
        data_dir = self._prepared("tf_flowers", splits=("train",), num_examples=20)

        def as_dataset(builder, split, decoders=None, **kwargs):
            # Varying sizes, as real photos have: each image's size and colour follow its index.
            images = _as_stored([np.full((40 + i, 50, 3), i, np.uint8) for i in range(20)], decoders)
            return tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(20) % 5})

        with tfds.testing.mock_data(data_dir=data_dir, as_dataset_fn=as_dataset):
            data = _load_tfds("tf_flowers", data_dir, download=False, test_fraction=0.25)
        self.assertEqual(data.class_names, ("dandelion", "daisy", "tulips", "sunflowers", "roses"))
        self.assertEqual(data.train.images.shape, (15, 32, 32, 3))
        self.assertEqual(data.test.images.shape, (5, 32, 32, 3))
        self.assertAllEqual(sorted(data.test.labels), [0, 1, 2, 3, 4])
        # Image i is flat grey i with label i % 5.
        for split in (data.train, data.test):
            self.assertAllEqual(split.images[:, 0, 0, 0] % 5, split.labels)
        self.assertIn("held out", data.description)

    def _assert_error(self, pattern: str, name: str, data_dir: str = None, download: bool = False):
        with self.assertRaisesRegex(errors.Error, pattern) as caught:
            _load_tfds(name, data_dir, download=download)
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
                r"^--dataset=tfds:mnist: not prepared in .*empty: prepare it where there is internet access and pass "
                r"--data_dir=<that tensorflow-datasets folder>, or run with internet access and --download\.$",
                "mnist",
                data_dir,
            )
        download.assert_not_called()

    def test_download_failure(self):
        data_dir = os.path.join(self.get_temp_dir(), "empty")
        failure = ConnectionError("Name or service not known")
        with (
            mock.patch.object(tfds_source, "offline", return_value=False),
            mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare", side_effect=failure),
        ):
            self._assert_error(
                r"^--dataset=tfds:mnist: not prepared in .*empty, and downloading mnist/[\d.]+ with "
                r"tensorflow-datasets failed \(ConnectionError: Name or service not known\); no internet\? "
                r"To work offline prepare it",
                "mnist",
                data_dir,
                download=True,
            )

    def test_offline_does_not_try(self):
        data_dir = os.path.join(self.get_temp_dir(), "empty")
        with (
            mock.patch.object(tfds_source, "offline", return_value=True),
            mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as download,
        ):
            self._assert_error(
                r"^--dataset=tfds:mnist: not prepared in .*empty, and downloading mnist/[\d.]+ is impossible: "
                r"no network",
                "mnist",
                data_dir,
                download=True,
            )
        download.assert_not_called()


if __name__ == "__main__":
    tf.test.main()
