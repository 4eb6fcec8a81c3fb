"""A user's own labelled images as numpy arrays: a folder of class folders, or a tfds set.

A folder has the layout keras.utils.image_dataset_from_directory reads, one subfolder per class
(the class names are the sorted folder names):

    DIR/cat/0001.jpg, DIR/cat/0002.png, ..., DIR/dog/...         a test fraction is held out
    DIR/train/cat/..., DIR/train/dog/..., DIR/test/cat/..., ...  the given split is used

Files ending .bmp, .gif (first frame), .jpeg, .jpg or .png (any case) are images, also in
subfolders of a class folder; other files and names starting with "." are ignored.

Every image of a set ends up the same size and channel count:
- size: `image_size` x `image_size` (squashed, not cropped, as keras' default). Without an
  `image_size`, images that all share one square size of at most 32 pixels keep it, and all others
  become 32x32: the VGG trunks pool five times, so 32 is the smallest input they take and the
  scale they were designed for (CIFAR); a step and the in-memory set cost grow with the pixels
  (224x224 costs 49 times 32x32).
- channels: 3 (RGB) when any image has colour, else 1 (grey); grey images of a colour set are
  replicated to RGB, and an alpha channel is dropped (the colour under transparent pixels stays),
  as keras' `color_mode="rgb"` does.

The set is decoded once and held in memory as uint8, as CIFAR is: N images of H x W x C take
N * H * W * C bytes (50,000 of 32x32x3: 154 MB; training's tf.constant holds a second copy), so
epochs after the first never decode. With a `cache_dir`, the decoded folder is also written there
as an .npz keyed by its files' names, sizes and modification times and by `image_size`, so a second
run does not decode either; any change to the folder makes a new key and replaces the old file.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import zipfile

import numpy as np
import sklearn.model_selection
import tensorflow as tf
import tensorflow_datasets as tfds

from maxl_tf import errors
from maxl_tf.data import datasets
from maxl_tf.data import loaders

DEFAULT_SIZE = 32
TEST_FRACTION = 0.2
_CACHE_VERSION = 1  # bump when the decoding policy changes, so old caches are not read


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """A labelled image set: RawData plus the class names its labels index."""

    train: loaders.Split
    test: loaders.Split
    class_names: tuple[str, ...]
    source: str  # one line saying where the data came from


def default_cache_dir() -> str:
    """$XDG_CACHE_HOME/maxl_tf/image_folder, else ~/.cache/maxl_tf/image_folder."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "maxl_tf", "image_folder")


def load_folder(
    folder: str,
    image_size: int | None = None,
    test_fraction: float = TEST_FRACTION,
    split_seed: int = 0,
    cache_dir: str | None = None,
) -> ImageSet:
    """Loads a folder of class folders whole.

    Args:
      folder: the data folder (--data_dir).
      image_size: side of the square images returned; None: the policy in the module docstring.
      test_fraction: share of each class held out as the test set when the folder has no
        train/ and test/ subfolders (stratified); ignored when it has.
      split_seed: seed of that held-out split. Keep it fixed across a sweep's run seeds, so that
        every run is tested on the same images.
      cache_dir: where decoded folders are cached as .npz; None: no disk cache.

    Returns:
      uint8 [N, S, S, C] images and int64 [N] labels per split, and the sorted class names.

    Raises:
      errors.Error: a missing or empty folder, a class folder without images, an undecodable
        image, train/ and test/ with different classes, or a bad image_size or test_fraction.
    """
    _check_image_size(image_size)
    folder = os.path.expanduser(folder)
    listing = datasets.folder_listing(folder)
    roots, class_names = listing.roots, listing.class_names
    paths, labels, in_test = [], [], []
    for split, classes in listing.files.items():
        for label, name in enumerate(class_names):
            paths += classes[name]
            labels += [label] * len(classes[name])
            in_test += [split == "test"] * len(classes[name])
    labels, in_test = np.asarray(labels, np.int64), np.asarray(in_test)
    if "all" in roots:  # Split before decoding: a bad --test_fraction fails fast.
        train_idx, test_idx = _hold_out(labels, test_fraction, split_seed, class_names, folder)
        how = f"{test_fraction:g} of each class held out as test (split seed {split_seed})"
    else:
        train_idx, test_idx = np.flatnonzero(~in_test), np.flatnonzero(in_test)
        how = "train/ and test/"

    images, cache_note = _decode_cached(folder, paths, image_size, cache_dir)
    size = _size_text(images)
    return _image_set(
        images,
        labels,
        train_idx,
        test_idx,
        class_names,
        f"image folder {folder} ({len(class_names)} classes, {how}, {size}{cache_note})",
    )


