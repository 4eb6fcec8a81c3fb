"""Loads whole image-classification data sets into numpy arrays.

CIFAR sets come from the archives their authors publish (when --data_dir holds them), else from a
tensorflow-datasets directory, downloading into it only when asked. MNIST and Fashion-MNIST come
from their four IDX files in --data_dir (without it, Fashion-MNIST from Debian's package folder
when installed), else from tensorflow-datasets the same way; both are padded to 32x32 (idx.py).
Digits is bundled with scikit-learn. Everything returned is checked, so bad data stops the run with an errors.Error the
user can act on instead of a traceback deep inside training.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
import os
import pickle
import socket
import tarfile
import zlib

import numpy as np
import sklearn.datasets
import sklearn.model_selection
import tensorflow as tf
import tensorflow_datasets as tfds

from maxl_tf import config as config_lib
from maxl_tf import errors
from maxl_tf import hierarchy
from maxl_tf import idx
from maxl_tf import safe_pickle

_NUM_CLASSES = {"cifar100": 100, "cifar10": 10, "cifar10_1": 10, "digits": 10, "mnist": 10, "fashion_mnist": 10}
# tensorflow-datasets names of the builders holding the (train, test) splits.
_TFDS_NAMES = {
    "cifar100": ("cifar100", "cifar100"),
    "cifar10": ("cifar10", "cifar10"),
    "cifar10_1": ("cifar10", "cifar10_1/v6"),
    "mnist": ("mnist", "mnist"),
    "fashion_mnist": ("fashion_mnist", "fashion_mnist"),
}
# tfds fetches from its Google Cloud Storage mirror, else from the publishers' hosts.
_DOWNLOAD_HOSTS = (
    "storage.googleapis.com",
    "www.cs.toronto.edu",
    "github.com",
    "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
)
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_CIFAR10_1_URL = "https://github.com/modestyachts/CIFAR-10.1 (datasets/)"
_CIFAR10_1_DATA = "cifar10.1_v6_data.npy"
_CIFAR10_1_LABELS = "cifar10.1_v6_labels.npy"
# What a truncated, corrupt or foreign archive raises while being read.
_READ_ERRORS = (
    OSError,
    EOFError,
    tarfile.TarError,
    zlib.error,
    pickle.UnpicklingError,
    KeyError,
    ValueError,
    TypeError,
    IndexError,
)

_IMAGE_SHAPE = {
    "cifar100": (32, 32, 3),
    "cifar10": (32, 32, 3),
    "cifar10_1": (32, 32, 3),
    "digits": (8, 8, 1),
    "mnist": (32, 32, 1),
    "fashion_mnist": (32, 32, 1),
}


@dataclasses.dataclass(frozen=True)
class Split:
    images: np.ndarray  # [N, H, W, C] uint8
    labels: np.ndarray  # [N] int64, the finest label level of the data set


@dataclasses.dataclass(frozen=True)
class RawData:
    train: Split
    test: Split
    source: str  # one line saying where the data came from


@dataclasses.dataclass(frozen=True)
class _PickleArchive:
    """A CIFAR archive as published: `tar_name` unpacks to `folder`, which holds the pickles."""

    tar_name: str
    folder: str
    train_members: tuple[str, ...]
    test_members: tuple[str, ...]
    label_key: bytes

    def describe(self) -> str:
        return f"{self.tar_name} (or its extracted {self.folder}/)"


_CIFAR100_ARCHIVE = _PickleArchive(
    tar_name="cifar-100-python.tar.gz",
    folder="cifar-100-python",
    train_members=("train",),
    test_members=("test",),
    label_key=b"fine_labels",
)
_CIFAR10_ARCHIVE = _PickleArchive(
    tar_name="cifar-10-python.tar.gz",
    folder="cifar-10-batches-py",
    train_members=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_members=("test_batch",),
    label_key=b"labels",
)


def load(dataset: str, data_dir: str | None, download: bool) -> RawData:
    """Loads `dataset` whole; `data_dir` and `download` do not matter for digits."""
    if dataset not in config_lib.DATASETS:
        raise errors.Error(f"Unknown data set {dataset!r}: --dataset must be one of {', '.join(config_lib.DATASETS)}.")
    if dataset == "digits":
        raw = _load_digits()
    elif dataset in idx.DATASETS:
        raw = _load_idx_set(dataset, data_dir, download)
    else:
        raw = _load_cifar(dataset, data_dir, download)
    _validate(raw.train, dataset, f"{raw.source} (train split)")
    _validate(raw.test, dataset, f"{raw.source} (test split)")
    return raw


def _load_digits() -> RawData:
    """scikit-learn's 8x8 digits, scaled to uint8, with a fixed stratified 20% test split."""
    digits = sklearn.datasets.load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)[..., np.newaxis]
    labels = digits.target.astype(np.int64)
    # random_state is fixed on purpose: the test set must not change with the run seed.
    train_x, test_x, train_y, test_y = sklearn.model_selection.train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=0
    )
    return RawData(Split(train_x, train_y), Split(test_x, test_y), "scikit-learn load_digits")


