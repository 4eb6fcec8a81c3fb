"""tensorflow-datasets: the one reader of prepared tfds sets, and the tfds:NAME source.

The built-in sets (cifar.py, mnist.py) fall back to their tfds builders through `prepared` and
`read_whole`; --dataset=tfds:NAME is any tfds image-classification set (an `image` and a class
`label` feature), sized and given channels as a folder's images are (images.py). Offline, tfds
retries a download for minutes; `offline()` answers in milliseconds, so a run without data says
what to do at once. tensorflow_datasets (and with it TensorFlow) is imported only when a builder
is needed.
"""

from __future__ import annotations

import difflib
import os
import socket

from maxl_tf import errors
from maxl_tf import runtime
from maxl_tf.core import hierarchy as hierarchy_lib
from maxl_tf.data import hierarchy_file
from maxl_tf.data import images as images_lib
from maxl_tf.data import source as source_lib

PREFIX = "tfds:"
# tfds fetches from its Google Cloud Storage mirror, else from the publishers' hosts.
DOWNLOAD_HOSTS = (
    "storage.googleapis.com",
    "www.cs.toronto.edu",
    "github.com",
    "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
)


def _tfds():
    with runtime.quiet_start_up():  # tensorflow-datasets, and with it TensorFlow, starts here
        import tensorflow_datasets

    return tensorflow_datasets


def identity_on_disk(names, data_dir: str | None) -> dict:
    """A built-in set's tensorflow-datasets copy, read from its folders (no TensorFlow): the
    builders' names and the versions prepared there."""
    root = os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")
    versions = {}
    for name in dict.fromkeys(names):
        folder = os.path.join(root, *name.split("/")[:2]) if "/" in name else os.path.join(root, name)
        try:
            versions[name] = sorted(v for v in os.listdir(folder) if v[:1].isdigit())
        except OSError:
            versions[name] = []
    return {"kind": "tfds", "builders": versions, "data_dir": os.path.abspath(root)}


