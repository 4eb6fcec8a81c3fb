"""Random-pixel CIFAR archives in the published format, to exercise the CIFAR path offline.

They run the real loading code and the full-size models end to end, and time them, on a machine
without the data; the accuracies they give mean nothing.

    python -m maxl_tf.synthetic --dataset=cifar100 --out=/tmp/synthetic_cifar
    python main.py --flagfile=flags/cifar100.cfg --data_dir=/tmp/synthetic_cifar ...
"""

from absl import flags

from maxl_tf import cli
from maxl_tf import errors
from maxl_tf.data import cifar


def main(argv):
    values = flags.FLAGS
    if len(argv) > 1:
        raise errors.Error(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
    if not values.out:
        raise errors.Error("--out is required: the folder to write the archive into.")
    if values.train < 1 or values.test < 1:
        raise errors.Error("--train and --test must be at least 1.")
    try:
        print(cifar.write_archive(values.dataset, values.out, values.train, values.test))
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
