"""The files that use a trained MAXL's networks without maxl_tf: what a command-line run leaves in
its log directory and what `MAXL.export(path)` writes, one function for both (write_into).

    evaluator.keras    raw pixels [N, H, W, C] (float32 0..255; uint8 arrays are cast) ->
                       [principal probabilities [N, pri], auxiliary head's probabilities [N, aux]]
                       (the principal alone, single-task); keras.saving.load_model in any process
    generator.keras    the label generator (MAXL's labels): raw pixels -> its logits [N, aux]
    serving/           a SavedModel: tf.saved_model.load(path).serve(images), images [N, h, w, C]
                       uint8 or float32 0..255 of any size h x w, resized to H x W as predict
                       resizes (RESIZE); returns {"principal": [N, pri] probabilities,
                       "auxiliary": [N, aux] probabilities within the predicted principal class's
                       block} ("auxiliary" absent for single-task); .preprocessing() returns the
                       input size and the resize method
    classes.json       {"principal": names, "auxiliary": names in psi's block order}, null where
                       the data has no names or the classes are learned (MAXL)
    preprocessing.json {"input_shape": [H, W, C], "pixels": ..., "resize": RESIZE}

The auxiliary probabilities are the auxiliary labeller's, as maxl_tf.visualise shows them: the
generator's for MAXL (the labels it taught the evaluator), the evaluator's auxiliary head for the
human, random and prototypical baselines.
"""

import json
import os

import keras
import tensorflow as tf

from maxl_tf.core import losses
from maxl_tf.core import psi as psi_lib
from maxl_tf.models import pixels
from maxl_tf.models import vgg

EVALUATOR = "evaluator.keras"
GENERATOR = "generator.keras"
SERVING = "serving"
CLASSES = "classes.json"
PREPROCESSING = "preprocessing.json"
# data/images.to_shape's resize, which predict and training's size policy use.
RESIZE = "bilinear with antialiasing (tf.image.resize(antialias=True)), rounded and clipped to 0..255"
PIXELS = "uint8, or float32 0..255 (raw pixels, channels last)"


def _resized(images, size):
    """[N, h, w, C] float32 -> [N, H, W, C], as data/images.to_shape resizes one image."""

    def resize():
        out = tf.image.resize(images, size, antialias=True)
        return tf.clip_by_value(tf.round(out), 0.0, 255.0)

    same = tf.logical_and(tf.shape(images)[1] == size[0], tf.shape(images)[2] == size[1])
    return tf.cond(same, lambda: images, resize)


def serving_function(evaluator: keras.Model, generator: keras.Model | None, psi):
    """images [N, h, w, C] (uint8, or floats 0..255) -> {"principal": [N, pri], "auxiliary":
    [N, aux]} probabilities, from the exported networks (raw_pixel_model): serving/'s endpoint
    and predict's, one function. Images of another size than the evaluator's are resized; floats
    outside 0..255 (or NaN) are refused with one line."""
    mask_table = tf.constant(psi_lib.mask(psi)) if psi else None
    size = tuple(evaluator.input_shape[1:3])

    def serve(images):
        images = tf.convert_to_tensor(images)
        pixels_in = tf.cast(images, tf.float32)
        if images.dtype != tf.uint8:
            in_range = tf.reduce_all((pixels_in >= 0.0) & (pixels_in <= 255.0))  # False for NaN
            check = tf.debugging.Assert(in_range, ["serve: images must be uint8, or floats 0..255 (raw pixels)"])
            with tf.control_dependencies([check]):
                pixels_in = tf.identity(pixels_in)
        pixels_in = _resized(pixels_in, size)
        outputs = evaluator(pixels_in, training=False)
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        served = {"principal": outputs[0]}
        if mask_table is None:
            return served
        mask = tf.gather(mask_table, tf.argmax(outputs[0], axis=-1))  # [N, aux]
        if generator is not None:
            logits = tf.cast(generator(pixels_in, training=False), tf.float32)
            served["auxiliary"] = losses.masked_softmax(logits, mask)
        elif len(outputs) > 1:  # the auxiliary head's softmax, renormalised within the block: its masked softmax
            within = outputs[1] * mask
            served["auxiliary"] = within / tf.reduce_sum(within, axis=-1, keepdims=True)
        return served

    return serve


def portable(network: keras.Model, weights: bool = True) -> keras.Model:
    """The network with Keras' own layers in place of maxl_tf's (vgg.Conv2D, vgg.BatchNormalization:
    the same configuration and weights; pixels.Normalise: Rescaling), so that its .keras file loads
    in a process that never imported maxl_tf: Keras imports no module a file names.

    Every layer is rebuilt from its config, as loading the .keras file will: weights=False only
    checks that it can be (backbones.check_exportable, before a run trains), without copying them."""
    ours = {vgg.Conv2D: keras.layers.Conv2D, vgg.BatchNormalization: keras.layers.BatchNormalization}

    def keras_layer(layer):
        if isinstance(layer, pixels.Normalise):
            return layer.as_rescaling()
        return ours.get(type(layer), type(layer)).from_config(layer.get_config())

    copy = keras.models.clone_model(network, clone_function=keras_layer)
    if weights:
        copy.set_weights(network.get_weights())
    return copy


def raw_pixel_model(network: keras.Model, probabilities: bool) -> keras.Model:
    """The portable network (raw pixels in, as every network takes them); with probabilities,
    softmax outputs."""
    network = portable(network)
    if not probabilities:
        return network
    outputs = network.outputs
    outputs = [keras.layers.Softmax(dtype="float32", name=f"probabilities_{i}")(o) for i, o in enumerate(outputs)]
    return keras.Model(network.inputs, outputs, name=network.name)


def write_into(folder: str, evaluator, generator, psi, class_names: dict | None = None) -> None:
    """Writes the files of this module's docstring into an existing folder.

    Args:
      evaluator, generator: the trained networks (generator None but for MAXL's labels); each
        takes raw pixels of one known size.
      psi: the run's psi; empty for single-task.
      class_names: {"principal": names or None, "auxiliary": names or None}; None: no names.
    """
    input_shape = tuple(evaluator.input_shape[1:])
    evaluator = raw_pixel_model(evaluator, probabilities=True)
    evaluator.save(os.path.join(folder, EVALUATOR))
    if generator is not None:
        generator = raw_pixel_model(generator, probabilities=False)
        generator.save(os.path.join(folder, GENERATOR))
    preprocessing = {"input_shape": list(input_shape), "pixels": PIXELS, "resize": RESIZE}
    serve = tf.function(serving_function(evaluator, generator, psi))
    for dtype in (tf.uint8, tf.float32):  # one endpoint, a concrete function per input dtype
        serve.get_concrete_function(tf.TensorSpec([None, None, None, input_shape[-1]], dtype, name="images"))
    # Not archive.track(network): that adds each Keras variable beside the tf.Variable the endpoint
    # captures, and the SavedModel would store every weight twice. The endpoint's own variables
    # are all that serve() (and TFLite's converter) need.
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serve", serve)
    height, width, channels = input_shape
    described = {"height": height, "width": width, "channels": channels, "pixels": PIXELS, "resize": RESIZE}
    archive.add_endpoint("preprocessing", lambda: {k: tf.constant(v) for k, v in described.items()}, input_signature=[])
    archive.write_out(os.path.join(folder, SERVING), verbose=False)
    for name, content in (
        (CLASSES, class_names or {"principal": None, "auxiliary": None}),
        (PREPROCESSING, preprocessing),
    ):
        with open(os.path.join(folder, name), "w") as f:
            f.write(json.dumps(content, indent=1))
