"""What a finished run leaves for using its networks after training.

    <logdir>/evaluator.keras   the evaluator: keras.saving.load_model, in any process (Keras'
                               own layers only: portable()); raw pixels [N, H, W, C] (uint8 or
                               0-255 floats) -> [principal probabilities [N, pri], auxiliary
                               head's probabilities [N, aux]] (the principal alone, single-task)
             generator.keras   the label generator (MAXL runs): raw pixels -> its logits
                               [N, aux] (the masked softmax over a principal class's block is
                               serving/'s "auxiliary")
             serving/          a SavedModel: tf.saved_model.load(path).serve(images), images uint8
                               [N, H, W, C] as the run's data set had them; returns
                               {"principal": [N, pri] probabilities,
                                "auxiliary": [N, aux] probabilities within the predicted principal
                                class's block} ("auxiliary" is absent for single-task runs)
             classes.json      {"principal": names, "auxiliary": names in psi's block order}, null
                               where the data has no names or the classes are learned (MAXL)

The auxiliary probabilities are the auxiliary labeller's, as maxl_tf.visualise shows them: the
generator's for MAXL (the labels it taught the evaluator), the evaluator's auxiliary head for the
human, random and prototypical baselines. They are written once, after the last epoch and before
results.json says the run is complete (the checkpoints already keep every epoch; an export takes
seconds): into a staging folder, flushed to disk, then renamed into place, and exports.json
(each file's size) last. A rerun of a complete run whose exports are missing or cut short writes
them again from the final checkpoint (rundir.exports_intact, train.train_and_evaluate).
"""

import json
import os
import shutil

import keras
import tensorflow as tf

from maxl_tf.core import hierarchy
from maxl_tf.core import losses
from maxl_tf.data import pipeline as data_lib
from maxl_tf.experiment import rundir
from maxl_tf.models import vgg as models

EVALUATOR = rundir.EVALUATOR
GENERATOR = rundir.GENERATOR
SERVING = rundir.SERVING
CLASSES = rundir.CLASSES
STAGING = "exports.tmp"  # inside the log directory: renames into place stay on one file system


def serving_function(evaluator: keras.Model, generator: keras.Model | None, psi):
    """images [N, H, W, C] (uint8, or floats 0-255) -> {"principal": [N, pri], "auxiliary": [N, aux]}
    probabilities, from the exported networks (raw_pixel_model: raw pixels in, the evaluator's
    outputs probabilities): the serving SavedModel's endpoint and predict's, one function."""
    mask_table = tf.constant(hierarchy.psi_mask(psi)) if psi else None

    def serve(images):
        pixels = tf.cast(images, tf.float32)
        outputs = evaluator(pixels, training=False)
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        served = {"principal": outputs[0]}
        if mask_table is None:
            return served
        mask = tf.gather(mask_table, tf.argmax(outputs[0], axis=-1))  # [N, aux]
        if generator is not None:
            served["auxiliary"] = losses.masked_softmax(tf.cast(generator(pixels, training=False), tf.float32), mask)
        elif len(outputs) > 1:  # the auxiliary head's softmax, renormalised within the block: its masked softmax
            within = outputs[1] * mask
            served["auxiliary"] = within / tf.reduce_sum(within, axis=-1, keepdims=True)
        return served

    return serve


def portable(network: keras.Model) -> keras.Model:
    """The network with Keras' own Conv2D and BatchNormalization in place of models.py's faster
    ones (the same configuration and weights), so that its .keras file loads in a process that
    never imported maxl_tf: Keras imports no module a file names."""
    ours = {models.Conv2D: keras.layers.Conv2D, models.BatchNormalization: keras.layers.BatchNormalization}

    def keras_layer(layer):
        return ours.get(type(layer), type(layer)).from_config(layer.get_config())

    copy = keras.models.clone_model(network, clone_function=keras_layer)
    copy.set_weights(network.get_weights())
    return copy


def raw_pixel_model(network: keras.Model, input_shape, probabilities: bool) -> keras.Model:
    """The portable network behind the pipeline's normalisation (data/pipeline.normalise, as a
    Keras Rescaling layer), so that it takes raw pixels; with probabilities, softmax outputs."""
    pixels = keras.Input(tuple(input_shape), name="pixels")  # float32: uint8 arrays are cast, 0-255 floats kept
    normalised = keras.layers.Rescaling(
        1.0 / (255.0 * data_lib.PIXEL_STD), offset=-data_lib.PIXEL_MEAN / data_lib.PIXEL_STD, name="normalise"
    )(pixels)
    outputs = portable(network)(normalised)
    if probabilities:
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        outputs = [keras.layers.Softmax(dtype="float32", name=f"probabilities_{i}")(o) for i, o in enumerate(outputs)]
    return keras.Model(pixels, outputs, name=network.name)


def write(
    logdir: str, evaluator: keras.Model, generator: keras.Model | None, psi, input_shape, class_names: dict
) -> None:
    """Writes the .keras files, the serving SavedModel and classes.json into logdir, each whole
    or not at all (rundir.publish_exports).

    Args:
      generator: the MAXL generator, else None.
      psi: the run's psi; empty for single-task runs.
      input_shape: (H, W, C) of the run's images.
      class_names: inputs.RunData.class_names.
    Raises:
      errors.Error: logdir cannot be written (read-only, full disk).
    """
    staging = os.path.join(logdir, STAGING)
    with rundir.storing("the exported networks", logdir):
        shutil.rmtree(staging, ignore_errors=True)  # a killed export's
        os.makedirs(staging)
        _write_into(staging, evaluator, generator, psi, input_shape, class_names)
        rundir.publish_exports(logdir, staging)


def _write_into(folder: str, evaluator, generator, psi, input_shape, class_names: dict) -> None:
    evaluator = raw_pixel_model(evaluator, input_shape, probabilities=True)
    evaluator.save(os.path.join(folder, EVALUATOR))
    if generator is not None:
        generator = raw_pixel_model(generator, input_shape, probabilities=False)
        generator.save(os.path.join(folder, GENERATOR))
    # Not archive.track(network): that adds each Keras variable beside the tf.Variable the endpoint
    # captures, and the SavedModel would store every weight twice. The endpoint's own variables
    # are all that serve() (and TFLite's converter) need.
    archive = keras.export.ExportArchive()
    archive.add_endpoint(
        "serve",
        serving_function(evaluator, generator, psi),
        input_signature=[tf.TensorSpec([None, *input_shape], tf.uint8, name="images")],
    )
    archive.write_out(os.path.join(folder, SERVING), verbose=False)
    rundir.write_atomically(os.path.join(folder, CLASSES), json.dumps(class_names, indent=1))
