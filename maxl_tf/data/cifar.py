"""CIFAR-100, CIFAR-10 and CIFAR-10.1: the archives their authors publish (in --data_dir, as the
.tar.gz or extracted), else tensorflow-datasets, downloading only when allowed. CIFAR-100 brings
the paper's four-level hierarchy (Appendix A: 100 -> 20 -> 10 -> 3 classes); CIFAR-10.1 is a new
test set for CIFAR-10's training set. write_archive makes random-pixel archives in the published
format (python -m maxl_tf.synthetic), to run the full-size path offline.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
import io
import os
import pickle
import tarfile
import zlib

import numpy as np

from maxl_tf import errors
from maxl_tf.core import hierarchy as hierarchy_lib
from maxl_tf.data import safe_pickle
from maxl_tf.data import source as source_lib
from maxl_tf.data import tfds

# The standard CIFAR-100 fine -> coarse (20 superclasses) table, in the data set's own order.
CIFAR100_FINE_TO_COARSE = (
    4,
    1,
    14,
    8,
    0,
    6,
    7,
    7,
    18,
    3,
    3,
    14,
    9,
    18,
    7,
    11,
    3,
    9,
    7,
    11,
    6,
    11,
    5,
    10,
    7,
    6,
    13,
    15,
    3,
    15,
    0,
    11,
    1,
    10,
    12,
    14,
    16,
    9,
    11,
    5,
    5,
    19,
    8,
    8,
    15,
    13,
    14,
    17,
    18,
    10,
    16,
    4,
    17,
    4,
    2,
    0,
    17,
    4,
    18,
    17,
    10,
    3,
    2,
    12,
    12,
    16,
    12,
    1,
    9,
    19,
    2,
    10,
    0,
    1,
    16,
    12,
    9,
    13,
    15,
    13,
    16,
    19,
    2,
    4,
    6,
    19,
    5,
    5,
    8,
    19,
    18,
    1,
    2,
    15,
    6,
    0,
    17,
    8,
    14,
    13,
)
# Appendix A, 20 -> 10 classes: 0 large animals, 1 medium animals, 2 small animals,
# 3 invertebrates, 4 people, 5 vegetations, 6 household objects, 7 construction,
# 8 natural scenes, 9 vehicles.
CIFAR100_COARSE_TO_10 = (1, 2, 5, 6, 5, 6, 6, 3, 0, 7, 8, 0, 1, 3, 4, 0, 2, 5, 9, 9)
# Appendix A, 10 -> 3 classes: animals, vegetations, objects and scenes.
CIFAR100_10_TO_3 = (0, 0, 0, 0, 0, 1, 2, 2, 2, 2)
# Class names per level, in label order, for figures and predictions. CIFAR's are the names its
# archives publish, with spaces for underscores; the 10 and 3 classes are Appendix A's.
CIFAR100_FINE_NAMES = (
    "apple",
    "aquarium fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak tree",
    "orange",
    "orchid",
    "otter",
    "palm tree",
    "pear",
    "pickup truck",
    "pine tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow tree",
    "wolf",
    "woman",
    "worm",
)
CIFAR100_COARSE_NAMES = (
    "aquatic mammals",
    "fish",
    "flowers",
    "food containers",
    "fruit and vegetables",
    "household electrical devices",
    "household furniture",
    "insects",
    "large carnivores",
    "large man-made outdoor things",
    "large natural outdoor scenes",
    "large omnivores and herbivores",
    "medium mammals",
    "non-insect invertebrates",
    "people",
    "reptiles",
    "small mammals",
    "trees",
    "vehicles 1",
    "vehicles 2",
)
CIFAR100_10_NAMES = (
    "large animals",
    "medium animals",
    "small animals",
    "invertebrates",
    "people",
    "vegetations",
    "household objects",
    "construction",
    "natural scenes",
    "vehicles",
)
CIFAR100_3_NAMES = ("animals", "vegetations", "objects and scenes")
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_CIFAR10_1_URL = "https://github.com/modestyachts/CIFAR-10.1 (datasets/)"
_CIFAR10_1_DATA = "cifar10.1_v6_data.npy"
_CIFAR10_1_LABELS = "cifar10.1_v6_labels.npy"
# tensorflow-datasets names of the builders holding the (train, test) splits.
_TFDS_NAMES = {
    "cifar100": ("cifar100", "cifar100"),
    "cifar10": ("cifar10", "cifar10"),
    "cifar10_1": ("cifar10", "cifar10_1/v6"),
}
_IMAGE_SHAPE = (32, 32, 3)
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


def _load_local(dataset: str, data_dir: str) -> source_lib.Loaded | None:
    """The data set from published archives in `data_dir`, or None when none of them is there."""
    paths = _local_archives(dataset, data_dir)
    if paths is None:
        return None
    if dataset == "cifar10_1":
        cifar10_path, data_path, labels_path = paths
        train, _ = _read_pickle_archive(_CIFAR10_ARCHIVE, cifar10_path)
        test = _read_cifar10_1_npy(data_path, labels_path)
        return source_lib.Loaded(train, test, f"local archives {cifar10_path} + {data_path}")
    archive = _CIFAR100_ARCHIVE if dataset == "cifar100" else _CIFAR10_ARCHIVE
    train, test = _read_pickle_archive(archive, paths[0])
    return source_lib.Loaded(train, test, f"local archive {paths[0]}")


def _find_archive(archive: _PickleArchive, data_dir: str) -> str | None:
    """The extracted folder (preferred: no decompression) or else the .tar.gz, if either exists."""
    folder = os.path.join(data_dir, archive.folder)
    if os.path.isdir(folder):
        return folder
    tar_path = os.path.join(data_dir, archive.tar_name)
    return tar_path if os.path.isfile(tar_path) else None


def _read_pickle_archive(archive: _PickleArchive, path: str) -> tuple[source_lib.Split, source_lib.Split]:
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


def _pickles_to_split(pickles: Sequence[Mapping], label_key: bytes, path: str) -> source_lib.Split:
    """Concatenates CIFAR pickles: b"data" rows are 3072 bytes, channel-major (CHW) -> NHWC."""
    data = np.concatenate([np.asarray(p[b"data"]) for p in pickles])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 32 * 32 * 3:
        raise ValueError(f'b"data" is {data.dtype} {list(data.shape)}, not uint8 [N, 3072]')
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.concatenate([np.asarray(p[label_key], dtype=np.int64) for p in pickles])
    if label_key == b"fine_labels":
        coarse = np.concatenate([np.asarray(p[b"coarse_labels"], dtype=np.int64) for p in pickles])
        _check_coarse(labels, coarse, path)
    return source_lib.Split(np.ascontiguousarray(images), labels)


def _read_cifar10_1_npy(data_path: str, labels_path: str) -> source_lib.Split:
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
    return source_lib.Split(images, labels.astype(np.int64))


def _check_coarse(fine: np.ndarray, coarse: np.ndarray, source: str) -> None:
    """Coarse labels that disagree with the standard table mean a corrupt or non-standard copy."""
    if fine.shape != coarse.shape or fine.min(initial=0) < 0 or fine.max(initial=0) >= 100:
        raise errors.Error(f"{source}: the CIFAR-100 fine/coarse label lists are malformed; download the data again.")
    bad = np.flatnonzero(np.asarray(CIFAR100_FINE_TO_COARSE)[fine] != coarse)
    if bad.size:
        i = bad[0]
        raise errors.Error(
            f"{source}: {bad.size} coarse labels disagree with the standard CIFAR-100 table "
            f"(example {i}: fine {fine[i]}, coarse {coarse[i]}), so this copy is corrupt or "
            "non-standard; download it again."
        )


class Cifar(source_lib.Source):
    """One of the three CIFAR sets (module docstring)."""

    augmentation = source_lib.CIFAR_AUGMENTATION

    def __init__(self, dataset: str, options: source_lib.Options = source_lib.DEFAULTS):
        self.name = dataset
        self.options = options

    def levels(self) -> hierarchy_lib.Hierarchy:
        if self.name == "cifar100":
            fine_to_20 = np.asarray(CIFAR100_FINE_TO_COARSE)
            fine_to_10 = hierarchy_lib.compose(fine_to_20, CIFAR100_COARSE_TO_10)
            fine_to_3 = hierarchy_lib.compose(fine_to_10, CIFAR100_10_TO_3)
            return hierarchy_lib.Hierarchy(
                "CIFAR-100",
                {100: np.arange(100), 20: fine_to_20, 10: fine_to_10, 3: fine_to_3},
                {100: CIFAR100_FINE_NAMES, 20: CIFAR100_COARSE_NAMES, 10: CIFAR100_10_NAMES, 3: CIFAR100_3_NAMES},
            )
        return hierarchy_lib.Hierarchy("CIFAR-10", {10: np.arange(10)}, {10: CIFAR10_NAMES})

    def _data_dir(self) -> str | None:
        return source_lib.existing_dir(self.options.data_dir) if self.options.data_dir else None

    def identity(self) -> dict:
        data_dir = self._data_dir()
        paths = _local_archives(self.name, data_dir) if data_dir else None
        if paths:
            return {"kind": "archive", "paths": [os.path.abspath(p) for p in paths], "sizes": [_size(p) for p in paths]}
        return tfds.identity_on_disk(_TFDS_NAMES[self.name], data_dir)

    def _builders(self) -> list:
        data_dir = self._data_dir()
        missing = (
            _nothing_in(self.name, data_dir)
            if data_dir
            else f"No {self.name} data in the tensorflow-datasets folder {{tfds_dir}}"
        )
        return [
            tfds.prepared(tfds.builder(name, data_dir), self.options.download, missing, _offline_fix(self.name))
            for name in dict.fromkeys(_TFDS_NAMES[self.name])
        ]

    def find(self) -> None:
        data_dir = self._data_dir()
        if data_dir and _local_archives(self.name, data_dir) is not None:
            return
        self._builders()

    def load(self) -> source_lib.Loaded:
        data_dir = self._data_dir()
        loaded = _load_local(self.name, data_dir) if data_dir else None
        if loaded is None:
            builders = self._builders()
            train_builder, test_builder = builders[0], builders[-1]
            train, test = _tfds_split(train_builder, "train"), _tfds_split(test_builder, "test")
            names = train_builder.info.full_name
            if test_builder is not train_builder:
                names += f" (train) + {test_builder.info.full_name} (test)"
            loaded = source_lib.Loaded(train, test, f"tfds {names} in {train_builder.data_dir_root}")
        for split, name in ((loaded.train, "train"), (loaded.test, "test")):
            source_lib.check_split(
                split,
                _IMAGE_SHAPE,
                100 if self.name == "cifar100" else 10,
                f"{loaded.description} ({name} split)",
                self.name,
            )
        return loaded


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, n)) for n in sorted(os.listdir(path)))
    return os.path.getsize(path)


def _tfds_split(builder, split: str) -> source_lib.Split:
    """One prepared tfds split, whole; cifar100's coarse labels are checked against the table."""
    arrays = tfds.read_whole(builder, split)
    labels = np.asarray(arrays["label"], dtype=np.int64)
    if "coarse_label" in arrays:
        _check_coarse(labels, np.asarray(arrays["coarse_label"], dtype=np.int64), str(builder.data_path))
    return source_lib.Split(np.asarray(arrays["image"]), labels)


