"""One training step of each network and the evaluation step, as plain functions of their inputs.

They run eagerly (tests) or inside tf.function. `iteration` is one replica's iteration of
Algorithm 1: the command line's loop (experiment/train.make_iteration) and the Keras model's
train_step (models/maxl.py) both call it, so both share one set of numerics. Each returns its
metrics under the names they are logged by (train/..., meta/...); none of them reads flags or
global state.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from maxl_tf.core import distribute
from maxl_tf.core import evaluator as evaluator_lib
from maxl_tf.core import labels as labels_lib
from maxl_tf.core import losses
from maxl_tf.core import meta
from maxl_tf.core import methods
from maxl_tf.core import psi as psi_lib

# The metrics the steps return, under the names they are logged by: the one list the command
# line's epoch sums (experiment/state.py) and the Keras model's trackers (models/maxl.py) read.
PRINCIPAL_METRICS = ("train/pri_loss", "train/pri_acc")
AUXILIARY_METRICS = ("train/aux_loss", "train/aux_acc")
EVALUATOR_GRAD_NORM = "train/grad_norm_evaluator"
GENERATOR_METRICS = ("meta/loss", "meta/loss_before", "meta/loss_after", "meta/entropy", "meta/grad_norm_generator")
SKIPPED_STEPS = "meta/skipped_steps"  # with float16 loss scaling only
WEIGHT_DECAY_TYPES = ("l1", "l2")


@dataclasses.dataclass(frozen=True)
class Task:
    """What the losses need to know about the run. Build it with Task.create, which checks it.

    Attributes:
      method: where the auxiliary targets come from: a labels.LabelSource (or the --method string
        naming one).
      num_pri, num_aux: principal classes and sum(psi).
      mask_table: [num_pri, num_aux] float32 psi_mask.
      gamma: focal-loss focusing parameter (0 = cross-entropy).
      entropy_weight: weight of the entropy regulariser in the meta objective.
      generator_labels_training: the generator labels the evaluator's batches in training mode
        (--generator_labels_bn=training).
      hypergradient: a name in meta.HYPERGRADIENTS, the meta step's gradient.
      neumann_terms: Neumann-series terms of the implicit hypergradient.
      generator_weight_decay, generator_weight_decay_type: the generator step's weight decay
        (generator_step).
      psi: auxiliary classes per principal class (() for single-task).
    """

    method: labels_lib.LabelSource | str
    num_pri: int
    num_aux: int
    mask_table: tf.Tensor
    gamma: float = 2.0
    entropy_weight: float = 0.2
    generator_labels_training: bool = False
    hypergradient: str = methods.EXACT_HYPERGRADIENT
    neumann_terms: int = 3
    generator_weight_decay: float = 5e-4
    generator_weight_decay_type: str = "l1"
    psi: tuple = ()

    @classmethod
    def create(
        cls,
        labels,
        pri: int,
        psi=None,
        focal_gamma: float = 2.0,
        entropy_weight: float = 0.2,
        generator_labels_training: bool = False,
        hypergradient: str = methods.EXACT_HYPERGRADIENT,
        neumann_terms: int = 3,
        generator_weight_decay: float = 5e-4,
        generator_weight_decay_type: str = "l1",
    ) -> "Task":
        """The one constructor, for the command line (experiment/state.task) and models/maxl.MAXL.

        labels: a labels.LabelSource or the --method string naming one; psi is ignored (and may be
        None) for single-task. The command line has checked its flags already (naming them); a
        Python caller gets these checks.
        Raises:
          ValueError naming the argument.
        """
        labels = labels_lib.source(labels)
        if hypergradient not in methods.HYPERGRADIENTS:
            raise ValueError(f"hypergradient={hypergradient!r}: one of {', '.join(methods.HYPERGRADIENTS)}")
        if generator_weight_decay_type not in WEIGHT_DECAY_TYPES:
            raise ValueError(f"generator_weight_decay_type={generator_weight_decay_type!r}: l1 or l2")
        if int(neumann_terms) < 0:
            raise ValueError(f"neumann_terms={neumann_terms}: must be >= 0")
        if labels.auxiliary and psi is None:
            raise ValueError(f"psi: labels={labels!r} needs psi, the auxiliary classes per principal class")
        psi = psi_lib.check(psi, pri) if labels.auxiliary else ()
        return cls(
            method=labels,
            num_pri=int(pri),
            num_aux=sum(psi),
            mask_table=tf.constant(psi_lib.mask(psi) if psi else np.zeros([pri, 1], np.float32)),
            gamma=float(focal_gamma),
            entropy_weight=float(entropy_weight),
            generator_labels_training=bool(generator_labels_training),
            hypergradient=hypergradient,
            neumann_terms=int(neumann_terms),
            generator_weight_decay=float(generator_weight_decay),
            generator_weight_decay_type=generator_weight_decay_type,
            psi=psi,
        )

    def options(self) -> dict:
        """create's keyword arguments that rebuild this task (MAXL.get_config)."""
        return dict(
            psi=list(self.psi),
            labels=self.labels.name,
            focal_gamma=self.gamma,
            entropy_weight=self.entropy_weight,
            generator_labels_training=self.generator_labels_training,
            hypergradient=self.hypergradient,
            neumann_terms=self.neumann_terms,
            generator_weight_decay=self.generator_weight_decay,
            generator_weight_decay_type=self.generator_weight_decay_type,
        )

    @property
    def labels(self) -> labels_lib.LabelSource:
        return labels_lib.source(self.method)  # a test may give the --method string