def find(dataset: str, data_dir: str | None, download: bool) -> None:
    """Checks that load() will find the data set, without reading it: its published files are in
    `data_dir` (or Debian's folder), or its tensorflow-datasets copy is prepared (downloaded now,
    once, if `download`).

    A sweep calls it for every run before the first one trains, so missing data stops the sweep
    at once instead of after hours; a file that is there but damaged is still found by load().

    Raises:
      errors.Error: as load() would for data that is missing or cannot be downloaded.
    """
    if dataset == "digits":
        return  # bundled with scikit-learn
    if dataset in idx.DATASETS:
        folder = _existing_dir(data_dir) if data_dir is not None else idx.default_dir(dataset)
        if folder is not None and idx.find_files(folder):
            return  # load() reads the four files, or names those missing
        data_dir = folder if data_dir is not None else None
    elif data_dir is not None:
        data_dir = _existing_dir(data_dir)
        if _local_archives(dataset, data_dir) is not None:
            return
    for name in dict.fromkeys(_TFDS_NAMES[dataset]):
        _prepared_builder(name, dataset, data_dir, download)


def _load_cifar(dataset: str, data_dir: str | None, download: bool) -> RawData:
    """Local published archives in `data_dir` first, then tensorflow-datasets."""
    if data_dir is None:
        return _load_tfds(dataset, None, download)
    data_dir = _existing_dir(data_dir)
    local = _load_local(dataset, data_dir)
    return local if local is not None else _load_tfds(dataset, data_dir, download)


def _load_idx_set(dataset: str, data_dir: str | None, download: bool) -> RawData:
    """MNIST or Fashion-MNIST: IDX files in `data_dir` (None: Debian's folder, if any), then
    tensorflow-datasets; images padded from 28x28 to 32x32."""
    folder = _existing_dir(data_dir) if data_dir is not None else idx.default_dir(dataset)
    splits = idx.load(dataset, folder) if folder is not None else None
    if splits is None:
        raw = _load_tfds(dataset, folder if data_dir is not None else None, download)
        train, test, source = (raw.train.images, raw.train.labels), (raw.test.images, raw.test.labels), raw.source
    else:
        train, test, source = splits["train"], splits["test"], f"IDX files in {folder}"
    return RawData(
        Split(idx.pad_for_vgg(train[0]), train[1]),
        Split(idx.pad_for_vgg(test[0]), test[1]),
        f"{source}, padded to 32x32",
    )


def _existing_dir(data_dir: str) -> str:
    data_dir = os.path.expanduser(data_dir)
    if not os.path.isdir(data_dir):
        raise errors.Error(
            f"--data_dir={data_dir} does not exist or is not a folder: create it and put the data "
            "there, or leave --data_dir out to use the tensorflow-datasets default folder."
        )
    return data_dir


# ----------------------------------------------------------------------------------------------
# Local archives in the formats the data set authors publish.


