"""maxl_tf: Meta Auxiliary Learning (MAXL) in TensorFlow 2 / Keras 3, from Python.

    import keras, maxl_tf
    psi = maxl_tf.psi.uniform(pri=10, aux=50)
    model = maxl_tf.MAXL(
        evaluator=maxl_tf.heads.multitask(backbone, pri=10, psi=psi),
        generator=maxl_tf.heads.generator(keras.models.clone_model(backbone), psi=psi), psi=psi)
    model.compile(optimizer=keras.optimizers.SGD(0.01), generator_optimizer=keras.optimizers.SGD(1e-3))
    model.fit(train_ds, meta_data=meta_ds, callbacks=[maxl_tf.callbacks.LabelUsage()])

The names below resolve on first use (PEP 562): `import maxl_tf` starts no TensorFlow, so the
commands that only read runs (python -m maxl_tf.report) stay fast and TensorFlow-free. Keras'
registry learns maxl_tf's classes (MAXL, the VGG layers) as soon as Keras is imported, before or
after maxl_tf, so `import maxl_tf; keras.models.load_model("m.keras")` loads a saved MAXL.
"""

import importlib
import importlib.abc
import importlib.util
import sys

from maxl_tf import runtime  # noqa: F401  before TensorFlow loads: its CPU kernels (runtime.py)

__version__ = "0.1.0"

# Public name -> (module, attribute in it, or None for the module itself).
_PUBLIC = {
    "MAXL": ("maxl_tf.models.maxl", "MAXL"),
    "heads": ("maxl_tf.models.heads", None),
    "callbacks": ("maxl_tf.models.callbacks", None),
    "psi": ("maxl_tf.core.psi", None),
    "pixels": ("maxl_tf.models.pixels", None),
    "labels": ("maxl_tf.core.labels", None),
    "methods": ("maxl_tf.core.methods", None),
    "Source": ("maxl_tf.data.source", "Source"),
    "registry": ("maxl_tf.data.registry", None),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'maxl_tf' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value = importlib.import_module(module)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


# Importing these registers every Keras class a saved MAXL names (MAXL imports the rest).
_REGISTERING = ("maxl_tf.models.maxl", "maxl_tf.models.export")


def _register_with_keras() -> None:
    for module in _REGISTERING:
        importlib.import_module(module)


class _RegisterWhenKerasLoads(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when `keras` is about to load, it wraps keras' loader so that, once
    keras has loaded, maxl_tf's Keras classes are registered; then it steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _RegisteringLoader(spec.loader)
        return spec


class _RegisteringLoader:
    """keras' own loader, and maxl_tf's registration once it has executed keras."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _register_with_keras()


if "keras" in sys.modules:
    _register_with_keras()
elif not any(isinstance(finder, _RegisterWhenKerasLoads) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenKerasLoads())
