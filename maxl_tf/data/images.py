"""A user's images (a folder, a tfds:NAME set) made one size and channel count, cached, and held
in memory or streamed from disk.

Size and channels are decided from every image's header before anything is decoded:
- size: Options.image_size square (squashed, not cropped, as keras' default). Without it, images
  that all share one square size of at most 32 pixels keep it, and all others become 32x32: the
  VGG trunks pool five times, so 32 is the smallest input they take and the scale they were
  designed for (CIFAR); a step and the set's memory grow with the pixels (224x224: 49 times).
- channels: 3 (RGB) when any image has colour, else 1 (grey); grey images of a colour set are
  replicated to RGB and an alpha channel is dropped, as keras' `color_mode="rgb"` does.
- an image of more than Options.max_pixels pixels is refused by name before it is decoded (a
  small PNG can hold a 20000x20000 image: 1.2 GB decoded).

The decoded set is one uint8 [N, S, S, C] array. With a cache folder it is written there once as
a .npy (no pickles) keyed by what was decoded (a folder's file list, sizes and modification
times; a tfds set's name and version) and the size policy, so later runs do not decode; the
cache keeps to Options.cache_limit_mb, the least recently used files going first. A set larger
than Options.memory_budget_mb (or any, with stream="on") is not loaded into memory: its rows are
read from the cache file per batch (DiskImages), so memory stays bounded whatever the set's size.
Both ways read the same bytes, so a run gives the same results streamed or in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import time

import numpy as np

from maxl_tf import errors
from maxl_tf import runtime
from maxl_tf.data import source as source_lib

DEFAULT_SIZE = 32
_CACHE_VERSION = 2  # bump when decoding changes, so old cache files are not read
_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")


# ----------------------------------------------------------------------------------------------
# Headers and the size policy.


@dataclasses.dataclass(frozen=True)
class Header:
    height: int
    width: int
    colour: bool


def read_header(data, name: str, max_pixels: int) -> Header:
    """An image's size and whether it has colour, from its header (PIL reads no pixels).

    Args:
      data: a path or the encoded bytes.
    Raises:
      errors.Error: not an image, or more pixels than max_pixels (naming `name`).
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            width, height, mode = image.size[0], image.size[1], image.mode
    except FileNotFoundError:
        raise errors.Error(f"{name}: vanished while the data was read; run again once the folder is stable.") from None
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, ValueError... for bad files
        raise errors.Error(
            f"{name} cannot be read as an image ({errors.first_line(err)}): replace it with a PNG or JPEG, "
            "or delete it."
        ) from None
    if width * height > max_pixels:
        raise errors.Error(
            f"{name} is {width}x{height} pixels, more than the limit of {max_pixels:,} "
            "(--max_image_pixels): shrink it, delete it, or raise --max_image_pixels."
        )
    return Header(height, width, mode not in _GREY_MODES)


def target_shape(headers, image_size: int) -> tuple:
    """(size, channels) of the decoded set (module docstring)."""
    size = image_size
    if not size:
        shapes = {(h.height, h.width) for h in headers}
        size = DEFAULT_SIZE
        if len(shapes) == 1:
            height, width = next(iter(shapes))
            if height == width <= DEFAULT_SIZE:
                size = height
    return size, 3 if any(h.colour for h in headers) else 1


# ----------------------------------------------------------------------------------------------
# Decoding (TensorFlow), one function for training sets, streamed rows and predict's files.


def _tf():
    with runtime.quiet_start_up():
        import tensorflow as tf
    return tf


def to_shape(image, size: int, channels: int):
    """uint8 [h, w, 1..4] -> uint8 [size, size, channels]: alpha dropped, grey replicated or colour
    made grey, bilinear resize with antialiasing when the size differs. Works eagerly and in graphs."""
    tf = _tf()
    image = tf.cond(tf.shape(image)[-1] >= 3, lambda: image[..., :3], lambda: image[..., :1])
    if channels == 3:
        image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image)
    else:
        grey = lambda: tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))), tf.uint8)  # noqa: E731
        image = tf.cond(tf.shape(image)[-1] == 3, grey, lambda: image)
    image = tf.ensure_shape(image, [None, None, channels])

    def resized():
        out = tf.image.resize(image, (size, size), antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)

    same = tf.logical_and(tf.shape(image)[0] == size, tf.shape(image)[1] == size)
    return tf.ensure_shape(tf.cond(same, lambda: image, resized), [size, size, channels])