def compiled(function, jit_compile=None):
    """tf.function without AutoGraph, for these steps and what calls them. They branch on Python
    values only (the task, a missing batch), so the graph is the same, and AutoGraph's rewriting
    of their source cost seconds of every run's start. A backbone must write a branch on tensors
    with tf.cond or keras.ops.cond, as Keras 3 asks of code that also runs on its other backends."""
    return tf.function(function, autograph=False, jit_compile=jit_compile)


def _multitask_losses(evaluator_output, labels, targets, task: Task):
    """(principal loss, auxiliary loss or 0, principal logits, auxiliary logits or None)."""
    pri_logits, aux_logits = evaluator_lib.outputs(evaluator_output)
    pri_loss = losses.focal_loss(pri_logits, tf.one_hot(labels, task.num_pri), task.gamma)
    aux_loss = 0.0 if targets is None else losses.focal_loss(aux_logits, targets, task.gamma)
    return pri_loss, aux_loss, pri_logits, aux_logits


def _loss_scale(optimizer):
    """The optimiser's current loss scale (a LossScaleOptimizer's dynamic scale under float16)."""
    return optimizer.scale_loss(tf.constant(1.0))


def _step_grad_norm(grads, loss_scale):
    """Norm of the step's gradient, of the global batch's mean loss (unscaled): every replica's
    share summed first, as the optimiser sums them, so 1 and N replicas read the same. The sum is
    one more all-reduce per step, only with several replicas."""
    grads = [g for g in grads if g is not None]
    if distribute.num_replicas() > 1:
        grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
    return tf.cast(tf.linalg.global_norm(grads), tf.float32) / loss_scale


