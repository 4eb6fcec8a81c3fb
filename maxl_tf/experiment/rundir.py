"""A run's log directory: what a run keeps there, the checks that protect it, and reading it back.

    <logdir>/flags.cfg        the resolved flags; --flagfile=<logdir>/flags.cfg replays the run
             config.json      the experiment; another experiment is refused once this one trained
             checkpoints/     after every epoch, and mid-epoch when stopped by a signal
             results.json     the history and the paper's metric, rewritten atomically each epoch
             events.out.*     TensorBoard summaries, with the run's hyperparameters (HParams)
             evaluator.keras, generator.keras, serving/, classes.json
                              the trained networks and class names, once complete (exports.py)
             exports.json     each exported file's size, written once they are all in place
             claims/          which worker of a sweep trains the run (maxl_tf/experiment/claims.py)

The training loop, sweeps, the report and the visualisations all go through here. TensorFlow is
imported only inside the functions that touch checkpoints, so that reading results (the report,
a sweep skipping complete runs) never starts it.
"""

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import stat
import sys
import zipfile

import numpy as np

from maxl_tf import errors
from maxl_tf.core import methods
from maxl_tf.experiment import claims
from maxl_tf.experiment import config as config_lib

LAST_EPOCHS_AVERAGED = config_lib.LAST_EPOCHS_AVERAGED
DATA_KEY = "data_identity"  # config.json's and results.json's record of the data a run saw

# A finished run's exports (exports.py writes them; named here so that reading a run needs no
# TensorFlow). EXPORTS_MANIFEST lists every exported file with its size.
EVALUATOR = "evaluator.keras"
GENERATOR = "generator.keras"
SERVING = "serving"
CLASSES = "classes.json"
EXPORTS_MANIFEST = "exports.json"


