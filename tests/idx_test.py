"""Tests for maxl_tf.data.idx on small IDX files written here (no data set installed or needed)."""

import gzip
import os
import tempfile
from unittest import mock

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from maxl_tf import errors
from maxl_tf.data import idx


def idx_bytes(array: np.ndarray, dtype_code: int = 0x08) -> bytes:
    """An IDX file's content: zero, zero, dtype code, ndim, big-endian uint32 dims, then values."""
    header = bytes([0, 0, dtype_code, array.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + dims + array.astype(np.uint8).tobytes()


def write(path: str, content: bytes, gzipped: bool) -> str:
    if gzipped:
        path += ".gz"
        content = gzip.compress(content)
    with open(path, "wb") as f:
        f.write(content)
    return path


class IdxTest(tf.test.TestCase, parameterized.TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(0)
        self.arrays = {
            "train": (rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), np.array([0, 9, 3, 3, 7, 1])),
            "test": (rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), np.array([5, 2, 8, 0])),
        }

    def _new_dir(self) -> str:
        return tempfile.mkdtemp(dir=self.get_temp_dir())

    def _folder(self, gzipped=True, replace=None) -> str:
        """The four files of self.arrays; replace maps a published name to other bytes."""
        folder = self._new_dir()
        for split, (images_name, labels_name) in idx.FILES.items():
            images, labels = self.arrays[split]
            for name, array in ((images_name, images), (labels_name, labels)):
                content = (replace or {}).get(name, idx_bytes(array))
                write(os.path.join(folder, name), content, gzipped)
        return folder

    def _assert_error(self, dataset, folder, *patterns):
        """load fails with one line (exit 2) that matches every pattern."""
        with self.assertRaises(errors.Error) as caught:
            idx.load(dataset, folder)
        message = str(caught.exception)
        self.assertEqual(caught.exception.exit_code, 2)
        self.assertNotIn("\n", message)
        for pattern in patterns:
            self.assertRegex(message, pattern)
        return message

    @parameterized.named_parameters(("gzipped", True), ("plain", False))
    def test_reads_values_exactly(self, gzipped):
        splits = idx.load("fashion_mnist", self._folder(gzipped))
        for split, (images, labels) in self.arrays.items():
            got_images, got_labels = splits[split]
            self.assertEqual(got_images.dtype, np.uint8)
            self.assertEqual(got_labels.dtype, np.int64)
            self.assertAllEqual(got_images, images)
            self.assertAllEqual(got_labels, labels)
        # Pixel (row 3, column 5) of training image 1 is byte 16 + 784 + 3 * 28 + 5 of the file.
        self.assertEqual(splits["train"][0][1, 3, 5], self.arrays["train"][0].ravel()[784 + 3 * 28 + 5])

    def test_mixed_and_renamed_files(self):
        folder = self._folder(gzipped=False)
        # One file gzipped; another gzipped but named as the plain file: found by content.
        os.remove(os.path.join(folder, "t10k-labels-idx1-ubyte"))
        write(os.path.join(folder, "t10k-labels-idx1-ubyte"), idx_bytes(self.arrays["test"][1]), True)
        path = os.path.join(folder, "train-labels-idx1-ubyte")
        with open(path, "wb") as f:
            f.write(gzip.compress(idx_bytes(self.arrays["train"][1])))
        splits = idx.load("mnist", folder)
        self.assertAllEqual(splits["test"][1], [5, 2, 8, 0])
        self.assertAllEqual(splits["train"][1], [0, 9, 3, 3, 7, 1])

    def test_plain_file_preferred_to_gz(self):
        folder = self._folder(gzipped=False)
        write(os.path.join(folder, "t10k-labels-idx1-ubyte"), idx_bytes(np.array([1, 1, 1, 1])), True)
        self.assertEqual(
            idx.find_files(folder)["t10k-labels-idx1-ubyte"], os.path.join(folder, "t10k-labels-idx1-ubyte")
        )
        self.assertAllEqual(idx.load("mnist", folder)["test"][1], [5, 2, 8, 0])

    def test_no_files_gives_none(self):
        folder = self._new_dir()
        write(os.path.join(folder, "cifar-10-python.tar.gz"), b"other data", False)
        self.assertIsNone(idx.load("fashion_mnist", folder))

    def test_some_files_missing(self):
        folder = self._folder()
        os.remove(os.path.join(folder, "t10k-images-idx3-ubyte.gz"))
        os.remove(os.path.join(folder, "train-labels-idx1-ubyte.gz"))
        self._assert_error(
            "fashion_mnist",
            folder,
            f"^{folder} holds only some",
            "train-labels-idx1-ubyte, t10k-images-idx3-ubyte \\(or .gz\\) missing",
            "apt-get install dataset-fashion-mnist",
        )

    @parameterized.named_parameters(("gzipped", True), ("plain", False))
    def test_truncated_values(self, gzipped):
        images = self.arrays["train"][0]
        folder = self._folder(gzipped, {"train-images-idx3-ubyte": idx_bytes(images)[:-100]})
        path = os.path.join(folder, "train-images-idx3-ubyte" + (".gz" if gzipped else ""))
        self._assert_error(
            "fashion_mnist",
            folder,
            f"^{path}: it is truncated",
            r"promises 4704 bytes of values for shape \[6, 28, 28\], it holds 4604",
            "apt-get install dataset-fashion-mnist",
            "tensorflow-datasets",
            "fashion_mnist",
            "zalandoresearch",
        )

    def test_truncated_gzip_stream(self):
        folder = self._folder()
        path = os.path.join(folder, "t10k-images-idx3-ubyte.gz")
        with open(path, "rb") as f:
            content = f.read()
        with open(path, "wb") as f:
            f.write(content[: len(content) // 2])
        message = self._assert_error(
            "mnist",
            folder,
            f"^{path} is unreadable or truncated \\(EOFError",
            "tensorflow-datasets prepare its mnist builder",
            "yann.lecun.com",
        )
        self.assertNotIn("apt-get", message)  # Debian packages Fashion-MNIST only

    def test_truncated_header(self):
        labels = self.arrays["test"][1]
        folder = self._folder(False, {"t10k-labels-idx1-ubyte": idx_bytes(labels)[:6]})
        self._assert_error(
            "mnist", folder, "t10k-labels-idx1-ubyte: it is truncated: 6 bytes, shorter than its 8-byte header"
        )

    def test_extra_bytes(self):
        labels = self.arrays["test"][1]
        folder = self._folder(False, {"t10k-labels-idx1-ubyte": idx_bytes(labels) + b"\0\0"})
        self._assert_error("mnist", folder, r"t10k-labels-idx1-ubyte: it holds 2 bytes more than .* \[4\]")

    def test_not_idx(self):
        folder = self._folder(False, {"train-images-idx3-ubyte": b"<html>Not found</html>"})
        self._assert_error(
            "fashion_mnist", folder, "train-images-idx3-ubyte: not an IDX file: it starts with bytes 3c68746d"
        )

    def test_wrong_dtype_code(self):
        images = self.arrays["train"][0]
        folder = self._folder(False, {"train-images-idx3-ubyte": idx_bytes(images, dtype_code=0x0D)})
        self._assert_error("fashion_mnist", folder, r"data type code is 0x0d, not 0x08")

    def test_images_and_labels_swapped(self):
        # A label file's magic number (1 dimension) where the images belong.
        folder = self._folder(False, {"train-images-idx3-ubyte": idx_bytes(self.arrays["train"][1])})
        self._assert_error(
            "fashion_mnist", folder, "train-images-idx3-ubyte: it has 1 dimension\\(s\\) where an image file has 3"
        )

    def test_wrong_image_size(self):
        folder = self._folder(False, {"t10k-images-idx3-ubyte": idx_bytes(np.zeros((4, 32, 32)))})
        self._assert_error("fashion_mnist", folder, "t10k-images-idx3-ubyte: its images are 32x32, not 28x28")

    def test_no_examples(self):
        folder = self._folder(
            False,
            {
                "t10k-images-idx3-ubyte": idx_bytes(np.zeros((0, 28, 28))),
                "t10k-labels-idx1-ubyte": idx_bytes(np.zeros((0,))),
            },
        )
        self._assert_error("fashion_mnist", folder, "t10k-images-idx3-ubyte: it holds no examples")

    def test_label_out_of_range(self):
        folder = self._folder(True, {"train-labels-idx1-ubyte": idx_bytes(np.array([0, 9, 3, 10, 7, 11]))})
        self._assert_error(
            "fashion_mnist",
            folder,
            "train-labels-idx1-ubyte.gz: label 10 at example 3 is outside 0..9",
            "apt-get install dataset-fashion-mnist",
        )

    def test_count_mismatch(self):
        folder = self._folder(True, {"t10k-labels-idx1-ubyte": idx_bytes(np.array([1, 2, 3]))})
        images = os.path.join(folder, "t10k-images-idx3-ubyte.gz")
        labels = os.path.join(folder, "t10k-labels-idx1-ubyte.gz")
        self._assert_error("fashion_mnist", folder, f"^{images} holds 4 images but {labels} holds 3 labels")

    def test_unreadable_file(self):
        folder = self._folder(False)
        path = os.path.join(folder, "t10k-labels-idx1-ubyte")
        with mock.patch("builtins.open", side_effect=PermissionError(13, "Permission denied")):
            with self.assertRaisesRegex(errors.Error, f"^{path} is unreadable .*PermissionError"):
                idx.read(path, 1, "mnist")

    def test_default_dir(self):
        debian = self._new_dir()
        with mock.patch.object(idx, "DEBIAN_FASHION_MNIST", debian):
            self.assertEqual(idx.default_dir("fashion_mnist"), debian)
            self.assertIsNone(idx.default_dir("mnist"))
        with mock.patch.object(idx, "DEBIAN_FASHION_MNIST", os.path.join(debian, "absent")):
            self.assertIsNone(idx.default_dir("fashion_mnist"))

    @parameterized.named_parameters(("hw", (3, 28, 28)), ("hwc", (3, 28, 28, 1)))
    def test_pad_for_vgg(self, shape):
        images = np.random.default_rng(1).integers(1, 256, shape, dtype=np.uint8)
        padded = idx.pad_for_vgg(images)
        self.assertEqual(padded.shape, (3, 32, 32, 1))
        self.assertEqual(padded.dtype, np.uint8)
        self.assertAllEqual(padded[:, 2:30, 2:30, 0], images.reshape(3, 28, 28))
        # Everything outside rows/columns 2..29 is black: 32 * 32 - 28 * 28 = 240 pixels per image.
        self.assertEqual(np.count_nonzero(padded == 0), 3 * 240)


if __name__ == "__main__":
    tf.test.main()
