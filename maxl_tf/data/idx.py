"""MNIST and Fashion-MNIST from their four original IDX files, read into numpy and checked.

Both sets are published as the same four files, each gzipped or not:
train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte.
An IDX file is a 4-byte magic number (two zero bytes, a data-type code, the number of dimensions),
one big-endian uint32 per dimension, then the values in C order. Debian's package
dataset-fashion-mnist installs Fashion-MNIST's files in DEBIAN_FASHION_MNIST, where they are found
without a flag. Every way a file can be wrong (missing, truncated, not IDX, not 28x28 unsigned
bytes, a label outside 0..9, images and labels of different counts) is an errors.Error naming the
file and where to get the data, so a damaged copy never trains.

The images are 28x28; `pad_for_vgg` makes them 32x32 (see there why padding, not resizing).
"""

import gzip
import os
import zlib

import numpy as np

from maxl_tf import errors

DATASETS = ("mnist", "fashion_mnist")
NUM_CLASSES = 10
IMAGE_SIZE = 28
# The published names; each file may also be the gzipped <name>.gz it is downloaded as.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
_UNSIGNED_BYTE = 0x08  # the IDX data-type code; the only one these data sets use
_GZIP_MAGIC = b"\x1f\x8b"
# Where the four files are published (tensorflow-datasets downloads MNIST's from the mirror).
SOURCES = {
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist",
    "mnist": "http://yann.lecun.com/exdb/mnist/ or its mirror https://storage.googleapis.com/cvdf-datasets/mnist/",
}
HOW_TO_GET = {
    "fashion_mnist": (
        "install Debian's package (apt-get install dataset-fashion-mnist) and leave --data_dir out, "
        "let tensorflow-datasets prepare its fashion_mnist builder (internet access and --download), "
        f"or download the four files from {SOURCES['fashion_mnist']}"
    ),
    "mnist": (
        "let tensorflow-datasets prepare its mnist builder (internet access and --download), "
        f"or download the four files from {SOURCES['mnist']}"
    ),
}
# What a damaged file raises while being read or decompressed (gzip.BadGzipFile is an OSError).
_READ_ERRORS = (OSError, EOFError, zlib.error)

# Zero-padding on each side that takes 28x28 images to the 32x32 the VGG trunks need.
PADDING = 2


def describe_files() -> str:
    """The four published file names, for messages."""
    return ", ".join(name for names in FILES.values() for name in names) + " (each may be .gz)"


def default_dir(dataset: str) -> str | None:
    """Where the data set's IDX files are without --data_dir: Debian's folder for Fashion-MNIST
    when the package is installed, else None (then tensorflow-datasets is the source)."""
    if dataset == "fashion_mnist" and os.path.isdir(DEBIAN_FASHION_MNIST):
        return DEBIAN_FASHION_MNIST
    return None


def find_files(data_dir: str) -> dict:
    """{published name: path} of the four files present in data_dir, the plain file preferred to
    its .gz (no decompression)."""
    found = {}
    for names in FILES.values():
        for name in names:
            for candidate in (name, name + ".gz"):
                path = os.path.join(data_dir, candidate)
                if os.path.isfile(path):
                    found[name] = path
                    break
    return found


def load(dataset: str, data_dir: str) -> dict | None:
    """Both splits from the IDX files in data_dir, or None when none of the four is there.

    Args:
      dataset: "mnist" or "fashion_mnist"; names the data set in messages.
      data_dir: an existing folder.

    Returns:
      {"train": (images, labels), "test": (images, labels)}: images uint8 [N, 28, 28], labels
      int64 [N] in 0..9.

    Raises:
      errors.Error: some of the four files are missing, or one is unreadable or malformed.
    """
    found = find_files(data_dir)
    if not found:
        return None
    missing = [name for names in FILES.values() for name in names if name not in found]
    if missing:
        raise errors.Error(
            f"{data_dir} holds only some of {dataset}'s IDX files: {', '.join(missing)} (or .gz) "
            f"missing; {HOW_TO_GET[dataset]}."
        )
    splits = {}
    for split, (images_name, labels_name) in FILES.items():
        images_path, labels_path = found[images_name], found[labels_name]
        images = read(images_path, 3, dataset)
        labels = read(labels_path, 1, dataset)
        if len(images) != len(labels):
            raise errors.Error(
                f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
                f"labels: they are not one split of {dataset}; {HOW_TO_GET[dataset]}."
            )
        splits[split] = (images, labels.astype(np.int64))
    return splits


