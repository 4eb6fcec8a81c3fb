"""The training loop: data, models, schedules, checkpoints, summaries and results.json.

One epoch is `steps` iterations of Algorithm 1 (an evaluator step on a training batch, then a
generator step on a meta batch) or, with schedule=alternating, an epoch of evaluator steps
followed by an epoch of generator steps (the authors' code). Everything the results depend on
(weights, epoch, step, metric sums of the epoch in progress, history) lives in the checkpoint,
and every batch is a function of (seed, epoch, step): a resumed run equals an uninterrupted one.
"""
import dataclasses
import glob
import json
import os
import signal
import time

import keras
import numpy as np
import tensorflow as tf

from maxl_tf import config as config_lib
from maxl_tf import data as data_lib
from maxl_tf import distribute
from maxl_tf import embedder as embedder_lib
from maxl_tf import hierarchy as hierarchy_lib
from maxl_tf import labels as labels_lib
from maxl_tf import loaders
from maxl_tf import models
from maxl_tf import steps as steps_lib

# Per-epoch sums of step statistics and the step counts they are divided by.
EVALUATOR_SUMS = ("train/pri_loss", "train/aux_loss", "train/pri_acc", "train/aux_acc",
                  "train/grad_norm_evaluator")
GENERATOR_SUMS = ("meta/loss", "meta/loss_before", "meta/loss_after", "meta/entropy",
                  "meta/grad_norm_generator")
SUM_NAMES = EVALUATOR_SUMS + GENERATOR_SUMS + ("evaluator_steps", "generator_steps", "meta/skipped_steps")
LAST_EPOCHS_AVERAGED = 5   # the paper's metric: mean test accuracy of the last 5 epochs


class RunError(Exception):
    """A run that cannot start or go on; main.py prints the message and exits with exit_code."""
    exit_code = 2


class NonFiniteLoss(RunError):
    exit_code = 1


class Interrupted(RunError):
    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum


def configure_runtime(deterministic: bool) -> None:
    """Process-wide TensorFlow settings; call before any TensorFlow op runs.

    On CPU, intra-op threads = cores and a single inter-op thread ran VGG steps ~2x faster than
    the defaults (GUIDE). Determinism makes every op reproducible, so resumes are exact.
    """
    if not tf.config.list_physical_devices("GPU"):
        tf.config.threading.set_intra_op_parallelism_threads(os.cpu_count() or 1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass
class RunData:
    train: data_lib.Pipeline
    test: data_lib.Pipeline
    train_indices: np.ndarray   # examples the evaluator trains on
    meta_indices: np.ndarray    # maxl: the meta objective's examples; prototypical: the prototypes'
    input_shape: tuple
    source: str
    aux_label_info: dict = dataclasses.field(default_factory=dict)  # prototypical: what made the labels


def _subset(split: loaders.Split, limit: int) -> loaders.Split:
    """The first `limit` examples of a fixed (seed-independent) shuffle, so sweeps over seeds
    share the same subset."""
    if not limit or limit >= len(split.labels):
        return split
    keep = np.sort(np.random.default_rng(0).permutation(len(split.labels))[:limit])
    return loaders.Split(split.images[keep], split.labels[keep])


def prepare_data(config: config_lib.Config, psi) -> RunData:
    """Loads the data set and labels it for this run's principal and auxiliary tasks."""
    raw = loaders.load(config.dataset, config.data_dir or None, config.download)
    train, test = _subset(raw.train, config.max_train_examples), _subset(raw.test, config.max_test_examples)
    try:
        models.check_input_size(config.model, train.images.shape[1])
    except ValueError as e:
        raise config_lib.ConfigError(str(e))
    hierarchy = hierarchy_lib.for_dataset(config.dataset)

    def examples(split, aux_labels):
        return data_lib.Examples(split.images, hierarchy.labels_at(config.pri, split.labels), aux_labels)

    num_train = len(train.labels)
    if config.method in labels_lib.USES_META_SPLIT:
        train_indices, meta_indices = data_lib.split_meta(num_train, config.meta_split, config.seed)
    else:
        train_indices = meta_indices = np.arange(num_train)
    if len(train_indices) < config.batch_size:
        raise RunError(f"--batch_size={config.batch_size}: larger than the {len(train_indices)} "
                       f"training examples; lower it or raise --max_train_examples.")
    aux_label_info = {}
    if config.method == "prototypical":
        embedder = embedder_lib.load(config.embedder, config.embedder_fallback, config.seed)
        aux_train = labels_lib.prototypical_aux_labels(embedder, hierarchy, config.pri, config.aux, psi,
                                                       train.images, train.labels, meta_indices)
        human = hierarchy_lib.human_aux_labels(hierarchy, config.pri, config.aux, train.labels)
        aux_label_info = {"embedder": embedder.description,
                          "human_agreement": float(np.mean(aux_train[train_indices] == human[train_indices]))}
    else:
        aux_train = labels_lib.fixed_aux_labels(config.method, hierarchy, config.pri, config.aux, psi,
                                                train.labels, config.seed)
    return RunData(
        train=data_lib.Pipeline(examples(train, aux_train)),
        test=data_lib.Pipeline(examples(test, np.zeros(len(test.labels), np.int64))),
        train_indices=train_indices, meta_indices=meta_indices,
        input_shape=tuple(train.images.shape[1:]), source=raw.source, aux_label_info=aux_label_info)


# ----------------------------------------------------------------------------- state


def _optimizer(learning_rate: float, precision: str, model: keras.Model):
    """Plain SGD, as in the paper; float16 wraps it in dynamic loss scaling."""
    optimizer = keras.optimizers.SGD(learning_rate)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    return optimizer


class TrainState:
    """Everything a checkpoint restores: networks, optimisers, position and the epoch's sums."""

    def __init__(self, config: config_lib.Config, input_shape, psi, strategy: tf.distribute.Strategy = None):
        """Variables are mirrored on the strategy's replicas (default: this device), and batch
        norm synchronised across them when there are several."""
        strategy = strategy or tf.distribute.get_strategy()
        synchronized_bn = strategy.num_replicas_in_sync > 1
        aux = sum(psi) if config.method != "single" else 0
        with strategy.scope():
            self.evaluator = models.build_evaluator(input_shape, config.pri, aux, config.model, config.width,
                                                    config.precision, synchronized_bn)
            self.evaluator_optimizer = _optimizer(config.lr, config.precision, self.evaluator)
            self.generator = self.generator_optimizer = self.lookahead_model = None
            if config.method == "maxl":
                self.generator = models.build_generator(input_shape, sum(psi), config.model, config.width,
                                                        config.precision, synchronized_bn)
                self.generator_optimizer = _optimizer(config.generator_lr, config.precision, self.generator)
                # The lookahead runs in float32 (meta.py says why); this twin holds no state of
                # its own: it is called with the evaluator's weights.
                self.lookahead_model = self.evaluator
                if config.precision != "float32":
                    self.lookahead_model = models.build_evaluator(
                        input_shape, config.pri, aux, config.model, config.width, "float32", synchronized_bn)
            self.epoch = tf.Variable(0, dtype=tf.int64)           # completed epochs
            self.step_in_epoch = tf.Variable(0, dtype=tf.int64)   # completed steps of the current epoch
            self.global_step = tf.Variable(0, dtype=tf.int64)
            self.sums = tf.Variable(tf.zeros(len(SUM_NAMES), tf.float64))
            self.label_usage = tf.Variable(tf.zeros(max(aux, 1), tf.int64))  # argmax counts per aux class
            self.nonfinite_step = tf.Variable(-1, dtype=tf.int64)
        # Outside the strategy: collectives cannot broadcast strings, and only the host reads it.
        self.history_json = tf.Variable("[]")

    def checkpoint(self) -> tf.train.Checkpoint:
        parts = dict(evaluator=self.evaluator, evaluator_optimizer=self.evaluator_optimizer,
                     epoch=self.epoch, step_in_epoch=self.step_in_epoch, global_step=self.global_step,
                     sums=self.sums, label_usage=self.label_usage, history=self.history_json)
        if self.generator is not None:
            parts.update(generator=self.generator, generator_optimizer=self.generator_optimizer)
        return tf.train.Checkpoint(**parts)

    @property
    def history(self) -> list:
        return json.loads(self.history_json.numpy().decode())


# ----------------------------------------------------------------------------- log directory


def _write_atomically(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def prepare_logdir(config: config_lib.Config, create: bool = True) -> str:
    """Creates the log directory, or checks that an existing one holds this same experiment.

    create=False (multi-worker workers other than the chief, which creates it) only checks an
    existing config.json, so every worker refuses a different experiment, not the chief alone.
    """
    logdir = config.resolved_logdir()
    saved_path = os.path.join(logdir, "config.json")
    if not create and not os.path.isfile(saved_path):
        return logdir   # the chief creates it
    if os.path.isfile(saved_path):
        try:
            with open(saved_path) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            raise RunError(f"{saved_path} is unreadable; restore it, or pass a new --logdir.")
        differences = [f"--{k}={there!r} there, {now!r} now" for k, there, now in config.differences(saved)]
        if differences:
            raise RunError(f"--logdir={logdir} holds a different experiment ({'; '.join(differences)}). "
                           f"Pass another --logdir, or rerun with that directory's flags: "
                           f"--flagfile={os.path.join(logdir, 'flags.cfg')}.")
        return logdir
    if os.path.isdir(logdir) and os.listdir(logdir):
        raise RunError(f"--logdir={logdir} exists and is not a maxl_tf log directory (no config.json); "
                       f"pass an empty or new --logdir.")
    try:
        os.makedirs(logdir, exist_ok=True)
        _write_atomically(os.path.join(logdir, "flags.cfg"), config.to_flagfile())
        _write_atomically(saved_path, config.to_json())
    except OSError as e:
        raise RunError(f"--logdir={logdir} cannot be written ({e.strerror}); pass a writable --logdir.")
    return logdir


def check_checkpoint_index(directory: str) -> None:
    """Refuses a checkpoint directory whose index is damaged or missing.

    tf.train.CheckpointManager treats an unparsable index as "no checkpoint" and would silently
    restart the run from scratch, overwriting what is there.
    """
    index = os.path.join(directory, "checkpoint")
    saved = glob.glob(os.path.join(directory, "ckpt-*.index"))
    if not os.path.exists(index) and not saved:
        return
    fix = f"restore it from a backup, or delete {directory} to start over"
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception:  # a text-proto parse error
        state = None
    if state is None or not state.model_checkpoint_path:
        raise RunError(f"checkpoint index {index} is missing or unreadable; {fix}.")


def restore(state: TrainState, checkpoint_dir: str, logdir: str) -> None:
    path = tf.train.latest_checkpoint(checkpoint_dir)
    if path is None:
        return
    try:
        state.checkpoint().restore(path).assert_existing_objects_matched()
    except Exception as e:  # the reader raises OpError, IndexError, ValueError... for damaged files
        reason = str(e).strip().splitlines()[0][:200]
        raise RunError(f"checkpoint {path} is unreadable ({reason}). Delete {path}.* to resume from "
                       f"an earlier checkpoint, or {os.path.join(logdir, 'checkpoints')} to start over.")


def load_run(logdir: str, data_dir: str | None = None):
    """Rebuilds a run from its log directory at its latest checkpoint, for analysis of what it
    learned (maxl_tf.visualise). Nothing in logdir is written.

    Args:
      data_dir: where the data set is now, if not where the run found it (its --data_dir).
    Returns:
      (config, psi, state, run_data), as train_and_evaluate builds them.
    Raises:
      RunError: logdir holds no run or no readable checkpoint. ConfigError, DataError: as in
        prepare_data.
    """
    config_path = os.path.join(logdir, "config.json")
    checkpoints = os.path.join(logdir, "checkpoints")
    if not os.path.isfile(config_path):
        raise RunError(f"{logdir} is not a maxl_tf run directory (no config.json); pass the --logdir "
                       f"of a run that main.py trained, e.g. runs/<name>.")
    try:
        with open(config_path) as f:
            saved = json.load(f)
        config = config_lib.Config.from_saved(saved)
    except (OSError, ValueError, TypeError, AttributeError):
        raise RunError(f"{config_path} is unreadable or not a maxl_tf config; restore it, or pass another run.")
    config = dataclasses.replace(config, logdir=logdir, data_dir=config.data_dir if data_dir is None else data_dir)
    psi = config_lib.validate(config)
    check_checkpoint_index(checkpoints)
    if tf.train.latest_checkpoint(checkpoints) is None:
        raise RunError(f"{logdir} has no checkpoint yet; train the run for at least one epoch "
                       f"(python main.py --flagfile={os.path.join(logdir, 'flags.cfg')}).")
    run_data = prepare_data(config, psi)
    state = TrainState(config, run_data.input_shape, psi)
    restore(state, checkpoints, logdir)
    return config, psi, state, run_data


def results_summary(config: config_lib.Config, history: list, psi, source: str,
                    aux_label_info: dict | None = None) -> dict:
    last = [record["test/acc"] for record in history[-LAST_EPOCHS_AVERAGED:]]
    summary = {"name": config.name, "config": dataclasses.asdict(config), "psi": list(psi),
               "data": source, "epochs_completed": len(history), "complete": len(history) >= config.epochs,
               "test_accuracy": float(np.mean(last)) if last else None, "history": history}
    if aux_label_info:
        summary["aux_labels"] = aux_label_info
    return summary


# ----------------------------------------------------------------------------- the loop


class _StopRequests:
    """Turns SIGINT/SIGTERM into a request the loop honours at the next step boundary.

    A second signal of the same kind kills the process at once (the default action), so a stuck
    run can still be stopped; it then resumes from the last checkpoint.
    """

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        signal.signal(signum, signal.SIG_DFL)

    @property
    def reason(self) -> str:
        return f"signal {self.signum}" if self.signum is not None else "a signal on another worker"

    @property
    def exit_signal(self) -> int:
        """The signal to report in the exit status: this process's, else SIGTERM (another
        worker's, which stopped the whole cluster)."""
        return self.signum if self.signum is not None else signal.SIGTERM

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class Trainer:
    """Owns the compiled steps of one run and drives epochs; see train_and_evaluate."""

    def __init__(self, config: config_lib.Config, psi, run_data: RunData, state: TrainState,
                 strategy: tf.distribute.Strategy):
        self.config, self.data, self.state, self.strategy = config, run_data, state, strategy
        self.task = steps_lib.Task(method=config.method, num_pri=config.pri, num_aux=sum(psi),
                                   mask_table=tf.constant(hierarchy_lib.psi_mask(psi)),
                                   gamma=config.gamma, entropy_weight=config.entropy_weight)
        self.psi = psi
        self.uses_generator = config.method == "maxl"
        batch = config.batch_size
        # The gradient-cosine diagnostic's fixed batch: the first training examples, unaugmented.
        self._probe_batch = next(iter(run_data.train.batches(run_data.train_indices[:batch], batch)))
        self.train_steps = data_lib.steps_per_epoch(len(run_data.train_indices), batch)
        self.meta_steps = (data_lib.steps_per_epoch(len(run_data.meta_indices), batch)
                           if config.schedule == "alternating" else self.train_steps)
        self.steps_per_epoch = self.train_steps + (
            self.meta_steps if self.uses_generator and config.schedule == "alternating" else 0)
        # XLA compiles each replica's work. It must be the function strategy.run calls: a
        # tf.function nested inside it cannot hold the optimisers' cross-replica sums.
        self._replica_iteration = (tf.function(self._replica_iteration_fn, jit_compile=True)
                                   if config.jit else self._replica_iteration_fn)
        self.iteration = tf.function(self._iteration_fn)
        self._evaluate = tf.function(self._evaluate_fn)
        self._cosine = tf.function(self._cosine_fn)
        self._any_worker = tf.function(self._any_worker_fn)

    # Compiled pieces. Either batch may be None: tf.function traces one graph per combination.
    def _replica_iteration_fn(self, train_batch, meta_batch):
        """One iteration on one replica's slice of the batches: (scalars, label-usage counts)."""
        state, task = self.state, self.task
        values, usage = {}, tf.zeros([task.num_aux], tf.int64)
        if train_batch is not None:
            out = steps_lib.evaluator_step(state.evaluator, state.evaluator_optimizer, state.generator,
                                           train_batch, task)
            values.update({"train/pri_loss": out["pri_loss"], "train/aux_loss": out["aux_loss"],
                           "train/pri_acc": out["pri_acc"], "train/aux_acc": out["aux_acc"],
                           "train/grad_norm_evaluator": out["grad_norm"]})
            # Counts per auxiliary class; one_hot rather than bincount, which XLA cannot compile.
            usage = tf.reduce_sum(tf.one_hot(out["aux_assigned"], task.num_aux, dtype=tf.int64), axis=0)
        if meta_batch is not None:
            out = steps_lib.generator_step(
                state.generator, state.generator_optimizer, state.evaluator, meta_batch, task,
                state.evaluator_optimizer.learning_rate,
                self.config.generator_weight_decay, self.config.generator_weight_decay_type,
                state.lookahead_model)
            values.update({"meta/loss": out["meta_loss"], "meta/loss_before": out["loss_before"],
                           "meta/loss_after": out["loss_after"], "meta/entropy": out["entropy"],
                           "meta/grad_norm_generator": out["grad_norm"],
                           "meta/finite_grads": tf.cast(out["finite_grads"], tf.float32)})
        return values, usage

    def _iteration_fn(self, train_batch, meta_batch):
        state, strategy = self.state, self.strategy
        values, usage = strategy.run(self._replica_iteration, args=(train_batch, meta_batch))
        mean = tf.distribute.ReduceOp.MEAN   # replicas hold equal slices: the mean of means
        values = {name: strategy.reduce(mean, value, axis=None) for name, value in values.items()}
        finite = tf.constant(True)
        if train_batch is not None:
            values["evaluator_steps"] = 1.0
            finite &= tf.math.is_finite(values["train/pri_loss"] + values["train/aux_loss"])
            if self.task.method != "single":
                state.label_usage.assign_add(strategy.reduce(tf.distribute.ReduceOp.SUM, usage, axis=None))
        if meta_batch is not None:
            values["generator_steps"] = 1.0
            if self.config.precision == "mixed_float16":
                # Dynamic loss scaling overflows now and then by design: the optimiser skipped
                # those steps. Only a non-finite forward loss is a diverged run.
                finite &= tf.math.is_finite(values["meta/loss_before"] + values["meta/entropy"])
                counted = tf.math.is_finite(values["meta/loss"])
                for name in GENERATOR_SUMS:
                    values[name] = tf.where(counted, values[name], 0.0)
                values["generator_steps"] = tf.cast(counted, tf.float32)
                values["meta/skipped_steps"] = 1.0 - values["meta/finite_grads"]
            else:
                finite &= tf.math.is_finite(values["meta/loss"])
        state.sums.assign_add(tf.stack([tf.cast(values.get(name, 0.0), tf.float64) for name in SUM_NAMES]))
        state.global_step.assign_add(1)
        state.nonfinite_step.assign(tf.where(
            tf.logical_and(tf.logical_not(finite), state.nonfinite_step < 0),
            state.global_step, state.nonfinite_step))

    def _evaluate_fn(self, batch):
        return steps_lib.evaluation_step(self.state.evaluator, batch, self.task)

    def _cosine_fn(self, batch):
        return steps_lib.trunk_gradient_cosine(self.state.evaluator, self.state.generator, batch, self.task)

    # Host-side loop.
    def _learning_rates(self, epoch: int):
        decay = self.config.lr_decay_factor ** (epoch // self.config.lr_decay_every)
        return self.config.lr * decay, self.config.generator_lr * decay

    def _check_finite(self, epoch: int):
        step = int(self.state.nonfinite_step.numpy())
        if step >= 0:
            raise NonFiniteLoss(
                f"non-finite loss at step {step} (epoch {epoch + 1}); nothing was saved after it, the "
                f"last checkpoint is intact. Lower --lr or --generator_lr, or use --loss=ce.")

    def _epoch_batches(self, epoch: int, first_step: int):
        """Yields (train_batch or None, meta_batch or None) for steps first_step.. of an epoch."""
        config, batch = self.config, self.config.batch_size

        def stream(indices, steps, stream_id, first):
            order = data_lib.epoch_order(indices, steps * batch, config.seed, epoch, stream_id)
            augment_seed = (config.seed, epoch, stream_id) if config.augment else None
            return self.data.train.batches(order, batch, augment_seed=augment_seed, first_step=first)

        def train_stream(first):
            return stream(self.data.train_indices, self.train_steps, data_lib.TRAIN_STREAM, first)

        def meta_stream(first):
            return stream(self.data.meta_indices, self.meta_steps, data_lib.META_STREAM, first)

        if not self.uses_generator:
            yield from ((train_batch, None) for train_batch in self.distribute(train_stream(first_step)))
        elif config.schedule == "interleaved":
            yield from self.distribute(tf.data.Dataset.zip(train_stream(first_step), meta_stream(first_step)))
        else:  # alternating: the evaluator's epoch, then the generator's
            if first_step < self.train_steps:
                yield from ((train_batch, None) for train_batch in self.distribute(train_stream(first_step)))
            meta_batches = self.distribute(meta_stream(max(0, first_step - self.train_steps)))
            yield from ((None, meta_batch) for meta_batch in meta_batches)

    def distribute(self, dataset: tf.data.Dataset):
        """Splits each global batch into per-replica slices (every worker builds the same batches
        and keeps its own slices); the dataset itself on one device."""
        if self.config.strategy == "none":
            return dataset
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return self.strategy.experimental_distribute_dataset(dataset.with_options(options))

    def stop_agreed(self, stop: _StopRequests, vote: bool = True) -> bool:
        """Whether to stop now. Several workers must stop at the same step (their next
        collective would wait forever), so they vote where `vote` is True (every log_every steps
        and at the end of an epoch), and a signal on any worker stops all of them there."""
        if self.config.strategy != "multi_worker":
            return stop.signum is not None
        return vote and bool(self._any_worker(tf.constant(stop.signum is not None)))

    def _any_worker_fn(self, flag):
        votes = self.strategy.run(lambda f: tf.cast(f, tf.int32), args=(flag,))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, votes, axis=None) > 0

    def evaluate(self) -> dict:
        totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
        for batch in self.data.test.evaluation_batches(self.config.batch_size):
            for key, value in self._evaluate(batch).items():
                totals[key] += float(value)
        return {"test/loss": totals["loss_sum"] / totals["count"], "test/acc": totals["correct"] / totals["count"]}

    def _epoch_record(self, epoch: int, seconds: float, images: int) -> dict:
        sums = dict(zip(SUM_NAMES, self.state.sums.numpy().tolist()))
        record = {"epoch": epoch + 1}
        for names, count in ((EVALUATOR_SUMS, sums["evaluator_steps"]), (GENERATOR_SUMS, sums["generator_steps"])):
            if count:
                record.update({name: sums[name] / count for name in names})
        lr, generator_lr = self._learning_rates(epoch)
        record["lr/evaluator"] = lr
        if self.uses_generator:
            record["lr/generator"] = generator_lr
        if self.config.precision == "mixed_float16" and self.uses_generator:
            record["meta/skipped_steps"] = sums["meta/skipped_steps"]
        if self.task.method != "single":
            record.update(labels_lib.usage_summary(self.state.label_usage.numpy(), self.psi))
            record["train/trunk_grad_cosine"] = float(self._cosine(self._probe_batch))
        record.update(self.evaluate())
        record["perf/epoch_seconds"] = seconds
        record["perf/images_per_s"] = images / seconds if seconds > 0 else 0.0
        return record

    def run_epoch(self, epoch: int, stop: _StopRequests, progress: bool) -> dict | None:
        """Trains one epoch from the checkpointed step on; returns its record, or None if stopped."""
        state, config = self.state, self.config
        lr, generator_lr = self._learning_rates(epoch)
        state.evaluator_optimizer.learning_rate.assign(lr)
        if self.uses_generator:
            state.generator_optimizer.learning_rate.assign(generator_lr)
        first_step = int(state.step_in_epoch.numpy())
        bar = keras.utils.Progbar(self.steps_per_epoch, verbose=1 if progress else 0,
                                  stateful_metrics=["pri_loss", "pri_acc", "meta_loss"])
        start, images = time.perf_counter(), 0
        for step, (train_batch, meta_batch) in enumerate(self._epoch_batches(epoch, first_step), first_step):
            self.iteration(train_batch, meta_batch)
            images += config.batch_size
            state.step_in_epoch.assign(step + 1)
            if (step + 1) % config.log_every == 0 or step + 1 == self.steps_per_epoch:
                self._check_finite(epoch)
                sums = dict(zip(SUM_NAMES, state.sums.numpy()))
                values = [(k, sums["train/" + k] / max(sums["evaluator_steps"], 1)) for k in ("pri_loss", "pri_acc")]
                if self.uses_generator:
                    values.append(("meta_loss", sums["meta/loss"] / max(sums["generator_steps"], 1)))
                bar.update(step + 1, values)
            if self.stop_agreed(stop, vote=(step + 1) % config.log_every == 0):
                self._check_finite(epoch)
                return None
        self._check_finite(epoch)
        return self._epoch_record(epoch, time.perf_counter() - start, images)


def _write_summaries(writer, record: dict) -> None:
    with writer.as_default(step=record["epoch"]):
        for key, value in record.items():
            if key != "epoch" and isinstance(value, float):
                tf.summary.scalar(key, value)
    writer.flush()


def run_strategy(config: config_lib.Config) -> tf.distribute.Strategy:
    """The run's tf.distribute strategy; ConfigError where it cannot start or split the batch."""
    try:
        strategy = distribute.make_strategy(config.strategy)
    except distribute.StrategyError as e:
        raise config_lib.ConfigError(str(e))
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise config_lib.ConfigError(
            f"--batch_size={config.batch_size}: must be a multiple of the {replicas} replicas of "
            f"--strategy={config.strategy}, so every replica gets an equal slice.")
    return strategy


def train_and_evaluate(config: config_lib.Config, progress: bool = True) -> dict:
    """Trains (or resumes) the run described by config; returns the results.json content.

    Raises:
      config_lib.ConfigError, loaders.DataError, RunError: with a message for the user.
    """
    psi = config_lib.validate(config)
    strategy = run_strategy(config)
    chief = distribute.is_chief(strategy)
    logdir = prepare_logdir(config, create=chief)
    run_data = prepare_data(config, psi)
    keras.utils.set_random_seed(config.seed)
    state = TrainState(config, run_data.input_shape, psi, strategy)
    checkpoint = state.checkpoint()
    checkpoint_dir = os.path.join(logdir, "checkpoints")
    check_checkpoint_index(checkpoint_dir)
    # Every worker saves (a multi-worker save is collective); only the chief's copy is the run's,
    # and every worker resumes from it (the log directory must be on a shared file system).
    save_dir = checkpoint_dir if chief else os.path.join(logdir, "workers", f"worker{strategy.cluster_resolver.task_id}")
    manager = tf.train.CheckpointManager(checkpoint, save_dir, max_to_keep=2)
    restore(state, checkpoint_dir, logdir)
    trainer = Trainer(config, psi, run_data, state, strategy)
    writer = tf.summary.create_file_writer(logdir) if chief else tf.summary.create_noop_writer()
    results_path = os.path.join(logdir, "results.json")

    start_epoch = int(state.epoch.numpy())
    if start_epoch >= config.epochs:
        position = "already complete"
    elif tf.train.latest_checkpoint(checkpoint_dir):
        position = f"resuming at epoch {start_epoch + 1} step {int(state.step_in_epoch.numpy())}"
    else:
        position = "starting"
    with _StopRequests() as stop:
        print(f"{config.name}: psi={list(psi)}, {len(run_data.train_indices)} train / "
              f"{len(run_data.meta_indices)} meta examples from {run_data.source}; logdir {logdir}; "
              f"{position}", flush=True)
        if run_data.aux_label_info:
            print(f"prototypical labels from {run_data.aux_label_info['embedder']}; "
                  f"{run_data.aux_label_info['human_agreement']:.1%} of the training labels equal the "
                  f"human hierarchy's", flush=True)
        with writer.as_default(step=start_epoch):
            tf.summary.text("config/flags", "```\n" + config.to_flagfile() + "```")
        history = state.history
        if history:   # re-emit the last record, in case the previous process died before writing it
            _write_summaries(writer, history[-1])
        for epoch in range(start_epoch, config.epochs):
            record = trainer.run_epoch(epoch, stop, progress)
            if record is None:
                manager.save(checkpoint_number=int(state.global_step.numpy()))
                raise Interrupted(f"{stop.reason} at epoch {epoch + 1} step "
                                  f"{int(state.step_in_epoch.numpy())}; checkpoint saved in {logdir}. "
                                  f"Rerun the same command to resume.", stop.exit_signal)
            history.append(record)
            state.history_json.assign(json.dumps(history))
            state.epoch.assign(epoch + 1)
            state.step_in_epoch.assign(0)
            state.sums.assign(tf.zeros_like(state.sums))
            state.label_usage.assign(tf.zeros_like(state.label_usage))
            manager.save(checkpoint_number=int(state.global_step.numpy()))
            _write_summaries(writer, record)
            if chief:
                summary = results_summary(config, history, psi, run_data.source, run_data.aux_label_info)
                _write_atomically(results_path, json.dumps(summary, indent=1))
            print(f"epoch {epoch + 1}/{config.epochs}: test/acc {record['test/acc']:.4f} "
                  f"test/loss {record['test/loss']:.4f} train/pri_acc {record['train/pri_acc']:.4f} "
                  f"{record['perf/images_per_s']:.0f} images/s", flush=True)
            if trainer.stop_agreed(stop):
                raise Interrupted(f"{stop.reason} after epoch {epoch + 1}; checkpoint "
                                  f"saved in {logdir}. Rerun the same command to resume.", stop.exit_signal)
    results = results_summary(config, history, psi, run_data.source, run_data.aux_label_info)
    if chief:
        _write_atomically(results_path, json.dumps(results, indent=1))
    return results
