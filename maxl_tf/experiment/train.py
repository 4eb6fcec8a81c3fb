"""The training loop.

An epoch is `steps` iterations of Algorithm 1 (an evaluator step on a training batch, then a
generator step on a meta batch; with meta_every=K the generator steps after every K-th evaluator
step of the run only) or, with schedule=alternating, an epoch of evaluator steps followed by an
epoch of generator steps (the authors' code). Everything the results depend on
lives in the checkpoint (state.py) and every batch is a function of (seed, epoch, step)
(data/pipeline.py), so a run stopped at any step and resumed equals an uninterrupted one.
"""

import dataclasses
import functools
import json
import time

import keras
import numpy as np
from tensorboard.plugins.hparams import api as hparams_api
from tensorboard.plugins.hparams import api_pb2 as hparams_pb2
from tensorboard.plugins.hparams import summary as hparams_summary
import tensorflow as tf

from maxl_tf import errors
from maxl_tf.core import distribute
from maxl_tf.core import label_health
from maxl_tf.core import labels as labels_lib
from maxl_tf.core import methods
from maxl_tf.core import steps
from maxl_tf.core import streams
from maxl_tf.data import pipeline
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import exports
from maxl_tf.experiment import inputs
from maxl_tf.experiment import rundir
from maxl_tf.experiment import signals
from maxl_tf.experiment import state as state_lib
from maxl_tf.models import vgg

# Written once a run is complete: its rundir.metric_name, which the HParams dashboard compares.
FINAL_METRIC = "results/test_accuracy"


def make_iteration(
    config: config_lib.Config, state: state_lib.TrainState, task: steps.Task, strategy: tf.distribute.Strategy
):
    """The compiled iteration(train_batch, meta_batch): an evaluator step, a generator step, or
    both (either batch may be None: tf.function traces one graph per combination). It adds the
    steps' metrics to the epoch's sums and records the first step whose loss is not finite.

    The generator step gets the training batch too (the implicit hypergradient's Hessian is of its
    loss). iteration(train_batch, meta_batch, train_evaluator=False) takes the generator step
    alone with a training batch at hand, as the benchmark times it."""

    def replica_iteration(train_batch, meta_batch, train_evaluator):
        return steps.iteration(state, train_batch, meta_batch, task, train_evaluator)

    if config.jit:
        # XLA compiles each replica's work. It must be the function strategy.run calls: a
        # tf.function nested inside it cannot hold the optimisers' cross-replica sums.
        replica_iteration = steps.compiled(replica_iteration, jit_compile=True)

    @steps.compiled
    def iteration(train_batch, meta_batch, train_evaluator=True):
        metrics, usage = strategy.run(replica_iteration, args=(train_batch, meta_batch, train_evaluator))
        # Replicas hold equal slices: the mean of their means.
        metrics = {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in metrics.items()}
        finite = tf.constant(True)
        if train_batch is not None and train_evaluator:
            evaluator_metrics = {k: v for k, v in metrics.items() if k.startswith("train/")}
            finite &= tf.math.is_finite(
                tf.add_n([metrics[k] for k in ("train/pri_loss", "train/aux_loss") if k in metrics])
            )
            state.sums.add(evaluator_metrics)
            if task.labels.auxiliary:
                state.sums.label_usage.assign_add(strategy.reduce(tf.distribute.ReduceOp.SUM, usage, axis=None))
        if meta_batch is not None:
            generator_metrics = {k: v for k, v in metrics.items() if k.startswith("meta/")}
            counted = True
            if "meta/skipped_steps" in generator_metrics:
                # Dynamic loss scaling (float16) overflows now and then by design: the optimiser
                # skipped those steps, which count in no mean. Only a non-finite forward loss is
                # a diverged run.
                state.sums.add({"meta/skipped_steps": generator_metrics.pop("meta/skipped_steps")})
                finite &= tf.math.is_finite(metrics["meta/loss_before"] + metrics["meta/entropy"])
                counted = tf.math.is_finite(metrics["meta/loss"])
            else:
                finite &= tf.math.is_finite(metrics["meta/loss"])
            state.sums.add(generator_metrics, counted)
        state.global_step.assign_add(1)
        state.nonfinite_step.assign(
            tf.where(
                tf.logical_and(tf.logical_not(finite), state.nonfinite_step < 0),
                state.global_step,
                state.nonfinite_step,
            )
        )

    return iteration


