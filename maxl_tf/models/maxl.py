"""MAXL as a Keras model: compile with two optimisers, fit on any tf.data pipeline or arrays.

    model = MAXL(evaluator=heads.multitask(backbone, pri=10, psi=psi),
                 generator=heads.generator(keras.models.clone_model(backbone), psi=psi), psi=psi)
    model.compile(optimizer=keras.optimizers.SGD(0.01), generator_optimizer=keras.optimizers.SGD(1e-3))
    model.fit(train_ds, meta_data=meta_ds, validation_data=test_ds, epochs=10, callbacks=[...])
    model.save("m.keras"); model.export("exported")  # load_model after import maxl_tf; serve anywhere

Images are raw pixels (models/pixels.py), checked at the door (arrays whole, a pipeline's first
batch).

Each training step is core/steps.iteration, the function the command line's loop calls
(experiment/train.make_iteration), so fit and the CLI share one set of numerics
(tests/maxl_model_test.py pins them equal). fit drives its own compiled step (make_train_function)
because a step with a generator step and one without are two graphs: with meta_every=K the
generator steps after every K-th evaluator step of the run, counted by the evaluator optimiser's
iterations (so BackupAndRestore resumes the count), and meta batches are drawn only then, as the
command line draws them.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from maxl_tf.core import distribute
from maxl_tf.core import evaluator as evaluator_lib
from maxl_tf.core import labels as labels_lib
from maxl_tf.core import methods
from maxl_tf.core import steps
from maxl_tf.models import export as export_lib
from maxl_tf.models import pixels

# Training metrics as fit logs them (Keras style, no slashes), from the steps' names. The losses
# say which loss they are: "{loss}" is focal_loss (focal_gamma > 0, the paper's) or cross_entropy.
# "loss" is Keras' slot for what the evaluator's optimiser minimises: principal + auxiliary loss
# in training, the principal loss in evaluate (validation data has no auxiliary labels).
_LOG_NAMES = {
    "train/pri_loss": "principal_{loss}",
    "train/pri_acc": "principal_accuracy",
    "train/aux_loss": "auxiliary_{loss}",
    "train/aux_acc": "auxiliary_accuracy",
    "train/grad_norm_evaluator": "grad_norm",
    "meta/loss": "meta_loss",
    "meta/loss_before": "meta_loss_before",
    "meta/loss_after": "meta_loss_after",
    "meta/entropy": "meta_entropy",
    "meta/grad_norm_generator": "meta_grad_norm",
}
_LOSS = "loss"
_EVALUATOR_METRICS = (_LOSS,) + steps.PRINCIPAL_METRICS + (steps.EVALUATOR_GRAD_NORM,)
_EVALUATION_METRICS = (_LOSS,) + steps.PRINCIPAL_METRICS
# The generator's optimiser where compile is given none: the command line's --generator_lr
# default (the paper's).
DEFAULT_GENERATOR_LR = 1e-5


class LabelCounts(keras.metrics.Metric):
    """How often each auxiliary class was the argmax target of an evaluator step, summed over
    replicas; callbacks.LabelUsage reads and resets it every epoch. [num_aux] float32"""

    def __init__(self, num_aux: int, name: str = "label_counts", **kwargs):
        super().__init__(name=name, **kwargs)
        self.counts = self.add_variable(shape=(max(num_aux, 1),), initializer="zeros", aggregation="sum")

    def update_state(self, counts):
        self.counts.assign_add(tf.cast(counts, self.counts.dtype))

    def result(self):
        return self.counts.value

    def reset_state(self):
        self.counts.assign(tf.zeros_like(self.counts))


def _classes(model: keras.Model) -> list:
    """The last dimension of each of a functional model's outputs (None: unknown)."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if outputs is None:
        return None
    return [o.shape[-1] for o in outputs]


def _as_batch(data, name: str) -> dict:
    """A dataset element (images, labels[, aux_labels]) or a dict with those keys -> the steps' batch."""
    if isinstance(data, dict):
        missing = {"images", "labels"} - set(data)
        if missing:
            raise ValueError(f"{name}: dict elements need 'images' and 'labels' keys; missing {sorted(missing)}")
        batch = dict(data)
    elif isinstance(data, (tuple, list)) and len(data) in (2, 3) and data[1] is not None:
        batch = {"images": data[0], "labels": data[1]}
        if len(data) == 3:
            batch["aux_labels"] = data[2]
    else:
        raise ValueError(f"{name}: elements must be (images, labels) or (images, labels, aux_labels); got no labels")
    if not batch["images"].dtype.is_floating:  # uint8 pixels: the losses' one-hots take the images' dtype
        batch["images"] = tf.cast(batch["images"], keras.config.floatx())
    batch["labels"] = tf.cast(batch["labels"], tf.int64)
    if "aux_labels" in batch:
        batch["aux_labels"] = tf.cast(batch["aux_labels"], tf.int64)
    return batch