def write_atomically(path: str, text: str) -> None:
    """A reader sees the old file or the new one, never half of one, even after a crash; a failed
    write (a full disk) leaves the old file and no temporary one."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _is_storage_error(error: BaseException) -> bool:
    """An OSError, or a TensorFlow file-system error (a checkpoint or SavedModel write)."""
    if isinstance(error, OSError):
        return True
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(error, tf.errors.OpError)


@contextlib.contextmanager
def storing(what: str, directory: str):
    """Turns a failed write of `what` into `directory` (read-only, full disk, gone) into one
    errors.Error naming both; whatever was written before stays as it was."""
    try:
        yield
    except Exception as e:
        if not _is_storage_error(e):
            raise
        raise errors.Error(
            f"cannot write {what} into {directory} ({errors.first_line(e, 160)}); free space on its "
            f"disk or make it writable, then rerun the same command: it resumes from the last "
            f"checkpoint saved."
        ) from None


def _fsync_tree(path: str) -> None:
    """Flushes a file, or every file and folder under path, to the disk."""
    paths = [path]
    if os.path.isdir(path):
        paths = [os.path.join(folder, name) for folder, dirs, files in os.walk(path) for name in dirs + files]
        paths.append(path)
    for name in paths:
        fd = os.open(name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _export_sizes(logdir: str, names) -> dict:
    """{path relative to logdir: size} of every file under `names`."""
    sizes = {}
    for name in names:
        path = os.path.join(logdir, name)
        found = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        sizes.update({os.path.relpath(f, logdir): os.path.getsize(f) for f in sorted(found)})
    return sizes


def publish_exports(logdir: str, staging: str) -> None:
    """Moves the exports written into `staging` into logdir, then writes their manifest.

    Each file or folder is complete on disk (fsynced) before it is renamed into place, and the
    manifest comes last; results.json says the run is complete only after this returns. A kill at
    any moment leaves each export whole or absent, which exports_intact() tells apart.
    """
    names = sorted(os.listdir(staging))
    for name in names:
        _fsync_tree(os.path.join(staging, name))
    for name in names:
        target = os.path.join(logdir, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
    os.rmdir(staging)
    _fsync_tree(logdir)
    write_atomically(os.path.join(logdir, EXPORTS_MANIFEST), json.dumps(_export_sizes(logdir, names), indent=1))


def exports_intact(config: config_lib.Config) -> bool:
    """Whether a run's exports are all there and whole: each file the manifest lists, at its size.

    Runs exported before the manifest existed: each export present and each .keras file a whole
    zip archive. False sends a complete run back to train.train_and_evaluate, which writes the
    exports again from the final checkpoint.
    """
    logdir = config.logdir
    expected = [EVALUATOR, CLASSES, os.path.join(SERVING, "saved_model.pb")]
    if methods.get(config.method).learned:
        expected.append(GENERATOR)
    if not all(os.path.isfile(os.path.join(logdir, name)) for name in expected):
        return False
    try:
        with open(os.path.join(logdir, EXPORTS_MANIFEST)) as f:
            sizes = json.load(f)
    except FileNotFoundError:
        return all(zipfile.is_zipfile(os.path.join(logdir, name)) for name in expected if name.endswith(".keras"))
    except (OSError, ValueError):
        return False
    if not isinstance(sizes, dict):
        return False
    for name, size in sizes.items():
        try:
            if os.path.getsize(os.path.join(logdir, name)) != size:
                return False
        except (OSError, TypeError):
            return False
    return True


def _checkpoint_dir(logdir: str) -> str:
    return os.path.join(logdir, "checkpoints")


def holds_training(logdir: str) -> bool:
    """Whether a run in logdir got as far as saving anything it trained."""
    return os.path.isfile(os.path.join(logdir, "results.json")) or bool(
        glob.glob(os.path.join(_checkpoint_dir(logdir), "*"))
    )


def describe_data(identity: dict, where: bool = False) -> str:
    """A data identity (Source.identity) in a few words, for messages and reports: equal for the
    same data (same_data), so the report groups runs by it. A folder recorded with its content hash
    is described by that and its image count, not its path (a renamed folder holds the same data);
    where=True adds the path, for messages."""
    if not identity:
        return "data not recorded (a run of an older version)"
    if not isinstance(identity, dict):  # a hand-edited record
        return f"data {json.dumps(identity, default=str)[:80]}"
    kind = identity.get("kind", "data")
    if kind == "folder" and "content" in identity:
        described = f"folder of {identity.get('images')} images, content {str(identity['content'])[:16]}"
        return f"{described} at {identity.get('path')}" if where else described
    if kind == "folder":  # recorded before content hashes
        images, fingerprint = identity.get("images"), identity.get("fingerprint")
        return f"folder {identity.get('path')} ({images} images, fingerprint {fingerprint})"
    if kind == "archive":
        return "archives " + ", ".join(
            f"{p} ({s} bytes)" for p, s in zip(identity.get("paths", []), identity.get("sizes", []))
        )
    details = ", ".join(f"{k}={v}" for k, v in sorted(identity.items()) if k != "kind")
    return f"{kind} {details}"


_FOLDER_BEFORE_CONTENT = ("path", "fingerprint", "images")  # what a folder's record held before content hashes


def same_data(saved: dict | None, identity: dict | None) -> bool:
    """Whether a run recorded as having seen `saved` saw `identity`.

    A folder is the same data when its content hash and image count are (data/folder.py): its
    path, modification times and the link it was named through do not matter. A folder recorded
    before content hashes is compared as it was then: the same path, image count and fingerprint of
    sizes and modification times (resuming it records the content hash). Other data: the records
    are equal. A run without a record (older versions) or a caller without an identity cannot tell,
    and counts as the same.
    """
    if not saved or not identity:
        return True
    if isinstance(saved, dict) and isinstance(identity, dict) and saved.get("kind") == identity.get("kind") == "folder":
        if "content" in saved and "content" in identity:
            return saved["content"] == identity["content"] and saved.get("images") == identity.get("images")
        if "content" not in saved:
            return all(saved.get(k) == identity.get(k) for k in _FOLDER_BEFORE_CONTENT)
    return saved == identity


def _other_logdir(logdir: str, identity: dict | None) -> str:
    """A --logdir beside logdir, named after the data identity, for the refusal's advice (the
    default name would be the same directory when a path now holds other data, e.g. a re-pointed
    link)."""
    content = identity.get("content") if isinstance(identity, dict) else None
    digest = (
        str(content)[:8]
        if content
        else hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
    )
    return f"{logdir.rstrip(os.sep)}_data{digest}"


def _saved_identity(logdir: str):
    try:
        with open(os.path.join(logdir, "config.json")) as f:
            return json.load(f).get(DATA_KEY)
    except (OSError, ValueError, AttributeError):
        return None


def check(config: config_lib.Config, chief: bool = True, identity: dict | None = None) -> None:
    """Refuses a log directory this run must not write into; writes nothing.

    A directory that holds another experiment's training, unreadable config.json, or files of its
    own is refused; the claims/ of a sweep's worker, which claims the run before creating it, is not
    a file of its own. One whose run stopped before saving anything (bad data, a non-finite first
    epoch) holds nothing to lose, so any experiment may start there. chief=False (multi-worker
    workers other than the chief, which creates the directory) checks only an existing config.json,
    so every worker refuses a different experiment, not the chief alone.

    Raises:
      errors.Error: naming the directory and the way out.
    """
    logdir = config.logdir
    saved_path = os.path.join(logdir, "config.json")
    if os.path.isfile(saved_path):
        try:
            with open(saved_path) as f:
                saved = json.load(f)
            differences = [f"--{k}={there!r} there, {now!r} now" for k, there, now in config.differences(saved)]
        except (OSError, ValueError, TypeError, AttributeError):
            raise errors.Error(f"{saved_path} is unreadable; restore it, or pass a new --logdir.") from None
        saved_data = saved.get(DATA_KEY) if isinstance(saved, dict) else None
        if not same_data(saved_data, identity) and holds_training(logdir):
            raise errors.Error(
                f"--logdir={logdir} holds a run on other data: {describe_data(saved_data, where=True)}; this "
                f"run's is {describe_data(identity, where=True)}. Restore the data that run trained on to "
                f"resume it, or pass a new --logdir for this data (e.g. --logdir={_other_logdir(logdir, identity)})."
            )
        if differences and holds_training(logdir):
            raise errors.Error(
                f"--logdir={logdir} holds a different experiment ({'; '.join(differences)}). "
                f"Pass another --logdir, or rerun with that directory's flags: "
                f"--flagfile={os.path.join(logdir, 'flags.cfg')}."
            )
    elif chief and os.path.isdir(logdir) and set(os.listdir(logdir)) - {claims.CLAIMS_DIR}:
        raise errors.Error(
            f"--logdir={logdir} exists and is not a maxl_tf log directory (no config.json); "
            f"pass an empty or new --logdir."
        )
    check_checkpoint_index(_checkpoint_dir(logdir))


def create(config: config_lib.Config, identity: dict | None = None) -> None:
    """Creates the log directory with the run's flags.cfg and config.json (after check()); the
    config.json records the data's identity beside the flags."""
    try:
        os.makedirs(config.logdir, exist_ok=True)
        write_atomically(os.path.join(config.logdir, "flags.cfg"), config.to_flagfile())
        saved = json.loads(config.to_json())
        if identity:
            saved[DATA_KEY] = identity
        write_atomically(os.path.join(config.logdir, "config.json"), json.dumps(saved, indent=1, sort_keys=True))
    except OSError as e:
        raise errors.Error(
            f"--logdir={config.logdir} cannot be written ({e.strerror}); pass a writable --logdir."
        ) from None