def evaluator_step(evaluator, optimizer, generator, batch, task: Task):
    """One SGD step of the evaluator on L_pri + L_aux (paper Eq. 2), generator labels held fixed.

    Under a distribution strategy this runs on every replica with its slice of the batch; the
    optimiser sums the replicas' gradients of their share of the loss (distribute.py).

    Returns:
      (metrics, assigned): metrics, scalars of this replica's slice: train/pri_loss, train/pri_acc,
      train/grad_norm_evaluator and, with an auxiliary task, train/aux_loss and train/aux_acc;
      assigned: [batch] argmax of the auxiliary targets, for label-usage statistics (None for
      single-task).
    """
    targets = labels_lib.auxiliary_targets(
        task.method, batch, task.num_aux, generator, task.mask_table, task.generator_labels_training
    )
    with tf.GradientTape() as tape:
        pri_loss, aux_loss, pri_logits, aux_logits = _multitask_losses(
            evaluator(batch["images"], training=True), batch["labels"], targets, task
        )
        loss = pri_loss + aux_loss
        scaled_loss = optimizer.scale_loss(distribute.replica_share(loss))
    grads = tape.gradient(scaled_loss, evaluator.trainable_variables)
    grad_norm = _step_grad_norm(grads, _loss_scale(optimizer))  # before apply moves a float16 scale
    optimizer.apply(grads, evaluator.trainable_variables)
    metrics = {
        "train/pri_loss": pri_loss,
        "train/pri_acc": losses.accuracy(pri_logits, batch["labels"]),
        "train/grad_norm_evaluator": grad_norm,
    }
    if targets is None:
        return metrics, None
    assigned = tf.argmax(targets, axis=-1, output_type=tf.int64)
    metrics.update({"train/aux_loss": aux_loss, "train/aux_acc": losses.accuracy(aux_logits, assigned)})
    return metrics, assigned


def generator_step(
    generator,
    optimizer,
    evaluator,
    batch,
    task: Task,
    inner_lr,
    weight_decay: float = 5e-4,
    weight_decay_type: str = "l1",
    lookahead_model=None,
    train_batch=None,
):
    """One SGD step of the generator on the meta objective (paper Eq. 3), by task.hypergradient.

    Weight decay is added to the gradient: L1 (paper: wd * sign(w)) or L2 (authors' code: wd * w),
    as each replica's share (the optimiser sums replicas) and scaled like the meta gradient.
    A LossScaleOptimizer (float16) skips a step whose scaled gradient overflowed.
    lookahead_model: see meta.second_order_meta_gradient (a float32 twin under mixed precision).
    train_batch: the batch the evaluator just stepped on; the implicit hypergradient's Hessian is
    of its training loss (required there, unused by the others).

    Returns:
      metrics, scalars of this replica's slice: meta/loss, meta/loss_before and meta/loss_after
      (the principal loss before and after the lookahead; both the loss at the current weights
      for the implicit hypergradient, which has no lookahead), meta/entropy,
      meta/grad_norm_generator (of the meta-gradient alone) and, with loss scaling,
      meta/skipped_steps (1 when the optimiser skipped the step for a non-finite gradient).
    """
    loss_scale = _loss_scale(optimizer)
    scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    options = dict(
        gamma=task.gamma,
        entropy_weight=task.entropy_weight,
        loss_scale=loss_scale if scaling else None,
        lookahead_model=lookahead_model,
    )
    grads, stats = meta.HYPERGRADIENTS[task.hypergradient](
        evaluator, generator, train_batch, batch, task.mask_table, inner_lr, task.neumann_terms, **options
    )
    grad_norm = _step_grad_norm(grads, loss_scale)
    if weight_decay:
        decay = tf.sign if weight_decay_type == "l1" else tf.identity
        share = weight_decay * loss_scale / distribute.num_replicas()
        grads = [g + tf.cast(share, v.dtype) * decay(v) for g, v in zip(grads, generator.trainable_variables)]
    optimizer.apply(grads, generator.trainable_variables)
    metrics = {
        "meta/loss": stats["meta_loss"],
        "meta/loss_before": stats["loss_before"],
        "meta/loss_after": stats["loss_after"],
        "meta/entropy": stats["entropy"],
        "meta/grad_norm_generator": grad_norm,
    }
    if scaling:  # what LossScaleOptimizer checks element by element, read off the norm
        metrics["meta/skipped_steps"] = 1.0 - tf.cast(tf.math.is_finite(grad_norm), tf.float32)
    return metrics