def load_tfds(
    name: str,
    data_dir: str | None,
    download: bool,
    image_size: int | None = None,
    test_fraction: float = TEST_FRACTION,
    split_seed: int = 0,
) -> ImageSet:
    """Loads a tensorflow-datasets image-classification set (`image` and `label` features) whole.

    Its `test` split is the test set; a set without one gets a held-out fraction of `train`, as a
    folder does. Other splits (validation, ...) are not used. Images are sized and given channels
    as a folder's are (module docstring).

    Args:
      name: the tfds name, with config and version if wanted (e.g. "mnist", "cifar10_1/v6").
      data_dir: the tfds data directory; None: tfds' default (~/tensorflow_datasets).
      download: let tfds download and prepare the set when it is not prepared.
      image_size, test_fraction, split_seed: as load_folder's.

    Raises:
      errors.Error: an unknown name, a set that is not image classification, no train split,
        unprepared data without download, a failed download, or unreadable files.
    """
    _check_image_size(image_size)
    builder = _prepared(_classification_builder(name, data_dir), name, download)
    class_names = tuple(builder.info.features["label"].names)
    splits = list(builder.info.splits)
    if "train" not in splits:
        raise errors.Error(
            f"--dataset=tfds:{name}: has no train split (only {', '.join(splits) or 'none'}); pick another set."
        )
    decoder = _Decoder(image_size)
    labels, in_test = [], []
    for split in ("train", "test") if "test" in splits else ("train",):
        for label in _read_tfds_split(builder, split, decoder, len(class_names)):
            labels.append(label)
            in_test.append(split == "test")
    images = decoder.finish()
    labels, in_test = np.asarray(labels, np.int64), np.asarray(in_test)
    where = f"--dataset=tfds:{name}"
    if "test" in splits:
        train_idx, test_idx = np.flatnonzero(~in_test), np.flatnonzero(in_test)
        how = "train and test splits"
    else:
        train_idx, test_idx = _hold_out(labels, test_fraction, split_seed, class_names, where)
        how = f"{test_fraction:g} of each class of train held out as test (split seed {split_seed})"
    for split_name, idx in (("train", train_idx), ("test", test_idx)):
        if not len(idx):
            raise errors.Error(f"{where}: its {split_name} split is empty; pick another set.")
    size = _size_text(images)
    return _image_set(
        images,
        labels,
        train_idx,
        test_idx,
        class_names,
        f"tfds {builder.info.full_name} in {builder.data_dir_root} ({how}, {size})",
    )


def _size_text(images) -> str:
    return "x".join(map(str, images.shape[1:]))  # e.g. 32x32x3


def _image_set(images, labels, train_idx, test_idx, class_names, source: str) -> ImageSet:
    """The two splits of the decoded images."""
    return ImageSet(
        loaders.Split(images[train_idx], labels[train_idx]),
        loaders.Split(images[test_idx], labels[test_idx]),
        class_names,
        source,
    )


def load_images(paths: Sequence[str], size: int, channels: int) -> np.ndarray:
    """Image files as a trained run's inputs: uint8 [N, size, size, channels].

    Sized and stripped of alpha as a training set is; colour becomes grey for a grey run
    (tf.image.rgb_to_grayscale) and grey is replicated for a colour one.

    Raises:
      errors.Error: a file that does not exist or cannot be decoded.
    """
    images = np.empty((len(paths), size, size, channels), np.uint8)
    for i, path in enumerate(paths):
        if not os.path.isfile(path):
            raise errors.Error(f"{path}: no such image file.")
        image = _decode(path)
        image = _without_alpha(image)
        if channels == 1 and image.shape[-1] == 3:
            image = tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))), tf.uint8).numpy()
        images[i] = _resize(image, size)  # grey broadcasts to RGB
    return images


# ----------------------------------------------------------------------------------------------
# Splits.