@dataclasses.dataclass
class Loop:
    """What every epoch of one run shares: its inputs, state, compiled functions and outputs."""

    run: config_lib.Run  # its config, its name (in logs, TensorBoard's HParams, results.json), its data's identity
    data: inputs.RunData
    state: state_lib.TrainState
    strategy: tf.distribute.Strategy
    task: steps.Task
    iteration: object  # make_iteration's compiled function
    evaluate_batch: object  # compiled steps.evaluation_step
    trunk_cosine: object  # compiled steps.trunk_gradient_cosine on probe_batch
    any_worker: object  # compiled vote: whether any worker's flag is set
    label_batch: object  # compiled labels.hard_generated_labels of a batch (maxl)
    probe_batch: dict  # the first training examples, unaugmented: the diagnostics' fixed batch
    checkpoints: tf.train.CheckpointManager
    writer: object  # TensorBoard summary writer (a no-op writer on non-chief workers)
    chief: bool
    claim: object = None  # claims.Claim of a sweep's worker: it stops without writing once lost

    @property
    def config(self) -> config_lib.Config:
        return self.run.config

    @property
    def uses_generator(self) -> bool:
        return self.task.labels.learned

    @property
    def train_steps(self) -> int:
        return pipeline.steps_per_epoch(len(self.data.train_indices), self.config.batch_size)

    @property
    def meta_steps(self) -> int:
        if self.config.schedule == "alternating":
            return pipeline.steps_per_epoch(len(self.data.meta_indices), self.config.batch_size)
        return self.train_steps

    @property
    def steps_per_epoch(self) -> int:
        alternating = self.uses_generator and self.config.schedule == "alternating"
        return self.train_steps + (self.meta_steps if alternating else 0)


def generator_step_follows(meta_every: int, train_steps: int, epoch: int, step: int) -> bool:
    """Whether the interleaved schedule's step `step` of `epoch` (of train_steps) ends with a
    generator step: after every meta_every-th evaluator step, counted over the run, so that no
    epoch's remainder is lost and a meta_every longer than an epoch still steps the generator."""
    return (epoch * train_steps + step + 1) % meta_every == 0


