"""What a --dataset names, known without decoding a single image: its classes and label levels.

    cifar100, cifar10, cifar10_1, digits,  built in: the tables of hierarchy.for_dataset
    fashion_mnist, mnist
    folder                                 --data_dir holds one subfolder of images per class
    tfds:NAME                              a tensorflow-datasets image-classification set

The classes of a folder are its class folders' names (listing it is enough); those of a tfds set
are its label feature's names (its metadata is enough). With --hierarchy the user's file puts them
under principal classes (hierarchy_file.py). Flags are checked against this before any data loads,
so a wrong --pri or a bad hierarchy file stops a run in a second. Only tfds sets import
TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import os

from maxl_tf import errors
from maxl_tf.core import hierarchy
from maxl_tf.data import hierarchy_file

BUILT_IN = ("cifar100", "cifar10", "cifar10_1", "digits", "fashion_mnist", "mnist")
FOLDER = "folder"
TFDS_PREFIX = "tfds:"
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # as image_dataset_from_directory


def is_user_data(dataset: str) -> bool:
    return dataset == FOLDER or dataset.startswith(TFDS_PREFIX)


def check_name(dataset: str) -> None:
    """Raises errors.Error unless --dataset names a data set this module knows how to read."""
    if dataset in BUILT_IN or dataset == FOLDER or (dataset.startswith(TFDS_PREFIX) and dataset[len(TFDS_PREFIX) :]):
        return
    raise errors.Error(
        f"--dataset={dataset}: unknown; use one of {', '.join(BUILT_IN)}, {FOLDER} (with "
        f"--data_dir=<a folder with one subfolder of images per class>) or "
        f"{TFDS_PREFIX}NAME (a tensorflow-datasets image-classification set)."
    )


def short_name(dataset: str, data_dir: str) -> str:
    """The data set's part of a run name: folder_<folder name>, tfds_<name>, or the name itself."""
    if dataset == FOLDER:
        return f"{FOLDER}_{os.path.basename(os.path.normpath(data_dir)) or 'data'}"
    if dataset.startswith(TFDS_PREFIX):
        return "tfds_" + dataset[len(TFDS_PREFIX) :].replace("/", "-").replace(":", "-")
    return dataset


def label_levels(dataset: str, data_dir: str, hierarchy_path: str = "") -> hierarchy.Hierarchy:
    """The data set's label levels, with class names where the data has them (user data).

    Raises:
      errors.Error: the folder or tfds name cannot give class names, or the hierarchy file is bad.
    """
    if not is_user_data(dataset):
        return hierarchy.for_dataset(dataset)
    if dataset == FOLDER:
        names = folder_listing(data_dir).class_names
    else:
        from maxl_tf import runtime

        with runtime.quiet_start_up():  # tensorflow-datasets, and with it TensorFlow, starts here
            from maxl_tf.data import image_folder
        names = image_folder.tfds_class_names(dataset[len(TFDS_PREFIX) :], data_dir or None)
    label = short_name(dataset, data_dir)
    if hierarchy_path:
        return hierarchy_file.load(hierarchy_path, label, names)
    return hierarchy_file.flat(label, names)


# ----------------------------------------------------------------------------------------------
# A folder's layout.


@dataclasses.dataclass(frozen=True)
class FolderListing:
    """Attributes:
    roots: {"all": folder}, or {"train": folder/train, "test": folder/test}.
    files: per root, class name -> its image files (sorted).
    class_names: sorted class folder names, the labels' order.
    """

    roots: dict
    files: dict
    class_names: tuple


def folder_listing(folder: str) -> FolderListing:
    """Lists a folder of class folders (see image_folder.py for the layout).

    Raises:
      errors.Error: a missing or empty folder, one class only, a class folder without images, an
        image outside the class folders, or train/ and test/ with different classes.
    """
    folder = os.path.expanduser(folder)
    if not folder or not os.path.isdir(folder):
        raise errors.Error(
            f"--data_dir={folder} does not exist or is not a folder: pass the folder "
            "that holds one subfolder of images per class."
        )
    roots = _split_roots(folder)
    files = {split: _class_files(root) for split, root in roots.items()}
    if "test" in files:
        for one, other in (("test", "train"), ("train", "test")):
            missing = sorted(set(files[other]) - set(files[one]))
            if missing:
                raise errors.Error(
                    f"{roots[one]} has no class folder {', '.join(missing[:5])} that "
                    f"{roots[other]} has: train/ and test/ need the same class folders."
                )
    return FolderListing(roots, files, tuple(files["all" if "all" in files else "train"]))


def _visible(names) -> list:
    return sorted(n for n in names if not n.startswith("."))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _split_roots(folder: str) -> dict:
    """{"all": folder}, or {"train": folder/train, "test": folder/test} when both exist."""
    entries = _visible(os.listdir(folder))
    subfolders = [e for e in entries if os.path.isdir(os.path.join(folder, e))]
    has = {split: split in subfolders for split in ("train", "test")}
    if not any(has.values()):
        return {"all": folder}
    if not all(has.values()):
        present, absent = ("train", "test") if has["train"] else ("test", "train")
        raise errors.Error(
            f"--data_dir={folder} has {present}/ but no {absent}/: add {absent}/ with the "
            f"same class folders, or move the class folders up out of {present}/ to hold "
            "out a test fraction instead."
        )
    others = [e for e in subfolders if e not in ("train", "test")]
    if others:
        raise errors.Error(
            f"--data_dir={folder} has {others[0]}/ beside train/ and test/: move it into "
            "one of them, or out of the folder."
        )
    return {"train": os.path.join(folder, "train"), "test": os.path.join(folder, "test")}


def _class_files(root: str) -> dict:
    """Class name -> its image files, sorted, searched recursively. Fails on a class without images."""
    entries = _visible(os.listdir(root))
    loose = [e for e in entries if _is_image(e) and os.path.isfile(os.path.join(root, e))]
    if loose:
        raise errors.Error(
            f"{os.path.join(root, loose[0])} is not in a class folder: move the images "
            f"of each class into a subfolder of {root} named after the class."
        )
    class_dirs = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    if not class_dirs:
        raise errors.Error(
            f"{root} holds no class folders: put the images of each class in a subfolder named after the class."
        )
    if len(class_dirs) == 1:
        raise errors.Error(
            f"{root} holds one class folder ({class_dirs[0]}/): classification needs "
            "at least two; add a folder per class."
        )
    classes = {}
    for name in class_dirs:
        class_dir = os.path.join(root, name)
        files = []
        for parent, dirs, names in os.walk(class_dir, followlinks=True):
            dirs[:] = _visible(dirs)
            files += [os.path.join(parent, n) for n in _visible(names) if _is_image(n)]
        if not files:
            raise errors.Error(
                f"{class_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}): add some, or remove the folder."
            )
        classes[name] = sorted(files)
    return classes
