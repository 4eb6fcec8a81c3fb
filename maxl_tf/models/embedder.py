"""The image embedder of the Prototypical-net baseline (paper Section 4.1).

The paper embeds images "using a pre-trained ImageNet network" without naming it; we use
keras.applications' VGG16 (the paper's own trunk family), without its classifier, globally
average-pooled to a 512-d embedding. --embedder picks what is used:

  imagenet        VGG16 with ImageNet weights (downloaded once into ~/.keras/models)
  untrained       the same network with random weights: an explicit opt-in for offline demos and
                  tests, whose labels are a clustering by a random network, not the paper's baseline
  <file>.keras    a saved Keras model; it receives float32 pixels in [0, 255] resized to its
                  input size and must do its own preprocessing; its output, flattened, is the embedding

Offline, imagenet fails with one message naming the fixes; --embedder_fallback=untrained asks
for the untrained network instead, and the description says so.
"""

import dataclasses
import os
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from maxl_tf import errors
from maxl_tf.models.names import IMAGENET
from maxl_tf.models.names import UNTRAINED

VGG16_MIN_SIZE = 32  # keras.applications.VGG16's smallest input without its top
VGG16_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
CHUNK = 256  # images per forward pass: bounds memory for any data set size


@dataclasses.dataclass(frozen=True)
class Embedder:
    """A network in inference mode and how our images reach it.

    Attributes:
      model: maps prepared images to embeddings.
      prepare: [B, H, W, C] float32 pixels in [0, 255] -> the model's input.
      description: what was actually used, for the log and results.json.
    """

    model: keras.Model
    prepare: Callable
    description: str


def _match_channels(images, channels):
    if channels == 3 and images.shape[-1] == 1:
        return tf.image.grayscale_to_rgb(images)
    if channels == 1 and images.shape[-1] == 3:
        return tf.image.rgb_to_grayscale(images)
    return images


def _prepare_for_vgg16(images):
    """Grey to RGB, up to VGG16's minimum size, then its own (caffe) preprocessing."""
    size = max(VGG16_MIN_SIZE, images.shape[1], images.shape[2])
    images = tf.image.resize(_match_channels(images, 3), (size, size))
    return keras.applications.vgg16.preprocess_input(images)


def _vgg16(weights, seed: int) -> keras.Model:
    if weights is None:
        keras.utils.set_random_seed(seed)  # the untrained network's weights; train.py reseeds after
    return keras.applications.VGG16(weights=weights, include_top=False, input_shape=(None, None, 3), pooling="avg")


def _imagenet_error(reason: str) -> errors.Error:
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    cached = os.path.join(keras_home, "models", VGG16_WEIGHTS_FILE)
    return errors.Error(
        f"--embedder=imagenet: cannot load VGG16's ImageNet weights ({reason}). Fixes: run once with "
        f"internet access, or copy {VGG16_WEIGHTS_FILE} to {cached}; or pass --embedder=<a saved "
        f".keras model>; or ask for random weights explicitly with --embedder_fallback=untrained "
        f"(or --embedder=untrained), which is not the paper's baseline."
    )


def _saved_model(path: str) -> Embedder:
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # Keras raises ValueError, OSError, zipfile errors... for bad files
        raise errors.Error(
            f"--embedder={path}: cannot load this saved Keras model ({errors.first_line(e)}); "
            f"pass a .keras file written by model.save(), imagenet or untrained."
        ) from e
    input_shape = model.input_shape
    if not isinstance(input_shape, tuple) or len(input_shape) != 4:
        raise errors.Error(
            f"--embedder={path}: the model's input shape is {input_shape}; it must "
            f"take one image batch [batch, height, width, channels]."
        )
    _, height, width, channels = input_shape

    def prepare(images):
        images = _match_channels(images, channels)
        if height and width:
            images = tf.image.resize(images, (height, width))
        return images

    return Embedder(model, prepare, f"saved Keras model {os.path.abspath(path)}")


def load(spec: str, fallback: str = "none", seed: int = 0) -> Embedder:
    """The embedder --embedder names; see the module docstring.

    Args:
      fallback: "untrained" replaces unavailable ImageNet weights by random ones; "none" raises.
      seed: seeds the untrained network's weights (sets Keras' global seed).

    Raises:
      errors.Error: the weights or the saved model cannot be loaded.
    """
    if spec == UNTRAINED:
        return Embedder(
            _vgg16(None, seed),
            _prepare_for_vgg16,
            f"untrained VGG16 (random weights, seed {seed}; --embedder=untrained)",
        )
    if spec != IMAGENET:
        return _saved_model(spec)
    try:
        return Embedder(_vgg16("imagenet", seed), _prepare_for_vgg16, "VGG16 with ImageNet weights")
    except Exception as e:  # keras.utils.get_file raises a bare Exception when the download fails
        if fallback != UNTRAINED:
            raise _imagenet_error(errors.first_line(e)) from e
        return Embedder(
            _vgg16(None, seed),
            _prepare_for_vgg16,
            f"UNTRAINED VGG16 (random weights, seed {seed}): the fallback asked for by "
            f"--embedder_fallback=untrained, because the ImageNet weights could not be "
            f"loaded ({errors.first_line(e)})",
        )


def embed(embedder: Embedder, images: np.ndarray) -> np.ndarray:
    """Embeddings of uint8 images [N, H, W, C] in [0, 255], in chunks of CHUNK. [N, D] float32

    Raises:
      errors.Error: the model cannot take these images (a saved model built for other inputs).
    """
    chunks = []
    for start in range(0, len(images), CHUNK):
        pixels = tf.cast(images[start : start + CHUNK], tf.float32)  # [B, H, W, C]
        try:
            outputs = embedder.model(embedder.prepare(pixels), training=False)
        except Exception as e:  # shape and dtype mismatches surface as many error types
            raise errors.Error(
                f"--embedder: {embedder.description} cannot embed images of shape "
                f"{images.shape[1:]} ({errors.first_line(e)}); pass a model for such images."
            ) from e
        chunks.append(np.reshape(keras.ops.convert_to_numpy(outputs), (len(pixels), -1)))  # [B, D]
    return np.concatenate(chunks).astype(np.float32)
