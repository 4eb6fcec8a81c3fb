"""One interface for a data set (registry.py maps a --dataset to one).

    source = registry.get("cifar100", Options(data_dir="~/data"))
    source.name          the run-name part: "cifar100", "folder_pets-3f9a2c", "tfds_mnist"
    source.levels()      its label levels (core.hierarchy.Hierarchy), class names where it has them
    source.identity()    what a run saw: a folder's content hash, an archive's path and size...
    source.find()        checks the data is there without reading it (a sweep asks before training)
    source.load()        Loaded: the train and test splits, uint8 images and finest labels

Each kind of data is known in one module: cifar.py (CIFAR-100, CIFAR-10, CIFAR-10.1), mnist.py
(MNIST, Fashion-MNIST), digits.py, folder.py (a folder of class folders), tfds.py (tfds:NAME).
A user's own source is a Source subclass (registry.py says how to name it).

Naming a source and asking its levels and identity import no TensorFlow (a folder is listed
once per Source object), so flags are checked and run names made in a second; load() may.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from maxl_tf import errors
from maxl_tf.core import hierarchy as hierarchy_lib

# The decoded-image cache (folder.py): where, and how much disk it may take before the oldest
# files go.
DEFAULT_CACHE_LIMIT_MB = 4096


def default_cache_dir() -> str:
    """$XDG_CACHE_HOME/maxl_tf/images, else ~/.cache/maxl_tf/images."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "maxl_tf", "images")


@dataclasses.dataclass(frozen=True)
class Options:
    """What a run tells its source (the data flags); a source ignores what it has no use for.

    Attributes:
      data_dir: where the data is (a folder of class folders, archives, IDX files, a tfds folder).
      download: let tensorflow-datasets download a set that is not prepared.
      hierarchy: a user's hierarchy file over the classes (folder, tfds:NAME, own sources).
      image_size: side of the square images (0: the images' own policy, images.py).
      test_fraction: share of each class held out as test where the data has no test split.
      cache_dir: where decoded images are cached ("" : no cache).
      cache_limit_mb: the cache's size limit; the oldest files go first.
      max_pixels: refuse an image of more pixels than this before decoding it.
      stream: "auto" (stream when the decoded set exceeds memory_budget_mb), "on" or "off".
      memory_budget_mb: the decoded size above which "auto" streams from disk.
    """

    data_dir: str = ""
    download: bool = True
    hierarchy: str = ""
    image_size: int = 0
    test_fraction: float = 0.2
    cache_dir: str = dataclasses.field(default_factory=default_cache_dir)
    cache_limit_mb: int = DEFAULT_CACHE_LIMIT_MB
    max_pixels: int = 40_000_000
    stream: str = "auto"
    memory_budget_mb: int = 2048


DEFAULTS = Options()


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Training-time changes that keep an image's label.

    Attributes:
      crop_padding: pixels of zero-padding per side before a random crop back to the image's size,
        i.e. random shifts of up to this many pixels.
      horizontal_flip: mirror half of the images left to right.
    """

    crop_padding: int
    horizontal_flip: bool


# The authors' crop (pad 4) and flip for CIFAR; what --augment does unless a source says otherwise.
CIFAR_AUGMENTATION = Augmentation(4, horizontal_flip=True)


@dataclasses.dataclass(frozen=True)
class Split:
    images: np.ndarray  # [N, H, W, C] uint8, in memory or memory-mapped from the cache (streamed)
    labels: np.ndarray  # [N] int64, the finest label level of the data set


@dataclasses.dataclass(frozen=True)
class Loaded:
    train: Split
    test: Split
    description: str  # one line saying where the data came from and how it was read
    streamed: bool = False  # images are read from disk per batch rather than held in memory
    class_names: tuple = ()  # the finest labels' names, where the data names them (folder, tfds:NAME)


class Source:
    """A labelled image data set. Subclasses set `name` and implement levels, identity and load.

    Attributes:
      name: the data set's part of a default run name; two different data sets never share one.
      augmentation: what --augment does: CIFAR's crop (pad 4) and flip unless the source says otherwise.
    """

    name: str = ""
    augmentation: Augmentation = CIFAR_AUGMENTATION

    def levels(self) -> hierarchy_lib.Hierarchy:
        raise NotImplementedError

    def identity(self) -> dict:
        """What a run records of the data it saw, JSON-serialisable; equal only for the same data."""
        raise NotImplementedError

    def find(self) -> None:
        """Raises errors.Error when load() cannot find the data; reads no images. Default: nothing."""

    def load(self) -> Loaded:
        raise NotImplementedError


def check_split(split: Split, image_shape: tuple, num_classes: int, where: str, dataset: str) -> None:
    """What everything downstream relies on of a built-in set: uint8 NHWC images of its shape,
    int64 labels in range.

    Raises:
      errors.Error: naming `where` and saying the copy is damaged.
    """
    images, labels = split.images, split.labels
    problem = None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != image_shape:
        problem = f"images are {images.dtype} {list(images.shape)}, not uint8 [N, {', '.join(map(str, image_shape))}]"
    elif labels.dtype != np.int64 or labels.ndim != 1 or len(labels) != len(images):
        problem = f"labels are {labels.dtype} {list(labels.shape)}, not int64 [{len(images)}]"
    elif len(labels) == 0:
        problem = "it holds no examples"
    elif labels.min() < 0 or labels.max() >= num_classes:
        problem = f"labels span {labels.min()}..{labels.max()}, outside 0..{num_classes - 1}"
    if problem:
        raise errors.Error(f"{where}: {problem}; the data is corrupt or not {dataset}, download it again.")


def existing_dir(data_dir: str) -> str:
    """data_dir, expanded, if it is a folder."""
    data_dir = os.path.expanduser(data_dir)
    if not os.path.isdir(data_dir):
        raise errors.Error(
            f"--data_dir={data_dir} does not exist or is not a folder: create it and put the data there, "
            "or leave --data_dir out to use the tensorflow-datasets default folder."
        )
    return data_dir
