"""maxl_tf: Meta Auxiliary Learning (MAXL) in TensorFlow 2 / Keras 3, from Python.

    import keras, maxl_tf
    psi = maxl_tf.psi.uniform(pri=10, aux=50)
    model = maxl_tf.MAXL(
        evaluator=maxl_tf.heads.multitask(backbone, pri=10, psi=psi),
        generator=maxl_tf.heads.generator(keras.models.clone_model(backbone), psi=psi), psi=psi)
    model.compile(evaluator_optimizer=keras.optimizers.SGD(0.01), generator_optimizer=keras.optimizers.SGD(1e-3))
    model.fit(train_ds, meta_data=meta_ds, callbacks=[maxl_tf.callbacks.LabelUsage()])

The names below resolve on first use (PEP 562): `import maxl_tf` starts no TensorFlow, so the
commands that only read runs (python -m maxl_tf.report) stay fast and TensorFlow-free.
"""

import importlib

__version__ = "0.1.0"

# Public name -> (module, attribute in it, or None for the module itself).
_PUBLIC = {
    "MAXL": ("maxl_tf.models.maxl", "MAXL"),
    "heads": ("maxl_tf.models.heads", None),
    "callbacks": ("maxl_tf.models.callbacks", None),
    "psi": ("maxl_tf.core.psi", None),
    "labels": ("maxl_tf.core.labels", None),
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
