"""MAXL from Python (models/maxl.py, models/heads.py): the same numerics as the command line's
loop, two replicas as one device, any backbone, Keras' callbacks, and errors that name the argument."""

import json
import os
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from maxl_tf.core import evaluator as evaluator_lib
from maxl_tf.core import labels as labels_lib
from maxl_tf.core import psi as psi_lib
from maxl_tf.core import steps
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import state as state_lib
from maxl_tf.experiment import train
from maxl_tf.models import callbacks
from maxl_tf.models import heads
from maxl_tf.models import maxl
from maxl_tf.models import vgg
from tests import float64_case
from tests import smoke_util
from tests.tolerances import FLOAT32
from tests.tolerances import FLOAT64

PSI = (3, 2)
BATCH, STEPS = 8, 4


def _batches(rng, steps=STEPS):
    """STEPS batches of random images and labels, as the command line's pipeline gives them."""
    return [
        {
            "images": tf.constant(rng.uniform(0, 255, size=(BATCH, 8, 8, 1))),  # raw pixels
            "labels": tf.constant(rng.integers(0, len(PSI), BATCH), tf.int64),
            "aux_labels": tf.zeros([BATCH], tf.int64),
        }
        for _ in range(steps)
    ]


def _dataset(batches):
    """A dataset whose elements are those batches, (images, labels)."""
    return tf.data.Dataset.from_tensor_slices(
        (tf.stack([b["images"] for b in batches]), tf.stack([b["labels"] for b in batches]))
    )


@pytest.mark.slow
class SameNumericsAsTheCommandLineTest(float64_case.Float64TestCase):
    """N steps of fit equal N iterations of train.make_iteration, from the same weights on the
    same batches, in float64."""

    def _networks(self, initial=None):
        evaluator = vgg.build_evaluator((8, 8, 1), len(PSI), sum(PSI), "vgg_small", 0.125)
        generator = vgg.build_generator((8, 8, 1), sum(PSI), "vgg_small", 0.125)
        if initial is not None:
            evaluator.set_weights(initial[0])
            generator.set_weights(initial[1])
        return evaluator, generator

    def _command_line(self, initial, train_batches, meta_batches, hypergradient, meta_every):
        evaluator, generator = self._networks(initial)
        optimizers = []
        for network, lr in ((evaluator, 0.1), (generator, 0.05)):
            optimizer = keras.optimizers.SGD(lr)
            optimizer.build(network.trainable_variables)
            optimizers.append(optimizer)
        state = types.SimpleNamespace(
            evaluator=evaluator,
            generator=generator,
            evaluator_optimizer=optimizers[0],
            generator_optimizer=optimizers[1],
            lookahead_model=evaluator,
            sums=state_lib.EpochSums(state_lib.EPOCH_METRICS, sum(PSI)),
            global_step=tf.Variable(0, dtype=tf.int64),
            nonfinite_step=tf.Variable(-1, dtype=tf.int64),
        )
        task = steps.Task(
            method=labels_lib.source("maxl"),
            num_pri=len(PSI),
            num_aux=sum(PSI),
            mask_table=tf.constant(psi_lib.mask(PSI)),
            hypergradient=hypergradient,
        )
        iteration = train.make_iteration(config_lib.Config(), state, task, tf.distribute.get_strategy())
        meta = iter(meta_batches)
        for step, train_batch in enumerate(train_batches):
            follows = train.generator_step_follows(meta_every, len(train_batches), 0, step)
            iteration(train_batch, next(meta) if follows else None)
        return evaluator, generator, state.sums.means()

    def _fit(self, initial, train_batches, meta_batches, hypergradient, meta_every):
        evaluator, generator = self._networks(initial)
        model = maxl.MAXL(evaluator, generator, psi=PSI, hypergradient=hypergradient, meta_every=meta_every)
        model.compile(keras.optimizers.SGD(0.1), keras.optimizers.SGD(0.05))
        history = model.fit(_dataset(train_batches), meta_data=_dataset(meta_batches), epochs=1, verbose=0)
        return evaluator, generator, {k: v[0] for k, v in history.history.items()}

    def _check(self, hypergradient, meta_every):
        keras.utils.set_random_seed(0)
        initial = tuple(network.get_weights() for network in self._networks())
        rng = np.random.default_rng(0)
        train_batches, meta_batches = _batches(rng), _batches(rng)
        cli_evaluator, cli_generator, means = self._command_line(
            initial, train_batches, meta_batches, hypergradient, meta_every
        )
        fit_evaluator, fit_generator, logs = self._fit(initial, train_batches, meta_batches, hypergradient, meta_every)
        moved = 0.0
        for cli, fitted, start in zip(
            cli_evaluator.weights + cli_generator.weights,
            fit_evaluator.weights + fit_generator.weights,
            initial[0] + initial[1],
        ):
            # float64, the same steps in other graphs: sums of up to 512 terms (8 images x 64
            # pixels) in other orders, n u64 per step, over the 4 steps of weights <= 1: 2.3e-13.
            self.assertAllClose(fitted.numpy(), cli.numpy(), rtol=0, atol=STEPS * 512 * FLOAT64, msg=cli.path)
            moved = max(moved, float(np.abs(cli.numpy() - start).max()))
        self.assertGreater(moved, 1e-3)  # both trained, by 10^9 times that: not two untouched networks
        logged = (
            ("train/pri_loss", "principal_focal_loss"),
            ("meta/loss", "meta_loss"),
            ("meta/entropy", "meta_entropy"),
        )
        for name, key in logged:
            # Keras' metrics are float32: a mean of 4 values rounded to float32, a few u32 (16 u: 1e-6).
            self.assertAllClose(logs[key], means[name], rtol=16 * FLOAT32)

    def test_second_order(self):
        self._check("second_order", meta_every=1)

    def test_implicit_every_second_step(self):
        self._check("implicit", meta_every=2)