def _local_archives(dataset: str, data_dir: str) -> tuple | None:
    """The paths of the data set's published archives in `data_dir`, or None when none is there.

    Raises:
      errors.Error: only part of cifar10_1's three files is there.
    """
    if dataset == "cifar100":
        path = _find_archive(_CIFAR100_ARCHIVE, data_dir)
        return None if path is None else (path,)
    cifar10_path = _find_archive(_CIFAR10_ARCHIVE, data_dir)
    if dataset == "cifar10":
        return None if cifar10_path is None else (cifar10_path,)
    # cifar10_1: the CIFAR-10 training archive + the CIFAR-10.1 v6 .npy pair, all or none.
    npy_paths = [os.path.join(data_dir, name) for name in (_CIFAR10_1_DATA, _CIFAR10_1_LABELS)]
    present = [cifar10_path is not None] + [os.path.isfile(p) for p in npy_paths]
    if not any(present):
        return None
    if not all(present):
        names = [_CIFAR10_ARCHIVE.describe(), _CIFAR10_1_DATA, _CIFAR10_1_LABELS]
        missing = [name for name, found in zip(names, present) if not found]
        raise errors.Error(
            f"--data_dir={data_dir} holds only part of cifar10_1: also put {' and '.join(missing)} "
            f"there (from {_CIFAR_URL} and {_CIFAR10_1_URL})."
        )
    return (cifar10_path, *npy_paths)


def _load_local(dataset: str, data_dir: str) -> RawData | None:
    """The data set from published archives in `data_dir`, or None when none of them is there."""
    paths = _local_archives(dataset, data_dir)
    if paths is None:
        return None
    if dataset == "cifar10_1":
        cifar10_path, data_path, labels_path = paths
        train, _ = _read_pickle_archive(_CIFAR10_ARCHIVE, cifar10_path)
        test = _read_cifar10_1_npy(data_path, labels_path)
        return RawData(train, test, f"local archives {cifar10_path} + {data_path}")
    archive = _CIFAR100_ARCHIVE if dataset == "cifar100" else _CIFAR10_ARCHIVE
    train, test = _read_pickle_archive(archive, paths[0])
    return RawData(train, test, f"local archive {paths[0]}")


def _find_archive(archive: _PickleArchive, data_dir: str) -> str | None:
    """The extracted folder (preferred: no decompression) or else the .tar.gz, if either exists."""
    folder = os.path.join(data_dir, archive.folder)
    if os.path.isdir(folder):
        return folder
    tar_path = os.path.join(data_dir, archive.tar_name)
    return tar_path if os.path.isfile(tar_path) else None


def _read_pickle_archive(archive: _PickleArchive, path: str) -> tuple[Split, Split]:
    """(train, test) from a published CIFAR pickle archive; read or format errors -> errors.Error."""
    try:
        all_members = archive.train_members + archive.test_members
        pickles = _unpickle_members(path, archive.folder, all_members)
        train, test = (
            _pickles_to_split([pickles[m] for m in members], archive.label_key, path)
            for members in (archive.train_members, archive.test_members)
        )
    except _READ_ERRORS as err:
        raise errors.Error(
            f"{path} is unreadable or not in the published format ({type(err).__name__}: {err}); "
            f"delete it and download it again from {_CIFAR_URL}."
        ) from err
    return train, test


def _unpickle_members(path: str, folder: str, members: Sequence[str]) -> dict[str, Mapping]:
    """Unpickles `members` from an extracted folder or, in one pass, from a .tar.gz of `folder`/."""
    if os.path.isdir(path):
        pickles = {}
        for member in members:
            with open(os.path.join(path, member), "rb") as f:
                pickles[member] = safe_pickle.load_arrays(f, os.path.join(path, member))
        return pickles
    wanted = {f"{folder}/{member}": member for member in members}
    pickles = {}
    with tarfile.open(path, "r:gz") as tar:
        for info in tar:
            if info.name in wanted and info.isfile():
                pickles[wanted[info.name]] = safe_pickle.load_arrays(tar.extractfile(info), f"{path}: {info.name}")
    missing = sorted(set(members) - set(pickles))
    if missing:
        raise KeyError(f"no {', '.join(f'{folder}/{m}' for m in missing)} in the archive")
    return pickles


def _pickles_to_split(pickles: Sequence[Mapping], label_key: bytes, path: str) -> Split:
    """Concatenates CIFAR pickles: b"data" rows are 3072 bytes, channel-major (CHW) -> NHWC."""
    data = np.concatenate([np.asarray(p[b"data"]) for p in pickles])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 32 * 32 * 3:
        raise ValueError(f'b"data" is {data.dtype} {list(data.shape)}, not uint8 [N, 3072]')
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.concatenate([np.asarray(p[label_key], dtype=np.int64) for p in pickles])
    if label_key == b"fine_labels":
        coarse = np.concatenate([np.asarray(p[b"coarse_labels"], dtype=np.int64) for p in pickles])
        _check_coarse(labels, coarse, path)
    return Split(np.ascontiguousarray(images), labels)


