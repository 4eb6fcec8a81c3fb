"""--model=module:function: MAXL's two networks over any Keras backbone, from the command line.

The function gets the input shape (H, W, C) and returns a Keras backbone: a functional or
Sequential model from raw pixels (float32 0..255, the one input contract of models/pixels.py: it
scales its own input) to a feature vector or map (the exports are .keras files, which a
subclassed model cannot promise). keras.applications:NAME is called as
NAME(input_shape=..., include_top=False, weights="imagenet" or None), with ImageNet weights
unless --nopretrained: the applications that include their preprocessing (MobileNetV3,
EfficientNet, ConvNeXt, ...) take such pixels; the others' preprocess_input is not applied. Each network
calls the function once: the evaluator and the generator get backbones of their own. The heads
are models/heads.py's (linear, on global-average-pooled features).
"""

import importlib

import keras

from maxl_tf import errors
from maxl_tf.models import export
from maxl_tf.models import heads

APPLICATIONS = "keras.applications"


def _function(spec: str):
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's module: any failure to import it is the flag's
        raise errors.Error(
            f"--model={spec}: cannot import {module_name} ({errors.first_line(error)}); put its folder on PYTHONPATH."
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise errors.Error(f"--model={spec}: {module_name} has no function {function_name}.")
    return function


def backbone(spec: str, input_shape, pretrained: bool = True) -> keras.Model:
    """The backbone --model=spec names, built for images of input_shape.

    Raises:
      errors.Error: the module or function cannot be found, the function fails or returns no
        functional model, or ImageNet weights cannot be downloaded.
    """
    function = _function(spec)
    input_shape = tuple(int(n) for n in input_shape)
    applications = spec.startswith(APPLICATIONS + ":")
    try:
        if applications:
            network = function(input_shape=input_shape, include_top=False, weights="imagenet" if pretrained else None)
        else:
            network = function(input_shape)
    except Exception as error:  # the user's function, or keras.utils.get_file's bare Exception offline
        reason = errors.first_line(error)
        if applications and pretrained and ("URL" in reason or "fetch" in reason or "download" in reason.lower()):
            raise errors.Error(
                f"--model={spec}: cannot download its ImageNet weights ({reason}). Run once with internet "
                f"access (Keras keeps them in ~/.keras/models), or train from random weights with --nopretrained."
            ) from None
        raise errors.Error(f"--model={spec}: {spec.partition(':')[2]}({input_shape}) failed: {reason}") from None
    if not isinstance(network, keras.Model):
        raise errors.Error(
            f"--model={spec}: returned {type(network).__name__}; it must return a built functional or "
            f"Sequential keras.Model (start it with keras.Input(input_shape))."
        )
    try:
        known = network.inputs
    except (AttributeError, ValueError):
        known = None
    if not known:
        raise errors.Error(
            f"--model={spec}: returned a subclassed model; the command line needs a functional or Sequential "
            f"one, whose .keras export loads anywhere (start it with keras.Input(input_shape))."
        )
    if not applications:
        check_exportable(spec, network)
    return network


def _layers(network: keras.Model):
    """Every layer of a model, those of nested models included."""
    for layer in network.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


def check_exportable(spec: str, network: keras.Model) -> None:
    """Refuses, before any training, a backbone that the run's exports (evaluator.keras,
    generator.keras: models/export.py) could not hold, which would otherwise fail after the last
    epoch, on every rerun.

    A Lambda layer's code is refused by Keras' safe loading (predict, keras.saving.load_model), and
    a layer class that is not registered for saving cannot be rebuilt from its config; anything
    else the export's copy (export.portable) cannot rebuild fails here, as it would there.

    Raises:
      errors.Error: naming --model, the layer and the fix.
    """
    for layer in _layers(network):
        cls = type(layer)
        where = f"--model={spec}: layer {layer.name!r}"
        if isinstance(layer, keras.layers.Lambda):
            raise errors.Error(
                f"{where} is a Lambda, whose code the run's exported networks (evaluator.keras) cannot "
                f"hold: Keras refuses to load it. Use Keras' own layers (e.g. keras.layers.Rescaling) or a "
                f"layer class decorated with @keras.saving.register_keras_serializable()."
            )
        if cls.__module__.split(".")[0] in ("keras", "maxl_tf"):
            continue
        if keras.saving.get_registered_object(keras.saving.get_registered_name(cls)) is not cls:
            raise errors.Error(
                f"{where} is of class {cls.__module__}.{cls.__qualname__}, which is not registered for saving, "
                f"so the run's exported networks (evaluator.keras) could not be written; decorate the class "
                f"with @keras.saving.register_keras_serializable()."
            )
    try:
        export.portable(network, weights=False)
    except Exception as error:  # the user's layers' get_config/from_config: whatever they raise
        raise errors.Error(
            f"--model={spec}: the backbone cannot be rebuilt from its config, as the run's export "
            f"(evaluator.keras) must ({errors.first_line(error)}); give each layer class of your own a "
            f"get_config() that returns its constructor's arguments, and an __init__ that passes **kwargs on "
            f"to keras.layers.Layer."
        ) from None


def _checked(build, spec: str):
    try:
        return build()
    except (ValueError, TypeError) as error:
        raise errors.Error(f"--model={spec}: {errors.first_line(error)}") from None


def build_evaluator(spec: str, input_shape, pri: int, psi, pretrained: bool = True) -> keras.Model:
    """Multi-task evaluator over the backbone; psi empty: the principal head alone (single-task).
    Args as backbone's."""
    network = backbone(spec, input_shape, pretrained)
    if not psi:
        return _checked(lambda: heads.single_task(network, pri), spec)
    return _checked(lambda: heads.multitask(network, pri, psi), spec)


def build_generator(spec: str, input_shape, psi, pretrained: bool = True) -> keras.Model:
    return _checked(lambda: heads.generator(backbone(spec, input_shape, pretrained), psi), spec)
