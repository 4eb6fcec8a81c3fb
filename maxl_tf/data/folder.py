"""--dataset=folder: a user's own images, one subfolder per class (keras' image_dataset_from_directory
layout; the class names are the sorted folder names):

    DIR/cat/0001.jpg, DIR/cat/0002.png, ..., DIR/dog/...         a test fraction is held out
    DIR/train/cat/..., DIR/train/dog/..., DIR/test/cat/..., ...  the given split is used

Files ending .bmp, .gif (first frame), .jpeg, .jpg or .png (any case) are images, also in
subfolders of a class folder; other files are ignored, and so are names starting with "." (the
messages say so where it matters). A link to an image or to a class folder is followed; a link
that dangles, leads back to a folder that holds it, or reaches a folder or image already listed
is refused by name, as is an "image" that is not a regular file (a FIFO would hang the run).
The folder is listed once per Source: the listing gives the classes, the run name's fingerprint
and what the run records of its data. images.py decodes, caches and streams the images.

What decides "the same data" is the content hash (content_hash): sha256 over every image's
relative path and the sha256 of its bytes. Hashing reads every file, so each file's digest is
kept in the cache folder (`content/`, one file per folder, under the user's cache checksum key)
with the file's device, inode, size, modification time and change time, and read again only when
one of those differs. The change time is the one no copy tool can set (`cp -p`, `rsync -a` and
`tar x` restore the modification time): a file rewritten in place with its size and modification
time kept is hashed again and caught, while a `touch`, a renamed folder or a folder named through
a link only costs a rehash and is the same data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import stat

from maxl_tf import errors
from maxl_tf.core import hierarchy as hierarchy_lib
from maxl_tf.data import hierarchy_file
from maxl_tf.data import images as images_lib
from maxl_tf.data import source as source_lib

NAME = "folder"
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # as image_dataset_from_directory


@dataclasses.dataclass(frozen=True)
class Listing:
    """Attributes:
    root: the folder's absolute path.
    paths, labels, in_test: per image (class folders in sorted order, files sorted within each).
    class_names: sorted class folder names, the labels' order.
    hidden: names starting with "." in the folder and its split folders, not used as classes.
    fingerprint: sha256 of every image's relative path, size and modification time (what a run
      recorded of its data before content hashes: still compared with such records).
    stats: per image (relative path, device, inode, size, modification and change time in ns), in
      relative path order: whether its content digest must be computed again (content_hash).
    """

    root: str
    paths: tuple
    labels: tuple
    in_test: tuple
    class_names: tuple
    hidden: tuple
    fingerprint: str
    stats: tuple = ()


def _visible(entries) -> tuple:
    """(visible entries sorted by name, hidden names, as they can be shown)."""
    entries = sorted(entries, key=lambda e: e.name)
    hidden = [_shown(e.name) for e in entries if e.name.startswith(".")]
    return [e for e in entries if not e.name.startswith(".")], hidden


def _shown(name: str) -> str:
    """A file name as a message can print it: bytes that are not UTF-8 (which Python lists as
    lone surrogates) as \\xNN escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _require_utf8(path: str) -> None:
    """Raises errors.Error naming a file or folder whose name is not valid UTF-8 (TensorFlow, which
    decodes the images, takes UTF-8 paths only)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.Error(
            f"{_shown(path)}: its name is not valid UTF-8, so the images cannot be read; rename it "
            "(e.g. convmv -f latin1 -t utf8 -r --notest <folder>)."
        ) from None


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _scan(folder: str) -> list:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError as err:
        raise errors.Error(f"{folder} cannot be listed ({err.strerror}); check its permissions.") from None


def _is_dir(entry) -> bool:
    try:
        return entry.is_dir()  # follows a link
    except OSError:
        return False


class _Walker:
    """Lists images under class folders, refusing links and files that would list an image twice,
    label it with the wrong class, or hang."""

    def __init__(self):
        self.seen_dirs = {}  # realpath -> the path it was listed under
        self.seen_files = {}
        self.stats = []  # (path, size, mtime_ns, ctime_ns, device, inode)

    def enter(self, path: str) -> None:
        _require_utf8(path)
        real = os.path.realpath(path)
        if real in self.seen_dirs:
            raise errors.Error(
                f"{path} is the folder {self.seen_dirs[real]} again (through a link): its images would be "
                "listed twice; remove the link."
            )
        self.seen_dirs[real] = path

    def walk(self, class_dir: str) -> list:
        """Image paths under class_dir, sorted."""
        self.enter(class_dir)
        found = []
        entries, _ = _visible(_scan(class_dir))
        for entry in entries:
            path = entry.path
            if entry.is_symlink():
                target = os.path.realpath(path)
                if not os.path.exists(path):
                    raise errors.Error(f"{path} is a link to {os.readlink(path)}, which does not exist; remove it.")
                if os.path.isdir(path) and (os.path.realpath(class_dir) + os.sep).startswith(target + os.sep):
                    raise errors.Error(
                        f"{path} is a link to {target}, a folder that holds it (a loop): remove the link."
                    )
            if _is_dir(entry):
                found += self.walk(path)
                continue
            if not _is_image(entry.name):
                continue
            _require_utf8(path)
            try:
                info = entry.stat()
            except OSError as err:
                raise errors.Error(f"{path} cannot be read ({err.strerror}); fix or delete it.") from None
            if not stat.S_ISREG(info.st_mode):
                raise errors.Error(f"{path} is not a regular file (a pipe, socket or device); delete or move it.")
            real = os.path.realpath(path)
            if real in self.seen_files:
                raise errors.Error(
                    f"{path} and {self.seen_files[real]} are the same image (through a link): it would be listed "
                    "twice, perhaps under two classes; remove one."
                )
            self.seen_files[real] = path
            self.stats.append((path, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_dev, info.st_ino))
            found.append(path)
        return found


def list_folder(folder: str) -> Listing:
    """Lists a folder of class folders (module docstring).

    Raises:
      errors.Error: a missing or empty folder, one class only, a class folder without images, an
        image outside the class folders, train/ and test/ with different classes, a bad link or file.
    """
    root = os.path.abspath(os.path.expanduser(folder))
    if not folder or not os.path.isdir(root):
        raise errors.Error(
            f"--data_dir={_shown(folder)} does not exist or is not a folder: pass the folder that holds one "
            "subfolder of images per class."
        )
    _require_utf8(root)
    entries, hidden = _visible(_scan(root))
    subfolders = [e.name for e in entries if _is_dir(e)]
    has = {split: split in subfolders for split in ("train", "test")}
    if any(has.values()) and not all(has.values()):
        present, absent = ("train", "test") if has["train"] else ("test", "train")
        raise errors.Error(
            f"--data_dir={folder} has {present}/ but no {absent}/: add {absent}/ with the same class "
            f"folders, or move the class folders up out of {present}/ to hold out a test fraction instead."
        )
    if all(has.values()):
        others = [e for e in subfolders if e not in ("train", "test")]
        if others:
            raise errors.Error(
                f"--data_dir={folder} has {others[0]}/ beside train/ and test/: move it into one of them, "
                "or out of the folder."
            )
        roots = {"train": os.path.join(root, "train"), "test": os.path.join(root, "test")}
    else:
        roots = {"all": root}
    walker = _Walker()
    classes = {}
    for split, split_root in roots.items():
        classes[split], split_hidden = _class_files(split_root, walker)
        hidden += [os.path.join(split, n) for n in split_hidden] if split != "all" else split_hidden
    if "test" in classes:
        for one, other in (("test", "train"), ("train", "test")):
            missing = sorted(set(classes[other]) - set(classes[one]))
            if missing:
                raise errors.Error(
                    f"{roots[one]} has no class folder {', '.join(missing[:5])} that {roots[other]} has: "
                    "train/ and test/ need the same class folders."
                )
    class_names = tuple(sorted(classes["train" if "train" in classes else "all"]))
    paths, labels, in_test = [], [], []
    for split, files in classes.items():
        for label, name in enumerate(class_names):
            paths += files[name]
            labels += [label] * len(files[name])
            in_test += [split == "test"] * len(files[name])
    stats = sorted(
        (os.path.relpath(p, root), dev, ino, size, mtime, ctime) for p, size, mtime, ctime, dev, ino in walker.stats
    )
    fingerprint = hashlib.sha256(json.dumps([[s[0], s[3], s[4]] for s in stats]).encode()).hexdigest()
    return Listing(
        root, tuple(paths), tuple(labels), tuple(in_test), class_names, tuple(hidden), fingerprint, tuple(stats)
    )


def _file_digest(root: str, relative: str) -> tuple:
    """(the file's stat key as content_hash keeps it, sha256 of its bytes); the key is taken before
    the bytes are read, so a file changed while it is read is hashed again next time."""
    path = os.path.join(root, relative)
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            info, digest = os.fstat(fd), hashlib.sha256()
            while chunk := os.read(fd, 1 << 20):  # plain reads: half the time of a file object's
                digest.update(chunk)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise errors.Error(f"{path}: vanished while the data was read; run again once the folder is stable.") from None
    except OSError as err:
        raise errors.Error(f"{path} cannot be read ({err.strerror}); fix or delete it.") from None
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns], digest.hexdigest()


_MEMO_HEADER = b"maxl_tf content digests 1 "


def _memo_path(cache_dir: str, root: str) -> str:
    user = hashlib.sha256(images_lib.secret()).hexdigest()[:16]
    name = hashlib.sha256(json.dumps([user, os.path.realpath(root)]).encode()).hexdigest()[:32]
    return os.path.join(cache_dir, "content", name)


def _memo_mac(body: bytes) -> bytes:
    return hmac.new(images_lib.secret(), body, hashlib.sha256).hexdigest().encode()


def _read_memo(path: str) -> dict:
    """{relative path (bytes): (stat key, digest)} kept at path, or {} when there is none or it
    fails its checksum (then every file is hashed again).

    The file: a line of _MEMO_HEADER and the HMAC of the rest, then per image
    "device inode size mtime_ns ctime_ns<TAB>sha256 hex<TAB>relative path<NUL>" (a path holds no NUL)."""
    try:
        with open(path, "rb") as f:
            header, _, body = f.read().partition(b"\n")
    except OSError:
        return {}
    if not header.startswith(_MEMO_HEADER) or not hmac.compare_digest(header[len(_MEMO_HEADER) :], _memo_mac(body)):
        return {}
    kept = {}
    for record in body.split(b"\0")[:-1]:
        key, digest, relative = record.split(b"\t", 2)
        kept[relative] = (key, digest)
    return kept


def content_hash(listing: Listing, cache_dir: str = "") -> tuple:
    """(sha256 hex of the folder's images: each one's relative path and the sha256 of its bytes;
    how many files were read to get it). With a cache folder, a file whose device, inode, size,
    modification and change time are those kept there is not read again (module docstring).

    Raises:
      errors.Error: an image vanished or cannot be read (naming it).
    """
    path = _memo_path(cache_dir, listing.root) if cache_dir else ""
    kept = _read_memo(path) if path else {}
    content, records, read = hashlib.sha256(), [], 0
    for relative, *key in listing.stats:
        name, stat_key = os.fsencode(relative), b"%d %d %d %d %d" % tuple(key)
        entry = kept.get(name)
        if entry is not None and entry[0] == stat_key:
            digest = entry[1]
        else:
            stat_now, text = _file_digest(listing.root, relative)
            stat_key, digest = b"%d %d %d %d %d" % tuple(stat_now), text.encode()
            read += 1
        content.update(name + b"\0" + digest + b"\0")
        records.append(b"%s\t%s\t%s\0" % (stat_key, digest, name))
    if path and (read or len(kept) != len(records)):
        body = b"".join(records)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(_MEMO_HEADER + _memo_mac(body) + b"\n" + body)
            os.replace(tmp, path)
        except OSError:
            pass  # the next run hashes again: slower, never wrong
    return content.hexdigest(), read


def _class_files(root: str, walker: _Walker) -> tuple:
    """({class name: its image files}, hidden names) of one split's folder."""
    entries, hidden = _visible(_scan(root))
    loose = [e.name for e in entries if _is_image(e.name) and not _is_dir(e)]
    if loose:
        raise errors.Error(
            f"{os.path.join(root, loose[0])} is not in a class folder: move the images of each class into a "
            f"subfolder of {root} named after the class."
        )
    class_dirs = [e.name for e in entries if _is_dir(e)]
    skipped = f" (skipped: {', '.join(hidden[:5])}; names starting with '.' are hidden)" if hidden else ""
    if len(class_dirs) < 2:
        what = f"one class folder ({class_dirs[0]}/)" if class_dirs else "no class folders"
        raise errors.Error(
            f"{root} holds {what}{skipped}: classification needs at least two; put the images of each class "
            "in a subfolder named after the class."
        )
    classes = {}
    for name in class_dirs:
        files = walker.walk(os.path.join(root, name))
        if not files:
            raise errors.Error(
                f"{os.path.join(root, name)} holds no images ({', '.join(IMAGE_EXTENSIONS)}): add some, or "
                "remove the folder."
            )
        classes[name] = files
    return classes, hidden


def read_headers(paths, max_pixels: int) -> list:
    """images.read_header of each file, under max_pixels (--max_image_pixels) alone: PIL's own
    decompression-bomb limits (a warning above 89,478,485 pixels, an error above twice that, which
    read_header would report as an unreadable file) are lifted while the headers are read."""
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        return [images_lib.read_header(path, path, max_pixels) for path in paths]
    finally:
        Image.MAX_IMAGE_PIXELS = limit


class Folder(source_lib.Source):
    """A folder of class folders (module docstring); Options.data_dir is the folder."""

    def __init__(self, options: source_lib.Options = source_lib.DEFAULTS):
        if not options.data_dir:
            raise errors.Error(
                "--dataset=folder needs --data_dir=<the folder that holds one subfolder of images per class>."
            )
        self.options = options
        root = os.path.abspath(os.path.expanduser(options.data_dir))
        base = os.path.basename(os.path.normpath(root)) or "data"
        # Two folders of one base name (two copies of "images") get two names, so neither run is
        # taken for the other's.
        self.name = f"{NAME}_{base}_{hashlib.sha256(root.encode()).hexdigest()[:6]}"
        self._listing = None
        self._content = None

    def listing(self) -> Listing:
        if self._listing is None:
            self._listing = list_folder(self.options.data_dir)
        return self._listing

    def levels(self) -> hierarchy_lib.Hierarchy:
        listing = self.listing()
        described = f"{listing.root} ({len(listing.class_names)} class folders"
        if listing.hidden:
            described += f"; hidden, not classes: {', '.join(listing.hidden[:5])}"
        described += ")"
        if self.options.hierarchy:
            return hierarchy_file.load(self.options.hierarchy, described, listing.class_names)
        return hierarchy_file.flat(described, listing.class_names)

    def content(self) -> str:
        """The folder's content hash (content_hash), computed once per Source."""
        if self._content is None:
            self._content = content_hash(self.listing(), self.options.cache_dir)[0]
        return self._content

    def identity(self) -> dict:
        """The content hash and image count decide "same data" (experiment/rundir.same_data); the
        path and the fingerprint of sizes and modification times are kept to name the folder and to
        compare with runs recorded before content hashes."""
        listing = self.listing()
        return {
            "kind": "folder",
            "path": listing.root,
            "content": self.content()[:32],
            "fingerprint": listing.fingerprint[:16],
            "images": len(listing.paths),
        }

    def load(self) -> source_lib.Loaded:
        listing = self.listing()
        max_pixels = self.options.max_pixels
        return images_lib.decode_set(
            listing.labels,
            listing.in_test,
            listing.class_names,
            self.options,
            cache_key=["folder", self.content(), len(listing.paths)] if self.options.cache_dir else None,
            what=f"image folder {listing.root} ({len(listing.class_names)} classes)",
            where=f"--data_dir={listing.root}",
            read_headers=lambda: read_headers(listing.paths, max_pixels),
            decode=lambda size, channels, out: images_lib.decode_paths(listing.paths, size, channels, out),
        )