def _read_cifar10_1_npy(data_path: str, labels_path: str) -> Split:
    """The CIFAR-10.1 v6 test set as published: uint8 [N,32,32,3] images and [N] integer labels."""
    try:
        images = np.load(data_path, allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False)
        if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3):
            raise ValueError(f"images are {images.dtype} {list(images.shape)}, not uint8 [N, 32, 32, 3]")
        if labels.dtype.kind not in "iu" or labels.shape != images.shape[:1]:
            raise ValueError(f"labels are {labels.dtype} {list(labels.shape)}, not integer [{len(images)}]")
    except _READ_ERRORS as err:
        raise errors.Error(
            f"{data_path} / {labels_path} are unreadable or not in the published format "
            f"({type(err).__name__}: {err}); download them again from {_CIFAR10_1_URL}."
        ) from err
    return Split(images, labels.astype(np.int64))


# ----------------------------------------------------------------------------------------------
# tensorflow-datasets.


def _load_tfds(dataset: str, data_dir: str | None, download: bool) -> RawData:
    """The data set from tensorflow-datasets builders in `data_dir` (None: the tfds default)."""
    train_name, test_name = _TFDS_NAMES[dataset]
    train_builder = _prepared_builder(train_name, dataset, data_dir, download)
    test_builder = train_builder
    if test_name != train_name:
        test_builder = _prepared_builder(test_name, dataset, data_dir, download)
    train = _read_tfds_split(train_builder, "train")
    test = _read_tfds_split(test_builder, "test")
    names = train_builder.info.full_name
    if test_builder is not train_builder:
        names += f" (train) + {test_builder.info.full_name} (test)"
    return RawData(train, test, f"tfds {names} in {train_builder.data_dir_root}")


def _prepared_builder(name: str, dataset: str, data_dir: str | None, download: bool) -> tfds.core.DatasetBuilder:
    """A tfds builder whose data is on disk, downloading it only if `download`."""
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    if not download:
        raise errors.Error(_missing_data_message(dataset, data_dir, str(builder.data_dir_root)))
    if _offline():
        reason = f"no network (none of {', '.join(_DOWNLOAD_HOSTS)} resolves)"
        if data_dir is not None:
            raise errors.Error(
                f"{_nothing_in(dataset, data_dir)}, and downloading {name} there is impossible: "
                f"{reason}. Put the files there."
            )
        raise errors.Error(f"Cannot download {name}: {reason}. To work offline {_offline_fix(dataset)}.")
    try:
        builder.download_and_prepare()
    except Exception as err:  # Whatever tfds raises, the user needs the offline fix, not a trace.
        reason = errors.first_line(err, 200)
        if data_dir is not None:
            raise errors.Error(
                f"{_nothing_in(dataset, data_dir)}, and downloading {name} there with "
                f"tensorflow-datasets failed ({reason}). Put the files there."
            ) from err
        raise errors.Error(
            f"Downloading {name} with tensorflow-datasets failed ({reason}); "
            f"no internet? To work offline {_offline_fix(dataset)}."
        ) from err
    return builder


def _offline() -> bool:
    """True when no download host resolves and no proxy is set.

    Offline, tfds retries every download for minutes before failing; a name lookup fails in
    milliseconds. Behind a proxy the lookup proves nothing, so the download is left to try.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False
    for host in _DOWNLOAD_HOSTS:
        try:
            socket.getaddrinfo(host, 443)
            return False
        except OSError:
            pass
    return True


def _read_tfds_split(builder: tfds.core.DatasetBuilder, split: str) -> Split:
    """One prepared tfds split, whole; cifar100's coarse labels are checked against the table."""
    try:
        arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    except tf.errors.OpError as err:
        raise errors.Error(
            f"tensorflow-datasets files in {builder.data_path} are unreadable "
            f"({type(err).__name__}); delete that folder and prepare it again with --download."
        ) from err
    labels = np.asarray(arrays["label"], dtype=np.int64)
    if "coarse_label" in arrays:
        coarse = np.asarray(arrays["coarse_label"], dtype=np.int64)
        _check_coarse(labels, coarse, str(builder.data_path))
    return Split(np.asarray(arrays["image"]), labels)


