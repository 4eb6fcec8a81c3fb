"""maxl_tf.data.safe_pickle: the CIFAR pickles' layout loads, a pickle that calls anything else is refused."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from maxl_tf import errors
from maxl_tf.data import registry
from maxl_tf.data import safe_pickle
from maxl_tf.data import source


class _RunsCommand:
    """What a crafted archive holds: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _cifar_layout(n=4):
    """A dict as in cifar-100-python/train: bytes keys, uint8 [N, 3072] data, label lists."""
    rng = np.random.default_rng(0)
    return {
        b"filenames": [f"image_{i}.png".encode() for i in range(n)],
        b"batch_label": b"training batch 1 of 1",
        b"fine_labels": [int(x) for x in rng.integers(0, 100, n)],
        b"coarse_labels": [int(x) for x in rng.integers(0, 20, n)],
        b"labels": [int(x) for x in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
    }


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_the_published_layout_loads(protocol):
    written = _cifar_layout()
    read = safe_pickle.load_arrays(io.BytesIO(pickle.dumps(written, protocol=protocol)), "train")
    assert read.keys() == written.keys()
    np.testing.assert_array_equal(read[b"data"], written[b"data"])
    assert read[b"data"].dtype == np.uint8
    for key in (b"filenames", b"batch_label", b"fine_labels", b"coarse_labels", b"labels"):
        assert read[key] == written[key]


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_a_pickle_calling_os_system_is_refused(tmp_path, protocol):
    marker = tmp_path / "ran"
    payload = pickle.dumps({b"data": _RunsCommand(marker), b"labels": [0]}, protocol=protocol)
    refused = r"^train is not a published CIFAR pickle: it would call (posix|os)\.system \(refused; nothing was run\)"
    with pytest.raises(errors.Error, match=refused):
        safe_pickle.load_arrays(io.BytesIO(payload), "train")
    assert not marker.exists()


def test_only_latin1_rebuilds_bytes():
    """_codecs.encode is let through for protocol 0-2 bytes, with no codec but latin1."""
    crafted = b"c_codecs\nencode\n(Vx\nVrot13\ntR."
    with pytest.raises(pickle.UnpicklingError, match="rot13"):
        safe_pickle.load_arrays(io.BytesIO(crafted), "train")


def test_a_crafted_cifar_archive_stops_the_run_naming_the_member(tmp_path):
    """The loader reads through safe_pickle: a crafted cifar-100-python.tar.gz is one error naming
    the archive member, and its command never runs."""
    marker = tmp_path / "ran"
    folder = tmp_path / "src" / "cifar-100-python"
    folder.mkdir(parents=True)
    for member in ("train", "test"):
        with open(folder / member, "wb") as f:
            pickle.dump({b"data": _RunsCommand(marker), b"fine_labels": [0]}, f, protocol=2)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with tarfile.open(data_dir / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    member = r"cifar-100-python.tar.gz: cifar-100-python/(train|test) is not a published"
    with pytest.raises(errors.Error, match=member):
        registry.get("cifar100", source.Options(data_dir=str(data_dir), download=False)).load()
    assert not marker.exists()
