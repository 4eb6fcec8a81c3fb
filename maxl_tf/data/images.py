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
a .npy (no pickles) keyed by what was decoded (a folder's content hash, folder.py; a tfds set's
name and version) and the size policy, with a checksum of its pixels and shape that is checked
whenever it is opened, so later runs do not decode; the cache keeps to Options.cache_limit_mb,
the least recently used files going first. A set larger than Options.memory_budget_mb (or any,
with stream="on") is not loaded into memory: its rows are read from the cache file per batch
(DiskImages, which holds the file open from the check on), so memory stays bounded whatever the
set's size. Both ways read the same bytes, so a run gives the same results streamed or in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
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
    """A cache file's uint8 [N, S, S, C] rows read from disk a batch at a time (pread), so memory
    holds the rows asked for, never the set. Indexing gives numpy arrays, as an array's does.

    It reads through the file it was given, opened when the cache was checked: a file another run's
    --cache_limit_mb trim (or a user) deletes meanwhile stays readable until this object goes."""

    def __init__(self, file, path: str, shape: tuple, offset: int):
        self._file, self.path, self.shape, self._offset = file, path, tuple(shape), offset
        self.dtype = np.dtype(np.uint8)
        self._row = int(np.prod(shape[1:]))

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return 4

    def _read(self, index: int) -> bytes:
        data = os.pread(self._file.fileno(), self._row, self._offset + index * self._row)
        if len(data) != self._row:  # cut short in place after it was checked
            raise errors.Error(f"the cache file {self.path} was cut short while this run read it; run again.")
        return data

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return np.frombuffer(self._read(int(key)), np.uint8).reshape(self.shape[1:])
        indices = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, np.int64)
        out = np.empty((len(indices), *self.shape[1:]), np.uint8)
        for i, index in enumerate(indices):
            out[i] = np.frombuffer(self._read(int(index)), np.uint8).reshape(self.shape[1:])
        return out

    def close(self) -> None:
        self._file.close()

    def __del__(self):
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()


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
#
# A cache file is a .npy (uint8 [N, S, S, C], C order, header 1.0: np.load(allow_pickle=False)
# reads it) followed by a trailer of _TRAILER bytes: _MAGIC and JSON {"key", "shape", "mac"}, where
# key names what was decoded (the file's name is made from it) and mac is an HMAC-SHA256, under this
# user's secret (secret()), of [key, shape] and every pixel byte. A file is used only when its
# trailer names the key asked for, the header's shape and the trailer's agree, and the HMAC of what
# is read matches: a damaged, truncated, swapped or planted file (one of another shape, or another
# set's pixels under a valid header) is decoded again and rewritten. Nothing in it is executed:
# the header is parsed by numpy's literal reader, the trailer by json.

_CACHE_VERSION = 3  # bump when decoding or the file format changes, so old cache files are not read
_MAGIC = b"MAXL_TF_CACHE "
_TRAILER = 256
_CHUNK = 16 * 2**20  # bytes read per step while a file is checked


def _secret_path() -> str:
    return os.path.join(os.path.dirname(source_lib.default_cache_dir()), "cache.key")


_SECRET = {}


def secret() -> bytes:
    """This user's key for the cache's checksums: 32 random bytes in
    $XDG_CACHE_HOME/maxl_tf/cache.key (mode 0600), made on first use. Another user sharing a
    --cache_dir has another key, so files written by someone else are never read (each user's files
    get their own names). Where no key can be kept (a read-only home) the key is empty: the
    checksums then still catch damage, not a file planted by someone who knows this format."""
    path = _secret_path()
    if path not in _SECRET:
        key = b""
        try:
            with open(path, "rb") as f:
                key = f.read()
        except FileNotFoundError:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = f"{path}.{os.getpid()}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(os.urandom(32))
                try:
                    os.link(tmp, path)  # the first process to get there wins; the others read its key
                except FileExistsError:
                    pass
                finally:
                    os.remove(tmp)
                with open(path, "rb") as f:
                    key = f.read()
            except OSError:
                key = b""
        except OSError:
            key = b""
        _SECRET[path] = key
    return _SECRET[path]


def _key_digest(key) -> str:
    """The cache file's name for `key` (JSON-serialisable), this user's (see secret())."""
    user = hashlib.sha256(secret()).hexdigest()[:16]
    return hashlib.sha256(json.dumps([_CACHE_VERSION, user, key], sort_keys=True).encode()).hexdigest()[:32]


def _cache_path(cache_dir: str, key) -> str:
    return os.path.join(cache_dir, f"{_key_digest(key)}.npy")


def _mac(digest: str, shape: tuple):
    mac = hmac.new(secret(), digestmod=hashlib.sha256)
    mac.update(json.dumps([digest, list(shape)]).encode())
    return mac


def _trailer(digest: str, shape: tuple, mac: str) -> bytes:
    text = _MAGIC + json.dumps({"key": digest, "shape": list(shape), "mac": mac}).encode()
    return text.ljust(_TRAILER - 1) + b"\n"


def _open_cached(path: str, num_images: int, options: source_lib.Options) -> tuple:
    """(the cached array, in memory or DiskImages when streamed; streamed; why not) from the cache
    file at path: (None, False, "") when there is none, (None, False, reason) when it fails its
    checks (it is then decoded again and rewritten)."""
    digest = os.path.basename(path)[: -len(".npy")]
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        return None, False, ""
    except OSError as err:
        return None, False, f"unreadable ({err.strerror})"
    try:
        result = _check_cached(file, path, digest, num_images, options)
    except (OSError, ValueError, EOFError) as err:
        result = None, False, f"unreadable ({errors.first_line(err)})"
    if not isinstance(result[0], DiskImages):
        file.close()
    return result


