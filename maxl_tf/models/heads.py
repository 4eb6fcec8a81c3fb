"""MAXL's two networks over any Keras backbone: a multi-task evaluator and a label generator.

The backbone (functional, Sequential, subclassed, or keras.applications with include_top=False)
maps raw pixels (float32 0..255, models/pixels.py: it scales its own input, with a Rescaling
layer or pixels.Normalise) to a feature vector [batch, D] or a feature map [batch, H, W, C]. A feature map is
global-average-pooled, not flattened: the heads then have the same size whatever the input
resolution (ResNet50's 7x7x2048 map would give a flattened head 49 times larger), and it is what
keras.applications' own `pooling="avg"` classifiers do. VGG's 1x1 final map (models/vgg.py) is
the same either way.

VGG's networks (models/vgg.py) are built with the same heads (head, evaluator), named principal_*,
auxiliary_*, generator_*, so the steps find the shared trunk of any evaluator as "every variable
but the heads'" (core/evaluator.trunk_variable_indices), and the gradient-cosine diagnostic works
for any backbone. The generator's output is logits over sum(psi) classes; the masked softmax over
the principal class's block is applied where its labels are used (core/labels.py).
"""

import keras

from maxl_tf.core import psi as psi_lib


def _input_shape(backbone: keras.Model, input_shape):
    if input_shape is not None:
        return tuple(input_shape)
    try:
        inputs = backbone.inputs
    except (AttributeError, ValueError):
        inputs = None
    if inputs is None or len(inputs) != 1:
        raise ValueError(
            f"backbone {backbone.name!r} has no single known input; pass input_shape=(height, width, channels)"
        )
    return tuple(inputs[0].shape[1:])


def _features(backbone, input_shape, role: str):
    """(images input, feature vector) of the backbone called on a symbolic image batch."""
    if not isinstance(backbone, keras.layers.Layer):
        raise TypeError(f"backbone: a Keras model or layer, not {type(backbone).__name__}")
    images = keras.Input(_input_shape(backbone, input_shape), name="images")
    features = backbone(images)
    if not hasattr(features, "shape") or isinstance(features, (list, tuple, dict)):
        raise ValueError(f"backbone {backbone.name!r}: returns several outputs; the {role} needs one feature tensor")
    last = (getattr(backbone, "layers", None) or [None])[-1]
    if getattr(last, "activation", None) is keras.activations.softmax:
        raise ValueError(
            f"backbone {backbone.name!r}: ends in a softmax classifier ({last.name!r}); the {role} needs its "
            f"features, not class probabilities (keras.applications: include_top=False)"
        )
    if len(features.shape) not in (2, 4) or features.shape[-1] is None:
        raise ValueError(
            f"backbone {backbone.name!r}: its output has shape {tuple(features.shape)}; the {role} needs a "
            f"feature vector [batch, features] or a feature map [batch, height, width, channels] "
            f"(keras.applications: include_top=False)"
        )
    if len(features.shape) == 4:
        features = keras.layers.GlobalAveragePooling2D(name="trunk_features")(features)
    return images, features


def head(features, classes: int, name: str, hidden: int = 0, dtype: str | None = None):
    """One task's logits over shared features: the one head builder of VGG's networks and any
    backbone's, so both name their layers name_hidden / name_logits (checkpoints keep the names).

    Args:
      hidden: units of a ReLU layer before the logits; 0: a linear head.
      dtype: the layers' dtype policy; None: Keras' global one.
    """
    if hidden:
        features = keras.layers.Dense(hidden, activation="relu", name=name + "_hidden", dtype=dtype)(features)
    # Logits in float32 under mixed precision: the losses' softmax and its second derivatives.
    mixed = (dtype or keras.config.dtype_policy().name).startswith("mixed")
    return keras.layers.Dense(classes, name=name + "_logits", dtype="float32" if mixed else dtype)(features)


def evaluator(
    images, features, pri: int, aux: int, hidden: int = 0, dtype: str | None = None, name: str = "evaluator"
) -> keras.Model:
    """[principal logits, auxiliary logits] over shared features; aux=0: the principal alone, still
    a list. The one evaluator of VGG's networks, --model backbones and the Python API."""
    outputs = [head(features, pri, "principal", hidden, dtype)]
    if aux:
        outputs.append(head(features, aux, "auxiliary", hidden, dtype))
    return keras.Model(images, outputs, name=name)


def multitask(backbone, pri: int, psi, input_shape=None, hidden: int = 0, name: str = "evaluator") -> keras.Model:
    """The evaluator: backbone -> features -> [principal logits [batch, pri], auxiliary logits
    [batch, sum(psi)]] (paper Section 3.1), both heads on the backbone's shared features.

    Args:
      backbone: a Keras model returning a feature vector or map.
      pri: principal classes; psi: auxiliary classes per principal class (pri entries).
      input_shape: (H, W, C), needed where the backbone does not know its own (subclassed, or
        Sequential without an Input).
      hidden: units of a ReLU layer before each head's logits (VGG's heads have one as wide as
        the features); 0: linear heads.
    Raises:
      ValueError / TypeError naming the argument: a backbone that does not return features, a
      psi that does not match pri.
    """
    if int(pri) < 1:
        raise ValueError(f"pri={pri}: needs at least one principal class")
    psi = psi_lib.check(psi, int(pri))
    images, features = _features(backbone, input_shape, "evaluator")
    return evaluator(images, features, int(pri), sum(psi), hidden, name=name)


def single_task(backbone, pri: int, input_shape=None, hidden: int = 0, name: str = "evaluator") -> keras.Model:
    """A principal head alone, for the single-task baseline. Args as multitask's."""
    if int(pri) < 1:
        raise ValueError(f"pri={pri}: needs at least one principal class")
    images, features = _features(backbone, input_shape, "evaluator")
    return evaluator(images, features, int(pri), 0, hidden, name=name)


def generator(backbone, psi, input_shape=None, hidden: int = 0, name: str = "generator") -> keras.Model:
    """The label generator: backbone -> features -> logits [batch, sum(psi)]. Args as multitask's.

    Give it its own backbone (e.g. keras.models.clone_model(backbone)): MAXL refuses networks
    that share weights, since the meta step trains the generator alone.
    """
    psi = psi_lib.check(psi)
    images, features = _features(backbone, input_shape, "generator")
    return keras.Model(images, head(features, sum(psi), "generator", hidden), name=name)