@pytest.mark.slow
class TwoReplicasTest(tf.test.TestCase):
    def test_two_cpu_replicas_fit_as_one_device(self):
        # Logical CPU devices must be set before TensorFlow starts: a process of its own.
        result = smoke_util.run_python(os.path.join(smoke_util.REPO, "tests", "maxl_replica_check.py"), timeout=600)
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        report = json.loads(result.stdout.strip().splitlines()[-1])
        self.assertGreater(report["moved"], 1e-2)  # trained: 10^11 float64 roundings of the weights
        # float64 summed in halves, as SameNumericsAsTheCommandLineTest: the check's 3 steps x 512 u64.
        self.assertLess(report["weights"], 3 * 512 * FLOAT64)
        # The logs, gradient norms included, are float32 Mean metrics of float64 values: each step's
        # value rounded to float32 (u32) and the mean's additions over the check's 3 steps, in each
        # of the two runs: 2 x (1 + 3) u32, 16 u32 with room for the replicas' sum.
        self.assertLess(report["logs"], 16 * FLOAT32)
        self.assertLess(report["grad_norms"], 16 * FLOAT32)


def _conv_backbone(input_shape=(8, 8, 1)):
    """Raw pixels in (models/pixels.py): it scales its own input."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Conv2D(4, 3),
        ]
    )


class OwnConv(keras.Model):
    """A subclassed backbone: no inputs of its own."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3, activation="relu")
        self.dense = keras.layers.Dense(6)

    def call(self, images):
        return self.dense(keras.ops.mean(self.conv(images), axis=(1, 2)))


class AnyBackboneTest(tf.test.TestCase):
    def _backbones(self):
        images = keras.Input((32, 32, 3))
        functional = keras.Model(images, keras.layers.Conv2D(4, 3, strides=2)(images))
        return {
            "functional": (functional, None),
            "sequential": (_conv_backbone((32, 32, 3)), None),
            "subclassed": (OwnConv(), (32, 32, 3)),
            "applications": (
                keras.applications.MobileNetV3Small(
                    input_shape=(32, 32, 3), include_top=False, weights=None, minimalistic=True
                ),
                None,
            ),
        }

    def test_heads_and_trunk_cosine_over_any_backbone(self):
        rng = np.random.default_rng(0)
        images = rng.uniform(0, 255, size=(4, 32, 32, 3)).astype("float32")
        labels = np.array([0, 1, 0, 1])
        for kind, (backbone, input_shape) in self._backbones().items():
            with self.subTest(kind):
                evaluator = heads.multitask(backbone, pri=2, psi=PSI[:2], input_shape=input_shape)
                pri_logits, aux_logits = evaluator(images)
                self.assertEqual((pri_logits.shape, aux_logits.shape), ((4, 2), (4, sum(PSI[:2]))))
                trunk = {id(evaluator.trainable_variables[i]) for i in evaluator_lib.trunk_variable_indices(evaluator)}
                self.assertEqual(trunk, {id(v) for v in backbone.trainable_variables})
                clone = OwnConv() if kind == "subclassed" else keras.models.clone_model(backbone)
                generator = heads.generator(clone, PSI[:2], input_shape=input_shape)
                self.assertEqual(generator(images).shape, (4, sum(PSI[:2])))
                model = maxl.MAXL(evaluator, generator, psi=PSI[:2])
                cosine = model.trunk_gradient_cosine(images, labels)
                self.assertTrue(-1.0 <= cosine <= 1.0 and np.isfinite(cosine), cosine)

    def test_a_feature_map_is_averaged(self):
        evaluator = heads.multitask(_conv_backbone(), pri=2, psi=(2, 2))
        self.assertIsInstance(evaluator.get_layer("trunk_features"), keras.layers.GlobalAveragePooling2D)


