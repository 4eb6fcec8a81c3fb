"""Tests for the built-in sources (maxl_tf.data cifar, mnist, digits, through the registry) and
tfds.py's download checks, on tiny data sets written in the published formats (no network)."""

import json
import os
import pickle
import socket
import subprocess
import sys
import tarfile
from unittest import mock

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from maxl_tf import errors
from maxl_tf.data import cifar
from maxl_tf.data import idx
from maxl_tf.data import registry
from maxl_tf.data import source
from maxl_tf.data import tfds as tfds_source
from tests import idx_test
from tests import smoke_util
from tests import tfds_fakes

_TABLE = np.asarray(cifar.CIFAR100_FINE_TO_COARSE)


def _source(dataset: str, data_dir: str | None, download: bool) -> source.Source:
    """The source a run gets for --dataset, --data_dir (None: left out) and --download."""
    return registry.get(dataset, source.Options(data_dir=data_dir or "", download=download))


def _load(dataset: str, data_dir: str | None, download: bool) -> source.Loaded:
    return _source(dataset, data_dir, download).load()


def _find(dataset: str, data_dir: str | None, download: bool) -> None:
    _source(dataset, data_dir, download).find()


def _random_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rows of 3072 bytes, as in the CIFAR pickles (channel-major: 1024 R, 1024 G, 1024 B)."""
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _pickle(path: str, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _tar_gz(folder: str, tar_path: str) -> None:
    """Packs `folder` the way the authors do: members are `<folder name>/<file>`."""
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(folder, arcname=os.path.basename(folder))


def _expected_hwc(row: np.ndarray) -> np.ndarray:
    """One image from its CHW pickle row, pixel by pixel (independent of the loader's reshape)."""
    image = np.zeros((32, 32, 3), np.uint8)
    for r in range(32):
        for c in range(32):
            for ch in range(3):
                image[r, c, ch] = row[ch * 1024 + r * 32 + c]
    return image


class SourcesTest(tf.test.TestCase, parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.rng = np.random.default_rng(0)

    def _dir(self, name: str) -> str:
        path = os.path.join(self.get_temp_dir(), name)
        os.makedirs(path, exist_ok=True)
        return path

    # --- writers for the published formats ------------------------------------------------------

    def _write_cifar100(self, data_dir: str, as_tar: bool, bad_coarse: bool = False) -> dict:
        """cifar-100-python/{train,test} (20 + 10 images); returns the pickled dicts by member."""
        folder = os.path.join(data_dir, "cifar-100-python")
        os.makedirs(folder)
        written = {}
        for member, n in (("train", 20), ("test", 10)):
            fine = self.rng.integers(0, 100, size=n)
            coarse = _TABLE[fine].copy()
            if bad_coarse and member == "test":
                coarse[3] = (coarse[3] + 1) % 20
            written[member] = {
                b"filenames": [f"img_{i}.png".encode() for i in range(n)],
                b"batch_label": member.encode(),
                b"fine_labels": fine.tolist(),
                b"coarse_labels": coarse.tolist(),
                b"data": _random_images(self.rng, n),
            }
            _pickle(os.path.join(folder, member), written[member])
        if as_tar:
            _tar_gz(folder, os.path.join(data_dir, "cifar-100-python.tar.gz"))
            tf.io.gfile.rmtree(folder)
        return written

    def _write_cifar10(self, data_dir: str, as_tar: bool, bad_label: bool = False) -> dict:
        """cifar-10-batches-py/data_batch_{1..5} (4 images each) + test_batch (10 images)."""
        folder = os.path.join(data_dir, "cifar-10-batches-py")
        os.makedirs(folder)
        written = {}
        members = [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 10)]
        for member, n in members:
            labels = self.rng.integers(0, 10, size=n)
            if bad_label and member == "test_batch":
                labels[0] = 10
            written[member] = {
                b"batch_label": member.encode(),
                b"labels": labels.tolist(),
                b"data": _random_images(self.rng, n),
                b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            }
            _pickle(os.path.join(folder, member), written[member])
        if as_tar:
            _tar_gz(folder, os.path.join(data_dir, "cifar-10-python.tar.gz"))
            tf.io.gfile.rmtree(folder)
        return written

    def _write_cifar10_1(self, data_dir: str, n: int = 7) -> tuple[np.ndarray, np.ndarray]:
        images = self.rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = self.rng.integers(0, 10, size=n).astype(np.int64)
        np.save(os.path.join(data_dir, "cifar10.1_v6_data.npy"), images)
        np.save(os.path.join(data_dir, "cifar10.1_v6_labels.npy"), labels)
        return images, labels

    def _assert_split(self, split: source.Split, n: int, shape=(32, 32, 3)) -> None:
        self.assertEqual(split.images.shape, (n, *shape))
        self.assertEqual(split.images.dtype, np.uint8)
        self.assertEqual(split.labels.shape, (n,))
        self.assertEqual(split.labels.dtype, np.int64)

    # --- local archives ----------------------------------------------------------------------

    @parameterized.named_parameters(("tar_gz", True), ("folder", False))
    def test_cifar100_local(self, as_tar):
        data_dir = self._dir("data")
        written = self._write_cifar100(data_dir, as_tar)

        raw = _load("cifar100", data_dir, download=False)

        self._assert_split(raw.train, 20)
        self._assert_split(raw.test, 10)
        self.assertAllEqual(raw.train.labels, written["train"][b"fine_labels"])
        self.assertAllEqual(raw.test.labels, written["test"][b"fine_labels"])
        self.assertAllEqual(raw.train.images[5], _expected_hwc(written["train"][b"data"][5]))
        self.assertAllEqual(raw.test.images[9], _expected_hwc(written["test"][b"data"][9]))
        expected = "cifar-100-python.tar.gz" if as_tar else "cifar-100-python"
        self.assertEqual(raw.description, f"local archive {os.path.join(data_dir, expected)}")

    @parameterized.named_parameters(("tar_gz", True), ("folder", False))
    def test_cifar10_local(self, as_tar):
        data_dir = self._dir("data")
        written = self._write_cifar10(data_dir, as_tar)

        raw = _load("cifar10", data_dir, download=False)

        self._assert_split(raw.train, 20)
        self._assert_split(raw.test, 10)
        batches = [written[f"data_batch_{i}"] for i in range(1, 6)]
        self.assertAllEqual(raw.train.labels, np.concatenate([b[b"labels"] for b in batches]))
        self.assertAllEqual(raw.test.labels, written["test_batch"][b"labels"])
        # Image 6 of the training split is image 2 of data_batch_2: batches keep their order.
        self.assertAllEqual(raw.train.images[6], _expected_hwc(batches[1][b"data"][2]))
        self.assertIn("local archive", raw.description)

    def test_cifar10_1_local(self):
        data_dir = self._dir("data")
        written = self._write_cifar10(data_dir, as_tar=True)
        images, labels = self._write_cifar10_1(data_dir, n=7)

        raw = _load("cifar10_1", data_dir, download=False)

        self._assert_split(raw.train, 20)
        self._assert_split(raw.test, 7)
        self.assertAllEqual(raw.train.labels[:4], written["data_batch_1"][b"labels"])
        self.assertAllEqual(raw.test.images, images)
        self.assertAllEqual(raw.test.labels, labels)
        self.assertIn("cifar10.1_v6_data.npy", raw.description)

    def test_cifar10_1_without_cifar10_archive_names_it(self):
        data_dir = self._dir("data")
        self._write_cifar10_1(data_dir)
        with self.assertRaisesRegex(errors.Error, r"cifar-10-python\.tar\.gz"):
            _load("cifar10_1", data_dir, download=False)

    def test_cifar10_1_bad_npy_names_file(self):
        data_dir = self._dir("data")
        self._write_cifar10(data_dir, as_tar=False)
        self._write_cifar10_1(data_dir)
        np.save(os.path.join(data_dir, "cifar10.1_v6_data.npy"), np.zeros((7, 32, 32), np.uint8))
        with self.assertRaisesRegex(errors.Error, r"v6_data\.npy.*download them again"):
            _load("cifar10_1", data_dir, download=False)

    def test_coarse_label_disagreeing_with_table(self):
        data_dir = self._dir("data")
        self._write_cifar100(data_dir, as_tar=True, bad_coarse=True)
        expected = r"cifar-100-python\.tar\.gz.*1 coarse labels disagree"
        with self.assertRaisesRegex(errors.Error, expected):
            _load("cifar100", data_dir, download=False)

    def test_truncated_tar_gz_names_file(self):
        data_dir = self._dir("data")
        self._write_cifar100(data_dir, as_tar=True)
        tar_path = os.path.join(data_dir, "cifar-100-python.tar.gz")
        with open(tar_path, "rb") as f:
            content = f.read()
        with open(tar_path, "wb") as f:
            f.write(content[: len(content) // 2])
        with self.assertRaisesRegex(errors.Error, rf"{tar_path}.*download it again"):
            _load("cifar100", data_dir, download=False)

    def test_missing_member_names_file(self):
        data_dir = self._dir("data")
        self._write_cifar10(data_dir, as_tar=False)
        os.remove(os.path.join(data_dir, "cifar-10-batches-py", "data_batch_3"))
        with self.assertRaisesRegex(errors.Error, r"cifar-10-batches-py.*data_batch_3"):
            _load("cifar10", data_dir, download=False)

    def test_wrong_image_size_names_file(self):
        data_dir = self._dir("data")
        self._write_cifar10(data_dir, as_tar=False)
        path = os.path.join(data_dir, "cifar-10-batches-py", "test_batch")
        _pickle(path, {b"data": np.zeros((10, 3000), np.uint8), b"labels": [0] * 10})
        with self.assertRaisesRegex(errors.Error, r"cifar-10-batches-py.*uint8 \[N, 3072\]"):
            _load("cifar10", data_dir, download=False)

    def test_label_out_of_range(self):
        data_dir = self._dir("data")
        self._write_cifar10(data_dir, as_tar=False, bad_label=True)
        with self.assertRaisesRegex(errors.Error, r"test split.*0\.\.9"):
            _load("cifar10", data_dir, download=False)

    # --- missing data / tensorflow-datasets ------------------------------------------------------

    def test_missing_data_dir(self):
        data_dir = os.path.join(self.get_temp_dir(), "does_not_exist")
        with self.assertRaisesRegex(errors.Error, rf"--data_dir={data_dir} does not exist"):
            _load("cifar100", data_dir, download=True)
        self.assertFalse(os.path.exists(data_dir))

    @parameterized.parameters("cifar100", "cifar10", "cifar10_1")
    def test_empty_data_dir_without_download(self, dataset):
        data_dir = self._dir("empty")
        with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as download:
            with self.assertRaises(errors.Error) as caught:
                _load(dataset, data_dir, download=False)
        download.assert_not_called()
        message = str(caught.exception)
        self.assertIn(f"--data_dir={data_dir}", message)
        archive = "cifar-100-python.tar.gz" if dataset == "cifar100" else "cifar-10-python.tar.gz"
        self.assertIn(archive, message)
        self.assertIn("--download", message)
        if dataset == "cifar10_1":
            self.assertIn("cifar10.1_v6_labels.npy", message)

    def test_default_tfds_dir_without_download(self):
        with mock.patch.object(tfds.core.constants, "DATA_DIR", self._dir("tfds_default")):
            with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as download:
                expected = r"tfds_default.*--data_dir=<that folder>"
                with self.assertRaisesRegex(errors.Error, expected):
                    _load("cifar10", None, download=False)
        download.assert_not_called()

    def test_download_failure_becomes_data_error(self):
        data_dir = self._dir("empty")
        failure = ConnectionError("Name or service not known")
        expected = (
            rf"^No cifar100 data in --data_dir={data_dir} \(looked for cifar-100-python.tar.gz.*\), and "
            r"downloading cifar100/[\d.]+ with tensorflow-datasets failed \(ConnectionError: Name or service not "
            r"known\); no internet\? To work offline put .*--data_dir=<that folder>"
        )
        with (
            mock.patch.object(tfds_source, "offline", return_value=False),
            mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare", side_effect=failure),
        ):
            with self.assertRaisesRegex(errors.Error, expected):
                _load("cifar100", data_dir, download=True)
        # Without --data_dir the message says how to give one.
        with (
            mock.patch.object(tfds_source, "offline", return_value=False),
            mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare", side_effect=failure),
            mock.patch.object(tfds.core.constants, "DATA_DIR", self._dir("tfds_default")),
        ):
            with self.assertRaisesRegex(errors.Error, r"cifar100.*failed \(ConnectionError.*--data_dir=<that folder>"):
                _load("cifar100", None, download=True)

    def test_offline_download_fails_fast_without_trying(self):
        data_dir = self._dir("empty")
        lookup_failure = socket.gaierror(-2, "Name or service not known")
        with (
            mock.patch.dict(os.environ, {}, clear=True),
            mock.patch.object(socket, "getaddrinfo", side_effect=lookup_failure) as lookup,
            mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as download,
        ):
            with self.assertRaisesRegex(
                errors.Error,
                rf"^No cifar100 data in --data_dir={data_dir} .*, and "
                r"downloading cifar100/[\d.]+ is impossible: no network",
            ):
                _load("cifar100", data_dir, download=True)
            expected = r"No cifar100 data in the tensorflow-datasets folder.*impossible: no network.*--data_dir=<"
            with self.assertRaisesRegex(errors.Error, expected):
                with mock.patch.object(tfds.core.constants, "DATA_DIR", self._dir("tfds_default")):
                    _load("cifar100", None, download=True)
        download.assert_not_called()
        self.assertLen(lookup.call_args_list, 2 * len(tfds_source.DOWNLOAD_HOSTS))

    def test_proxy_leaves_the_download_to_try(self):
        with (
            mock.patch.dict(os.environ, {"HTTPS_PROXY": "http://proxy:3128"}),
            mock.patch.object(socket, "getaddrinfo", side_effect=OSError),
        ):
            self.assertFalse(tfds_source.offline())

    def _prepared_tfds_dir(self, *names: str) -> str:
        data_dir = self._dir("tfds")
        for name in names:
            tfds_fakes.fake_prepare(tfds.builder(name, data_dir=data_dir))
        return data_dir

    def test_tfds_prepared_cifar10(self):
        data_dir = self._prepared_tfds_dir("cifar10")
        with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as download:
            with tfds.testing.mock_data(num_examples=6, data_dir=data_dir):
                raw = _load("cifar10", data_dir, download=False)
        download.assert_not_called()
        self._assert_split(raw.train, 6)
        self._assert_split(raw.test, 6)
        for split in (raw.train, raw.test):
            self.assertBetween(split.labels.min(), 0, 9)
            self.assertBetween(split.labels.max(), 0, 9)
        self.assertEqual(raw.description, f"tfds cifar10/3.0.2 in {data_dir}")

    def test_tfds_prepared_cifar10_1(self):
        data_dir = self._prepared_tfds_dir("cifar10", "cifar10_1/v6")
        with tfds.testing.mock_data(num_examples=5, data_dir=data_dir):
            raw = _load("cifar10_1", data_dir, download=False)
        self._assert_split(raw.train, 5)
        self._assert_split(raw.test, 5)
        self.assertBetween(raw.test.labels.max(), 0, 9)
        self.assertEqual(raw.description, f"tfds cifar10/3.0.2 (train) + cifar10_1/v6/1.1.0 (test) in {data_dir}")

    def test_tfds_download_when_not_prepared(self):
        data_dir = self._dir("tfds")
        prepared = []

        def fake_download_and_prepare(builder, *args, **kwargs):
            prepared.append(builder.info.full_name)
            tfds_fakes.fake_prepare(builder)

        with tfds.testing.mock_data(num_examples=6, data_dir=data_dir):
            with (
                mock.patch.object(tfds_source, "offline", return_value=False),
                mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare", fake_download_and_prepare),
            ):
                raw = _load("cifar10", data_dir, download=True)
        self.assertEqual(prepared, ["cifar10/3.0.2"])
        self._assert_split(raw.train, 6)
        self._assert_split(raw.test, 6)

    def _cifar100_as_dataset(self, bad_coarse: bool):
        """A tfds `_as_dataset` replacement: cifar100 examples with known fine/coarse labels."""

        def as_dataset(builder, split, **kwargs):
            fine = np.arange(8, dtype=np.int64) * 12 + (split == "test")
            coarse = _TABLE[fine].astype(np.int64)
            if bad_coarse:
                coarse[2] = (coarse[2] + 1) % 20
            images = np.full((8, 32, 32, 3), 7, np.uint8)
            features = {"image": images, "label": fine, "coarse_label": coarse}
            return tf.data.Dataset.from_tensor_slices(features)

        return as_dataset

    def test_tfds_cifar100_fine_labels(self):
        data_dir = self._prepared_tfds_dir("cifar100")
        as_dataset = self._cifar100_as_dataset(bad_coarse=False)
        with tfds.testing.mock_data(data_dir=data_dir, as_dataset_fn=as_dataset):
            raw = _load("cifar100", data_dir, download=False)
        self._assert_split(raw.train, 8)
        self.assertAllEqual(raw.train.labels, np.arange(8) * 12)
        self.assertAllEqual(raw.test.labels, np.arange(8) * 12 + 1)
        self.assertAllEqual(raw.test.images, np.full((8, 32, 32, 3), 7, np.uint8))

    def test_tfds_cifar100_coarse_mismatch(self):
        data_dir = self._prepared_tfds_dir("cifar100")
        as_dataset = self._cifar100_as_dataset(bad_coarse=True)
        with tfds.testing.mock_data(data_dir=data_dir, as_dataset_fn=as_dataset):
            with self.assertRaisesRegex(errors.Error, r"cifar100.*coarse labels disagree"):
                _load("cifar100", data_dir, download=False)

    # --- find: what a sweep checks before its first run trains --------------------------------

    def test_find_locates_archives_without_reading_them(self):
        data_dir = self._dir("data")
        os.makedirs(os.path.join(data_dir, "cifar-100-python"))  # empty: load() would fail reading it
        _find("cifar100", data_dir, download=False)
        with self.assertRaisesRegex(errors.Error, "cifar-100-python.*unreadable"):
            _load("cifar100", data_dir, download=False)
        idx_dir = self._dir("idx")
        open(os.path.join(idx_dir, "train-images-idx3-ubyte"), "w").close()  # empty: load() would fail
        _find("fashion_mnist", idx_dir, download=False)
        with self.assertRaisesRegex(errors.Error, "holds only some of fashion_mnist's IDX files"):
            _load("fashion_mnist", idx_dir, download=False)
        _find("digits", "/no/such/dir/is/used", download=False)

    def test_find_locates_a_prepared_tfds_copy_without_reading_it(self):
        data_dir = self._prepared_tfds_dir("cifar10", "cifar10_1/v6")
        with mock.patch.object(tfds.core.DatasetBuilder, "as_dataset") as read:
            _find("cifar10_1", data_dir, download=False)
        read.assert_not_called()

    def test_find_refuses_what_load_refuses(self):
        missing = os.path.join(self.get_temp_dir(), "does_not_exist")
        empty = self._dir("empty")
        partial = self._dir("partial")
        self._write_cifar10_1(partial)
        for dataset, data_dir, expected in (
            ("cifar100", missing, rf"--data_dir={missing} does not exist"),
            ("cifar10", empty, r"No cifar10 data in --data_dir=.*--download"),
            ("cifar10_1", partial, r"holds only part of cifar10_1"),
        ):
            with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as download:
                for check in (_find, _load):
                    with self.assertRaisesRegex(errors.Error, expected):
                        check(dataset, data_dir, download=False)
            download.assert_not_called()

    # --- digits and arguments ------------------------------------------------------------------

    def test_digits(self):
        raw = _load("digits", "/no/such/dir/is/used", download=False)
        self._assert_split(raw.train, 1437, shape=(8, 8, 1))
        self._assert_split(raw.test, 360, shape=(8, 8, 1))
        self.assertEqual(max(raw.train.images.max(), raw.test.images.max()), 255)
        self.assertEqual(min(raw.train.images.min(), raw.test.images.min()), 0)
        # Stratified: every digit is 20% +- 1 of the test split.
        self.assertAllInRange(np.bincount(raw.test.labels, minlength=10), 35, 37)
        self.assertEqual(raw.description, "scikit-learn load_digits")

        again = _load("digits", None, download=True)
        self.assertAllEqual(again.test.images, raw.test.images)
        self.assertAllEqual(again.test.labels, raw.test.labels)
        self.assertAllEqual(again.train.labels, raw.train.labels)

    def test_digits_scaling(self):
        raw = _load("digits", None, download=False)
        values = np.unique(np.concatenate([raw.train.images.ravel(), raw.test.images.ravel()]))
        expected = {round(v * 255 / 16) for v in range(17)}
        self.assertContainsSubset(set(values.tolist()), expected)

    def test_unknown_dataset(self):
        built_in = ("cifar100", "cifar10", "cifar10_1", "mnist", "fashion_mnist", "digits")
        self.assertEqual(registry.names(), (*built_in, registry.FOLDER))
        expected = rf"^--dataset=emnist: unknown; use one of {', '.join(built_in)}, folder \(folder: with --data_dir="
        with self.assertRaisesRegex(errors.Error, expected):
            _load("emnist", None, download=False)
        with self.assertRaisesRegex(errors.Error, expected):
            registry.check_name("emnist")

    # --- MNIST and Fashion-MNIST ----------------------------------------------------------------

    def _write_idx(self, folder: str) -> dict:
        """The four IDX files (5 train, 3 test 28x28 images), gzipped; returns the arrays."""
        arrays = {
            "train": (self.rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), np.array([0, 9, 4, 4, 1])),
            "test": (self.rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), np.array([7, 2, 5])),
        }
        for split, names in idx.FILES.items():
            for name, array in zip(names, arrays[split]):
                idx_test.write(os.path.join(folder, name), idx_test.idx_bytes(array), gzipped=True)
        return arrays

    def _assert_padded(self, split: source.Split, images: np.ndarray, labels) -> None:
        self._assert_split(split, len(labels), shape=(32, 32, 1))
        self.assertAllEqual(split.images[:, 2:30, 2:30, 0], images)
        self.assertEqual(int(split.images[:, :2].max()), 0)
        self.assertEqual(int(split.images[:, :, 30:].max()), 0)
        self.assertAllEqual(split.labels, labels)

    @parameterized.parameters("fashion_mnist", "mnist")
    def test_idx_files_in_data_dir(self, dataset):
        data_dir = self._dir("idx")
        arrays = self._write_idx(data_dir)
        with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare") as download:
            raw = _load(dataset, data_dir, download=True)
        download.assert_not_called()
        for split, (images, labels) in zip((raw.train, raw.test), (arrays["train"], arrays["test"])):
            self._assert_padded(split, images, labels)
        self.assertEqual(raw.description, f"IDX files in {data_dir}, padded to 32x32")

    def test_fashion_mnist_from_debian_folder_without_data_dir(self):
        debian = self._dir("debian")
        arrays = self._write_idx(debian)
        with mock.patch.object(idx, "DEBIAN_FASHION_MNIST", debian):
            raw = _load("fashion_mnist", None, download=False)
        self._assert_padded(raw.test, *arrays["test"])
        self.assertEqual(raw.description, f"IDX files in {debian}, padded to 32x32")

    def test_broken_idx_file_in_data_dir(self):
        data_dir = self._dir("idx")
        self._write_idx(data_dir)
        idx_test.write(
            os.path.join(data_dir, "t10k-labels-idx1-ubyte"), idx_test.idx_bytes(np.array([1, 10, 2])), gzipped=False
        )
        os.remove(os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz"))
        with self.assertRaisesRegex(errors.Error, r"t10k-labels-idx1-ubyte: label 10 at example 1"):
            _load("fashion_mnist", data_dir, download=False)

    def test_fashion_mnist_from_prepared_tfds(self):
        data_dir = self._prepared_tfds_dir("fashion_mnist")
        with tfds.testing.mock_data(num_examples=6, data_dir=data_dir):
            raw = _load("fashion_mnist", data_dir, download=False)
        self._assert_split(raw.train, 6, shape=(32, 32, 1))
        self._assert_split(raw.test, 6, shape=(32, 32, 1))
        self.assertEqual(int(raw.test.images[:, :2].max()), 0)
        self.assertRegex(raw.description, rf"^tfds fashion_mnist/[\d.]+ in {data_dir}, padded to 32x32$")

    @parameterized.parameters("fashion_mnist", "mnist")
    def test_empty_data_dir_names_the_idx_files(self, dataset):
        data_dir = self._dir("empty")
        with self.assertRaises(errors.Error) as caught:
            _load(dataset, data_dir, download=False)
        message = str(caught.exception)
        self.assertIn(f"No {dataset} data in --data_dir={data_dir}", message)
        self.assertIn("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte", message)
        self.assertIn("prepared tensorflow-datasets copy", message)

    def test_mnist_without_data_dir_says_where_it_looked(self):
        tfds_dir = self._dir("tfds_default")
        with mock.patch.object(tfds.core.constants, "DATA_DIR", tfds_dir):
            with self.assertRaisesRegex(
                errors.Error,
                rf"No mnist data in the tensorflow-datasets folder {tfds_dir}: "
                "put the four IDX files",
            ):
                _load("mnist", None, download=False)

    def test_fashion_mnist_without_data_dir_or_package(self):
        tfds_dir = self._dir("tfds_default")
        with (
            mock.patch.object(tfds.core.constants, "DATA_DIR", tfds_dir),
            mock.patch.object(idx, "DEBIAN_FASHION_MNIST", os.path.join(tfds_dir, "absent")),
        ):
            with self.assertRaisesRegex(errors.Error, "apt-get install dataset-fashion-mnist"):
                _load("fashion_mnist", None, download=False)


_USER_MODULE = "maxl_user_sources_for_test"
_USER_SOURCES = """
from maxl_tf.data import source


class Named(source.Source):
    name = "mine"

    def __init__(self, options):
        self.options = options


class Nameless(source.Source):
    def __init__(self, options):
        pass


def not_a_source(options):
    return 42


INSTANCE = Named(source.Options())

NOT_CALLABLE = 42


class Failing(source.Source):
    def __init__(self, options):
        raise RuntimeError("cannot reach the bucket")


class Escaping(Named):
    name = "../../escaped"


class Broken(Named):
    # Every method fails as a user's code might.

    def levels(self):
        raise KeyError("labels")

    def load(self):
        raise ZeroDivisionError("division by zero")

    def find(self):
        raise OSError("mount gone")

    def identity(self):
        return {"opened": object()}


class TupleIdentity(Named):
    def identity(self):
        return {"files": ("a.png", "b.png"), "count": 2}
"""


class RegistryTest(tf.test.TestCase):
    """--dataset=module:Source, a user's own source: found, or refused by one line saying what to do."""

    def setUp(self):
        super().setUp()
        folder = self.get_temp_dir()
        with open(os.path.join(folder, f"{_USER_MODULE}.py"), "w") as f:
            f.write(_USER_SOURCES)
        sys.path.insert(0, folder)
        self.addCleanup(sys.path.remove, folder)
        self.addCleanup(sys.modules.pop, _USER_MODULE, None)

    def test_a_source_class_or_instance(self):
        options = source.Options(data_dir="/my/data")
        built = registry.get(f"{_USER_MODULE}:Named", options)
        self.assertEqual((type(built.source).__name__, built.name, built.options), ("Named", "mine", options))
        instance = registry.get(f"{_USER_MODULE}:INSTANCE")
        self.assertIs(instance.source, sys.modules[_USER_MODULE].INSTANCE)

    def test_what_is_not_a_usable_source(self):
        for attribute, pattern in (
            ("Missing", rf"^--dataset={_USER_MODULE}:Missing: {_USER_MODULE} has no Missing\.$"),
            ("not_a_source", r"not_a_source gave a int, not a maxl_tf\.data\.Source; subclass Source"),
            ("Nameless", r"Nameless: the source has no name; set its `name` attribute\.$"),
        ):
            with self.subTest(attribute), self.assertRaisesRegex(errors.Error, pattern):
                registry.get(f"{_USER_MODULE}:{attribute}")
        with self.assertRaisesRegex(
            errors.Error, r"^--dataset=no_such_module_here:Source: cannot import no_such_module_here .*PYTHONPATH\.$"
        ):
            registry.get("no_such_module_here:Source")

    def test_what_fails_in_the_users_code_is_one_line_naming_the_flag(self):
        spec = f"--dataset={_USER_MODULE}"
        for attribute, pattern in (
            ("NOT_CALLABLE", rf"^{spec}:NOT_CALLABLE: NOT_CALLABLE is a int, not a Source class, instance or function"),
            ("Failing", rf"^{spec}:Failing: Failing\(options\) failed: RuntimeError: cannot reach the bucket$"),
            ("Escaping", rf"^{spec}:Escaping: the source's name '\.\./\.\./escaped' is not a plain file name"),
        ):
            with self.subTest(attribute), self.assertRaisesRegex(errors.Error, pattern):
                registry.get(f"{_USER_MODULE}:{attribute}")
        broken = registry.get(f"{_USER_MODULE}:Broken")
        for method, pattern in (
            ("levels", r"its levels\(\) failed: KeyError: 'labels'; fix the source\.$"),
            ("load", r"its load\(\) failed: ZeroDivisionError: division by zero; fix the source\.$"),
            ("find", r"its find\(\) failed: OSError: mount gone; fix the source\.$"),
            ("identity", r"its identity\(\) gave what JSON cannot hold \(TypeError: Object of type object"),
        ):
            with self.subTest(method), self.assertRaisesRegex(errors.Error, rf"^{spec}:Broken: {pattern}"):
                getattr(broken, method)()
        # What a run records is the JSON form, so the saved copy equals a fresh one.
        identity = registry.get(f"{_USER_MODULE}:TupleIdentity").identity()
        self.assertEqual(identity, json.loads(json.dumps(identity)))

    def test_a_module_that_fails_to_import(self):
        folder = self.get_temp_dir()
        for module, text, pattern in (
            ("maxl_syntax_error_source", "class Source(:\n", r"SyntaxError"),
            ("maxl_raising_source", "raise RuntimeError('no credentials')\n", r"RuntimeError: no credentials"),
        ):
            with open(os.path.join(folder, f"{module}.py"), "w") as f:
                f.write(text)
            self.addCleanup(sys.modules.pop, module, None)
            with (
                self.subTest(module),
                self.assertRaisesRegex(
                    errors.Error, rf"^--dataset={module}:Source: cannot import {module} \({pattern}.*PYTHONPATH\.$"
                ),
            ):
                registry.get(f"{module}:Source")

    def test_a_failing_source_is_one_line_from_main(self):
        """The whole command: one error line, exit 2, no traceback, and no run folder outside runs/."""
        tmp = self.get_temp_dir()
        work = os.path.join(tmp, "work")
        os.makedirs(work)
        for attribute, pattern in (
            ("Escaping", r"is not a plain file name"),
            ("Failing", r"Failing\(options\) failed: RuntimeError: cannot reach the bucket"),
        ):
            process = subprocess.run(
                smoke_util.main_command(f"--dataset={_USER_MODULE}:{attribute}", "--pri=2", "--aux=4", "--epochs=1"),
                cwd=work,
                capture_output=True,
                text=True,
                timeout=120,
                env=dict(os.environ, PYTHONPATH=os.pathsep.join([sys.path[0], smoke_util.REPO])),
            )
            with self.subTest(attribute):
                self.assertEqual(process.returncode, 2, process.stderr)
                self.assertRegex(process.stderr, rf"^error: --dataset={_USER_MODULE}:{attribute}: .*{pattern}")
                self.assertLen(process.stderr.strip().splitlines(), 1)
                self.assertNotIn("Traceback", process.stderr)
        self.assertFalse(os.path.exists(os.path.join(tmp, "escaped_pri2_aux4_maxl_seed0")))
        self.assertEqual(os.listdir(work), [])

    def test_checking_a_name_imports_nothing(self):
        registry.check_name(f"{_USER_MODULE}:Named")  # flags are checked in a second, without user code
        self.assertNotIn(_USER_MODULE, sys.modules)
        for dataset, user_data in (
            ("folder", True),
            ("tfds:mnist", True),
            (f"{_USER_MODULE}:Named", True),
            ("cifar100", False),
            ("digits", False),
        ):
            self.assertEqual(registry.is_user_data(dataset), user_data, dataset)


if __name__ == "__main__":
    tf.test.main()