def check_checkpoint_index(directory: str) -> None:
    """Refuses a checkpoint directory whose index is damaged or missing.

    tf.train.CheckpointManager treats an unparsable index as "no checkpoint" and would silently
    restart the run from scratch, overwriting what is there.
    """
    index = os.path.join(directory, "checkpoint")
    if not os.path.exists(index) and not glob.glob(os.path.join(directory, "ckpt-*.index")):
        return
    import tensorflow as tf

    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception:  # a text-proto parse error
        state = None
    if state is None or not state.model_checkpoint_path:
        raise errors.Error(
            f"checkpoint index {index} is missing or unreadable; restore it from a backup, "
            f"or delete {directory} to start over."
        )
    if not _existing_checkpoints(state):
        raise errors.Error(
            f"checkpoint index {index} lists {os.path.basename(state.model_checkpoint_path)}, whose "
            f"files are gone, and no earlier checkpoint; restore them from a backup, or delete "
            f"{directory} to start over."
        )


def _existing_checkpoints(state) -> list:
    """The checkpoints an index (a CheckpointState) lists whose files are there, oldest first."""
    listed = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    if state.model_checkpoint_path not in listed:
        listed.append(state.model_checkpoint_path)
    return [path for path in listed if os.path.isfile(path + ".index")]