def _local_names(dataset: str) -> str:
    """The published files that `_load_local` looks for, for messages."""
    if dataset == "cifar100":
        return f"{_CIFAR100_ARCHIVE.describe()} from {_CIFAR_URL}"
    if dataset == "cifar10":
        return f"{_CIFAR10_ARCHIVE.describe()} from {_CIFAR_URL}"
    return (
        f"{_CIFAR10_ARCHIVE.describe()} from {_CIFAR_URL} with {_CIFAR10_1_DATA} and "
        f"{_CIFAR10_1_LABELS} from {_CIFAR10_1_URL}"
    )


def _offline_fix(dataset: str) -> str:
    return f"put {_local_names(dataset)} in a folder and pass --data_dir=<that folder>"


def _nothing_in(dataset: str, data_dir: str) -> str:
    return (
        f"No {dataset} data in --data_dir={data_dir} (looked for {_local_names(dataset)}, and for "
        "a prepared tensorflow-datasets copy)"
    )


SOURCES = {name: (lambda options, name=name: Cifar(name, options)) for name in _TFDS_NAMES}


# Random-pixel archives (python -m maxl_tf.synthetic).


def _add(tar, name, payload: dict):
    data = pickle.dumps(payload)
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_archive(dataset: str, out: str, train: int = 50000, test: int = 10000, seed: int = 0) -> str:
    """Writes cifar-100-python.tar.gz or cifar-10-python.tar.gz with random pixels into `out`.

    CIFAR-100's coarse labels follow the standard fine -> coarse table, as the loader checks.
    Returns the archive's path.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(out, exist_ok=True)

    def part(n, classes):
        fine = rng.integers(0, classes, n)
        return fine, {b"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)}  # CHW rows

    if dataset == "cifar100":
        path = os.path.join(out, "cifar-100-python.tar.gz")
        with tarfile.open(path, "w:gz") as tar:
            for name, n in (("train", train), ("test", test)):
                fine, payload = part(n, 100)
                payload[b"fine_labels"] = fine.tolist()
                payload[b"coarse_labels"] = np.asarray(CIFAR100_FINE_TO_COARSE)[fine].tolist()
                _add(tar, f"cifar-100-python/{name}", payload)
        return path
    if dataset == "cifar10":
        path = os.path.join(out, "cifar-10-python.tar.gz")
        batches = [(f"data_batch_{i}", train // 5) for i in range(1, 6)] + [("test_batch", test)]
        with tarfile.open(path, "w:gz") as tar:
            for name, n in batches:
                labels, payload = part(n, 10)
                payload[b"labels"] = labels.tolist()
                _add(tar, f"cifar-10-batches-py/{name}", payload)
        return path
    raise errors.Error(f"--dataset={dataset}: no synthetic archive for it; use cifar100 or cifar10.")
