"""Synthetic archives go through the real CIFAR sources."""

import tensorflow as tf

from maxl_tf.data import cifar
from maxl_tf.data import registry
from maxl_tf.data import source


def _load(dataset: str, folder: str) -> source.Loaded:
    return registry.get(dataset, source.Options(data_dir=folder, download=False)).load()


class SyntheticArchiveTest(tf.test.TestCase):
    def test_cifar100_archive_loads(self):
        folder = self.get_temp_dir() + "/c100"
        cifar.write_archive("cifar100", folder, train=30, test=10)
        data = _load("cifar100", folder)
        self.assertEqual(data.train.images.shape, (30, 32, 32, 3))
        self.assertEqual(data.test.images.shape, (10, 32, 32, 3))
        self.assertAllInRange(data.train.labels, 0, 99)

    def test_cifar10_archive_loads(self):
        folder = self.get_temp_dir() + "/c10"
        cifar.write_archive("cifar10", folder, train=25, test=5)
        data = _load("cifar10", folder)
        self.assertEqual(data.train.images.shape, (25, 32, 32, 3))
        self.assertAllInRange(data.test.labels, 0, 9)


if __name__ == "__main__":
    tf.test.main()
