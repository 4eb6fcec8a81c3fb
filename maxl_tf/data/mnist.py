"""MNIST and Fashion-MNIST: their four IDX files in --data_dir (idx.py reads them; without
--data_dir, Fashion-MNIST from Debian's dataset-fashion-mnist folder when installed), else
tensorflow-datasets, downloading only when allowed. Both are padded from 28x28 to 32x32
(idx.pad_for_vgg). Fashion-MNIST has B-CNN's two coarse levels, so the Human baseline and the
6 x 10 experiment run on real images offline.
"""

from __future__ import annotations

import os

import numpy as np

from maxl_tf.core import hierarchy as hierarchy_lib
from maxl_tf.data import digits
from maxl_tf.data import idx
from maxl_tf.data import source as source_lib
from maxl_tf.data import tfds

# Fashion-MNIST's coarse levels as published with B-CNN (Zhu and Bain, 2017), over its labels
# 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker, 8 Bag,
# 9 Ankle boot. 6 classes: 0 tops, 1 bottoms, 2 dresses, 3 outers, 4 accessories, 5 shoes.
FASHION_MNIST_TO_6 = (0, 1, 0, 2, 3, 5, 0, 5, 4, 5)
# 6 -> 2 classes: 0 clothes (tops, bottoms, dresses, outers), 1 goods (accessories, shoes).
FASHION_MNIST_6_TO_2 = (0, 0, 0, 0, 1, 1)
FASHION_MNIST_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_6_NAMES = ("tops", "bottoms", "dresses", "outers", "accessories", "shoes")
FASHION_MNIST_2_NAMES = ("clothes", "goods")
_IMAGE_SHAPE = (32, 32, 1)


class IdxSource(source_lib.Source):
    """MNIST or Fashion-MNIST (module docstring)."""

    def __init__(self, dataset: str, options: source_lib.Options = source_lib.DEFAULTS):
        self.name = dataset
        self.options = options
        self.augmentation = source_lib.Augmentation(
            2, horizontal_flip=dataset == "fashion_mnist"
        )  # a mirrored garment is a garment; a digit is not

    def levels(self) -> hierarchy_lib.Hierarchy:
        if self.name == "mnist":
            return hierarchy_lib.Hierarchy("MNIST", {10: np.arange(10)}, {10: digits.DIGIT_NAMES})
        fine_to_6 = np.asarray(FASHION_MNIST_TO_6)
        return hierarchy_lib.Hierarchy(
            "Fashion-MNIST",
            {10: np.arange(10), 6: fine_to_6, 2: hierarchy_lib.compose(fine_to_6, FASHION_MNIST_6_TO_2)},
            {10: FASHION_MNIST_NAMES, 6: FASHION_MNIST_6_NAMES, 2: FASHION_MNIST_2_NAMES},
        )

    def _folder(self) -> str | None:
        """The folder to look for IDX files in: --data_dir, else Debian's (Fashion-MNIST), else None."""
        if self.options.data_dir:
            return source_lib.existing_dir(self.options.data_dir)
        return idx.default_dir(self.name)

    def identity(self) -> dict:
        folder = self._folder()
        found = idx.find_files(folder) if folder else {}
        if found:
            return {
                "kind": "idx",
                "path": os.path.abspath(folder),
                "sizes": {k: os.path.getsize(p) for k, p in found.items()},
            }
        return tfds.identity_on_disk([self.name], self.options.data_dir or None)

    def _offline_fix(self) -> str:
        fix = (
            f"put the four IDX files {idx.describe_files()} from {idx.SOURCES[self.name]} in a folder and "
            "pass --data_dir=<that folder>"
        )
        if self.name == "fashion_mnist":
            fix = f"install Debian's package (apt-get install dataset-fashion-mnist), or {fix}"
        return fix

    def _missing(self) -> str:
        if self.options.data_dir:
            return (
                f"No {self.name} data in --data_dir={self.options.data_dir} (looked for the four IDX files "
                f"{idx.describe_files()}, and for a prepared tensorflow-datasets copy)"
            )
        debian = " (nor in Debian's package folder)" if self.name == "fashion_mnist" else ""
        return f"No {self.name} data in the tensorflow-datasets folder {{tfds_dir}}{debian}"

    def _builder(self):
        folder = self._folder()
        data_dir = folder if self.options.data_dir else None
        return tfds.prepared(
            tfds.builder(self.name, data_dir), self.options.download, self._missing(), self._offline_fix()
        )

    def find(self) -> None:
        folder = self._folder()
        if folder is not None and idx.find_files(folder):
            return  # load() reads the four files, or names those missing
        self._builder()

    def load(self) -> source_lib.Loaded:
        folder = self._folder()
        splits = idx.load(self.name, folder) if folder is not None else None
        if splits is None:
            builder = self._builder()
            splits = {}
            for split in ("train", "test"):
                arrays = tfds.read_whole(builder, split)
                splits[split] = (np.asarray(arrays["image"])[..., 0], np.asarray(arrays["label"], np.int64))
            where = f"tfds {builder.info.full_name} in {builder.data_dir_root}"
        else:
            where = f"IDX files in {folder}"
        train, test = (
            source_lib.Split(idx.pad_for_vgg(images), labels) for images, labels in (splits["train"], splits["test"])
        )
        for split, name in ((train, "train"), (test, "test")):
            source_lib.check_split(split, _IMAGE_SHAPE, 10, f"{where} ({name} split)", self.name)
        return source_lib.Loaded(train, test, f"{where}, padded to 32x32")


SOURCES = {name: (lambda options, name=name: IdxSource(name, options)) for name in idx.DATASETS}
