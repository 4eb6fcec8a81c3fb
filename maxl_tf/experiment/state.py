"""What a checkpoint holds: both networks, their optimisers, the position in the run, the running
sums of the epoch in progress and the history of finished epochs.

Everything the results depend on lives here, so a run restored from its checkpoint at any step
continues exactly as an uninterrupted one would (the batches themselves are a function of
(seed, epoch, step): data/pipeline.py).
"""

import json

import keras
import tensorflow as tf

from maxl_tf import errors
from maxl_tf.core import labels as labels_lib
from maxl_tf.core import steps
from maxl_tf.experiment import config as config_lib
from maxl_tf.models import backbones
from maxl_tf.models import pixels
from maxl_tf.models import vgg
from maxl_tf.models.names import is_backbone_spec


class EpochSums(tf.Module):
    """Running sums of the step metrics over the epoch in progress, each with the number of steps
    it counts, and the auxiliary labels' argmax counts per class.

    Metrics are added inside the compiled iteration and averaged once per epoch; the sums are
    variables, saved in the checkpoint, so an epoch resumed mid-way logs the same means.
    """

    def __init__(self, names, num_aux: int):
        super().__init__(name="epoch_sums")
        self.names = tuple(names)
        self._index = {name: i for i, name in enumerate(self.names)}
        self.totals = tf.Variable(tf.zeros(len(self.names), tf.float64))
        self.counts = tf.Variable(tf.zeros(len(self.names), tf.float64))
        self.label_usage = tf.Variable(tf.zeros(max(num_aux, 1), tf.int64))

    def add(self, values: dict, counted=True) -> None:
        """Adds one step's metrics; counted=False (a tensor allowed) adds the step to no mean."""
        indices = tf.constant([[self._index[name]] for name in values])
        counted = tf.cast(counted, tf.bool)
        added = tf.stack(
            [tf.where(counted, tf.cast(v, tf.float64), tf.constant(0.0, tf.float64)) for v in values.values()]
        )
        self.totals.assign_add(tf.scatter_nd(indices, added, [len(self.names)]))
        self.counts.assign_add(
            tf.scatter_nd(indices, tf.fill([len(values)], tf.cast(counted, tf.float64)), [len(self.names)])
        )

    def means(self) -> dict:
        """{name: mean over the steps that counted it}, for every metric counted at least once."""
        totals, counts = self.totals.numpy(), self.counts.numpy()
        return {name: totals[i] / counts[i] for i, name in enumerate(self.names) if counts[i]}

    def total(self, name: str) -> float:
        return float(self.totals.numpy()[self._index[name]])

    def reset(self) -> None:
        for variable in (self.totals, self.counts, self.label_usage):
            variable.assign(tf.zeros_like(variable))


def _optimizer(learning_rate: float, precision: str, model: keras.Model):
    """Plain SGD, as in the paper; float16 wraps it in dynamic loss scaling."""
    optimizer = keras.optimizers.SGD(learning_rate)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    return optimizer


# The step metrics an epoch sums, in the order its checkpoints hold them.
EPOCH_METRICS = (
    steps.PRINCIPAL_METRICS
    + steps.AUXILIARY_METRICS
    + (steps.EVALUATOR_GRAD_NORM,)
    + steps.GENERATOR_METRICS
    + (steps.SKIPPED_STEPS,)
)


# Saved in every checkpoint, under this name, since networks take raw pixels (models/pixels.py);
# absent before.
INPUT_CONTRACT = "input_contract"


class _BeforeRawPixels(tf.__internal__.tracking.AutoTrackable):
    """A built-in VGG's checkpoint layout from before it took raw pixels: its operations without
    the weightless pixels.Normalise in front, so each layer keeps the position it was saved at.
    The network computes what the old one did on the pipeline's normalised images."""

    def __init__(self, network: keras.Model):
        self._operations = [op for op in network.operations if not isinstance(op, pixels.Normalise)]