def offline() -> bool:
    """True when no download host resolves and no proxy is set.

    Offline, tfds retries every download for minutes before failing; a name lookup fails in
    milliseconds. Behind a proxy the lookup proves nothing, so the download is left to try.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False
    for host in DOWNLOAD_HOSTS:
        try:
            socket.getaddrinfo(host, 443)
            return False
        except OSError:
            pass
    return True


def builder(name: str, data_dir: str | None):
    """tfds.builder(name), whatever it raises turned into one line."""
    tfds = _tfds()
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        close = difflib.get_close_matches(name.split("/")[0], tfds.list_builders(), n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise errors.Error(
            f"--dataset={PREFIX}{name}: tensorflow-datasets has no such data set{hint}; "
            "tfds.list_builders() lists the names."
        ) from err
    except Exception as err:  # Whatever else a builder raises (a bad config or version), one line.
        raise errors.Error(
            f"--dataset={PREFIX}{name}: tensorflow-datasets cannot build it "
            f"({errors.first_line(err)}); check the name, config and version."
        ) from err


def prepared(tfds_builder, download: bool, missing: str, offline_fix: str):
    """The builder once its data is on disk, downloading it only if `download`.

    Args:
      missing: what is missing, for messages ("No cifar100 data in ..."); "{tfds_dir}" in it becomes
        the tensorflow-datasets folder that was searched.
      offline_fix: how to provide the data without a network ("put ... in --data_dir").
    """
    if tfds_builder.is_prepared():
        return tfds_builder
    name = tfds_builder.info.full_name
    missing = missing.replace("{tfds_dir}", str(tfds_builder.data_dir_root))
    if not download:
        raise errors.Error(f"{missing}: {offline_fix}, or run with internet access and --download.")
    if offline():
        raise errors.Error(
            f"{missing}, and downloading {name} is impossible: no network (none of "
            f"{', '.join(DOWNLOAD_HOSTS)} resolves). To work offline {offline_fix}."
        )
    try:
        tfds_builder.download_and_prepare()
    except Exception as err:  # Whatever tfds raises, the user needs the offline fix, not a trace.
        raise errors.Error(
            f"{missing}, and downloading {name} with tensorflow-datasets failed "
            f"({errors.first_line(err, 200)}); no internet? To work offline {offline_fix}."
        ) from err
    return tfds_builder


def _unreadable(tfds_builder, split: str, err) -> errors.Error:
    return errors.Error(
        f"tfds {tfds_builder.info.full_name} ({split} split) in {tfds_builder.data_path} is unreadable "
        f"({type(err).__name__}); delete that folder and prepare it again with --download."
    )


def read_whole(tfds_builder, split: str) -> dict:
    """A prepared split whole, as numpy arrays per feature (built-in sets of one image size)."""
    tfds = _tfds()
    import tensorflow as tf

    try:
        return tfds.as_numpy(tfds_builder.as_dataset(split=split, batch_size=-1))
    except tf.errors.OpError as err:
        raise _unreadable(tfds_builder, split, err) from err


def _encoded(tfds_builder, split: str, num_classes: int):
    """(encoded image bytes, label) of a prepared split, one by one, labels checked."""
    tfds = _tfds()
    import tensorflow as tf

    where = f"tfds {tfds_builder.info.full_name} ({split} split) in {tfds_builder.data_path}"
    try:
        dataset = tfds_builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        for example in tfds.as_numpy(dataset):
            label = int(example["label"])
            if not 0 <= label < num_classes:
                raise errors.Error(
                    f"{where}: label {label} is outside 0..{num_classes - 1}; the copy is corrupt: "
                    "delete that folder and prepare it again."
                )
            yield example["image"], label
    except tf.errors.OpError as err:
        raise _unreadable(tfds_builder, split, err) from err


class TfdsSource(source_lib.Source):
    """--dataset=tfds:NAME: a tfds image-classification set; its `test` split is the test set, or a
    held-out fraction of `train` where it has none (other splits are not used)."""

    def __init__(self, tfds_name: str, options: source_lib.Options = source_lib.DEFAULTS):
        self.tfds_name = tfds_name
        self.options = options
        self.name = "tfds_" + tfds_name.replace("/", "-").replace(":", "-")
        self._builder = None

    def _classification_builder(self):
        if self._builder is None:
            tfds = _tfds()
            found = builder(self.tfds_name, self.options.data_dir or None)
            features = found.info.features
            names = list(features.keys()) if isinstance(features, tfds.features.FeaturesDict) else []
            if not (
                "image" in names
                and isinstance(features["image"], tfds.features.Image)
                and "label" in names
                and isinstance(features["label"], tfds.features.ClassLabel)
            ):
                raise errors.Error(
                    f"--dataset={PREFIX}{self.tfds_name}: not an image-classification set (its features are "
                    f"{', '.join(names) or type(features).__name__}; an `image` and a class `label` are "
                    "needed): pick another set."
                )
            self._builder = found
        return self._builder

    def class_names(self) -> tuple:
        return tuple(self._classification_builder().info.features["label"].names)

    def levels(self) -> hierarchy_lib.Hierarchy:
        if self.options.hierarchy:
            return hierarchy_file.load(self.options.hierarchy, self.name, self.class_names())
        return hierarchy_file.flat(self.name, self.class_names())

    def identity(self) -> dict:
        found = self._classification_builder()
        return {
            "kind": "tfds",
            "name": found.info.name,
            "config": found.builder_config.name if found.builder_config else None,
            "version": str(found.info.version),
            "splits": "train+test" if "test" in found.info.splits else "train (test held out)",
            "data_dir": str(found.data_dir_root),
        }

    def find(self) -> None:
        self._prepared()

    def _prepared(self):
        found = self._classification_builder()
        fix = "prepare it where there is internet access and pass --data_dir=<that tensorflow-datasets folder>"
        missing = f"--dataset={PREFIX}{self.tfds_name}: not prepared in {found.data_dir_root}"
        return prepared(found, self.options.download, missing, fix)

    def load(self) -> source_lib.Loaded:
        found = self._prepared()
        names = self.class_names()
        splits = list(found.info.splits)
        where = f"--dataset={PREFIX}{self.tfds_name}"
        if "train" not in splits:
            raise errors.Error(f"{where}: has no train split (only {', '.join(splits) or 'none'}); pick another set.")
        parts = ("train", "test") if "test" in splits else ("train",)
        labels, in_test = [], []
        for split in parts:
            for _, label in _encoded(found, split, len(names)):
                labels.append(label)
                in_test.append(split == "test")
        for split in parts:
            if (split == "test") not in in_test:
                raise errors.Error(f"{where}: its {split} split is empty; pick another set.")
        max_pixels = self.options.max_pixels

        def read_headers():
            return [
                images_lib.read_header(encoded, f"{where} ({split} split, image {i})", max_pixels)
                for split in parts
                for i, (encoded, _) in enumerate(_encoded(found, split, len(names)))
            ]

        def decode(size, channels, out):
            import tensorflow as tf

            undecoded = {"image": _tfds().decode.SkipDecoding()}
            encoded = [found.as_dataset(split=split, decoders=undecoded) for split in parts]  # train, then test
            for more in encoded[1:]:
                encoded[0] = encoded[0].concatenate(more)
            images_lib.fill_rows(
                encoded[0].map(
                    lambda example: images_lib.decode(example["image"], size, channels),
                    num_parallel_calls=tf.data.AUTOTUNE,
                ),
                out,
            )

        return images_lib.decode_set(
            labels,
            in_test,
            names,
            self.options,
            cache_key=["tfds", self.identity()],
            what=f"tfds {found.info.full_name} in {found.data_dir_root}",
            where=where,
            read_headers=read_headers,
            decode=decode,
        )
