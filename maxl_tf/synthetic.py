"""Random-pixel CIFAR archives in the published format, to exercise the CIFAR path offline.

They run the real loading code and the full-size models end to end, and time them, on a machine
without the data; the accuracies they give mean nothing.

    python -m maxl_tf.synthetic --dataset=cifar100 --out=/tmp/synthetic_cifar
    python main.py --flagfile=flags/cifar100.cfg --data_dir=/tmp/synthetic_cifar ...
"""

import io
import os
import pickle
import tarfile

from absl import flags
import numpy as np

from maxl_tf import cli
from maxl_tf import errors
from maxl_tf import hierarchy


def _add(tar, name, payload: dict):
    data = pickle.dumps(payload)
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_archive(dataset: str, out: str, train: int = 50000, test: int = 10000, seed: int = 0) -> str:
    """Writes cifar-100-python.tar.gz or cifar-10-python.tar.gz with random pixels into `out`.

    CIFAR-100's coarse labels follow the standard fine -> coarse table, as the loader checks.
    Returns the archive's path.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(out, exist_ok=True)

    def part(n, classes):
        fine = rng.integers(0, classes, n)
        return fine, {b"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)}  # CHW rows

    if dataset == "cifar100":
        path = os.path.join(out, "cifar-100-python.tar.gz")
        with tarfile.open(path, "w:gz") as tar:
            for name, n in (("train", train), ("test", test)):
                fine, payload = part(n, 100)
                payload[b"fine_labels"] = fine.tolist()
                payload[b"coarse_labels"] = np.asarray(hierarchy.CIFAR100_FINE_TO_COARSE)[fine].tolist()
                _add(tar, f"cifar-100-python/{name}", payload)
        return path
    if dataset == "cifar10":
        path = os.path.join(out, "cifar-10-python.tar.gz")
        batches = [(f"data_batch_{i}", train // 5) for i in range(1, 6)] + [("test_batch", test)]
        with tarfile.open(path, "w:gz") as tar:
            for name, n in batches:
                labels, payload = part(n, 10)
                payload[b"labels"] = labels.tolist()
                _add(tar, f"cifar-10-batches-py/{name}", payload)
        return path
    raise errors.Error(f"--dataset={dataset}: no synthetic archive for it; use cifar100 or cifar10.")


def main(argv):
    values = flags.FLAGS
    if len(argv) > 1:
        raise errors.Error(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
    if not values.out:
        raise errors.Error("--out is required: the folder to write the archive into.")
    if values.train < 1 or values.test < 1:
        raise errors.Error("--train and --test must be at least 1.")
    try:
        print(write_archive(values.dataset, values.out, values.train, values.test))
    except OSError as e:
        raise errors.Error(f"--out={values.out} cannot be written ({e.strerror}); pass a writable folder.") from None


def command() -> None:
    """maxl-tf synthetic and python -m maxl_tf.synthetic."""
    flags.DEFINE_string("dataset", "cifar100", "cifar100 or cifar10.")
    flags.DEFINE_string("out", "", "Folder to write the archive into.")
    flags.DEFINE_integer("train", 50000, "Training images.")
    flags.DEFINE_integer("test", 10000, "Test images.")
    cli.run(main)


if __name__ == "__main__":
    command()