def _repair_checkpoint_index(directory: str) -> None:
    """Makes the index name the newest checkpoint left, when its latest was deleted (as the
    damaged-checkpoint error advises), so the run resumes from there and not from scratch
    (tf.train.latest_checkpoint returns None for a latest whose files are gone); and removes the
    ckpt-N_temp folders a kill during a save leaves behind (a save writes there, then renames)."""
    import tensorflow as tf

    for temp in glob.glob(os.path.join(directory, "ckpt-*_temp")):
        shutil.rmtree(temp, ignore_errors=True)
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception:  # check_checkpoint_index has refused a damaged index before this
        return
    if state is None or os.path.isfile(state.model_checkpoint_path + ".index"):
        return
    existing = _existing_checkpoints(state)
    if not existing:
        return
    # The index is a text CheckpointState; the manager writes paths relative to the directory.
    # The timestamps stay: without them the manager would never rotate those checkpoints away.
    from google.protobuf import text_format

    stamps = dict(zip(state.all_model_checkpoint_paths, state.all_model_checkpoint_timestamps))
    state.model_checkpoint_path = os.path.basename(existing[-1])
    del state.all_model_checkpoint_paths[:], state.all_model_checkpoint_timestamps[:]
    state.all_model_checkpoint_paths.extend(os.path.basename(p) for p in existing)
    if all(p in stamps for p in existing):
        state.all_model_checkpoint_timestamps.extend(stamps[p] for p in existing)
    write_atomically(os.path.join(directory, "checkpoint"), text_format.MessageToString(state))


def checkpoint_manager(checkpoint, logdir: str, keep: int, worker: int | None = None):
    """A manager saving into logdir/checkpoints and keeping the newest `keep` there, or for
    worker i of a multi-worker run other than the chief, into logdir/workers/worker<i> (a
    multi-worker save is collective; only the chief's copy is the run's, and every worker
    resumes from it)."""
    import tensorflow as tf

    if worker is None:
        directory = _checkpoint_dir(logdir)
        _repair_checkpoint_index(directory)
    else:
        directory = os.path.join(logdir, "workers", f"worker{worker}")
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=keep)


def saved_variables(logdir: str) -> set | None:
    """The variable names in the run's latest checkpoint (state.TrainState.checkpoint asks which
    layout it has); None when there is none, or it cannot be read (restore says why)."""
    import tensorflow as tf

    path = tf.train.latest_checkpoint(_checkpoint_dir(logdir))
    if path is None:
        return None
    try:
        return {name for name, _ in tf.train.list_variables(path)}
    except Exception:  # damaged: restore() names it and the way back
        return None


def restore(checkpoint, logdir: str) -> bool:
    """Restores the run's latest checkpoint into `checkpoint`; False when there is none yet.

    Raises:
      errors.Error: the checkpoint is damaged (nothing is deleted: the message says what to delete).
    """
    import tensorflow as tf

    directory = _checkpoint_dir(logdir)
    path = tf.train.latest_checkpoint(directory)
    if path is None:
        return False
    try:
        checkpoint.restore(path).assert_existing_objects_matched()
    except Exception as e:  # the reader raises OpError, IndexError, ValueError... for damaged files
        if "incompatible tensor with shape" in str(e):  # it reads, but holds other networks
            raise errors.Error(
                f"checkpoint {path} holds networks of other shapes than this run builds "
                f"({errors.first_line(e, 160)}): the data changed since it was saved (the images' "
                f"size or channels, or the classes). Restore the data the run trained on, or pass a "
                f"new --logdir to train on this data."
            ) from None
        earlier = [p for p in _existing_checkpoints(tf.train.get_checkpoint_state(directory)) if p != path]
        way_back = (
            f"Delete {path}.* to resume from {os.path.basename(earlier[-1])}, the checkpoint before it, "
            f"or {directory} to start over."
            if earlier
            else f"No earlier checkpoint is kept: delete {directory} to start over."
        )
        raise errors.Error(f"checkpoint {path} is unreadable ({errors.first_line(e, 200)}). {way_back}") from None
    return True


def paper_metric(history: list) -> float | None:
    """The mean test accuracy of the last LAST_EPOCHS_AVERAGED tested epochs of a history (a
    complete run's last epochs are all tested: --eval_every), or None before any test."""
    tested = [record["test/acc"] for record in history if "test/acc" in record]
    return float(np.mean(tested[-LAST_EPOCHS_AVERAGED:])) if tested else None


