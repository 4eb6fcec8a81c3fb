"""The one input contract (models/pixels.py): every network takes raw pixels, the data is checked
at the door (a Source's arrays, fit's arrays and pipelines), old runs keep their checkpoints, and
a MAXL saved or exported from Python loads where maxl_tf is (or is not) imported."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from maxl_tf import errors
from maxl_tf.data import source as source_lib
from maxl_tf.experiment import inputs
from maxl_tf.experiment import train
from maxl_tf.models import heads
from maxl_tf.models import maxl
from maxl_tf.models import pixels
from tests import smoke_util

GOLDEN = os.path.join(smoke_util.REPO, "tests", "golden", "before_raw_pixels")
PSI = (2, 2)


class NormaliseTest(tf.test.TestCase):
    def test_traced_equals_the_pipelines_old_arithmetic_bit_for_bit(self):
        # Grappler turns x / c into x * (1 / c) in a traced graph, which rounds differently;
        # the layer's DivNoNan is left alone, so old runs resume on the very same inputs.
        x = tf.constant(np.arange(256, dtype=np.float32).reshape(1, 16, 16, 1))
        old = (x / 255.0 - pixels.PIXEL_MEAN) / pixels.PIXEL_STD  # eager: exact division
        layer = pixels.Normalise()
        self.assertAllEqual(layer(x), old)
        self.assertAllEqual(tf.function(lambda v: layer(v))(x), old)
        # Keras' Rescaling, which the exports use, agrees to float32 rounding of values near 2.5.
        self.assertAllClose(layer.as_rescaling()(x), old, rtol=0, atol=4 * 2.5 * 2.0**-24)


class DoorTest(tf.test.TestCase):
    """Each item-4 case of issue 27, at the door a Source's arrays pass (inputs.check_loaded):
    one line naming --dataset and the split."""

    def _loaded(self, train_images, train_labels):
        test = source_lib.Split(np.zeros((4, 8, 8, 1), np.uint8), np.arange(4) % 10)
        return source_lib.Loaded(source_lib.Split(train_images, train_labels), test, "test data")

    def test_bad_arrays_are_one_line_naming_the_source(self):
        from maxl_tf.data import digits

        levels = digits.Digits().levels()
        images = np.random.default_rng(0).integers(0, 256, (500, 8, 8, 1)).astype(np.uint8)
        labels = np.arange(500) % 10
        cases = {
            "in [0, 1]": (images / 255.0, labels, r"float images all lie within \[0, 1\].*images \* 255"),
            "short labels": (images, labels[:493], "493 labels for 500 images"),
            "labels out of range": (images, labels + 3, r"labels range 3\.\.12; the 10 classes are numbered 0\.\.9"),
            "no channel axis": (images[..., 0], labels, r"\[N, height, width, channels\].*images\[\.\.\., None\]"),
            "NaN": (np.where(images == 7, np.nan, images.astype(np.float32)), labels, "NaN"),
            "normalised": (images / 127.5 - 1.0, labels, r"range -1\.\.1; networks take raw pixels 0\.\.255"),
            "float labels": (images, labels.astype(np.float32), "labels must be integer class indices"),
            "channels first": (np.moveaxis(np.repeat(images, 3, -1), -1, 1), labels, "8 channels; 1 to 4"),
        }
        for case, (bad_images, bad_labels, message) in cases.items():
            with self.subTest(case):
                with self.assertRaisesRegex(errors.Error, rf"^--dataset=mine: the train split: .*{message}") as raised:
                    inputs.check_loaded(self._loaded(bad_images, bad_labels), levels, "mine")
                self.assertNotIn("\n", str(raised.exception))
        inputs.check_loaded(self._loaded(images.astype(np.float32), labels), levels, "mine")  # floats 0..255
        empty = source_lib.Loaded(self._loaded(images, labels).train, source_lib.Split(images[:0], labels[:0]), "x")
        with self.assertRaisesRegex(errors.Error, "the test split holds no images"):
            inputs.check_loaded(empty, levels, "mine")


_FLOAT_SOURCE = """
from maxl_tf.data import digits, source


class UnitFloats(digits.Digits):
    name = "unit_floats"

    def load(self):
        loaded = super().load()
        split = lambda s: source.Split(s.images / 255.0, s.labels)
        return source.Loaded(split(loaded.train), split(loaded.test), "digits in [0, 1]")
