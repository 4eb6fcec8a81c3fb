"""--model=module:function: the command line over any Keras backbone (models/backbones.py)."""

import os
import subprocess
import sys
import textwrap
from unittest import mock

import keras
import tensorflow as tf

from maxl_tf import errors
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import exports
from maxl_tf.experiment import train
from maxl_tf.models import backbones
from maxl_tf.models import heads
from tests import smoke_util

_NETS = """
import keras
import numpy as np

def small(input_shape):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Conv2D(4, 3, activation="relu", name="c1"),
                             keras.layers.Conv2D(8, 3, name="c2")])

class Own(keras.Model):
    def call(self, x):
        return x

def subclassed(input_shape):
    return Own()

def broken(input_shape):
    raise RuntimeError("no such layer size")

def with_lambda(input_shape):
    pixels = keras.Input(input_shape)
    scaled = keras.layers.Lambda(lambda x: x / 255.0, name="scale")(pixels)
    return keras.Model(pixels, keras.layers.Conv2D(4, 3)(scaled))

class Scale(keras.layers.Layer):
    def call(self, x):
        return x / 255.0

def with_unregistered(input_shape):
    return keras.Sequential([keras.Input(input_shape), Scale(name="own"), keras.layers.Conv2D(4, 3)])

@keras.saving.register_keras_serializable(package="my_nets_for_test")
class Registered(keras.layers.Layer):
    def call(self, x):
        return x / 255.0

def with_registered(input_shape):
    return keras.Sequential([keras.Input(input_shape), Registered(), keras.layers.Conv2D(4, 3)])

@keras.saving.register_keras_serializable(package="my_nets_for_test")
class NoConfig(keras.layers.Layer):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def call(self, x):
        return x * self.factor

def without_config(input_shape):
    return keras.Sequential([keras.Input(input_shape), NoConfig(1 / 255), keras.layers.Conv2D(4, 3)])

def nested_lambda(input_shape):
    inner = with_lambda(input_shape)
    pixels = keras.Input(input_shape)
    return keras.Model(pixels, inner(pixels))
"""


class BackboneSpecTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        folder = self.get_temp_dir()
        with open(os.path.join(folder, "my_nets_for_test.py"), "w") as f:
            f.write(textwrap.dedent(_NETS))
        sys.path.insert(0, folder)
        self.addCleanup(sys.path.remove, folder)

    def test_bad_specs_are_one_line_errors(self):
        cases = {
            "no_module_here:net": "cannot import no_module_here",
            "my_nets_for_test:missing": "has no function missing",
            "my_nets_for_test:subclassed": "subclassed model",
            "my_nets_for_test:broken": r"broken\(\(8, 8, 1\)\) failed: RuntimeError: no such layer size",
        }
        for spec, message in cases.items():
            with self.subTest(spec):
                with self.assertRaisesRegex(errors.Error, f"--model={spec}: .*{message}") as raised:
                    backbones.backbone(spec, (8, 8, 1))
                self.assertNotIn("\n", str(raised.exception))

    def test_what_the_export_cannot_hold_is_refused_before_training(self):
        """A Lambda, an unregistered layer class, a layer without get_config: one line at build
        (the export after the last epoch would fail on every rerun); a registered layer is fine."""
        cases = {
            "my_nets_for_test:with_lambda": r"layer 'scale' is a Lambda, .*keras.layers.Rescaling",
            "my_nets_for_test:nested_lambda": r"layer 'scale' is a Lambda",
            "my_nets_for_test:with_unregistered": (
                r"layer 'own' is of class my_nets_for_test.Scale, which is not registered for saving.*"
                r"@keras.saving.register_keras_serializable\(\)\.$"
            ),
            "my_nets_for_test:without_config": r"the backbone cannot be rebuilt .*get_config\(\).*\*\*kwargs",
        }
        for spec, message in cases.items():
            with self.subTest(spec):
                with self.assertRaisesRegex(errors.Error, f"^--model={spec}: {message}") as raised:
                    backbones.build_evaluator(spec, (8, 8, 1), 2, (2, 2))
                self.assertNotIn("\n", str(raised.exception))
        network = backbones.build_evaluator("my_nets_for_test:with_registered", (8, 8, 1), 2, (2, 2))
        self.assertEqual([o.shape[-1] for o in network.outputs], [2, 4])

    def test_a_lambda_backbone_stops_main_py_before_training_with_one_line(self):
        logdir = os.path.join(self.get_temp_dir(), "lambda_run")
        folder = self.get_temp_dir()  # setUp's my_nets_for_test.py
        process = subprocess.run(
            smoke_util.main_command(
                f"--flagfile={smoke_util.SMOKE_FLAGFILE}", "--model=my_nets_for_test:with_lambda", f"--logdir={logdir}"
            ),
            cwd=smoke_util.REPO,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join([smoke_util.REPO, folder])),
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(process.returncode, 2, process.stderr[-2000:])
        self.assertNotIn("Traceback", process.stderr)
        errors_printed = [line for line in process.stderr.splitlines() if line.startswith("error:")]
        self.assertEqual(len(errors_printed), 1, process.stderr[-2000:])
        self.assertRegex(errors_printed[0], r"^error: --model=my_nets_for_test:with_lambda: layer 'scale' is a Lambda")
        self.assertNotIn("epoch 1/", process.stdout)  # nothing trained
        self.assertEqual(os.listdir(logdir), ["claims"])  # the sweep worker's claim alone: no run to rerun into

    def test_imagenet_weights_offline_say_what_to_do(self):
        failure = Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- name resolution")
        with mock.patch("keras.src.utils.file_utils.get_file", side_effect=failure):
            with self.assertRaisesRegex(errors.Error, "cannot download its ImageNet weights.*--nopretrained"):
                backbones.backbone("keras.applications:MobileNetV3Small", (32, 32, 3))
        network = backbones.backbone("keras.applications:MobileNetV3Small", (32, 32, 3), pretrained=False)
        self.assertEqual(len(network.outputs[0].shape), 4)
        # The application is the backbone itself: it gets the raw 0-255 pixels it expects, as every
        # network does (models/pixels.py), with no layer of ours in front.
        self.assertEqual(network.layers[0].__class__.__name__, "InputLayer")
        self.assertNotIn("maxl_tf", {type(layer).__module__.split(".")[0] for layer in network.layers})

    def test_a_classifier_is_not_a_backbone(self):
        classifier = keras.applications.MobileNetV3Small(
            input_shape=(32, 32, 3), include_top=True, weights=None, classes=7
        )
        with self.assertRaisesRegex(ValueError, "softmax classifier .*include_top=False"):
            heads.multitask(classifier, pri=2, psi=(2, 2))

    def test_unknown_model_and_half_precision_are_refused(self):
        with self.assertRaisesRegex(errors.Error, "--model=resnet: unknown"):
            config_lib.check_flags(config_lib.Config(model="resnet"))
        with self.assertRaisesRegex(errors.Error, "--precision=mixed_bfloat16"):
            config_lib.check_flags(config_lib.Config(model="m:f", precision="mixed_bfloat16"))

    def test_a_maxl_run_over_an_own_backbone(self):
        logdir = os.path.join(self.get_temp_dir(), "run")
        config = smoke_util.smoke_config(logdir, model="my_nets_for_test:small", epochs=1)
        summary = train.train_and_evaluate(config, progress=False)
        record = summary["history"][-1]
        self.assertTrue(summary["complete"])
        self.assertBetween(record["train/trunk_grad_cosine"], -1.0, 1.0)
        self.assertIn("labels/aux_used_mean", record)
        evaluator = keras.saving.load_model(os.path.join(logdir, exports.EVALUATOR))
        self.assertEqual([o.shape[-1] for o in evaluator.outputs], [2, 10])
