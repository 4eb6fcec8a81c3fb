"""Classify images with a finished run: python -m maxl_tf.predict --logdir=runs/<run> IMAGE...

Prints one line per image: the principal class (by name where the data set has names) with its
probability, then the auxiliary class with its probability within the predicted principal class's
block. The auxiliary class is the one the run's auxiliary labeller gives: the generator's learned
label for MAXL runs (numbered within its block: MAXL's classes have no names), the evaluator's
auxiliary head for the human, random and prototypical baselines (human runs name it where the
data names its classes); single-task runs have no auxiliary task. Images are sized and given
channels as the run's training images were. Everything comes from the run's exports
(maxl_tf/experiment/exports.py); the data set is not needed. Every image's header is read before
TensorFlow starts, and an image of more pixels than --max_image_pixels (default: the run's own)
is refused by name before any is decoded, as training does; networks that do not fit the run's
config.json (a file copied in from another run) are refused by name too.

The networks are read from the run's .keras files in Keras' safe mode, which refuses Python code
(lambda layers) in them, with the project's own layers as the only custom ones: a run directory
from elsewhere cannot make this command run code. The serving/ SavedModel is not used here: a
SavedModel is a TensorFlow graph, and loading one runs whatever it holds.
"""

import dataclasses
import json
import os

from absl import flags

from maxl_tf import cli
from maxl_tf import errors
from maxl_tf import runtime
from maxl_tf.core import methods
from maxl_tf.data import folder
from maxl_tf.data import images as images_lib
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import rundir

FLAGS = flags.FLAGS


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise errors.Error(f"{path} is unreadable ({errors.first_line(e)}); train the run again.") from None


def _load_network(path: str):
    """A .keras file in Keras' safe mode: no lambda layers, no code; the project's layers are
    registered (maxl_tf.models)."""
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as e:  # Keras raises ValueError, TypeError, OSError, zipfile errors...
        raise errors.Error(
            f"{path} cannot be loaded in Keras' safe mode ({errors.first_line(e, 200)}); it is not "
            f"a network this project exported: train the run again."
        ) from None


def _repair_command(logdir: str, recorded: str | None = None) -> str:
    """The command that writes the exports of the run in logdir again, in logdir. Its flags.cfg
    holds the --logdir it was trained in (`recorded`), which is not logdir once the folder was
    moved or copied: then --logdir=logdir follows it (the last value counts)."""
    command = f"python main.py --flagfile={os.path.join(logdir, 'flags.cfg')}"
    if recorded is None or os.path.abspath(recorded) != os.path.abspath(logdir):
        command += f" --logdir={logdir}"
    return command + " --export"


def _finished_run(logdir: str) -> config_lib.Config:
    """The Config of the finished, exported run in logdir. Reads files only, no TensorFlow, so that
    main can refuse a wrong --logdir before starting it."""
    if not os.path.isfile(os.path.join(logdir, "config.json")):
        raise errors.Error(
            f"--logdir={logdir} is not a maxl_tf run directory (no config.json); pass the "
            "--logdir of a run that main.py trained, e.g. runs/<name>."
        )
    config = config_lib.Config.from_saved(_read_json(os.path.join(logdir, "config.json")))
    recorded, config = config.logdir, dataclasses.replace(config, logdir=logdir)
    if not rundir.exports_intact(config):
        raise errors.Error(
            f"--logdir={logdir} has no complete exported networks (they are written when the last "
            f"epoch ends, unless --noexport): run {_repair_command(logdir, recorded)}, which finishes the run "
            "or writes them from its final checkpoint."
        )
    return config


def check_headers(paths, max_pixels: int) -> None:
    """Refuses, from its header and before anything is decoded, an image that is not one or has
    more than max_pixels pixels (--max_image_pixels), as training does (data/images.py), or whose
    name is not UTF-8 (TensorFlow, which decodes them, takes UTF-8 paths only)."""
    for path in paths:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise errors.Error(f"{shown}: its name is not valid UTF-8, so it cannot be read; rename it.") from None
    folder.read_headers(paths, max_pixels)


