"""What a finished run leaves for using its networks after training: models/export.py's files
(evaluator.keras, generator.keras, serving/, classes.json, preprocessing.json), the same that
`MAXL.export` writes from Python.

They are written once, after the last epoch and before results.json says the run is complete
(the checkpoints already keep every epoch; an export takes seconds): into a staging folder,
flushed to disk, then renamed into place, and exports.json (each file's size) last. A rerun of a
complete run whose exports are missing or cut short writes them again from the final checkpoint
(rundir.exports_intact, train.train_and_evaluate).
"""

import os
import shutil

import keras

from maxl_tf.experiment import rundir
from maxl_tf.models import export as export_lib

EVALUATOR = rundir.EVALUATOR
GENERATOR = rundir.GENERATOR
SERVING = rundir.SERVING
CLASSES = rundir.CLASSES
STAGING = "exports.tmp"  # inside the log directory: renames into place stay on one file system


def write(logdir: str, evaluator: keras.Model, generator: keras.Model | None, psi, class_names: dict) -> None:
    """Writes the exports into logdir, each whole or not at all (rundir.publish_exports).

    Args:
      generator: the MAXL generator, else None.
      psi: the run's psi; empty for single-task runs.
      class_names: inputs.RunData.class_names.
    Raises:
      errors.Error: logdir cannot be written (read-only, full disk).
    """
    staging = os.path.join(logdir, STAGING)
    with rundir.storing("the exported networks", logdir):
        shutil.rmtree(staging, ignore_errors=True)  # a killed export's
        os.makedirs(staging)
        export_lib.write_into(staging, evaluator, generator, psi, class_names)
        rundir.publish_exports(logdir, staging)
