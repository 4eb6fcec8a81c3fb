"""Which Source a --dataset names: the built-in sets, folder, tfds:NAME, and a user's own.

    registry.get("cifar100", Options(data_dir="~/data"))      a built-in set
    registry.get("folder", Options(data_dir="~/pets"))        a folder of class folders
    registry.get("tfds:oxford_iiit_pet")                      a tensorflow-datasets set
    registry.get("my_module:MySource", options)               --dataset=my_module:MySource

A user's source is a source.Source subclass, or any callable taking Options and returning one;
register it from Python (`registry.register("pets", MySource)`) or name it as module:attribute
on the command line (the module importable, e.g. on PYTHONPATH). get() keeps the last few
Sources, so a sweep lists its folder once, not once per run.
"""

from __future__ import annotations

import importlib
import json
import re

from maxl_tf import errors
from maxl_tf.data import cifar
from maxl_tf.data import digits
from maxl_tf.data import folder
from maxl_tf.data import mnist
from maxl_tf.data import source as source_lib
from maxl_tf.data import tfds

TFDS_PREFIX = tfds.PREFIX
FOLDER = folder.NAME

_FACTORIES = {}  # --dataset name -> callable(Options) -> source_lib.Source
_PREFIXES = {}  # name prefix ("tfds:") -> callable(rest of the name, Options) -> source_lib.Source
_RECENT = {}  # (dataset, Options) -> source_lib.Source: a sweep lists its folder once, not once per run
_RECENT_SIZE = 8


def register(name: str, factory) -> None:
    """Makes --dataset=name (and get(name)) build factory(options), a Source."""
    _FACTORIES[name] = factory


def register_prefix(prefix: str, factory) -> None:
    """Makes --dataset=<prefix>REST build factory(REST, options)."""
    _PREFIXES[prefix] = factory


def names() -> tuple:
    """The registered --dataset names (prefixes and module:Source aside)."""
    return tuple(_FACTORIES)


def get(dataset: str, options: source_lib.Options = source_lib.DEFAULTS) -> source_lib.Source:
    """The Source a --dataset names.

    Raises:
      errors.Error: an unknown name, or a module:Source that cannot be imported or is no Source.
    """
    key = (dataset, options)
    if key in _RECENT:
        return _RECENT[key]
    source = _build(dataset, options)
    if len(_RECENT) >= _RECENT_SIZE:
        del _RECENT[next(iter(_RECENT))]
    _RECENT[key] = source
    return source


def check_name(dataset: str) -> None:
    """Raises errors.Error unless --dataset names a source, without importing a user's module."""
    if dataset in _FACTORIES or _split_prefix(dataset) or _is_module_spec(dataset):
        return
    raise errors.Error(
        f"--dataset={dataset}: unknown; use one of {', '.join(_FACTORIES)} (folder: with "
        f"--data_dir=<a folder with one subfolder of images per class>), {TFDS_PREFIX}NAME (a "
        "tensorflow-datasets image-classification set) or module:Source (your own source class)."
    )


def is_user_data(dataset: str) -> bool:
    """Data whose classes come from the data itself (a hierarchy file may order them)."""
    return dataset == FOLDER or dataset.startswith(TFDS_PREFIX) or _is_module_spec(dataset)


def _split_prefix(dataset: str):
    for prefix, factory in _PREFIXES.items():
        if dataset.startswith(prefix) and len(dataset) > len(prefix):
            return factory, dataset[len(prefix) :]
    return None


def _is_module_spec(dataset: str) -> bool:
    module, _, attribute = dataset.partition(":")
    return bool(module and attribute) and all(part.isidentifier() for part in module.split(".") + [attribute])


def _build(dataset: str, options: source_lib.Options) -> source_lib.Source:
    if dataset in _FACTORIES:
        return _FACTORIES[dataset](options)
    prefixed = _split_prefix(dataset)
    if prefixed:
        factory, rest = prefixed
        return factory(rest, options)
    check_name(dataset)
    module_name, _, attribute = dataset.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's module: a syntax error or anything it raises is the flag's
        raise errors.Error(
            f"--dataset={dataset}: cannot import {module_name} ({errors.first_line(err)}); fix it, or put it on "
            "PYTHONPATH."
        ) from None
    factory = getattr(module, attribute, None)
    if factory is None:
        raise errors.Error(f"--dataset={dataset}: {module_name} has no {attribute}.")
    if not isinstance(factory, source_lib.Source) and not callable(factory):
        raise errors.Error(
            f"--dataset={dataset}: {attribute} is a {type(factory).__name__}, not a Source class, instance or "
            "function; name a maxl_tf.data.Source subclass."
        )
    try:
        source = factory if isinstance(factory, source_lib.Source) else factory(options)
    except errors.Error:
        raise
    except Exception as err:
        raise errors.Error(f"--dataset={dataset}: {attribute}(options) failed: {errors.first_line(err)}") from None
    if not isinstance(source, source_lib.Source):
        raise errors.Error(
            f"--dataset={dataset}: {attribute} gave a {type(source).__name__}, not a maxl_tf.data.Source; "
            "subclass Source (maxl_tf/data/source.py says what it implements)."
        )
    name = getattr(source, "name", "")
    if not name:
        raise errors.Error(f"--dataset={dataset}: the source has no name; set its `name` attribute.")
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise errors.Error(
            f"--dataset={dataset}: the source's name {name!r} is not a plain file name (it starts the run "
            "folder's name under runs/); use letters, digits and ._- only, not starting with '.'."
        )
    return UserSource(source, dataset)


# A module:Source's name starts the default run folder's name (runs/<name>_pri...): one file-name
# part of letters, digits and ._-, never a path (tfds:NAME's names are made so by tfds.py).
_SAFE_NAME = re.compile(r"\w[\w.-]*", re.ASCII)


class UserSource(source_lib.Source):
    """A module:Source, each of whose methods' failures is one line naming --dataset (the user's
    code raising anything, identity() giving what JSON cannot hold); its other attributes are the
    source's own (`source` is the source itself)."""

    def __init__(self, source: source_lib.Source, dataset: str):
        self.source, self.dataset = source, dataset
        self.name = source.name
        self.augmentation = source.augmentation

    def __getattr__(self, attribute):  # only for what __init__ did not set
        if attribute in ("source", "dataset"):
            raise AttributeError(attribute)
        return getattr(self.source, attribute)

    def _call(self, method: str):
        try:
            return getattr(self.source, method)()
        except errors.Error:
            raise
        except Exception as err:
            raise errors.Error(
                f"--dataset={self.dataset}: its {method}() failed: {errors.first_line(err)}; fix the source."
            ) from None

    def levels(self):
        return self._call("levels")

    def identity(self) -> dict:
        identity = self._call("identity")
        try:
            # A run records it in results.json and compares the saved copy with a fresh one: give
            # the JSON form (tuples become lists), so the two compare equal.
            return json.loads(json.dumps(identity, allow_nan=False))
        except (TypeError, ValueError) as err:
            raise errors.Error(
                f"--dataset={self.dataset}: its identity() gave what JSON cannot hold ({errors.first_line(err)}); "
                "return a dict of strings, numbers, lists and dicts."
            ) from None

    def find(self) -> None:
        return self._call("find")

    def load(self):
        return self._call("load")


for _name, _factory in (
    *cifar.SOURCES.items(),
    *mnist.SOURCES.items(),
    ("digits", digits.Digits),
    (FOLDER, folder.Folder),
):
    register(_name, _factory)
register_prefix(TFDS_PREFIX, tfds.TfdsSource)