def learning_rates(config: config_lib.Config, epoch: int) -> tuple:
    """(evaluator, generator) learning rates of an epoch: both decayed together (paper 4.1)."""
    decay = config.lr_decay_factor ** (epoch // config.lr_decay_every)
    return config.lr * decay, config.generator_lr * decay


def epoch_batches(loop: Loop, epoch: int, first_step: int):
    """Yields (train batch or None, meta batch or None) for steps first_step.. of an epoch."""
    config, batch = loop.config, loop.config.batch_size

    def stream(indices, steps_in_stream, stream_id, first, kept_steps=None):
        order = pipeline.epoch_order(indices, steps_in_stream * batch, config.seed, epoch, stream_id)
        if kept_steps is not None:  # only these steps' batches, in order
            order = order.reshape(steps_in_stream, batch)[kept_steps].reshape(-1)
        augment_seed = (config.seed, epoch, stream_id) if config.augment else None
        return loop.data.train.batches(order, batch, augment_seed=augment_seed, first_step=first)

    def train_stream(first):
        return stream(loop.data.train_indices, loop.train_steps, streams.TRAIN_STREAM, first)

    def meta_stream(first):
        return stream(loop.data.meta_indices, loop.meta_steps, streams.META_STREAM, first)

    def distributed(dataset):
        return distribute.distribute_dataset(loop.strategy, dataset)

    if not loop.uses_generator:
        yield from ((train_batch, None) for train_batch in distributed(train_stream(first_step)))
    elif config.schedule == "interleaved":
        # The meta batch of step s is the s-th of the epoch's meta order, drawn only where a
        # generator step follows: which ones is a function of (seed, epoch, step), so a resumed
        # epoch draws the same.
        follows = functools.partial(generator_step_follows, config.meta_every, loop.train_steps, epoch)
        meta_steps = [s for s in range(loop.train_steps) if follows(s)]
        meta_batches = iter(
            distributed(
                stream(
                    loop.data.meta_indices,
                    loop.meta_steps,
                    streams.META_STREAM,
                    first=sum(s < first_step for s in meta_steps),
                    kept_steps=meta_steps,
                )
            )
        )
        for step, train_batch in enumerate(distributed(train_stream(first_step)), first_step):
            yield train_batch, next(meta_batches) if follows(step) else None
    else:  # alternating: the evaluator's epoch, then the generator's
        if first_step < loop.train_steps:
            yield from ((train_batch, None) for train_batch in distributed(train_stream(first_step)))
        meta_batches = distributed(meta_stream(max(0, first_step - loop.train_steps)))
        yield from ((None, meta_batch) for meta_batch in meta_batches)


def evaluate(loop: Loop) -> dict:
    """Principal-task loss and accuracy on the whole test set."""
    totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    for batch in loop.data.test.evaluation_batches(loop.config.batch_size):
        for key, value in loop.evaluate_batch(batch).items():
            totals[key] += float(value)
    return {"test/loss": totals["loss_sum"] / totals["count"], "test/acc": totals["correct"] / totals["count"]}


def stop_agreed(loop: Loop, stop: signals.StopRequests, vote: bool = True) -> bool:
    """Whether to stop now. Several workers must stop at the same step (their next collective
    would wait forever), so they vote where `vote` is True (every log_every steps and at the end
    of an epoch), and a signal on any worker stops all of them there."""
    if loop.config.strategy != "multi_worker":
        return stop.signum is not None
    return vote and bool(loop.any_worker(tf.constant(stop.signum is not None)))


def check_claim(loop: Loop, verify: bool = False) -> None:
    """Raises errors.ClaimLost once another worker took the run over: as the heartbeat last saw it
    (cheap, every step), or as the file system shows it now (verify, right before writing)."""
    if loop.claim is None:
        return
    if loop.claim.lost or (verify and not loop.claim.verify()):
        raise errors.ClaimLost(
            f"{loop.config.logdir}: another worker took this run over (no heartbeat from "
            f"this one for --heartbeat_timeout); it goes on there, nothing more is written here."
        )


def check_finite(loop: Loop, epoch: int) -> None:
    step = int(loop.state.nonfinite_step.numpy())
    if step >= 0:
        raise errors.NonFiniteLoss(
            f"non-finite loss at step {step} (epoch {epoch + 1}); nothing was saved after it, the "
            f"last checkpoint is intact. Lower --lr or --generator_lr, or use --loss=ce."
        )


def generator_hard_labels(loop: Loop) -> np.ndarray:
    """The generator's argmax auxiliary label of every training image, unaugmented, in the mode
    it labels the evaluator's batches (--generator_labels_bn), statistics untouched. [N] int64"""
    labels = [loop.label_batch(batch).numpy() for batch in loop.data.train.evaluation_batches(loop.config.batch_size)]
    return np.concatenate(labels)


def label_changes(loop: Loop) -> dict:
    """Fractions of the training images whose hard generated label differs from the previous
    labelling pass (before training, for the first epoch) and from the first epoch's; records
    this epoch's labels in the state. Fractions, not counts: comparable across subset sizes."""
    state = loop.state
    labels = generator_hard_labels(loop)
    if int(state.first_labels[0].numpy()) < 0:
        state.first_labels.assign(labels)
    changes = {
        "labels/changed_since_previous": float(np.mean(labels != state.previous_labels.numpy())),
        "labels/changed_since_first": float(np.mean(labels != state.first_labels.numpy())),
    }
    state.previous_labels.assign(labels)
    return changes


def write_summaries(writer, record: dict) -> None:
    with writer.as_default(step=record["epoch"]):
        for key, value in record.items():
            if key != "epoch" and isinstance(value, float):
                tf.summary.scalar(key, value)
            elif isinstance(value, list) and value:  # per principal class: labels/aux_*_per_pri
                tf.summary.histogram(key, value)
    writer.flush()


def train_epoch(loop: Loop, epoch: int, stop: signals.StopRequests, progress: bool) -> dict:
    """Trains one epoch from its checkpointed step to its end, then logs and saves it.

    Returns the epoch's record (as results.json's history holds it).
    Raises:
      errors.Interrupted: a signal arrived; a checkpoint of the step reached was saved.
      errors.NonFiniteLoss: a loss was not finite; nothing was saved after the last checkpoint.
    """
    config, state = loop.config, loop.state
    lr, generator_lr = learning_rates(config, epoch)
    state.evaluator_optimizer.learning_rate.assign(lr)
    if loop.uses_generator:
        state.generator_optimizer.learning_rate.assign(generator_lr)
    first_step = int(state.step_in_epoch.numpy())
    bar = keras.utils.Progbar(
        loop.steps_per_epoch, verbose=1 if progress else 0, stateful_metrics=["pri_loss", "pri_acc", "meta_loss"]
    )
    start, images = time.perf_counter(), 0
    for step, (train_batch, meta_batch) in enumerate(epoch_batches(loop, epoch, first_step), first_step):
        loop.iteration(train_batch, meta_batch)
        images += config.batch_size
        state.step_in_epoch.assign(step + 1)
        check_claim(loop)
        if (step + 1) % config.log_every == 0 or step + 1 == loop.steps_per_epoch:
            check_finite(loop, epoch)
            means = state.sums.means()
            bar.update(
                step + 1,
                [
                    (name.split("/")[1], means[name])
                    for name in ("train/pri_loss", "train/pri_acc", "meta/loss")
                    if name in means
                ],
            )
        if stop_agreed(loop, stop, vote=(step + 1) % config.log_every == 0):
            check_finite(loop, epoch)
            check_claim(loop, verify=True)
            save_checkpoint(loop)
            raise errors.Interrupted(
                f"{stop.reason} at epoch {epoch + 1} step {step + 1}; checkpoint saved in "
                f"{config.logdir}. Rerun the same command to resume.",
                stop.exit_signal,
            )
    check_finite(loop, epoch)
    seconds = time.perf_counter() - start
    record = epoch_record(loop, epoch, (lr, generator_lr))
    record["perf/epoch_seconds"] = seconds
    record["perf/images_per_s"] = images / seconds if seconds > 0 else 0.0
    save_epoch(loop, epoch, record)
    return record


def epoch_record(loop: Loop, epoch: int, rates: tuple) -> dict:
    """An epoch's entry of results.json's history (its timings aside): the step metrics' means,
    the learning rates, the labels' health and changes, and the test set's numbers where
    --eval_every tests this epoch."""
    config, state = loop.config, loop.state
    lr, generator_lr = rates
    record = {"epoch": epoch + 1, **state.sums.means(), "lr/evaluator": lr}
    if loop.uses_generator:
        record["lr/generator"] = generator_lr
        if config.precision == "mixed_float16":
            record["meta/skipped_steps"] = state.sums.total("meta/skipped_steps")
    if loop.task.labels.auxiliary:
        record.update(label_health.usage_summary(state.sums.label_usage.numpy(), config.psi))
        record["train/trunk_grad_cosine"] = float(loop.trunk_cosine(loop.probe_batch))
    if loop.uses_generator:
        record.update(label_changes(loop))
    if config.evaluates(epoch):
        record.update(evaluate(loop))
    return record


def save_epoch(loop: Loop, epoch: int, record: dict) -> None:
    """Appends the record to the state and saves: checkpoint, events, the last epoch's exports,
    results.json (written last, so it says complete only once everything else is there)."""
    config, state = loop.config, loop.state
    history = state.history + [record]
    state.history_json.assign(json.dumps(history))
    state.epoch.assign(epoch + 1)
    state.step_in_epoch.assign(0)
    state.sums.reset()
    check_claim(loop, verify=True)
    save_checkpoint(loop)
    write_summaries(loop.writer, record)
    if loop.chief and config.export and epoch + 1 == config.epochs:  # before results.json says it is complete
        write_exports(loop)
    if loop.chief:
        summary = results_summary(loop, history)
        if summary["complete"]:  # the paper's metric, beside the hyperparameters in TensorBoard's HParams
            with loop.writer.as_default(step=epoch + 1):
                tf.summary.scalar(FINAL_METRIC, summary["test_accuracy"])
            write_session_status(loop.writer, hparams_pb2.STATUS_SUCCESS, epoch + 1)
        write_results(config.logdir, summary)


def results_summary(loop: Loop, history: list) -> dict:
    """results.json's content for the run's history so far (rundir.results_summary)."""
    run, data = loop.run, loop.data
    return rundir.results_summary(run.config, run.name, history, data.description, data.aux_label_info, run.identity)


def save_checkpoint(loop: Loop) -> None:
    """Saves the state; a full disk or read-only directory is one errors.Error, the checkpoints
    already there intact (a save writes ckpt-N_temp, then renames it and updates the index)."""
    with rundir.storing("a checkpoint", loop.checkpoints.directory):
        loop.checkpoints.save(checkpoint_number=int(loop.state.global_step.numpy()))


def write_results(logdir: str, summary: dict) -> None:
    with rundir.storing("results.json", logdir):
        rundir.write_results(logdir, summary)


def write_exports(loop: Loop) -> None:
    """The final networks, from the state as it is (the final checkpoint's)."""
    config = loop.config
    exports.write(
        config.logdir,
        loop.state.evaluator,
        loop.state.generator,
        config.psi if loop.task.labels.auxiliary else (),
        loop.data.class_names,
    )


def hparam_values(config: config_lib.Config) -> dict:
    """The experiment's fields as TensorBoard hyperparameters (bool, number or string), without
    those its method ignores (a baseline has no generator_lr)."""
    ignored = methods.get(config.method).ignored_fields
    return {
        key: ",".join(map(str, value)) if isinstance(value, tuple) else value
        for key, value in config.experiment().items()
        if key not in ignored
    }


def write_session_status(writer, status: int, epoch: int) -> None:
    """The run's status in TensorBoard's HParams dashboard (hparams_pb2.STATUS_SUCCESS once
    complete, STATUS_FAILURE once diverged), written once, when the run ends for good: the
    dashboard keeps the first. A run stopped to be resumed writes none and stays "unknown"."""
    with writer.as_default(step=epoch):
        tf.summary.experimental.write_raw_pb(hparams_summary.session_end_pb(status).SerializeToString(), step=epoch)
    writer.flush()


def train_and_evaluate(run: config_lib.Run | config_lib.Config, progress: bool = True, claim=None) -> dict:
    """Trains (or resumes) a run; returns the content of its results.json.

    A run leaves no traced graph behind, so a sweep's process does not grow run by run
    (models/vgg.custom_gradients_released).

    Args:
      run: the run, resolved (config_lib.resolve: the command line's sweep passes these), or a
        Config, resolved here (a notebook's call).
      claim: a sweep worker's claims.Claim on the run; the run stops without writing once it is lost.
    Raises:
      errors.Error: bad flags, data or log directory (and its subclasses NonFiniteLoss,
        Interrupted and ClaimLost, which train_epoch raises).
    """
    with vgg.custom_gradients_released():
        return _train_and_evaluate(run if isinstance(run, config_lib.Run) else config_lib.resolve(run), progress, claim)


def set_up(run: config_lib.Run, claim) -> tuple:
    """A resolved run's loop, its state restored from the log directory where there is one:
    (Loop, whether it resumes)."""
    config = run.config
    strategy = distribute.make_strategy(config.strategy, config.batch_size)
    chief = distribute.is_chief(strategy)
    rundir.check(config, chief, run.identity)
    run_data = inputs.prepare(run)
    keras.utils.set_random_seed(config.seed)
    state = state_lib.TrainState(config, run_data.input_shape, strategy, num_labelled=len(run_data.train))
    checkpoint = state.checkpoint(rundir.saved_variables(config.logdir))
    if chief:
        rundir.create(config, run.identity)
    # Every worker saves (a multi-worker save is collective); only the chief's copy is the run's.
    manager = rundir.checkpoint_manager(
        checkpoint, config.logdir, config.keep_checkpoints, None if chief else strategy.cluster_resolver.task_id
    )
    resuming = rundir.restore(checkpoint, config.logdir)
    task = state_lib.task(config)
    batch = config.batch_size
    loop = Loop(
        run=run,
        data=run_data,
        state=state,
        strategy=strategy,
        task=task,
        iteration=make_iteration(config, state, task, strategy),
        evaluate_batch=steps.compiled(lambda b: steps.evaluation_step(state.evaluator, b, task)),
        trunk_cosine=steps.compiled(lambda b: steps.trunk_gradient_cosine(state.evaluator, state.generator, b, task)),
        any_worker=steps.compiled(lambda flag: distribute.any_replica(strategy, flag)),
        label_batch=steps.compiled(
            lambda b: labels_lib.hard_generated_labels(
                state.generator, b["images"], b["labels"], task.mask_table, task.generator_labels_training
            )
        ),
        probe_batch=next(iter(run_data.train.batches(run_data.train_indices[:batch], batch))),
        checkpoints=manager,
        chief=chief,
        claim=claim,
        writer=tf.summary.create_file_writer(config.logdir) if chief else tf.summary.create_noop_writer(),
    )
    return loop, resuming


def announce(loop: Loop, resuming: bool) -> None:
    """The run's first lines (what it trains on, where, from where on) and its flags and
    hyperparameters in TensorBoard."""
    config, run_data, state = loop.config, loop.data, loop.state
    start_epoch = int(state.epoch.numpy())
    if start_epoch >= config.epochs:
        position = "already complete"
    elif resuming:
        position = f"resuming at epoch {start_epoch + 1} step {int(state.step_in_epoch.numpy())}"
    else:
        position = "starting"
    principal = run_data.class_names["principal"]
    named = f" ({', '.join(principal[:10])}{', ...' if len(principal) > 10 else ''})" if principal else ""
    examples = f"{len(run_data.train_indices)} train"
    if loop.task.labels.uses_meta_data:
        examples += f" / {len(run_data.meta_indices)} meta"
    print(
        f"{loop.run.name}: {config.pri} principal classes{named}, psi={list(config.psi)}, {examples} examples "
        f"from {run_data.description}; logdir {config.logdir}; {position}",
        flush=True,
    )
    if run_data.aux_label_info:
        info = run_data.aux_label_info
        agreement = info.get("human_agreement")
        agrees = f"; {agreement:.1%} of the training labels equal the human hierarchy's" if agreement else ""
        print(f"{config.method} labels from {info['embedder']}{agrees}", flush=True)
    with loop.writer.as_default(step=start_epoch):
        tf.summary.text("config/flags", "```\n" + config.to_flagfile() + "```")
        if not resuming:  # once per run: the HParams dashboard's row of this run
            hparams_api.hparams(hparam_values(config), trial_id=loop.run.name)


def epoch_lines(config: config_lib.Config, record: dict, learned_labels: bool) -> list:
    """What the log says of a finished epoch: its numbers, and for learned labels their health
    (Section 3.4: only they can collapse) with a warning line when they do."""
    epoch = record["epoch"]
    tested = f"test/acc {record['test/acc']:.4f} test/loss {record['test/loss']:.4f} " if "test/acc" in record else ""
    lines = [
        f"epoch {epoch}/{config.epochs}: {tested}train/pri_acc {record['train/pri_acc']:.4f} "
        f"{record['perf/images_per_s']:.0f} images/s"
    ]
    if learned_labels:
        lines.append(
            f"epoch {epoch}: labels' entropy {record['labels/aux_entropy_mean']:.3f} "
            f"(lowest class {min(record['labels/aux_entropy_per_pri']):.3f}), "
            f"{record['labels/aux_used_mean']:.2f} auxiliary classes used per principal class"
        )
        if warning := label_health.collapse_warning(record, config.psi):
            lines.append(f"epoch {epoch}: {warning}")
    return lines


def finish(loop: Loop, trained: bool) -> dict:
    """results.json of the run as it stands, and its exports where a complete run lacks them.

    trained: this process trained the last epoch, whose save wrote results.json already; it is
    written again only after exports written here (a rerun of a finished run, or one whose exports
    were lost), since results.json comes last.
    """
    config = loop.config
    summary = results_summary(loop, loop.state.history)
    if loop.chief:
        check_claim(loop, verify=True)
        # Exports asked for and missing: killed while exporting, damaged since, or a --noexport run.
        exporting = summary["complete"] and config.export and not rundir.exports_intact(config)
        if exporting:
            print(f"{config.logdir}: exports missing or incomplete; writing them from the final checkpoint", flush=True)
            write_exports(loop)
        if exporting or not trained:
            write_results(config.logdir, summary)
    return summary


def _train_and_evaluate(run: config_lib.Run, progress: bool, claim) -> dict:
    loop, resuming = set_up(run, claim)
    config = loop.config
    state = loop.state
    with signals.StopRequests() as stop:  # before the first line: a test (or a scheduler) may signal on it
        announce(loop, resuming)
        if loop.uses_generator and not resuming:  # the untrained generator's labels: epoch 1's "previous"
            state.previous_labels.assign(generator_hard_labels(loop))
        if state.history:  # re-emit the last record, in case the previous process died before writing it
            write_summaries(loop.writer, state.history[-1])
        start_epoch = int(state.epoch.numpy())
        for epoch in range(start_epoch, config.epochs):
            try:
                record = train_epoch(loop, epoch, stop, progress)
            except errors.NonFiniteLoss:
                if loop.checkpoints.latest_checkpoint:  # else nothing is left and another run may start here
                    write_session_status(loop.writer, hparams_pb2.STATUS_FAILURE, epoch + 1)
                raise
            print("\n".join(epoch_lines(config, record, loop.uses_generator)), flush=True)
            if epoch + 1 < config.epochs and stop_agreed(loop, stop):
                raise errors.Interrupted(
                    f"{stop.reason} after epoch {epoch + 1}; checkpoint saved in "
                    f"{config.logdir}. Rerun the same command to resume.",
                    stop.exit_signal,
                )
        if stop.signum is not None:  # after the last epoch: nothing left to stop
            print(f"{stop.reason} after the last epoch: the run is complete.", flush=True)
    return finish(loop, trained=start_epoch < config.epochs)
