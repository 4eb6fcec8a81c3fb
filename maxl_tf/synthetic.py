"""Random-pixel CIFAR archives in the published format, to exercise the CIFAR path offline.

They run the real loading code and the full-size models end to end, and time them, on a machine
without the data; the accuracies they give mean nothing.

    python -m maxl_tf.synthetic --dataset=cifar100 --out=/tmp/synthetic_cifar
    python main.py --flagfile=flags/cifar100.cfg --data_dir=/tmp/synthetic_cifar ...
"""
import argparse
import io
import os
import pickle
import tarfile

import numpy as np

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
    raise ValueError(f"no synthetic archive for {dataset!r}; use cifar100 or cifar10")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("cifar100", "cifar10"), default="cifar100")
    parser.add_argument("--out", required=True, help="folder to write the archive into")
    parser.add_argument("--train", type=int, default=50000)
    parser.add_argument("--test", type=int, default=10000)
    args = parser.parse_args()
    print(write_archive(args.dataset, args.out, args.train, args.test))