"""


@pytest.mark.slow
class CommandLineDoorTest(tf.test.TestCase):
    def test_a_source_of_unit_floats_exits_2_with_one_line(self):
        folder = self.get_temp_dir()
        with open(os.path.join(folder, "unit_float_source.py"), "w") as f:
            f.write(_FLOAT_SOURCE)
        process = subprocess.run(
            smoke_util.main_command(
                f"--flagfile={smoke_util.SMOKE_FLAGFILE}",
                "--dataset=unit_float_source:UnitFloats",
                f"--logdir={os.path.join(folder, 'run')}",
            ),
            cwd=smoke_util.REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ, PYTHONPATH=f"{smoke_util.REPO}:{folder}"),
        )
        self.assertEqual(process.returncode, 2, process.stderr[-2000:])
        self.assertRegex(
            process.stderr.strip().splitlines()[-1],
            r"^error: --dataset=unit_float_source:UnitFloats: the train split: float images all lie within \[0, 1\]",
        )


def _backbone(input_shape=(8, 8, 1)):
    """A backbone written for raw pixels: its own Rescaling first."""
    images = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255.0)(images)
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(images, keras.layers.ReLU()(x))


def cli_backbone(input_shape):
    """_backbone for --model=tests.input_contract_test:cli_backbone."""
    return _backbone(tuple(input_shape))


def _model():
    evaluator, generator = heads.multitask(_backbone(), len(PSI), PSI), heads.generator(_backbone(), PSI)
    return maxl.MAXL(evaluator, generator, psi=PSI, hypergradient="first_order")


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8, 1)).astype(np.uint8), rng.integers(0, len(PSI), n)


class FitDoorTest(tf.test.TestCase):
    def test_bad_data_is_one_value_error_naming_the_argument(self):
        model = _model()
        model.compile(optimizer=keras.optimizers.SGD(0.01))  # Keras' argument; the generator's default
        self.assertEqual(model.generator_optimizer.learning_rate.numpy(), np.float32(maxl.DEFAULT_GENERATOR_LR))
        x, y = _data()
        dataset = lambda images, labels: tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)  # noqa: E731
        cases = {
            "unit floats": (dict(x=x / 255.0, y=y), r"^x: float images all lie within \[0, 1\]"),
            "short labels": (dict(x=x, y=y[:40]), "^y: 40 labels for 48 images"),
            "labels out of range": (dict(x=x, y=y + 5), r"^y: labels range 5\.\.6; the 2 classes"),
            "pipeline of unit floats": (dict(x=dataset(x / 255.0, y)), r"^x \(its first batch\): float images"),
            "pipeline labels out of range": (dict(x=dataset(x, y + 5)), r"^x \(its first batch\): labels range"),
            # No meta_data given: the meta batches come from x, and the error says x.
            "pipeline of another size": (dict(x=dataset(x[:, :6, :6], y)), r"^x: images of shape \(6, 6, 1\)"),
            "pipeline without channels": (dict(x=dataset(x[..., 0], y)), r"^x: images must be batches .*channel"),
            "meta data out of range": (
                dict(x=dataset(x, y), meta_data=dataset(x, y + 5)),
                r"^meta_data \(its first batch\): labels range",
            ),
        }
        for case, (arguments, message) in cases.items():
            with self.subTest(case):
                with self.assertRaisesRegex(ValueError, message) as raised:
                    model.fit(**arguments, epochs=1, verbose=0)
                self.assertNotIn("\n", str(raised.exception))
        with self.assertRaisesRegex(ValueError, "compile: loss not taken"):
            model.compile(optimizer="sgd", loss="mse")

    def test_logged_names_say_which_loss(self):
        x, y = _data()
        for gamma, loss in ((2.0, "focal_loss"), (0.0, "cross_entropy")):
            model = maxl.MAXL(heads.single_task(_backbone(), len(PSI)), labels="single", focal_gamma=gamma)
            model.compile(optimizer="sgd")
            logs = model.fit(x, y, epochs=1, verbose=0, validation_data=(x, y)).history
            self.assertEqual(
                sorted(logs),
                sorted(["loss", f"principal_{loss}", "principal_accuracy", "grad_norm"])
                + sorted(["val_loss", f"val_principal_{loss}", "val_principal_accuracy"]),
            )
            self.assertAllClose(logs["loss"], logs[f"principal_{loss}"])  # single-task: no auxiliary loss

    def test_saved_model_save_names_the_right_call(self):
        model = _model()
        with self.assertRaisesRegex(TypeError, r"model\.export\(path\)"):
            tf.saved_model.save(model, os.path.join(self.get_temp_dir(), "saved"))


_CONTINUE = """
import sys
import numpy as np
import keras
import maxl_tf  # registers MAXL: nothing else of maxl_tf is touched before loading
from tests import input_contract_test as case