def _parts(element, name: str) -> tuple:
    """(images, labels, aux_labels or None) of a dataset element or its spec: (images, labels[,
    aux_labels]) or a dict with those keys."""
    if isinstance(element, dict):
        if "images" not in element or "labels" not in element:
            raise ValueError(f"{name}: dict elements need 'images' and 'labels' keys; it has {sorted(element)}")
        return element["images"], element["labels"], element.get("aux_labels")
    if isinstance(element, (tuple, list)) and len(element) in (2, 3):
        return element[0], element[1], (element[2] if len(element) == 3 else None)
    raise ValueError(
        f"{name}: a dataset of (images, labels) or (images, labels, aux_labels) elements; "
        f"this one's elements are {element} (no labels)"
    )


def _check_element_spec(spec, name: str, needs_aux: bool, image_shape=None) -> None:
    """Refuses, before anything is traced, a dataset whose elements carry no integer labels, images
    that are not [batch, H, W, C] uint8 or floats, or of another shape than image_shape (H, W, C;
    None: any size)."""
    images, labels, aux = _parts(spec, name)
    if not isinstance(labels, tf.TensorSpec) or not labels.dtype.is_integer or labels.shape.rank not in (None, 1):
        raise ValueError(f"{name}: labels must be a batch of integer class indices [batch]; got {labels}")
    if needs_aux and aux is None:
        raise ValueError(f"{name}: this label source needs (images, labels, aux_labels) elements")
    if not isinstance(images, tf.TensorSpec):
        raise ValueError(f"{name}: images must be one tensor [batch, height, width, channels]; got {images}")
    if images.dtype != tf.uint8 and not images.dtype.is_floating:
        raise ValueError(f"{name}: images must be uint8, or floats 0..255 (raw pixels); got {images.dtype.name}")
    if images.shape.rank is not None and images.shape.rank != 4:
        hint = " (add a channel axis)" if images.shape.rank == 3 else ""
        raise ValueError(
            f"{name}: images must be batches [batch, height, width, channels]; got shape {tuple(images.shape)}{hint} "
            f"(a dataset of single images: .batch(batch_size))"
        )
    if image_shape is not None and not images.shape[1:].is_compatible_with(tf.TensorShape(image_shape)):
        raise ValueError(f"{name}: images of shape {tuple(images.shape[1:])}; the evaluator takes {tuple(image_shape)}")


def _check_generator(generator, evaluator, labels, psi) -> None:
    """A generator where the labels are learned, of sum(psi) classes and its own weights; none
    elsewhere. Raises ValueError / TypeError naming generator."""
    if not labels.learned:
        if generator is not None:
            raise ValueError(f"generator: labels={labels!r} learns no labels; pass generator=None")
        return
    if not isinstance(generator, keras.Model):
        raise TypeError(f"generator: labels={labels!r} needs a keras.Model generator (heads.generator)")
    generator_classes = _classes(generator)
    if generator_classes is not None and generator_classes != [sum(psi)]:
        raise ValueError(
            f"psi={psi}: sums to {sum(psi)} auxiliary classes, but the generator outputs {generator_classes}"
        )
    if {id(v) for v in evaluator.weights} & {id(v) for v in generator.weights}:
        raise ValueError(
            "generator: shares weights with the evaluator; give it its own backbone "
            "(e.g. keras.models.clone_model(backbone))"
        )