def _decode_error(path: str, err) -> errors.Error:
    # TensorFlow wraps the reason in "{{function_node ...}} <reason> [Op:DecodeImage] ...".
    reason = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*", "", getattr(err, "message", str(err)), flags=re.S).strip()
    if "No such file" in reason or "not found" in reason.lower():
        return errors.Error(f"{path}: vanished while the data was read; run again once the folder is stable.")
    return errors.Error(
        f"{path} cannot be decoded as an image ({errors.first_line(reason) if reason else type(err).__name__}): "
        "replace it with a PNG or JPEG, or delete it."
    )


def decode(encoded, size: int, channels: int):
    """An encoded image (PNG, JPEG, BMP, GIF bytes) as uint8 [size, size, channels]; eager or in tf.data."""
    tf = _tf()
    return to_shape(tf.io.decode_image(encoded, channels=0, expand_animations=False), size, channels)


def fill_rows(images, out, on_error=None) -> int:
    """Writes a tf.data stream of decoded images into out[0], out[1], ... in order, 256 at a time;
    returns how many it wrote. libjpeg's own stderr lines are kept out of the output. On a decoding
    error, on_error(rows written) runs before the error is raised again (to name the bad file)."""
    tf = _tf()
    written = 0
    try:
        with runtime.quiet_start_up():
            for batch in images.batch(256).prefetch(2):
                out[written : written + len(batch)] = batch.numpy()
                written += len(batch)
    except tf.errors.OpError:
        if on_error is not None:
            on_error(written)
        raise
    return written


def decode_file(path: str, size: int, channels: int) -> np.ndarray:
    """One image file as uint8 [size, size, channels] (eager; names the file on any failure)."""
    tf = _tf()
    try:
        with runtime.quiet_start_up():  # libjpeg writes "Premature end of JPEG file" to stderr itself
            return decode(tf.io.read_file(path), size, channels).numpy()
    except tf.errors.OpError as err:
        raise _decode_error(path, err) from None


def load_images(paths, size: int, channels: int) -> np.ndarray:
    """Image files as a trained run's inputs (predict): uint8 [N, size, size, channels].

    Raises:
      errors.Error: a path that is a folder or no file, or a file that cannot be decoded.
    """
    require_files(paths)
    images = np.empty((len(paths), size, size, channels), np.uint8)
    for i, path in enumerate(paths):
        images[i] = decode_file(path, size, channels)
    return images


def require_files(paths) -> None:
    """Raises errors.Error naming the first path that is a folder or no file."""
    for path in paths:
        if os.path.isdir(path):
            raise errors.Error(f"{path} is a folder; pass image files (e.g. {os.path.join(path, '*.png')}).")
        if not os.path.isfile(path):
            raise errors.Error(f"{path}: no such image file.")


def decode_paths(paths, size: int, channels: int, out) -> None:
    """Decodes files into out[i] (an array or a writable row file), in parallel with tf.data; on a
    failure, finds the file by decoding one by one, so the message names it."""
    tf = _tf()
    images = tf.data.Dataset.from_tensor_slices(list(paths)).map(
        lambda path: decode(tf.io.read_file(path), size, channels), num_parallel_calls=tf.data.AUTOTUNE
    )

    def name_the_bad_file(written: int) -> None:
        for path in paths[written:]:
            decode_file(path, size, channels)  # raises, naming the file

    i = fill_rows(images, out, on_error=name_the_bad_file)
    if i != len(paths):
        raise errors.Error(f"{len(paths) - i} images were not decoded; run again.")


# ----------------------------------------------------------------------------------------------
# Streamed rows.