def _check_cached(file, path: str, digest: str, num_images: int, options: source_lib.Options) -> tuple:
    version = np.lib.format.read_magic(file)
    if version != (1, 0):
        return None, False, "not a cache file"
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(file)
    offset = file.tell()
    if dtype != np.uint8 or fortran or len(shape) != 4:
        return None, False, "not a C-order uint8 [N, H, W, C] array"
    if shape[0] != num_images:
        return None, False, f"{shape[0]} images, not {num_images}"
    nbytes = int(np.prod(shape))
    if os.fstat(file.fileno()).st_size != offset + nbytes + _TRAILER:
        return None, False, "cut short or of another size"
    end = os.pread(file.fileno(), _TRAILER, offset + nbytes)
    if not end.startswith(_MAGIC):
        return None, False, "no checksum"
    try:
        trailer = json.loads(end[len(_MAGIC) :])
    except ValueError:
        return None, False, "no checksum"
    if not isinstance(trailer, dict) or trailer.get("key") != digest:
        return None, False, "written for other data"
    if trailer.get("shape") != list(shape):
        return None, False, f"its checksum is of shape {trailer.get('shape')}, its header says {list(shape)}"
    streamed = _streams(tuple(shape), options)
    images = None if streamed else np.empty(shape, np.uint8)
    flat = None if streamed else images.reshape(-1)
    mac = _mac(digest, tuple(shape))
    position = 0
    while position < nbytes:
        block = os.pread(file.fileno(), min(_CHUNK, nbytes - position), offset + position)
        if not block:
            return None, False, "cut short"
        mac.update(block)
        if flat is not None:
            flat[position : position + len(block)] = np.frombuffer(block, np.uint8)
        position += len(block)
    if not hmac.compare_digest(mac.hexdigest(), str(trailer.get("mac"))):
        return None, False, "its checksum does not match its content"
    os.utime(path, ns=(time.time_ns(), time.time_ns()))  # recently used: the last to be evicted (file
    # systems' own times move in ticks of milliseconds, too coarse to order two uses)
    if streamed:
        images = DiskImages(file, path, tuple(shape), offset)
    return images, streamed, ""


def _streams(shape: tuple, options: source_lib.Options) -> bool:
    return options.stream == "on" or (
        options.stream == "auto" and int(np.prod(shape)) > options.memory_budget_mb * 2**20
    )


def trim_cache(cache_dir: str, limit_mb: int, keep: str = "") -> None:
    """Deletes the least recently used cache files until the folder holds at most limit_mb. A run
    streaming from a deleted file keeps reading it (DiskImages holds it open); its space is freed
    when that run ends."""
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
    """Rows of a cache file written in order with plain writes (`out[i:j] = rows`), so decoding a
    set larger than memory never holds more than a batch (a memory map would keep every page it
    wrote resident until the file is closed); the checksum is computed as they go."""

    def __init__(self, f, shape: tuple, digest: str):
        self._f, self._next, self._row = f, 0, int(np.prod(shape[1:]))
        self._mac = _mac(digest, shape)
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})

    def __setitem__(self, rows: slice, values) -> None:
        if rows.start != self._next:
            raise ValueError("rows must be written in order")
        data = np.ascontiguousarray(values, np.uint8)
        self._f.write(data.tobytes())
        self._mac.update(data.tobytes())
        self._next += len(data)


def _write_rows(path: str, shape: tuple, fill):
    """Writes a cache file of `shape` whose rows fill(out) assigns in order, atomically (temp file,
    rename); returns it open for reading, so a trim by another run before it is read cannot take it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    digest = os.path.basename(path)[: -len(".npy")]
    try:
        f = open(tmp, "w+b")
        try:
            writer = _RowWriter(f, shape, digest)
            fill(writer)
            if writer._next != shape[0]:
                raise OSError(f"{shape[0] - writer._next} images were not written")
            f.write(_trailer(digest, shape, writer._mac.hexdigest()))
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            f.close()
            raise
        return f
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_written(f, path: str, shape: tuple, options: source_lib.Options):
    """The file _write_rows returned, as the array (read back, then closed) or DiskImages."""
    f.seek(0)
    np.lib.format.read_magic(f)
    np.lib.format.read_array_header_1_0(f)
    offset = f.tell()
    if _streams(shape, options):
        return DiskImages(f, path, shape, offset)
    with f:
        images = np.empty(shape, np.uint8)
        f.readinto(memoryview(images.reshape(-1)))
    return images


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
    images, streamed, refused = _open_cached(path, len(labels), options) if path else (None, False, "")
    note = f", from the cache {path}" if images is not None else ""
    if images is None:
        size, channels = target_shape(read_headers(), options.image_size)
        shape = (len(labels), size, size, channels)
        streamed = _streams(shape, options)
        if path:
            again = f" (the cache file there failed its check: {refused}; decoded again)" if refused else ""
            try:
                os.makedirs(options.cache_dir, exist_ok=True)
                written = _write_rows(path, shape, lambda out: decode(size, channels, out))
                trim_cache(options.cache_dir, options.cache_limit_mb, keep=path)
                images = _read_written(written, path, shape, options)
                note = f", cached in {path}{again}"
            except OSError as err:
                if streamed:
                    raise errors.Error(
                        f"{where}: streaming from disk needs a writable cache, and {options.cache_dir} is not "
                        f"({errors.first_line(err)}); pass --cache_dir=<a folder with room for "
                        f"{int(np.prod(shape)) / 2**20:.0f} MB>, or --stream=off."
                    ) from None
                note = f", not cached: {errors.first_line(err)}{again}"
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