def _hold_out(labels: np.ndarray, fraction: float, seed: int, class_names: Sequence[str], where: str) -> tuple:
    """Stratified (train indices, test indices), both sorted; `where` names the data in messages."""
    if not 0 < fraction < 1:
        raise errors.Error(
            f"--test_fraction={fraction}: must be between 0 and 1 (exclusive); it is "
            f"the share of each class of {where} held out as the test set."
        )
    counts = np.bincount(labels, minlength=len(class_names))
    if counts.min() < 2:
        name = class_names[int(np.argmin(counts))]
        raise errors.Error(
            f"{where}: class {name} has {counts.min()} image(s); holding out a test "
            "set needs at least 2 per class: add images, or give the data its own "
            "train/ and test/ split."
        )
    # The rule of sklearn's StratifiedShuffleSplit, checked here to say which flag to change.
    num_test = math.ceil(fraction * len(labels))
    if min(num_test, len(labels) - num_test) < len(class_names):
        raise errors.Error(
            f"--test_fraction={fraction}: gives {num_test} test and "
            f"{len(labels) - num_test} training images of {where}, and each needs at "
            f"least one per class ({len(class_names)}): pick a fraction nearer 0.5, "
            "or add images."
        )
    train_idx, test_idx = sklearn.model_selection.train_test_split(
        np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed
    )
    return np.sort(train_idx), np.sort(test_idx)


def _check_image_size(image_size: int | None) -> None:
    if image_size is not None and image_size < 1:
        raise errors.Error(
            f"--image_size={image_size}: must be a positive number of pixels (or left out for the default policy)."
        )


# ----------------------------------------------------------------------------------------------
# Decoding, resizing, the disk cache.


class _Decoder:
    """Collects images one by one into one size and channel count (module docstring).

    Large images are resized as they come, so memory holds small images only.
    """

    def __init__(self, image_size: int | None):
        self._image_size = image_size
        self._images = []  # [h, w, 1 or 3] uint8 each
        self._shapes = set()  # (h, w) of the images as given
        self._colour = False

    def add(self, image: np.ndarray) -> None:
        """image: [h, w, 1..4] uint8: grey, grey + alpha, RGB or RGBA."""
        self._shapes.add(image.shape[:2])
        image = _without_alpha(image)
        self._colour |= image.shape[-1] == 3
        target = self._image_size
        if target is None and max(image.shape[:2]) > DEFAULT_SIZE:
            target = DEFAULT_SIZE
        self._images.append(_resize(image, target) if target else image)

    def finish(self) -> np.ndarray:
        """All images as one uint8 [N, S, S, C] array."""
        size = self._image_size
        if size is None:
            size = DEFAULT_SIZE
            if len(self._shapes) == 1:
                height, width = next(iter(self._shapes))
                if height == width <= DEFAULT_SIZE:
                    size = height
        channels = 3 if self._colour else 1
        out = np.empty((len(self._images), size, size, channels), np.uint8)
        for i, image in enumerate(self._images):
            out[i] = _resize(image, size)  # grey broadcasts to RGB
        return out


def _without_alpha(image: np.ndarray) -> np.ndarray:
    """[h, w, 1..4] grey, grey + alpha, RGB or RGBA -> [h, w, 1 or 3]."""
    return image[..., :3] if image.shape[-1] >= 3 else image[..., :1]


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """[h, w, c] uint8 -> [size, size, c] uint8, bilinear with antialiasing when shrinking."""
    if image.shape[:2] == (size, size):
        return image
    resized = tf.image.resize(image, (size, size), antialias=True).numpy()
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


def _decode(path: str) -> np.ndarray:
    """One image file as uint8 [h, w, channels as stored]; 16-bit PNGs are scaled to 8 bits."""
    try:
        return tf.io.decode_image(tf.io.read_file(path), channels=0, expand_animations=False).numpy()
    except tf.errors.OpError as err:
        # TensorFlow wraps the reason in "{{function_node ...}} <reason> [Op:DecodeImage] ...".
        reason = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*", "", err.message, flags=re.S).strip()
        raise errors.Error(
            f"{path} cannot be decoded as an image ({reason or type(err).__name__}): "
            "replace it with a PNG or JPEG, or delete it."
        ) from err


def _decode_cached(folder: str, paths: Sequence[str], image_size: int | None, cache_dir: str | None) -> tuple:
    """(images [N, S, S, C] uint8, a note for the source line): from the cache, else decoded."""
    if cache_dir is None:
        return _decode_all(paths, image_size), ""
    stats = [os.stat(p) for p in paths]
    key = json.dumps(
        [
            _CACHE_VERSION,
            image_size,
            [[os.path.relpath(p, folder), s.st_size, s.st_mtime_ns] for p, s in zip(paths, stats)],
        ]
    )
    # One cache file per folder: the prefix names the folder, the rest its contents.
    prefix = hashlib.sha256(os.path.realpath(folder).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz")
    images = _read_cache(path, len(paths))
    if images is not None:
        return images, f", decoded images from the cache {path}"
    images = _decode_all(paths, image_size)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, images=images)
        os.replace(tmp, path)
        for name in os.listdir(cache_dir):
            if name.startswith(prefix + "-") and name.endswith(".npz") and name != os.path.basename(path):
                os.remove(os.path.join(cache_dir, name))
    except OSError as err:  # A cache that cannot be written only costs decoding next time.
        return images, f", not cached: {errors.first_line(err)}"
    return images, f", cached in {path}"