def iteration(networks, train_batch, meta_batch, task: Task, train_evaluator: bool = True):
    """One replica's iteration of Algorithm 1: an evaluator step on train_batch, then a generator
    step on meta_batch (either may be None; train_evaluator=False skips the evaluator step with a
    training batch at hand, for the implicit hypergradient's Hessian or a benchmark).

    networks: anything with evaluator, evaluator_optimizer, generator, generator_optimizer and
    lookahead_model attributes (experiment/state.TrainState, models/maxl.MAXL). The lookahead's
    step size is the evaluator optimiser's current learning rate.

    Returns:
      (metrics, usage): the steps' metrics of this replica's slices; usage, [num_aux] int64
      counts of the auxiliary targets' argmax (zeros without an evaluator step or auxiliary task).
    """
    metrics, usage = {}, tf.zeros([task.num_aux], tf.int64)
    if train_batch is not None and train_evaluator:
        metrics, assigned = evaluator_step(
            networks.evaluator, networks.evaluator_optimizer, networks.generator, train_batch, task
        )
        if assigned is not None:  # counts per class: one_hot, as XLA cannot compile bincount
            usage = tf.reduce_sum(tf.one_hot(assigned, task.num_aux, dtype=tf.int64), axis=0)
    if meta_batch is not None:
        metrics.update(
            generator_step(
                networks.generator,
                networks.generator_optimizer,
                networks.evaluator,
                meta_batch,
                task,
                networks.evaluator_optimizer.learning_rate,
                task.generator_weight_decay,
                task.generator_weight_decay_type,
                networks.lookahead_model,
                train_batch,
            )
        )
    return metrics, usage


def evaluation_step(evaluator, batch, task: Task):
    """Principal-task loss and correct count on a test batch, batch norm in inference mode.

    Returns sums (not means), loss_sum, correct and count, so batches of different sizes add up
    exactly.
    """
    pri_logits, _ = evaluator_lib.outputs(evaluator(batch["images"], training=False))
    per_example = losses.focal_loss(pri_logits, tf.one_hot(batch["labels"], task.num_pri), task.gamma)
    count = tf.cast(tf.shape(batch["labels"])[0], tf.float32)
    return {
        "loss_sum": per_example * count,
        "correct": losses.accuracy(pri_logits, batch["labels"]) * count,
        "count": count,
    }


def trunk_gradient_cosine(evaluator, generator, batch, task: Task):
    """Cosine similarity of the principal and auxiliary losses' gradients on the shared trunk.

    A diagnostic of how the auxiliary task pulls on the shared features (positive: it helps the
    principal task's direction). Batch norm uses batch statistics as in training, through
    stateless_call, so the evaluator's moving statistics are untouched; the generator's labels are
    those of --generator_labels_bn, and its statistics are untouched too.
    """
    targets = labels_lib.auxiliary_targets(
        task.method,
        batch,
        task.num_aux,
        generator,
        task.mask_table,
        task.generator_labels_training,
        update_statistics=False,
    )
    if targets is None:
        return tf.constant(0.0)
    weights = [v.value for v in evaluator.trainable_variables]
    non_trainable = [v.value for v in evaluator.non_trainable_variables]
    trunk = [weights[i] for i in evaluator_lib.trunk_variable_indices(evaluator)]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(trunk)
        outputs, _ = evaluator.stateless_call(weights, non_trainable, batch["images"], training=True)
        pri_loss, aux_loss, _, _ = _multitask_losses(outputs, batch["labels"], targets, task)
    pri_grad = tf.concat([tf.reshape(g, [-1]) for g in tape.gradient(pri_loss, trunk)], 0)
    aux_grad = tf.concat([tf.reshape(g, [-1]) for g in tape.gradient(aux_loss, trunk)], 0)
    del tape
    return tf.reduce_sum(pri_grad * aux_grad) / (tf.norm(pri_grad) * tf.norm(aux_grad) + 1e-12)
