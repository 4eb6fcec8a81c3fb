"""What a finished run leaves for using its networks after training.

    <logdir>/evaluator.keras   the evaluator: keras.saving.load_model, after `import maxl_tf.models`
                               (it registers the project's layers)
             generator.keras   the label generator (MAXL runs)
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

from maxl_tf import data as data_lib
from maxl_tf import hierarchy
from maxl_tf import losses
from maxl_tf import models
from maxl_tf import rundir

EVALUATOR = rundir.EVALUATOR
GENERATOR = rundir.GENERATOR
SERVING = rundir.SERVING
CLASSES = rundir.CLASSES
STAGING = "exports.tmp"  # inside the log directory: renames into place stay on one file system


def serving_function(evaluator: keras.Model, generator: keras.Model | None, psi):
    """images uint8 [N, H, W, C] -> {"principal": [N, pri], "auxiliary": [N, aux]} probabilities."""
    mask_table = tf.constant(hierarchy.psi_mask(psi)) if psi else None

    def serve(images):
        normalised = data_lib.normalise(images)
        pri_logits, aux_logits = models.evaluator_outputs(evaluator(normalised, training=False))
        principal = tf.nn.softmax(tf.cast(pri_logits, tf.float32))
        outputs = {"principal": principal}
        if generator is not None:
            aux_logits = generator(normalised, training=False)
        if aux_logits is not None:
            mask = tf.gather(mask_table, tf.argmax(principal, axis=-1))  # [N, aux]
            outputs["auxiliary"] = losses.masked_softmax(tf.cast(aux_logits, tf.float32), mask)
        return outputs

    return serve


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
    evaluator.save(os.path.join(folder, EVALUATOR))
    if generator is not None:
        generator.save(os.path.join(folder, GENERATOR))
    archive = keras.export.ExportArchive()
    archive.track(evaluator)
    if generator is not None:
        archive.track(generator)
    archive.add_endpoint(
        "serve",
        serving_function(evaluator, generator, psi),
        input_signature=[tf.TensorSpec([None, *input_shape], tf.uint8, name="images")],
    )
    archive.write_out(os.path.join(folder, SERVING), verbose=False)
    rundir.write_atomically(os.path.join(folder, CLASSES), json.dumps(class_names, indent=1))