def predict(logdir: str, paths, max_pixels: int = 0) -> tuple:
    """The run's predictions for image files.

    Returns:
      (the run's Config, predictions); per image {"path", "principal": class index, "principal_name": name or None,
      "principal_probability", and, unless single-task, "auxiliary": class index (in psi's block
      layout), "auxiliary_in_block": its rank within the block, "auxiliary_name": name or None,
      "auxiliary_probability"}.
    Raises:
      errors.Error: logdir holds no finished run, its networks do not fit its config.json, or an
        image is missing, undecodable or of more pixels than max_pixels (0: the run's own
        --max_image_pixels).
    """
    config = _finished_run(logdir)
    images_lib.require_files(paths)  # before the networks load
    check_headers(paths, max_pixels or config.max_image_pixels)
    return config, _predictions(config, paths)


def _predictions(config: config_lib.Config, paths) -> list:
    """predict's per-image results, for a run that _finished_run checked and files that exist."""
    import numpy as np
    import tensorflow as tf  # after runtime.start_tensorflow, when run as a command

    from maxl_tf.core import hierarchy
    from maxl_tf.experiment import exports
    from maxl_tf.models import export as export_lib

    logdir = config.logdir
    names = _read_json(os.path.join(logdir, exports.CLASSES))
    evaluator = _load_network(os.path.join(logdir, exports.EVALUATOR))
    method = methods.get(config.method)
    generator = _load_network(os.path.join(logdir, exports.GENERATOR)) if method.learned else None
    psi = config.psi if method.auxiliary else ()
    _check_fits(config, evaluator, generator, names)
    _, height, _, channels = evaluator.input_shape
    serve = export_lib.serving_function(evaluator, generator, psi)
    outputs = serve(tf.constant(images_lib.load_images(paths, height, channels)))
    principal = outputs["principal"].numpy()
    offsets = hierarchy.block_offsets(config.psi) if method.auxiliary else None
    results = []
    for i, path in enumerate(paths):
        label = int(np.argmax(principal[i]))
        result = {
            "path": path,
            "principal": label,
            "principal_probability": float(principal[i, label]),
            "principal_name": names["principal"][label] if names["principal"] else None,
        }
        if "auxiliary" in outputs:
            auxiliary = outputs["auxiliary"][i].numpy()
            aux = int(np.argmax(auxiliary))
            result.update(
                auxiliary=aux,
                auxiliary_in_block=aux - int(offsets[label]),
                auxiliary_probability=float(auxiliary[aux]),
                auxiliary_name=names["auxiliary"][aux] if names["auxiliary"] else None,
            )
        results.append(result)
    return results


def _shapes(network, which: str) -> list:
    """A network's input or output shapes, one per input or output ([] if it cannot say)."""
    try:
        shape = getattr(network, which + "_shape")
    except (AttributeError, ValueError):
        return []
    return [tuple(s) for s in shape] if isinstance(shape, list) else [tuple(shape)]