@keras.saving.register_keras_serializable(package="maxl_tf")
class MAXL(keras.Model):
    """An evaluator trained with auxiliary labels: MAXL's learned ones (a generator) or a baseline's.

    It takes raw pixels, [batch, H, W, C] uint8 or float32 0..255 (models/pixels.py): the
    networks scale their own input. Calling it (and predict) returns the principal task's
    probabilities [batch, pri]; evaluate reports the principal loss and accuracy. Build it inside
    strategy.scope() for data parallelism; give batch-norm layers synchronized=True for replicas
    to match one device.
    """

    def __init__(
        self,
        evaluator: keras.Model,
        generator: keras.Model | None = None,
        psi=None,
        labels: labels_lib.LabelSource | None = None,
        hypergradient: str = methods.EXACT_HYPERGRADIENT,
        meta_every: int = 1,
        entropy_weight: float = 0.2,
        focal_gamma: float = 2.0,
        generator_weight_decay: float = 5e-4,
        generator_weight_decay_type: str = "l1",
        neumann_terms: int = 3,
        generator_labels_training: bool = False,
        **kwargs,
    ):
        """
        Args:
          evaluator: principal and auxiliary logits (heads.multitask; the principal alone for
            labels=Single()).
          generator: auxiliary logits [batch, sum(psi)] (heads.generator); MAXL's labels only.
          psi: auxiliary classes per principal class (core/psi.py); not for labels=Single().
          labels: a labels.LabelSource (default labels.Maxl()); human, random and prototypical
            labels come with the data, (images, labels, aux_labels).
          hypergradient: second_order, first_order or implicit (core/meta.py).
          meta_every: a generator step after every meta_every-th evaluator step.
          entropy_weight, focal_gamma (0: cross-entropy), generator_weight_decay,
          generator_weight_decay_type (l1 | l2), neumann_terms, generator_labels_training: as the
            command line's flags of the same names (README).
        Raises:
          ValueError / TypeError naming the argument.
        """
        super().__init__(**kwargs)
        if not isinstance(evaluator, keras.Model):
            raise TypeError(f"evaluator: a keras.Model, not {type(evaluator).__name__}")
        if isinstance(meta_every, bool) or not isinstance(meta_every, (int, np.integer)) or meta_every < 1:
            raise ValueError(f"meta_every={meta_every!r}: must be an integer >= 1")
        evaluator_classes = _classes(evaluator)
        if not evaluator_classes:
            raise ValueError(f"evaluator {evaluator.name!r}: needs known outputs [principal logits, auxiliary logits]")
        self.task = steps.Task.create(
            labels if labels is not None else labels_lib.Maxl(),
            evaluator_classes[0],
            psi,
            focal_gamma=focal_gamma,
            entropy_weight=entropy_weight,
            generator_labels_training=generator_labels_training,
            hypergradient=hypergradient,
            neumann_terms=neumann_terms,
            generator_weight_decay=generator_weight_decay,
            generator_weight_decay_type=generator_weight_decay_type,
        )
        labels, psi = self.task.labels, self.task.psi
        if labels.auxiliary and (len(evaluator_classes) < 2 or evaluator_classes[1] != sum(psi)):
            raise ValueError(
                f"psi={psi}: sums to {sum(psi)} auxiliary classes, but the evaluator's outputs have "
                f"{evaluator_classes} classes ([principal, auxiliary])"
            )
        _check_generator(generator, evaluator, labels, psi)
        self.evaluator = evaluator
        self.generator = generator if labels.learned else None
        self.lookahead_model = None  # the evaluator itself (meta.py)
        self.psi = psi
        self.meta_every = int(meta_every)
        names = _EVALUATOR_METRICS + (steps.AUXILIARY_METRICS if labels.auxiliary else ())
        names += steps.GENERATOR_METRICS if labels.learned else ()
        loss = "focal_loss" if self.task.gamma else "cross_entropy"
        self._log_names = {name: _LOG_NAMES.get(name, name).format(loss=loss) for name in names}
        self._trackers = {name: keras.metrics.Mean(name=self._log_names[name]) for name in names}
        self.label_counts = LabelCounts(sum(psi))
        self._meta_data = self._meta_iterator = self._meta_name = None
        self.generator_optimizer = None
        self._evaluator_steps = None  # evaluator steps of the run, read from the optimiser at fit's first step
        self.built = True

    # Keras' API ---------------------------------------------------------------------------------

    def get_config(self):
        return {
            "evaluator": keras.saving.serialize_keras_object(self.evaluator),
            "generator": None if self.generator is None else keras.saving.serialize_keras_object(self.generator),
            **self.task.options(),
            "meta_every": self.meta_every,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["evaluator"] = keras.saving.deserialize_keras_object(config["evaluator"])
        if config.get("generator") is not None:
            config["generator"] = keras.saving.deserialize_keras_object(config["generator"])
        return cls(**config)

    def get_compile_config(self):
        """Both optimisers, so keras.models.load_model compiles the loaded model and restores
        their state (compile_from_config)."""
        if not self.compiled:
            return None
        serialize = keras.saving.serialize_keras_object
        return {
            "optimizer": serialize(self.optimizer),
            "generator_optimizer": None if self.generator_optimizer is None else serialize(self.generator_optimizer),
            "jit_compile": bool(self.jit_compile),
        }

    def compile_from_config(self, config):
        deserialize = keras.saving.deserialize_keras_object
        generator_optimizer = config.get("generator_optimizer")
        self.compile(
            optimizer=deserialize(config["optimizer"]),
            generator_optimizer=None if generator_optimizer is None else deserialize(generator_optimizer),
            jit_compile=config.get("jit_compile", False),
        )

    @property
    def metrics(self):
        """The scalar training metrics (label counts are read by callbacks.LabelUsage)."""
        return list(self._trackers.values())

    @property
    def evaluator_optimizer(self):
        return self.optimizer

    def compile(
        self,
        optimizer="sgd",
        generator_optimizer=None,
        *,
        evaluator_optimizer=None,
        run_eagerly=False,
        jit_compile=False,
        **kwargs,
    ):
        """The evaluator's optimiser (Keras' `optimizer`, or its older name evaluator_optimizer)
        and the generator's (MAXL's labels; default SGD(DEFAULT_GENERATOR_LR), the command line's
        default), Keras optimisers or their names. jit_compile: XLA for each replica's step, as the
        command line's --jit. The losses are MAXL's own (focal_gamma): no loss or metrics.

        Raises:
          ValueError naming the argument.
        """
        if kwargs:
            raise ValueError(
                f"compile: {', '.join(sorted(kwargs))} not taken; MAXL's losses are its own (focal_gamma) and it "
                f"logs its own metrics: pass optimizer=, generator_optimizer=, run_eagerly=, jit_compile="
            )
        if evaluator_optimizer is not None:
            if optimizer != "sgd":
                raise ValueError("evaluator_optimizer: the same as optimizer; give one of them")
            optimizer = evaluator_optimizer
        super().compile(optimizer=optimizer, run_eagerly=run_eagerly, jit_compile=jit_compile)
        self.generator_optimizer = None
        with self.distribute_strategy.scope():
            self.optimizer.build(self.evaluator.trainable_variables)
            if self.generator is not None:
                if generator_optimizer is None:
                    generator_optimizer = keras.optimizers.SGD(DEFAULT_GENERATOR_LR)
                self.generator_optimizer = keras.optimizers.get(generator_optimizer)
                self.generator_optimizer.build(self.generator.trainable_variables)

    def call(self, images, training=False):
        pri_logits, _ = evaluator_lib.outputs(self.evaluator(images, training=training))
        return tf.nn.softmax(tf.cast(pri_logits, tf.float32))

    def train_step(self, data):
        """One replica's iteration: data = (training element, meta element or None); the steps of
        core/steps.iteration, then the metric trackers."""
        train_data, meta_data = data
        train_batch = _as_batch(train_data, "x")
        meta_batch = None if meta_data is None else _as_batch(meta_data, "meta_data")
        metrics, usage = steps.iteration(self, train_batch, meta_batch, self.task)
        if "train/pri_loss" in metrics:
            metrics[_LOSS] = metrics["train/pri_loss"] + metrics.get("train/aux_loss", 0.0)
        for name, value in metrics.items():
            if name in self._trackers:
                self._trackers[name].update_state(value)
        if self.task.labels.auxiliary:
            self.label_counts.update_state(usage)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        """The principal loss and accuracy, weighted by batch size so uneven batches add up exactly."""
        sums = steps.evaluation_step(self.evaluator, _as_batch(data, "validation_data"), self.task)
        for name, total in (
            (_LOSS, sums["loss_sum"]),
            ("train/pri_loss", sums["loss_sum"]),
            ("train/pri_acc", sums["correct"]),
        ):
            self._trackers[name].update_state(total / sums["count"], sample_weight=sums["count"])
        return self._results(_EVALUATION_METRICS)

    def _results(self, names) -> dict:
        return {self._log_names[n]: self._trackers[n].result() for n in names}

    def _compiled(self, replica_step, names):
        """A function of the step's inputs: replica_step on every replica, then the metrics over
        all of them (read in cross-replica context, where they are summed)."""
        if self.jit_compile and not self.run_eagerly:
            replica_step = steps.compiled(replica_step, jit_compile=True)

        def step(*args):
            self.distribute_strategy.run(replica_step, args=args)
            return self._results(names)

        return step if self.run_eagerly else steps.compiled(step)

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        step = self._compiled(lambda data, meta: self.train_step((data, meta)), tuple(self._trackers))

        def train_function(iterator):
            data = next(iterator)
            if self._evaluator_steps is None:  # the first step of a fit: after BackupAndRestore restored
                self._check_contents(data, "x")
                self._evaluator_steps = int(self.optimizer.iterations.numpy())
                if self.generator is not None:
                    # The meta batch after the last one used, so a restored run draws what an
                    # uninterrupted one would (where the meta data's order is deterministic).
                    skipped = self._meta_data.repeat().skip(int(self.generator_optimizer.iterations.numpy()))
                    self._meta_iterator = iter(distribute.distribute_dataset(self.distribute_strategy, skipped))
            self._evaluator_steps += 1
            if self.generator is not None and self._evaluator_steps % self.meta_every == 0:
                meta = next(self._meta_iterator)
                if self._meta_name is not None:  # the first meta batch of this fit
                    self._check_contents(meta, self._meta_name)
                    self._meta_name = None
                return step(data, meta)
            return step(data, None)

        self.train_function = train_function
        return train_function

    def make_test_function(self, force=False):
        if self.test_function is not None and not force:
            return self.test_function
        step = self._compiled(self.test_step, _EVALUATION_METRICS)
        first = [True]

        def test_function(iterator):
            data = next(iterator)
            if first[0]:
                self._check_contents(data, "validation data")
                first[0] = False
            return step(data)

        self.test_function = test_function
        return test_function

    def fit(self, x=None, y=None, *, meta_data=None, meta_fraction=None, batch_size=None, seed=0, **kwargs):
        """Keras' fit, with MAXL's meta data.

        Args:
          x, y: a tf.data.Dataset of batches (images, labels[, aux_labels]), or arrays of images
            and integer labels; the rest of Keras' fit arguments are accepted as they are.
          meta_data: a dataset of batches the generator's meta objective is measured on (repeated
            as needed); or
          meta_fraction: the share of array examples held out as meta data (the same ones for a
            seed; the evaluator trains on the rest). Neither: the meta batches are drawn from the
            training data itself (the authors' code, --meta_split=0).
        Raises:
          ValueError / TypeError naming the argument, before anything is traced.
        """
        if not self.compiled:
            raise ValueError("fit: call compile(optimizer=..., generator_optimizer=...) first")
        learned = self.generator is not None
        needs_aux = isinstance(self.task.labels, labels_lib.FixedLabels)
        if not learned and (meta_data is not None or meta_fraction is not None):
            raise ValueError(f"meta_data: labels={self.task.labels!r} learns nothing from meta data; leave it out")
        if meta_data is not None and meta_fraction is not None:
            raise ValueError("meta_fraction: give meta_data or meta_fraction, not both")
        if isinstance(x, tf.data.Dataset):
            if y is not None:
                raise ValueError("y: with a dataset x, the labels come with x's elements; leave y out")
            if meta_fraction is not None:
                raise TypeError(
                    "meta_fraction: splits arrays; a dataset's order may change every epoch, so pass "
                    "meta_data=<a dataset of held-out batches> instead"
                )
            _check_element_spec(x.element_spec, "x", needs_aux, self._image_shape())
            kwargs.setdefault("shuffle", False)  # a dataset shuffles itself (Keras warns otherwise)
            meta, meta_name = (meta_data, "meta_data") if meta_data is not None else (x, "x")
        else:
            if x is None or y is None:
                raise ValueError("y: arrays need their integer labels (or give x as a dataset of (images, labels))")
            x, y = np.asarray(x), np.asarray(y)
            self._check_arrays(x, y, "x", "y")
            batch_size = batch_size or 32
            meta, meta_name = (x, y), "x"
            if meta_fraction is not None:
                if not 0 < meta_fraction < 1:
                    raise ValueError(f"meta_fraction={meta_fraction}: must be between 0 and 1")
                order = np.random.default_rng(seed).permutation(len(x))
                held_out = max(1, round(len(x) * meta_fraction))
                meta = (x[order[:held_out]], y[order[:held_out]])
                x, y = x[order[held_out:]], y[order[held_out:]]
            if meta_data is None:
                meta_data = tf.data.Dataset.from_tensor_slices(meta).shuffle(len(meta[1]), seed=seed).batch(batch_size)
            else:
                meta_name = "meta_data"
            meta = meta_data
        validation = kwargs.get("validation_data")
        if isinstance(validation, tf.data.Dataset):
            _check_element_spec(validation.element_spec, "validation_data", False, self._image_shape())
        elif isinstance(validation, (tuple, list)) and len(validation) >= 2:
            self._check_arrays(
                np.asarray(validation[0]), np.asarray(validation[1]), "validation_data", "validation_data"
            )
        if learned:
            if not isinstance(meta, tf.data.Dataset):
                raise TypeError(f"meta_data: a tf.data.Dataset of (images, labels) batches, not {type(meta).__name__}")
            self.use_meta_data(meta, meta_name)
        self._evaluator_steps = None
        try:
            return super().fit(x, y, batch_size=batch_size, **kwargs)
        finally:
            self._meta_data = self._meta_iterator = None

    def _check_arrays(self, images, labels, images_name: str, labels_name: str) -> None:
        """Arrays at the door: pixels.check_images and check_labels, and the evaluator's size."""
        pixels.check_images(images, images_name)
        pixels.check_labels(labels, len(images), self.task.num_pri, labels_name)
        expected = self._image_shape()
        if expected is not None and not tf.TensorShape(images.shape[1:]).is_compatible_with(expected):
            raise ValueError(f"{images_name}: images of shape {images.shape[1:]}; the evaluator takes {expected}")

    def _check_contents(self, data, name: str) -> None:
        """The first batch a fit or evaluate draws from a pipeline, checked as arrays are (the
        element spec was checked before; the values only show in a batch). Nothing is drawn for
        it: peeking a shuffled dataset would move its order on by an epoch."""
        local = self.distribute_strategy.experimental_local_results
        images, labels, aux = _parts(data, name)
        images = np.concatenate([np.asarray(part) for part in local(images)])
        labels = np.concatenate([np.asarray(part) for part in local(labels)])
        self._check_arrays(images, labels, f"{name} (its first batch)", f"{name} (its first batch)")
        if aux is not None and self.task.num_aux:
            aux = np.concatenate([np.asarray(part) for part in local(aux)])
            pixels.check_labels(aux, len(images), self.task.num_aux, f"{name} (its first batch's auxiliary labels)")

    def use_meta_data(self, meta_data: tf.data.Dataset, name: str = "meta_data") -> None:
        """Draws the generator's meta batches from this dataset of batches, repeated, from the one
        after the generator's last step (fit calls it; the benchmark drives the train function
        without fit). name: what errors call it (fit's x, where the meta batches come from x)."""
        _check_element_spec(meta_data.element_spec, name, False, self._image_shape())
        self._meta_data, self._meta_name = meta_data, name
        self._evaluator_steps = None

    def _image_shape(self):
        """(H, W, C) the evaluator takes, or None where it does not say."""
        try:
            return tuple(self.evaluator.inputs[0].shape[1:])
        except (AttributeError, ValueError, TypeError, IndexError):
            return None

    def export(self, filepath: str, class_names: dict | None = None) -> None:
        """Writes into the folder filepath what a command-line run leaves in its log directory
        (models/export.py): evaluator.keras and generator.keras taking raw pixels, serving/ (a
        SavedModel taking uint8 or 0..255 float images of any size), classes.json and
        preprocessing.json (input size, resize). They load in processes without maxl_tf.

        Args:
          class_names: {"principal": names, "auxiliary": names or None}, for classes.json.
        """
        os.makedirs(filepath, exist_ok=True)
        export_lib.write_into(filepath, self.evaluator, self.generator, self.psi, class_names)

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        if save_type == "savedmodel":
            raise TypeError(
                "tf.saved_model.save(MAXL): not supported; call model.export(path) for the command line's "
                "exports (serving/ is a SavedModel), or model.save('m.keras') to resume training"
            )
        return super()._trackable_children(save_type, **kwargs)

    # Diagnostics --------------------------------------------------------------------------------

    def trunk_gradient_cosine(self, images, labels, aux_labels=None) -> float:
        """Cosine of the principal and auxiliary losses' gradients on the shared trunk (any
        backbone: every evaluator variable but the heads'), statistics untouched."""
        batch = {"images": tf.convert_to_tensor(images), "labels": tf.cast(labels, tf.int64)}
        if aux_labels is not None:
            batch["aux_labels"] = tf.cast(aux_labels, tf.int64)
        return float(steps.trunk_gradient_cosine(self.evaluator, self.generator, batch, self.task))
