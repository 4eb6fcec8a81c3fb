"""Reading the published CIFAR pickles without running code from the file.

pickle.load calls whatever callable a pickle names (a crafted `cifar-100-python/train` can run a
shell command). The CIFAR pickles hold dicts of bytes, lists of ints and one uint8 numpy array,
so the only callables they need are numpy's array rebuilders and, in pickles written by Python 3
at protocol 2 or lower, `_codecs.encode` for bytes. Everything else is refused before it is
looked up.
"""

import codecs
import io
import pickle

import numpy as np

from maxl_tf import errors

# (module, name) -> what it resolves to. numpy moved its core to numpy._core in 2.0; pickles of
# either version name their own. `_frombuffer` rebuilds arrays at protocol 5.
_ARRAY_CALLABLES = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): np._core.numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): np._core.numeric._frombuffer,
}


def _latin1_encode(text, encoding="latin1"):
    """`_codecs.encode` as protocol 0-2 pickles of bytes use it, and no other codec."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r} (only latin1 rebuilds bytes)")
    return codecs.encode(text, "latin1")


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in _ARRAY_CALLABLES:
            return _ARRAY_CALLABLES[module, name]
        raise _Refused(f"{module}.{name}")


class _Refused(Exception):
    """The pickle names a callable that is not a numpy array rebuilder."""


def load_arrays(file: io.BufferedIOBase, name: str):
    """Unpickles dicts, lists, bytes, numbers and numpy arrays from `file` (keys of Python 2 str
    as bytes, as the CIFAR pickles are read), and nothing that runs code.

    Args:
      name: the file (or archive member) as the user knows it, for the error.
    Raises:
      errors.Error: the pickle calls anything else (e.g. os.system): refused, nothing called.
      pickle.UnpicklingError, EOFError, ...: a damaged pickle, as pickle.load raises them.
    """
    try:
        return _ArrayUnpickler(file, encoding="bytes").load()
    except _Refused as refused:
        raise errors.Error(
            f"{name} is not a published CIFAR pickle: it would call {refused} (refused; nothing was "
            f"run). Delete it and download the data set again from its publisher."
        ) from None
