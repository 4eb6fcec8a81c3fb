"""--model=module:function: the command line over any Keras backbone (models/backbones.py)."""

import os
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