def _check_fits(config: config_lib.Config, evaluator, generator, names) -> None:
    """Raises errors.Error unless the networks and classes.json are the ones config.json describes
    (a file copied in from another run, its manifest rewritten, would fail deep in TensorFlow)."""
    from maxl_tf.experiment import exports

    logdir = config.logdir
    fix = (
        "the run's files do not belong together (one copied from another run?): restore the run's own, or "
        f"delete it and write the exports again from the run's final checkpoint: {_repair_command(logdir)}."
    )
    psi = tuple(config.psi) if methods.get(config.method).auxiliary else ()
    if psi and (len(psi) != config.pri or sum(psi) != config.aux):
        raise errors.Error(
            f"{os.path.join(logdir, 'config.json')}: psi {list(psi)} does not fit --pri={config.pri} "
            f"--aux={config.aux}; train the run again."
        )
    want = [config.pri] + ([sum(psi)] if psi else [])
    inputs, outputs = _shapes(evaluator, "input"), _shapes(evaluator, "output")
    got = [shape[-1] if shape else None for shape in outputs]
    image = inputs[0] if len(inputs) == 1 else None
    if not (image and len(image) == 4 and image[1] and image[1] == image[2] and image[3] in (1, 3)):
        raise errors.Error(
            f"{os.path.join(logdir, exports.EVALUATOR)} takes {inputs}, not one batch of square 1- or 3-channel "
            f"images; {fix}"
        )
    if got[: len(want)] != want or (not psi and len(got) != 1):
        raise errors.Error(
            f"{os.path.join(logdir, exports.EVALUATOR)} gives {got} classes where config.json says "
            f"{want} (--pri{', --aux' if psi else ''}); {fix}"
        )
    if generator is not None:
        gen_in, gen_out = _shapes(generator, "input"), _shapes(generator, "output")
        if len(gen_in) != 1 or gen_in[0] != image or len(gen_out) != 1 or gen_out[0][-1] != sum(psi):
            raise errors.Error(
                f"{os.path.join(logdir, exports.GENERATOR)} maps {gen_in} to {gen_out}, where config.json and "
                f"{exports.EVALUATOR} say {image} to {sum(psi)} auxiliary classes; {fix}"
            )
    for key, count in (("principal", config.pri), ("auxiliary", sum(psi))):
        listed = names.get(key) if isinstance(names, dict) else ()
        if listed is not None and not (isinstance(listed, list) and len(listed) == count):
            raise errors.Error(
                f"{os.path.join(logdir, exports.CLASSES)}: its {key} names are not a list of {count}, as "
                f"config.json's classes; {fix}"
            )


def describe(result: dict, psi, method: str) -> str:
    """One line of output for one image."""
    label = result["principal"]
    principal = result["principal_name"] or f"class {label}"
    line = f"{result['path']}: {principal} ({result['principal_probability']:.1%})"
    if "auxiliary" not in result:
        return line
    block = f"{result['auxiliary_in_block'] + 1} of {principal}'s {psi[label]}"
    name = f"{result['auxiliary_name']}, " if result["auxiliary_name"] else ""
    origin = methods.get(method).label_origin
    return f"{line}; auxiliary {result['auxiliary']} ({name}{block}; {origin}) ({result['auxiliary_probability']:.1%})"


def main(argv):
    paths = argv[1:]
    if not FLAGS.logdir:
        raise errors.Error("--logdir is required: the log directory of a finished run, e.g. runs/<name>.")
    if not paths:
        raise errors.Error("pass one or more image files after the flags, e.g. photo.jpg.")
    folders = [path for path in paths if os.path.isdir(path)]
    if folders:
        raise errors.Error(
            f"{folders[0]} is a folder; predict takes image files (PNG, JPEG, BMP, GIF): pass them, "
            f"e.g. {os.path.join(folders[0], '*.jpg')}."
        )
    # predict's checks, before TensorFlow starts: a wrong --logdir or image path fails at once.
    config = _finished_run(FLAGS.logdir)
    images_lib.require_files(paths)
    if FLAGS.max_image_pixels < 0:
        raise errors.Error(
            f"--max_image_pixels={FLAGS.max_image_pixels}: must not be negative (0: the run's own limit)."
        )
    check_headers(paths, FLAGS.max_image_pixels or config.max_image_pixels)  # before any image is decoded
    runtime.start_tensorflow(deterministic=False)
    for result in _predictions(config, paths):
        print(describe(result, config.psi, config.method), flush=True)


def command() -> None:
    """maxl-tf predict and python -m maxl_tf.predict."""
    flags.DEFINE_string(
        "logdir",
        "",
        "Log directory of a finished run (its .keras files, read in Keras' safe mode, and classes.json).",
    )
    flags.DEFINE_integer(
        "max_image_pixels",
        0,
        "Refuse an image of more pixels than this from its header, before decoding it (a small PNG can hold "
        "gigabytes of pixels); 0: the run's own --max_image_pixels (config.json).",
    )
    cli.run(main)


if __name__ == "__main__":
    command()