def results_summary(
    config: config_lib.Config,
    name: str,
    history: list,
    data_description: str,
    aux_label_info: dict | None = None,
    identity: dict | None = None,
) -> dict:
    """The content of results.json: the config, the per-epoch history and the paper's metric."""
    summary = {
        "name": name,
        "config": dataclasses.asdict(config),
        "psi": list(config.psi),
        "data": data_description,
        DATA_KEY: identity or {},
        "epochs_completed": len(history),
        "complete": len(history) >= config.epochs,
        "test_accuracy": paper_metric(history),
        "history": history,
    }
    if aux_label_info:
        summary["aux_labels"] = aux_label_info
    return summary


def write_results(logdir: str, summary: dict) -> None:
    write_atomically(os.path.join(logdir, "results.json"), json.dumps(summary, indent=1))


def metric_name(epochs: int) -> str:
    """How the paper's metric of a run of this many epochs reads in tables and logs."""
    if epochs <= 1:
        return "test accuracy (final epoch)"
    return f"test accuracy (mean of the last {min(epochs, LAST_EPOCHS_AVERAGED)} epochs)"


def read_results(path: str) -> dict:
    """A results.json, checked to be one: a readable config, and a test accuracy if complete.

    Raises:
      errors.Error: naming the file and what is wrong with it.
    """
    try:
        # Without blocking, and only a regular file: a FIFO named results.json would wait forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValueError("not a regular file")
        with open(fd) as f:
            summary = json.load(f)
        config_lib.Config.from_saved(summary["config"])
        if summary["complete"] and summary["test_accuracy"] is None:
            raise ValueError("complete but without a test accuracy")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise errors.Error(f"{path}: unreadable ({errors.first_line(e)})") from None
    return summary


def completed_results(config: config_lib.Config, identity: dict | None = None) -> dict | None:
    """The run's results.json if it holds this same experiment, complete; else None.

    Lets a sweep skip finished runs without loading data or building models; a run complete on
    other data than `identity` is not skipped (training it then refuses the directory). Anything else
    (no file, unfinished, unreadable, another experiment) goes to train.train_and_evaluate, which
    resumes the run or explains what is wrong.
    """
    try:
        summary = read_results(os.path.join(config.logdir, "results.json"))
    except errors.Error:
        return None
    if config.differences(summary["config"]) or not same_data(summary.get(DATA_KEY), identity):
        return None
    return summary if summary["complete"] is True else None


def read_run(logdir: str, data_dir: str | None = None) -> config_lib.Run:
    """The run in logdir, resolved (config_lib.resolve).

    Args:
      data_dir: where the data set is now, if not where the run found it (its --data_dir).
    Raises:
      errors.Error: logdir holds no readable run.
    """
    path = os.path.join(logdir, "config.json")
    if not os.path.isfile(path):
        raise errors.Error(
            f"{logdir} is not a maxl_tf run directory (no config.json); pass the --logdir "
            f"of a run that main.py trained, e.g. runs/<name>."
        )
    try:
        with open(path) as f:
            config = config_lib.Config.from_saved(json.load(f))
    except (OSError, ValueError, TypeError, AttributeError):
        raise errors.Error(f"{path} is unreadable or not a maxl_tf config; restore it, or pass another run.") from None
    config = dataclasses.replace(config, logdir=logdir, data_dir=config.data_dir if data_dir is None else data_dir)
    return config_lib.resolve(config)


def load_run(logdir: str, data_dir: str | None = None):
    """Rebuilds a run from its log directory at its latest checkpoint, for looking at what it
    learned (maxl_tf.visualise). Nothing in logdir is written.

    Returns:
      (run, state, run_data), as train.train_and_evaluate builds them.
    Raises:
      errors.Error: logdir holds no run or no readable checkpoint; its data cannot be loaded.
    """
    from maxl_tf.experiment import inputs  # TensorFlow and the models: only for this, not for reading results
    from maxl_tf.experiment import state as state_lib

    run = read_run(logdir, data_dir)
    check_checkpoint_index(_checkpoint_dir(logdir))
    if not glob.glob(os.path.join(_checkpoint_dir(logdir), "ckpt-*.index")):
        raise errors.Error(
            f"{logdir} has no checkpoint yet; train the run for at least one epoch "
            f"(python main.py --flagfile={os.path.join(logdir, 'flags.cfg')})."
        )
    run_data = inputs.prepare(run)
    # With every variable of training's state (the generator's label record too), so the
    # checkpoint restores whole and TensorFlow warns of no value left unread.
    state = state_lib.TrainState(run.config, run_data.input_shape, num_labelled=len(run_data.train))
    restore(state.checkpoint(saved_variables(logdir)), logdir)
    return run, state, run_data