class DiskImages:
    """A .npy uint8 [N, S, S, C] array read from disk a batch of rows at a time (pread), so memory
    holds the rows asked for, never the set. Indexing gives numpy arrays, as an array's does."""

    def __init__(self, path: str):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            self._offset = f.tell()
        if dtype != np.uint8 or fortran or len(shape) != 4:
            raise ValueError(f"{path} is not a C-order uint8 [N, H, W, C] array")
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(np.uint8)
        self._row = int(np.prod(shape[1:]))
        self._fd = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return 4

    def _read(self, index: int) -> bytes:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return os.pread(self._fd, self._row, self._offset + index * self._row)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return np.frombuffer(self._read(int(key)), np.uint8).reshape(self.shape[1:])
        indices = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, np.int64)
        out = np.empty((len(indices), *self.shape[1:]), np.uint8)
        for i, index in enumerate(indices):
            out[i] = np.frombuffer(self._read(int(index)), np.uint8).reshape(self.shape[1:])
        return out

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


class Subset:
    """Rows `indices` of DiskImages (a split of a set decoded together), still read from disk."""

    def __init__(self, images: DiskImages, indices: np.ndarray):
        self._images, self._indices = images, np.asarray(indices, np.int64)
        self.shape, self.dtype, self.ndim = (len(self._indices), *images.shape[1:]), images.dtype, 4

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, key) -> np.ndarray:
        return self._images[self._indices[key]]


# ----------------------------------------------------------------------------------------------
# The cache.


def _cache_path(cache_dir: str, key) -> str:
    digest = hashlib.sha256(json.dumps([_CACHE_VERSION, key], sort_keys=True).encode()).hexdigest()[:32]
    return os.path.join(cache_dir, f"{digest}.npy")


def _read_cached(path: str, num_images: int, options: source_lib.Options):
    """(the cached array, in memory or DiskImages when streamed; streamed), or None if the file is
    absent or unusable (it is then written again)."""
    try:
        images = DiskImages(path)
        complete = os.path.getsize(path) == images._offset + int(np.prod(images.shape))
    except (OSError, ValueError, EOFError):
        return None
    if len(images) != num_images or not complete:
        return None
    streamed = _streams(images.shape, options)
    if not streamed:
        try:
            images = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
    os.utime(path, ns=(time.time_ns(), time.time_ns()))  # recently used: the last to be evicted (file
    # systems' own times move in ticks of milliseconds, too coarse to order two uses)
    return images, streamed


def _streams(shape: tuple, options: source_lib.Options) -> bool:
    return options.stream == "on" or (
        options.stream == "auto" and int(np.prod(shape)) > options.memory_budget_mb * 2**20
    )


def trim_cache(cache_dir: str, limit_mb: int, keep: str = "") -> None:
    """Deletes the least recently used cache files until the folder holds at most limit_mb."""
    try:
        entries = [os.path.join(cache_dir, n) for n in os.listdir(cache_dir) if n.endswith((".npy", ".tmp"))]
        stats = sorted(((os.stat(p).st_mtime_ns, os.stat(p).st_size, p) for p in entries), reverse=True)
    except OSError:
        return
    total = 0
    for _, size, path in stats:
        total += size
        if total > limit_mb * 2**20 and path != keep:
            try:
                os.remove(path)
            except OSError:
                pass


class _RowWriter:
    """Rows of a .npy file written in order with plain writes (`out[i:j] = rows`), so decoding a
    set larger than memory never holds more than a batch (a memory map would keep every page it
    wrote resident until the file is closed)."""

    def __init__(self, f, shape: tuple):
        self._f, self._next, self._row = f, 0, int(np.prod(shape[1:]))
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})

    def __setitem__(self, rows: slice, values) -> None:
        if rows.start != self._next:
            raise ValueError("rows must be written in order")
        data = np.ascontiguousarray(values, np.uint8)
        self._f.write(data.tobytes())
        self._next += len(data)