def _model(labels=None, momentum=False, **options):
    keras.utils.set_random_seed(0)
    psi = (2, 2)
    learned = labels is None or labels_lib.source(labels).learned
    model = maxl.MAXL(
        heads.multitask(_conv_backbone(), 2, psi),
        heads.generator(_conv_backbone(), psi) if learned else None,
        psi=psi,
        labels=labels,
        **options,
    )
    momentum = 0.9 if momentum else 0.0  # optimiser state to restore
    model.compile(keras.optimizers.SGD(0.05, momentum=momentum), keras.optimizers.SGD(0.01, momentum=momentum))
    return model


def _arrays(n=32):
    rng = np.random.default_rng(1)
    return rng.uniform(0, 255, size=(n, 8, 8, 1)).astype("float32"), rng.integers(0, 2, n)


class FitTest(tf.test.TestCase):
    def test_callbacks_run(self):
        x, y = _arrays()
        logdir = self.get_temp_dir()
        model = _model(hypergradient="first_order", meta_every=2)
        history = model.fit(
            x,
            y,
            meta_fraction=0.25,
            batch_size=8,
            epochs=3,
            verbose=0,
            validation_data=(x, y),
            callbacks=[
                callbacks.LabelUsage(probe=(x[:8], y[:8])),
                keras.callbacks.TensorBoard(os.path.join(logdir, "tb")),
                keras.callbacks.ModelCheckpoint(os.path.join(logdir, "best.weights.h5"), save_weights_only=True),
                keras.callbacks.ModelCheckpoint(os.path.join(logdir, "model.keras")),
                keras.callbacks.EarlyStopping(monitor="val_loss", min_delta=10.0, patience=1),
                keras.callbacks.BackupAndRestore(os.path.join(logdir, "backup")),
            ],
        )
        self.assertEqual(len(history.history["loss"]), 2)  # EarlyStopping: no epoch improved by 10
        for key in (
            "meta_loss",
            "aux_used_mean",
            "aux_entropy_mean",
            "aux_entropy_min",
            "collapsed_classes",
            "trunk_grad_cosine",
            "val_principal_accuracy",
        ):
            self.assertTrue(np.all(np.isfinite(history.history[key])), key)
        # 3 steps an epoch (24 of 32 examples train), the generator after every second of the run.
        self.assertEqual(int(model.optimizer.iterations.numpy()), 6)
        self.assertEqual(int(model.generator_optimizer.iterations.numpy()), 3)
        self.assertTrue(tf.io.gfile.glob(os.path.join(logdir, "tb", "train", "events*")))
        self.assertTrue(os.path.exists(os.path.join(logdir, "best.weights.h5")))
        loaded = keras.saving.load_model(os.path.join(logdir, "model.keras"))
        # The same float32 weights and layers: the same softmax, at most its 16 u32 apart.
        self.assertAllClose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=0, atol=16 * FLOAT32)

    def test_backup_and_restore_resumes_exactly(self):
        """Interrupted after an epoch and fit again, BackupAndRestore gives the uninterrupted run:
        weights, both optimisers' state and the meta batches' position (meta_every counts over
        the run; the meta data resumes after the generator's last batch)."""
        x, y = _arrays()
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        backup = os.path.join(self.get_temp_dir(), "backup")

        class Interrupt(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                raise KeyboardInterrupt

        def fit(*extra):
            model = _model(meta_every=3, momentum=True)
            model.fit(data, meta_data=data, epochs=3, verbose=0, callbacks=list(extra))
            return model

        with self.assertRaises(KeyboardInterrupt):
            fit(keras.callbacks.BackupAndRestore(backup), Interrupt())
        resumed = fit(keras.callbacks.BackupAndRestore(backup))
        uninterrupted = fit()
        self.assertEqual(int(resumed.generator_optimizer.iterations.numpy()), 4)  # 12 evaluator steps / 3
        for a, b in zip(resumed.get_weights(), uninterrupted.get_weights()):
            self.assertAllEqual(a, b)

    def test_predict_and_evaluate_the_principal_task(self):
        x, y = _arrays()
        model = _model()
        probabilities = model.predict(x, verbose=0)
        self.assertEqual(probabilities.shape, (32, 2))
        self.assertAllClose(probabilities.sum(axis=1), np.ones(32), rtol=0, atol=16 * FLOAT32)  # float32 softmaxes
        result = model.evaluate(x, y, batch_size=5, verbose=0, return_dict=True)  # an uneven last batch
        pri_logits, _ = model.evaluator(x)
        expected = float(np.mean(np.argmax(pri_logits, axis=1) == y))
        self.assertAllClose(result["principal_accuracy"], expected)

    def test_baselines_are_label_sources(self):
        x, y = _arrays()
        random = labels_lib.Random().labels(y, (2, 2), seed=0)
        dataset = tf.data.Dataset.from_tensor_slices((x, y, random)).batch(8)
        for labels in (labels_lib.Human(), labels_lib.Random()):
            with self.subTest(labels.name):
                history = _model(labels=labels).fit(dataset, epochs=1, verbose=0)
                self.assertIn("auxiliary_focal_loss", history.history)
        single = maxl.MAXL(heads.single_task(_conv_backbone(), 2), labels=labels_lib.Single())
        single.compile(keras.optimizers.SGD(0.05))
        history = single.fit(x, y, batch_size=8, epochs=1, verbose=0)
        self.assertNotIn("auxiliary_focal_loss", history.history)


class BadInputTest(tf.test.TestCase):
    def test_errors_name_the_argument(self):
        psi = (2, 2)
        cases = {
            "backbone": lambda: heads.multitask(
                keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Reshape((64, 1))]), 2, psi
            ),
            "input_shape": lambda: heads.multitask(OwnConv(), 2, psi),
            "psi=": lambda: maxl.MAXL(
                heads.multitask(_conv_backbone(), 2, psi), heads.generator(_conv_backbone(), (3, 3)), psi=psi
            ),
            "psi=\\(2, 2, 2\\)": lambda: heads.multitask(_conv_backbone(), 2, (2, 2, 2)),
            "meta_every": lambda: _model(meta_every=0),
            "hypergradient": lambda: _model(hypergradient="third_order"),
            "generator: shares": lambda: maxl.MAXL(
                heads.multitask(backbone := _conv_backbone(), 2, psi), heads.generator(backbone, psi), psi=psi
            ),
        }
        for name, make in cases.items():
            with self.subTest(name):
                with self.assertRaisesRegex(ValueError, name):
                    make()

    def test_data_errors_come_before_tracing(self):
        x, y = _arrays()
        model = _model()
        images_only = tf.data.Dataset.from_tensor_slices(x).batch(8)
        float_labels = tf.data.Dataset.from_tensor_slices((x, y.astype("float32"))).batch(8)
        for name, call in {
            "x: a dataset": lambda: model.fit(images_only, verbose=0),
            "x: labels must be": lambda: model.fit(float_labels, verbose=0),
            "y: arrays": lambda: model.fit(x, verbose=0),
            "x: images of shape \\(4, 4, 1\\)": lambda: model.fit(
                tf.data.Dataset.from_tensor_slices((x[:, :4, :4], y)).batch(8), verbose=0
            ),
            "validation_data: a dataset": lambda: model.fit(
                tf.data.Dataset.from_tensor_slices((x, y)).batch(8), validation_data=images_only, verbose=0
            ),
            "meta_data: a dataset": lambda: model.fit(
                tf.data.Dataset.from_tensor_slices((x, y)).batch(8), meta_data=images_only, verbose=0
            ),
        }.items():
            with self.subTest(name):
                with self.assertRaisesRegex(ValueError, name):
                    call()
        with self.assertRaisesRegex(TypeError, "meta_fraction"):
            model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), meta_fraction=0.1, verbose=0)
        self.assertIsNone(model.train_function)  # nothing was traced
        with self.assertRaisesRegex(ValueError, "aux_labels"):
            _model(labels=labels_lib.Human()).fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), verbose=0)
