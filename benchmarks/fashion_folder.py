"""Writes a folder of real images as a user would have them: Fashion-MNIST's first N training
images per class as PNGs in class folders, and tree.json (B-CNN's clothes / goods) beside it.

    python benchmarks/fashion_folder.py --out=/tmp/fashion400 --per_class=40
    python main.py --flagfile=flags/own_data.cfg --data_dir=/tmp/fashion400/images \\
        --hierarchy=/tmp/fashion400/tree.json --pri=2 --aux=10

Reads the IDX files of Debian's dataset-fashion-mnist package (apt-get install
dataset-fashion-mnist), so README's own-data command is measured offline on real images.
"""

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maxl_tf.data import idx  # noqa: E402
from maxl_tf.data import mnist  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--per_class", type=int, default=40)
    args = parser.parse_args()
    images, labels = idx.load("fashion_mnist", idx.DEBIAN_FASHION_MNIST)["train"]
    names = [name.replace("/", "-").replace(" ", "_") for name in mnist.FASHION_MNIST_NAMES]
    for label, name in enumerate(names):
        folder = os.path.join(args.out, "images", name)
        os.makedirs(folder, exist_ok=True)
        for i, index in enumerate(np.flatnonzero(labels == label)[: args.per_class]):
            Image.fromarray(images[index]).save(os.path.join(folder, f"{i:04d}.png"))
    coarse = [mnist.FASHION_MNIST_6_TO_2[six] for six in mnist.FASHION_MNIST_TO_6]
    tree = {group: [n for n, c in zip(names, coarse) if c == g] for g, group in enumerate(mnist.FASHION_MNIST_2_NAMES)}
    with open(os.path.join(args.out, "tree.json"), "w") as f:
        json.dump(tree, f, indent=1)
    print(os.path.join(args.out, "images"), tree)


if __name__ == "__main__":
    main()