def _write_rows(path: str, shape: tuple, fill) -> None:
    """Writes a .npy of `shape` whose rows fill(out) assigns in order, atomically (temp file, rename)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            writer = _RowWriter(f, shape)
            fill(writer)
            if writer._next != shape[0]:
                raise OSError(f"{shape[0] - writer._next} images were not written")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ----------------------------------------------------------------------------------------------
# A decoded set.


def hold_out(labels: np.ndarray, fraction: float, class_names, where: str, seed: int = 0) -> tuple:
    """Stratified (train indices, test indices), both sorted; the same for every run seed."""
    import sklearn.model_selection

    if not 0 < fraction < 1:
        raise errors.Error(
            f"--test_fraction={fraction}: must be between 0 and 1 (exclusive); it is "
            f"the share of each class of {where} held out as the test set."
        )
    counts = np.bincount(labels, minlength=len(class_names))
    if counts.min() < 2:
        name = class_names[int(np.argmin(counts))]
        raise errors.Error(
            f"{where}: class {name} has {counts.min()} image(s); holding out a test set needs at "
            "least 2 per class: add images, or give the data its own train/ and test/ split."
        )
    # The rule of sklearn's StratifiedShuffleSplit, checked here to say which flag to change.
    num_test = math.ceil(fraction * len(labels))
    if min(num_test, len(labels) - num_test) < len(class_names):
        raise errors.Error(
            f"--test_fraction={fraction}: gives {num_test} test and {len(labels) - num_test} training "
            f"images of {where}, and each needs at least one per class ({len(class_names)}): pick a "
            "fraction nearer 0.5, or add images."
        )
    train_idx, test_idx = sklearn.model_selection.train_test_split(
        np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed
    )
    return np.sort(train_idx), np.sort(test_idx)


def decode_set(
    labels,
    in_test,
    class_names,
    options: source_lib.Options,
    cache_key,
    what: str,
    where: str,
    read_headers,
    decode,
) -> source_lib.Loaded:
    """Decodes a set (or reads it from the cache), holds it in memory or streams it, and splits it.

    Args:
      labels, in_test: [N] finest labels and whether each image is in the data's own test split;
        without one (in_test all False) a stratified Options.test_fraction is held out.
      cache_key: what identifies the images (JSON-serialisable): their decoded form is cached under
        it and Options.image_size.
      what: the data, for the description line; where: the data, for messages.
      read_headers: () -> [N] Header, for the size policy (called when the cache has no copy).
      decode: (size, channels, out) -> None, fills out[i] with image i.
    """
    labels, in_test = np.asarray(labels, np.int64), np.asarray(in_test, bool)
    if in_test.any():
        train_idx, test_idx = np.flatnonzero(~in_test), np.flatnonzero(in_test)
        how = "its own train and test splits"
    else:
        train_idx, test_idx = hold_out(labels, options.test_fraction, class_names, where)
        how = f"{options.test_fraction:g} of each class held out as test"
    path = _cache_path(options.cache_dir, [cache_key, options.image_size]) if options.cache_dir else ""
    cached = _read_cached(path, len(labels), options) if path else None
    note = f", from the cache {path}" if cached else ""
    if cached:
        images, streamed = cached
    else:
        size, channels = target_shape(read_headers(), options.image_size)
        shape = (len(labels), size, size, channels)
        streamed = _streams(shape, options)
        images = None
        if path:
            try:
                os.makedirs(options.cache_dir, exist_ok=True)
                _write_rows(path, shape, lambda out: decode(size, channels, out))
                trim_cache(options.cache_dir, options.cache_limit_mb, keep=path)
                images, streamed = _read_cached(path, len(labels), options)
                note = f", cached in {path}"
            except OSError as err:
                if streamed:
                    raise errors.Error(
                        f"{where}: streaming from disk needs a writable cache, and {options.cache_dir} is not "
                        f"({errors.first_line(err)}); pass --cache_dir=<a folder with room for "
                        f"{int(np.prod(shape)) / 2**20:.0f} MB>, or --stream=off."
                    ) from None
                note = f", not cached: {errors.first_line(err)}"
        elif streamed:
            raise errors.Error(
                f"{where}: streaming reads the decoded-image cache; pass a --cache_dir, or --stream=off."
            )
        if images is None:
            images = np.empty(shape, np.uint8)
            decode(size, channels, images)
    if streamed:
        train, test = Subset(images, train_idx), Subset(images, test_idx)
    else:
        train, test = images[train_idx], images[test_idx]
    size_text = "x".join(map(str, images.shape[1:]))
    description = f"{what} ({how}, {size_text}{', streamed from disk' if streamed else ''}{note})"
    return source_lib.Loaded(
        source_lib.Split(train, labels[train_idx]),
        source_lib.Split(test, labels[test_idx]),
        description,
        streamed,
        tuple(class_names),
    )