def _local_names(dataset: str) -> str:
    """The published files that `_load_local` looks for, for messages."""
    if dataset == "cifar100":
        return f"{_CIFAR100_ARCHIVE.describe()} from {_CIFAR_URL}"
    if dataset == "cifar10":
        return f"{_CIFAR10_ARCHIVE.describe()} from {_CIFAR_URL}"
    if dataset in idx.DATASETS:
        return f"the four IDX files {idx.describe_files()} from {idx.SOURCES[dataset]}"
    return (
        f"{_CIFAR10_ARCHIVE.describe()} from {_CIFAR_URL} with {_CIFAR10_1_DATA} and "
        f"{_CIFAR10_1_LABELS} from {_CIFAR10_1_URL}"
    )


def _offline_fix(dataset: str) -> str:
    """How to provide the data without a network, for messages."""
    fix = f"put {_local_names(dataset)} in a folder and pass --data_dir=<that folder>"
    if dataset == "fashion_mnist":
        fix = f"install Debian's package (apt-get install dataset-fashion-mnist), or {fix}"
    return fix


def _nothing_in(dataset: str, data_dir: str) -> str:
    """What a --data_dir without usable data lacked."""
    return (
        f"No {dataset} data in --data_dir={data_dir} (looked for {_local_names(dataset)}, and for "
        "a prepared tensorflow-datasets copy)"
    )


def _missing_data_message(dataset: str, data_dir: str | None, tfds_dir: str) -> str:
    """Where we looked and the two fixes: provide the files offline, or let tfds download."""
    if data_dir is None:
        debian = " (nor in Debian's package folder)" if dataset == "fashion_mnist" else ""
        return (
            f"No {dataset} data in the tensorflow-datasets folder {tfds_dir}{debian}: "
            f"{_offline_fix(dataset)}, or run with internet access and --download."
        )
    return f"{_nothing_in(dataset, data_dir)}: put the files there, or run with internet access and --download."


# ----------------------------------------------------------------------------------------------
# Checks.


def _check_coarse(fine: np.ndarray, coarse: np.ndarray, source: str) -> None:
    """Coarse labels that disagree with the standard table mean a corrupt or non-standard copy."""
    if fine.shape != coarse.shape or fine.min(initial=0) < 0 or fine.max(initial=0) >= 100:
        raise errors.Error(f"{source}: the CIFAR-100 fine/coarse label lists are malformed; download the data again.")
    bad = np.flatnonzero(np.asarray(hierarchy.CIFAR100_FINE_TO_COARSE)[fine] != coarse)
    if bad.size:
        i = bad[0]
        raise errors.Error(
            f"{source}: {bad.size} coarse labels disagree with the standard CIFAR-100 table "
            f"(example {i}: fine {fine[i]}, coarse {coarse[i]}), so this copy is corrupt or "
            "non-standard; download it again."
        )


def _validate(split: Split, dataset: str, where: str) -> None:
    """What everything downstream relies on: uint8 NHWC images, int64 labels in range."""
    images, labels = split.images, split.labels
    expected = _IMAGE_SHAPE[dataset]
    problem = None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
        size = ", ".join(map(str, expected))
        problem = f"images are {images.dtype} {list(images.shape)}, not uint8 [N, {size}]"
    elif labels.dtype != np.int64 or labels.ndim != 1 or len(labels) != len(images):
        problem = f"labels are {labels.dtype} {list(labels.shape)}, not int64 [{len(images)}]"
    elif len(labels) == 0:
        problem = "it holds no examples"
    elif labels.min() < 0 or labels.max() >= _NUM_CLASSES[dataset]:
        last = _NUM_CLASSES[dataset] - 1
        problem = f"labels span {labels.min()}..{labels.max()}, outside 0..{last}"
    if problem:
        raise errors.Error(f"{where}: {problem}; the data is corrupt or not {dataset}, download it again.")