def _decode_all(paths: Sequence[str], image_size: int | None) -> np.ndarray:
    decoder = _Decoder(image_size)
    for path in paths:
        decoder.add(_decode(path))
    return decoder.finish()


def _read_cache(path: str, num_images: int) -> np.ndarray | None:
    """The cached images, or None when there is no usable cache file (it is then rewritten)."""
    try:
        with np.load(path, allow_pickle=False) as cached:
            images = cached["images"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != num_images:
        return None
    return images


# ----------------------------------------------------------------------------------------------
# tensorflow-datasets.


def tfds_class_names(name: str, data_dir: str | None) -> tuple:
    """The class names of a tfds image-classification set, from its metadata (no data needed).

    Raises:
      errors.Error: an unknown name, or a set that is not image classification.
    """
    return tuple(_classification_builder(name, data_dir).info.features["label"].names)


def _classification_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """The tfds builder of `name`, checked to have an `image` and a class `label` feature."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        base = name.split("/")[0]
        close = difflib.get_close_matches(base, tfds.list_builders(), n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise errors.Error(
            f"--dataset=tfds:{name}: tensorflow-datasets has no such data set{hint}; "
            "tfds.list_builders() lists the names."
        ) from err
    except Exception as err:  # Whatever else a builder raises (a bad config or version), one line.
        raise errors.Error(
            f"--dataset=tfds:{name}: tensorflow-datasets cannot build it "
            f"({errors.first_line(err)}); check the name, config and version."
        ) from err
    features = builder.info.features
    names = list(features.keys()) if isinstance(features, tfds.features.FeaturesDict) else []
    if not (
        "image" in names
        and isinstance(features["image"], tfds.features.Image)
        and "label" in names
        and isinstance(features["label"], tfds.features.ClassLabel)
    ):
        found = ", ".join(names) or type(features).__name__
        raise errors.Error(
            f"--dataset=tfds:{name}: not an image-classification set (its features are "
            f"{found}; an `image` and a class `label` are needed): pick another set."
        )
    return builder


def _prepared(builder: tfds.core.DatasetBuilder, name: str, download: bool) -> tfds.core.DatasetBuilder:
    """The builder once its data is on disk, downloading it only if `download` (as loaders does)."""
    if builder.is_prepared():
        return builder
    offline_fix = "prepare it where there is internet access and pass --data_dir=<that tensorflow-datasets folder>"
    if not download:
        raise errors.Error(
            f"--dataset=tfds:{name}: not prepared in {builder.data_dir_root}: run with "
            f"internet access and --download, or {offline_fix}."
        )
    if loaders._offline():
        raise errors.Error(
            f"Cannot download tfds:{name}: no network (none of "
            f"{', '.join(loaders._DOWNLOAD_HOSTS)} resolves); {offline_fix}."
        )
    try:
        builder.download_and_prepare()
    except Exception as err:  # Whatever tfds raises, the user needs the offline fix, not a trace.
        raise errors.Error(
            f"Downloading tfds:{name} failed ({errors.first_line(err, 200)}); no internet? Or {offline_fix}."
        ) from err
    return builder


def _read_tfds_split(builder: tfds.core.DatasetBuilder, split: str, decoder: _Decoder, num_classes: int):
    """Adds each image of `split` to `decoder` and yields its label."""
    where = f"tfds {builder.info.full_name} ({split} split) in {builder.data_path}"
    try:
        for example in tfds.as_numpy(builder.as_dataset(split=split)):
            image, label = np.asarray(example["image"]), int(example["label"])
            if image.dtype != np.uint8 or image.ndim != 3 or not 1 <= image.shape[-1] <= 4:
                raise errors.Error(
                    f"{where}: an image is {image.dtype} {list(image.shape)}, not uint8 "
                    "[H, W, 1 to 4]; pick another set."
                )
            if not 0 <= label < num_classes:
                raise errors.Error(
                    f"{where}: label {label} is outside 0..{num_classes - 1}; the copy "
                    "is corrupt: delete that folder and prepare it again."
                )
            decoder.add(image)
            yield label
    except tf.errors.OpError as err:
        raise errors.Error(
            f"{where}: unreadable ({type(err).__name__}); delete that folder and prepare it again with --download."
        ) from err