def read(path: str, ndim: int, dataset: str) -> np.ndarray:
    """One IDX file, gzipped or not: images (ndim 3) as uint8 [N, 28, 28], labels (ndim 1) as
    uint8 [N] in 0..9.

    Raises:
      errors.Error: naming the file, what is wrong with it and how to get the data.
    """
    try:
        values = _parse(path, ndim)
    except _READ_ERRORS as err:
        raise errors.Error(
            f"{path} is unreadable or truncated ({errors.first_line(err)}); {HOW_TO_GET[dataset]}."
        ) from err
    except ValueError as err:
        raise errors.Error(f"{path}: {err}; {HOW_TO_GET[dataset]}.") from err
    return values


def _parse(path: str, ndim: int) -> np.ndarray:
    """The checked contents of one IDX file; ValueError says what does not fit."""
    with open(path, "rb") as f:
        content = f.read()
    if content[:2] == _GZIP_MAGIC:  # by content, not name: a renamed file still reads
        content = gzip.decompress(content)
    header = 4 + 4 * ndim
    what = "an image file" if ndim == 3 else "a label file"
    if len(content) < 4:
        raise ValueError(f"it is truncated: {len(content)} bytes, shorter than an IDX magic number")
    if content[:2] != b"\0\0":
        raise ValueError(
            f"not an IDX file: it starts with bytes {content[:4].hex()}, where an "
            "IDX magic number starts with two zero bytes"
        )
    if content[2] != _UNSIGNED_BYTE:
        raise ValueError(f"its IDX data type code is 0x{content[2]:02x}, not 0x08 (unsigned bytes)")
    if content[3] != ndim:
        raise ValueError(
            f"it has {content[3]} dimension(s) where {what} has {ndim}: images and labels swapped, or not this data set"
        )
    if len(content) < header:
        raise ValueError(f"it is truncated: {len(content)} bytes, shorter than its {header}-byte header")
    shape = tuple(int(d) for d in np.frombuffer(content, ">u4", count=ndim, offset=4))
    expected, actual = int(np.prod(shape)), len(content) - header
    if actual < expected:
        raise ValueError(
            f"it is truncated: its header promises {expected} bytes of values for "
            f"shape {list(shape)}, it holds {actual}"
        )
    if actual > expected:
        raise ValueError(
            f"it holds {actual - expected} bytes more than its header's shape "
            f"{list(shape)} allows, so it is not the published file"
        )
    if shape[0] == 0:
        raise ValueError("it holds no examples")
    if ndim == 3 and shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"its images are {shape[1]}x{shape[2]}, not {IMAGE_SIZE}x{IMAGE_SIZE}")
    values = np.frombuffer(content, np.uint8, offset=header).reshape(shape).copy()
    if ndim == 1 and values.max() >= NUM_CLASSES:
        i = int(np.argmax(values >= NUM_CLASSES))
        raise ValueError(f"label {values[i]} at example {i} is outside 0..{NUM_CLASSES - 1}")
    return values


def pad_for_vgg(images: np.ndarray) -> np.ndarray:
    """28x28 grayscale -> 32x32x1, with PADDING black pixels on each side.

    vgg16 halves its input five times, so it needs 32x32. Padding rather than resizing: every
    pixel stays as recorded (a bilinear 28 -> 32 resize would blur one-pixel strokes and edges),
    and the border added is the images' own background, since both sets are drawn light on black
    and MNIST centres each digit in a 20x20 box of its 28x28 frame; LeNet-5 fed MNIST to its
    32x32 input the same way. All trunks get the same 32x32 input, so --model changes only the
    network.

    Args:
      images: uint8 [N, 28, 28] or [N, 28, 28, 1].

    Returns:
      uint8 [N, 32, 32, 1]; the original image at rows and columns 2..29.
    """
    images = images.reshape(len(images), IMAGE_SIZE, IMAGE_SIZE, 1)
    border = (PADDING, PADDING)
    return np.pad(images, ((0, 0), border, border, (0, 0)))