class TrainState:
    """Everything a checkpoint restores."""

    def __init__(
        self, config: config_lib.Config, input_shape, strategy: tf.distribute.Strategy = None, num_labelled: int = 0
    ):
        """Builds the networks of a resolved config (config.resolve: its psi filled in). Variables are mirrored on
        the strategy's replicas (default: this device), and batch norm synchronised across them
        when there are several. With a generator and num_labelled > 0 it also holds the generator's
        hard labels of that many training images after the first and the latest labelling pass
        (train.label_changes), so the label-change counts resume exactly."""
        self.config = config
        strategy = strategy or tf.distribute.get_strategy()
        synchronized_bn = strategy.num_replicas_in_sync > 1
        labels = labels_lib.source(config.method)
        aux = sum(config.psi) if labels.auxiliary else 0
        with strategy.scope():
            if is_backbone_spec(config.model):  # any Keras backbone (float32 only: config.check_flags)
                psi = config.psi if labels.auxiliary else ()
                self.evaluator = backbones.build_evaluator(
                    config.model, input_shape, config.pri, psi, config.pretrained
                )
            else:
                self.evaluator = vgg.build_evaluator(
                    input_shape, config.pri, aux, config.model, config.width, config.precision, synchronized_bn
                )
            self.evaluator_optimizer = _optimizer(config.lr, config.precision, self.evaluator)
            self.generator = self.generator_optimizer = self.lookahead_model = None
            if labels.learned:
                if is_backbone_spec(config.model):
                    self.generator = backbones.build_generator(config.model, input_shape, config.psi, config.pretrained)
                else:
                    self.generator = vgg.build_generator(
                        input_shape, aux, config.model, config.width, config.precision, synchronized_bn
                    )
                self.generator_optimizer = _optimizer(config.generator_lr, config.precision, self.generator)
                # The lookahead runs in float32 (meta.py says why); this twin holds no state of
                # its own: it is called with the evaluator's weights.
                self.lookahead_model = self.evaluator
                if config.precision != "float32":
                    self.lookahead_model = vgg.build_evaluator(
                        input_shape, config.pri, aux, config.model, config.width, "float32", synchronized_bn
                    )
            self.epoch = tf.Variable(0, dtype=tf.int64)  # completed epochs
            self.step_in_epoch = tf.Variable(0, dtype=tf.int64)  # completed steps of the current epoch
            self.global_step = tf.Variable(0, dtype=tf.int64)
            self.sums = EpochSums(EPOCH_METRICS, aux)
            self.nonfinite_step = tf.Variable(-1, dtype=tf.int64)  # first step with a non-finite loss
            self.first_labels = self.previous_labels = None
            if self.generator is not None and num_labelled:
                # -1: no labelling pass yet.
                self.first_labels = tf.Variable(tf.fill([num_labelled], tf.constant(-1, tf.int64)))
                self.previous_labels = tf.Variable(tf.fill([num_labelled], tf.constant(-1, tf.int64)))
        # Outside the strategy: collectives cannot broadcast strings, and only the host reads it.
        self.history_json = tf.Variable("[]")
        self.input_contract = tf.Variable("raw pixels, float32 0..255")

    def checkpoint(self, saved=None) -> tf.train.Checkpoint:
        """What a checkpoint saves and restores.

        saved: the variable names of the checkpoint to restore (rundir.saved_variables), None for
        none. One saved before networks took raw pixels is restored, and the run goes on saving,
        in its own layout (_BeforeRawPixels).

        Raises:
          errors.Error: saved is a --model backbone's from before raw pixels: its backbone saw
            normalised images, and resuming would change what it sees mid-run.
        """
        before_raw_pixels = saved is not None and INPUT_CONTRACT not in {name.partition("/")[0] for name in saved}
        if before_raw_pixels and is_backbone_spec(self.config.model):
            raise errors.Error(
                f"{self.config.logdir}: its checkpoints come from a maxl_tf before networks took raw pixels, "
                f"and its --model={self.config.model} backbone saw normalised images; resuming would change its "
                f"input mid-run. Train it afresh with another --logdir."
            )
        layout = _BeforeRawPixels if before_raw_pixels else (lambda network: network)
        parts = dict(
            evaluator=layout(self.evaluator),
            evaluator_optimizer=self.evaluator_optimizer,
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
            global_step=self.global_step,
            sums=self.sums,
            history=self.history_json,
        )
        if not before_raw_pixels:
            parts[INPUT_CONTRACT] = self.input_contract
        if self.generator is not None:
            parts.update(generator=layout(self.generator), generator_optimizer=self.generator_optimizer)
        if self.first_labels is not None:
            parts.update(first_labels=self.first_labels, previous_labels=self.previous_labels)
        return tf.train.Checkpoint(**parts)

    @property
    def history(self) -> list:
        """One record per finished epoch, as results.json holds them."""
        return json.loads(self.history_json.numpy().decode())


def task(config: config_lib.Config) -> steps.Task:
    """The steps' task of a resolved config (config.resolve: its psi filled in)."""
    return steps.Task.create(
        config.method,  # the one place a --method string becomes a label source
        config.pri,
        config.psi,
        focal_gamma=config.gamma,
        entropy_weight=config.entropy_weight,
        generator_labels_training=config.generator_labels_bn == "training",
        hypergradient=config.hypergradient,
        neumann_terms=config.neumann_terms,
        generator_weight_decay=config.generator_weight_decay,
        generator_weight_decay_type=config.generator_weight_decay_type,
    )