model = keras.models.load_model(sys.argv[1])
assert model.optimizer.iterations.numpy() > 0 and model.generator_optimizer.iterations.numpy() > 0
model.fit(case.dataset(), meta_data=case.dataset(seed=1), epochs=2, verbose=0)
checkpointed = keras.models.load_model(sys.argv[3])  # ModelCheckpoint's file
np.savez(sys.argv[2], *[w.numpy() for w in model.weights], checkpointed=len(checkpointed.weights))
"""


def dataset(seed=0):
    """Fixed batches in a fixed order: epoch 3 of one fit sees what epoch 1 of the next does."""
    images, labels = _data(seed=seed)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)


@pytest.mark.slow
class SavingAndExportTest(tf.test.TestCase):
    def test_save_load_in_a_new_process_then_fit_equals_one_fit(self):
        folder = self.get_temp_dir()
        trained = []
        for epochs in (2, 4):
            keras.utils.set_random_seed(0)
            model = _model()
            model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), generator_optimizer="sgd")
            checkpoint = keras.callbacks.ModelCheckpoint(os.path.join(folder, "checkpoint.keras"))
            model.fit(dataset(), meta_data=dataset(seed=1), epochs=epochs, verbose=0, callbacks=[checkpoint])
            trained.append(model)
        trained[0].save(os.path.join(folder, "m.keras"))
        out = os.path.join(folder, "continued.npz")
        process = smoke_util.run_python(
            "-c", _CONTINUE, os.path.join(folder, "m.keras"), out, os.path.join(folder, "checkpoint.keras")
        )
        self.assertEqual(process.returncode, 0, process.stderr[-3000:])
        continued = np.load(out)
        self.assertEqual(int(continued["checkpointed"]), len(trained[1].weights))
        # Same process kind, same kernels, same order of operations: equal to float32 rounding of
        # a few steps (the momentum buffers restored, else they would differ by whole steps).
        for i, weight in enumerate(trained[1].weights):
            self.assertAllClose(continued[f"arr_{i}"], weight.numpy(), rtol=1e-5, atol=1e-6, msg=weight.path)

    def test_export_from_python_serves_without_maxl_tf(self):
        folder = os.path.join(self.get_temp_dir(), "exported")
        keras.utils.set_random_seed(0)
        model = _model()
        model.compile(optimizer="sgd", generator_optimizer="sgd")
        model.fit(dataset(), epochs=1, verbose=0)
        model.export(folder, class_names={"principal": ["a", "b"], "auxiliary": None})
        x, _ = _data(8, seed=2)
        expected = model.predict(x, verbose=0)
        np.save(os.path.join(folder, "x.npy"), x)
        script = textwrap.dedent(
            f"""
            import sys, json
            import numpy as np, keras, tensorflow as tf
            folder = {folder!r}
            x = np.load(folder + "/x.npy")
            served = tf.saved_model.load(folder + "/serving")
            evaluator = keras.saving.load_model(folder + "/evaluator.keras")
            bigger = tf.image.resize(x.astype("float32"), (16, 16), method="nearest")
            print(json.dumps({{
                "keras": np.asarray(evaluator(x.astype("float32"))[0]).tolist(),
                "uint8": served.serve(tf.constant(x))["principal"].numpy().tolist(),
                "floats": served.serve(tf.constant(x.astype("float32")))["principal"].numpy().tolist(),
                "resized": served.serve(tf.cast(bigger, tf.uint8))["principal"].numpy().shape[0],
                "size": int(served.preprocessing()["height"]),
                "maxl_tf": any(name.startswith("maxl_tf") for name in sys.modules),
            }}))
            """
        )
        process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        self.assertEqual(process.returncode, 0, process.stderr[-3000:])
        fresh = json.loads(process.stdout.strip().splitlines()[-1])
        self.assertFalse(fresh["maxl_tf"])
        for key in ("keras", "uint8", "floats"):
            # The exports compute with Keras' Rescaling (one rounding of float32 values near 2.5)
            # where training used Normalise: probabilities agree to a few float32 ulps per layer.
            self.assertAllClose(fresh[key], expected, atol=1e-5, msg=key)
        self.assertEqual((fresh["resized"], fresh["size"]), (8, 8))
        with open(os.path.join(folder, "preprocessing.json")) as f:
            self.assertEqual(json.load(f)["input_shape"], [8, 8, 1])


@pytest.mark.slow
class SameBackboneBothWaysTest(tf.test.TestCase):
    """A backbone with its own Rescaling, trained by the command line (--model=module:function)
    and by MAXL.fit from the same weights on the command line's own batches: the same first epoch.
    Before the one contract, the command line's backbone saw normalised images and stayed at the
    majority class."""

    def test_first_epoch_alike(self):
        from maxl_tf.core import streams
        from maxl_tf.data import pipeline
        from maxl_tf.experiment import config as config_lib
        from maxl_tf.experiment import rundir
        from maxl_tf.experiment import state as state_lib

        logdir = os.path.join(self.get_temp_dir(), "run")
        overrides = dict(model="tests.input_contract_test:cli_backbone", epochs=1, export=False)
        run = config_lib.resolve(smoke_util.smoke_config(logdir, **overrides))
        config = run.config
        record = train.train_and_evaluate(run, progress=False)["history"][0]
        _, trained, _ = rundir.load_run(logdir)

        run_data = inputs.prepare(run)
        keras.utils.set_random_seed(config.seed)  # as the command line builds its networks
        state = state_lib.TrainState(config, run_data.input_shape, num_labelled=len(run_data.train))
        initial = state.evaluator.weights[0].numpy()
        model = maxl.MAXL(state.evaluator, state.generator, psi=config.psi)  # the flags' defaults
        model.compile(
            optimizer=keras.optimizers.SGD(config.lr), generator_optimizer=keras.optimizers.SGD(config.generator_lr)
        )
        batch = config.batch_size
        steps = pipeline.steps_per_epoch(len(run_data.train_indices), batch)

        def batches(indices, stream):  # epoch 0 of a stream, as train.epoch_batches draws it
            order = pipeline.epoch_order(indices, steps * batch, config.seed, 0, stream)
            return run_data.train.batches(order, batch)

        history = model.fit(
            batches(run_data.train_indices, streams.TRAIN_STREAM),
            meta_data=batches(run_data.meta_indices, streams.META_STREAM),
            epochs=1,
            verbose=0,
        ).history
        # Two traced graphs of the same float32 operations over a handful of steps: equal to
        # float32 rounding, accumulated (Keras' Mean is float32, the command line's sums float64).
        self.assertAllClose(history["principal_focal_loss"][0], record["train/pri_loss"], rtol=1e-4)
        self.assertAllClose(history["principal_accuracy"][0], record["train/pri_acc"], rtol=1e-4)
        self.assertAllClose(history["meta_loss"][0], record["meta/loss"], rtol=1e-4, atol=1e-5)
        for fitted, cli in zip(
            state.evaluator.weights + state.generator.weights, trained.evaluator.weights + trained.generator.weights
        ):
            self.assertAllClose(fitted.numpy(), cli.numpy(), rtol=1e-4, atol=1e-5, msg=cli.path)
        moved = np.abs(state.evaluator.weights[0].numpy() - initial).max()
        self.assertGreater(moved, 1e-4)  # trained: the equality is not of two untouched networks


@pytest.mark.slow
class RunsBeforeRawPixelsTest(tf.test.TestCase):
    """A run stopped mid-epoch by the code before networks took raw pixels (tests/golden, made with
    flags/smoke.cfg and SIGTERM in epoch 2) resumes from its checkpoint and ends as the
    uninterrupted old run did."""

    def test_an_old_checkpoint_resumes(self):
        logdir = os.path.join(self.get_temp_dir(), "run")
        shutil.copytree(os.path.join(GOLDEN, "run"), logdir)
        for name in ("config.json", "flags.cfg", "results.json"):
            path = os.path.join(logdir, name)
            with open(path) as f:
                text = f.read().replace("<logdir>", logdir)
            with open(path, "w") as f:
                f.write(text)
        summary = train.train_and_evaluate(smoke_util.smoke_config(logdir), progress=False)
        with open(os.path.join(GOLDEN, "uninterrupted_results.json")) as f:
            expected = json.load(f)
        self.assertTrue(summary["complete"])
        for got, want in zip(summary["history"], expected["history"], strict=True):
            for key, value in want.items():
                if key.startswith(("test/", "train/", "meta/")):
                    # float32 steps on another CPU's kernels: a few ulps per operation, over a
                    # handful of steps; a layout mistake (weights in the wrong layers) is O(1).
                    self.assertAllClose(got[key], value, rtol=1e-4, atol=1e-6, msg=key)
        # It keeps saving in its own layout, so a second stop resumes too.
        from maxl_tf.experiment import rundir
        from maxl_tf.experiment import state as state_lib

        self.assertNotIn(state_lib.INPUT_CONTRACT, {n.partition("/")[0] for n in rundir.saved_variables(logdir)})


if __name__ == "__main__":
    tf.test.main()
