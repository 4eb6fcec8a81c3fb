"""A user's own images end to end: flags, training on a folder with a hierarchy file, the exports
loaded in a fresh process, and python -m maxl_tf.predict (README "Your own data")."""

import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from maxl_tf import errors
from maxl_tf.core import evaluator as evaluator_lib
from maxl_tf.core import hierarchy
from maxl_tf.core import losses
from maxl_tf.data import images as images_lib
from maxl_tf.data import registry
from maxl_tf.data import source
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import inputs
from maxl_tf.experiment import rundir
from tests import smoke_util

CLASSES = ("bus", "car", "cat", "dog", "owl")
TREE = {"animal": ["cat", "dog", "owl"], "vehicle": ["bus", "car"]}  # animal 0, vehicle 1: psi (3, 2)


def write_folder(root: str, per_class: int = 10, size: int = 12) -> None:
    """Per class, noisy images around a class grey level, so a tiny network can learn them."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            image = np.clip(rng.normal(40 * label + 40, 15, (size, size, 3)), 0, 255).astype(np.uint8)
            tf.io.write_file(os.path.join(root, name, f"{i}.png"), tf.io.encode_png(image))


def _env(tmp: str) -> dict:
    return dict(os.environ, PYTHONPATH=smoke_util.REPO, XDG_CACHE_HOME=os.path.join(tmp, "cache"))


class FlagsTest(tf.test.TestCase):
    """The new flags are checked against the data before anything loads."""

    def setUp(self):
        super().setUp()
        self.folder = os.path.join(self.get_temp_dir(), "images")
        write_folder(self.folder, per_class=2, size=4)
        self.tree = os.path.join(self.get_temp_dir(), "tree.json")
        with open(self.tree, "w") as f:
            json.dump(TREE, f)

    def _config(self, **overrides) -> config_lib.Config:
        values = dict(dataset="folder", data_dir=self.folder, pri=5, aux=10, logdir=self.get_temp_dir())
        return config_lib.Config(**{**values, **overrides})

    def test_psi_follows_the_folder_and_the_hierarchy(self):
        self.assertEqual(config_lib.resolve(self._config()).config.psi, (2,) * 5)
        human = config_lib.resolve(self._config(hierarchy=self.tree, pri=2, aux=5, method="human"))
        self.assertEqual(human.config.psi, (3, 2))
        self.assertEqual(config_lib.resolve(self._config(hierarchy=self.tree, pri=2, aux=6)).config.psi, (3, 3))
        # The folder's base name and 6 hex of its absolute path's sha256: two "images" folders differ.
        digest = hashlib.sha256(os.path.abspath(self.folder).encode()).hexdigest()[:6]
        self.assertEqual(human.name, f"folder_images_{digest}_pri2_aux5_human_seed0")

    def test_class_names_of_the_run(self):
        levels = registry.get("folder", source.Options(data_dir=self.folder, hierarchy=self.tree)).levels()
        human = config_lib.resolve(self._config(hierarchy=self.tree, pri=2, aux=5, method="human")).config
        # Blocks: animal (cat, dog, owl) at 0..2, vehicle (bus, car) at 3..4.
        self.assertEqual(
            inputs.class_names(levels, human),
            {"principal": ("animal", "vehicle"), "auxiliary": ("cat", "dog", "owl", "bus", "car")},
        )
        maxl = config_lib.resolve(self._config(hierarchy=self.tree, pri=2, aux=6)).config
        self.assertEqual(inputs.class_names(levels, maxl), {"principal": ("animal", "vehicle"), "auxiliary": None})

    def test_bad_flags(self):
        cases = [
            (dict(data_dir=""), r"--dataset=folder needs --data_dir"),
            (dict(dataset="flowers"), r"--dataset=flowers: unknown; use one of .*tfds:NAME"),
            (dict(dataset="tfds:"), r"--dataset=tfds:: unknown"),
            (dict(dataset="digits", hierarchy=self.tree), r"--hierarchy=.*only for --dataset=folder or tfds:NAME"),
            (dict(image_size=-1), r"--image_size=-1: must not be negative"),
            (dict(test_fraction=1.5), r"--test_fraction=1.5: must be between 0 and 1"),
            (
                dict(pri=3),
                rf"--pri=3: {re.escape(self.folder)} \(5 class folders\) has 5 classes \(bus, car, cat, dog, owl\); "
                r"pass --pri=5, or --hierarchy=",
            ),
            (dict(hierarchy=self.tree, pri=2, aux=5, psi=(4, 1), method="human"), r"--psi=4,1: --method=human uses"),
            (dict(data_dir=os.path.join(self.folder, "nope")), r"--data_dir=.*nope does not exist"),
        ]
        for overrides, pattern in cases:
            with self.subTest(**{k: str(v) for k, v in overrides.items()}):
                with self.assertRaisesRegex(errors.Error, pattern):
                    config_lib.resolve(self._config(**overrides))

    def test_tfds_set_by_its_label_names(self):
        run = config_lib.resolve(config_lib.Config(dataset="tfds:mnist", pri=10, aux=20, logdir=self.get_temp_dir()))
        self.assertEqual(run.config.psi, (2,) * 10)
        self.assertEqual(run.name, "tfds_mnist_pri10_aux20_maxl_seed0")
        with self.assertRaisesRegex(
            errors.Error,
            r"--dataset=tfds:mnistt: tensorflow-datasets has no such data "
            r"set \(close: mnist",
        ):
            config_lib.resolve(config_lib.Config(dataset="tfds:mnistt", pri=10, aux=20))

    def test_hierarchy_naming_a_class_the_folder_lacks(self):
        with open(self.tree, "w") as f:
            json.dump({"vehicle": ["bus", "car"], "animal": ["cat", "dog", "owl", "cow"]}, f)
        with self.assertRaisesRegex(errors.Error, r"--hierarchy=.*tree\.json: names 1 class\(es\).*'cow'"):
            config_lib.resolve(self._config(hierarchy=self.tree, pri=2, aux=5))


@pytest.mark.slow
class OwnDataEndToEndTest(tf.test.TestCase):
    """Trains a smoke run on a folder with a hierarchy (main.py), then uses what it exported."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tf.compat.v1.test.get_temp_dir()
        cls.folder = os.path.join(cls.tmp, "own_images")
        write_folder(cls.folder)
        cls.tree = os.path.join(cls.tmp, "tree.csv")
        with open(cls.tree, "w") as f:
            f.write("fine,principal\n" + "".join(f"{c},{p}\n" for p, cs in TREE.items() for c in cs))
        cls.logdir = os.path.join(cls.tmp, "runs", "own")
        cls.process = subprocess.run(
            smoke_util.main_command(
                f"--flagfile={smoke_util.SMOKE_FLAGFILE}",
                "--dataset=folder",
                f"--data_dir={cls.folder}",
                f"--hierarchy={cls.tree}",
                "--pri=2",
                "--aux=6",
                "--max_train_examples=0",
                "--max_test_examples=0",
                "--batch_size=8",
                f"--logdir={cls.logdir}",
            ),
            cwd=smoke_util.REPO,
            capture_output=True,
            text=True,
            timeout=600,
            env=_env(cls.tmp),
        )
        cls.images = [os.path.join(cls.folder, name, "3.png") for name in CLASSES]

    def setUp(self):
        super().setUp()
        self.assertEqual(self.process.returncode, 0, self.process.stderr)

    def _expected(self):
        """The restored in-training networks on the images: principal probabilities [N, 2] and the
        generator's masked softmax [N, 6] under the predicted principal class."""
        run, state, _ = rundir.load_run(self.logdir)
        config = run.config
        images = images_lib.load_images(self.images, 12, 3).astype("float32")
        pri_logits, _ = evaluator_lib.outputs(state.evaluator(images, training=False))
        principal = tf.nn.softmax(pri_logits).numpy()
        mask = tf.gather(hierarchy.psi_mask(config.psi), np.argmax(principal, axis=1))
        auxiliary = losses.masked_softmax(state.generator(images, training=False), mask).numpy()
        return config, principal, auxiliary

    def test_run_leaves_its_exports(self):
        for name in ("evaluator.keras", "generator.keras", "serving", "classes.json", "results.json"):
            self.assertTrue(os.path.exists(os.path.join(self.logdir, name)), name)
        with open(os.path.join(self.logdir, "classes.json")) as f:
            self.assertEqual(json.load(f), {"principal": ["animal", "vehicle"], "auxiliary": None})
        self.assertIn("psi=[3, 3]", self.process.stdout)

    def test_exports_in_a_fresh_process_equal_the_trained_networks(self):
        config, principal, auxiliary = self._expected()
        out = os.path.join(self.tmp, "fresh.npz")
        script = f"""
import numpy as np, keras, tensorflow as tf
from maxl_tf.data import images as images_lib  # not models: the .keras files hold Keras' own layers
images = images_lib.load_images({self.images!r}, 12, 3)
evaluator = keras.saving.load_model({os.path.join(self.logdir, "evaluator.keras")!r})
generator = keras.saving.load_model({os.path.join(self.logdir, "generator.keras")!r})
serving = tf.saved_model.load({os.path.join(self.logdir, "serving")!r})
served = serving.serve(tf.constant(images))
# Raw pixels in: the exports hold the pipeline's normalisation; the evaluator returns probabilities.
np.savez({out!r}, principal=evaluator(images, training=False)[0].numpy(),
         generator_logits=generator(images, training=False).numpy(),
         served_principal=served["principal"].numpy(), served_auxiliary=served["auxiliary"].numpy())
"""
        process = subprocess.run(
            [sys.executable, "-c", script],
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=300,
            env=_env(self.tmp),
        )
        self.assertEqual(process.returncode, 0, process.stderr)
        fresh = np.load(out)
        self.assertAllClose(fresh["principal"], principal, atol=1e-6)
        mask = tf.gather(hierarchy.psi_mask(config.psi), np.argmax(principal, axis=1))
        self.assertAllClose(losses.masked_softmax(fresh["generator_logits"], mask), auxiliary, atol=1e-6)
        self.assertAllClose(fresh["served_principal"], principal, atol=1e-6)
        self.assertAllClose(fresh["served_auxiliary"], auxiliary, atol=1e-6)
        # Zero outside the predicted principal class's block: animal owns 0..2, vehicle 3..5.
        for row, label in zip(fresh["served_auxiliary"], np.argmax(principal, axis=1)):
            self.assertAllEqual(row[3 * (1 - label) : 3 * (2 - label)], np.zeros(3))

    def test_predict_prints_names_and_the_generators_label(self):
        _, principal, auxiliary = self._expected()
        process = subprocess.run(
            [sys.executable, "-m", "maxl_tf.predict", f"--logdir={self.logdir}", *self.images],
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=300,
            env=_env(self.tmp),
        )
        self.assertEqual(process.returncode, 0, process.stderr)
        self.assertEqual(process.stderr, "")
        lines = process.stdout.splitlines()
        self.assertLen(lines, len(self.images))
        for line, path, pri, aux in zip(lines, self.images, principal, auxiliary):
            name = ("animal", "vehicle")[int(np.argmax(pri))]
            slot = int(np.argmax(aux))
            expected = (
                rf"{re.escape(path)}: {name} \({100 * pri.max():.1f}%\); auxiliary {slot} "
                rf"\({slot % 3 + 1} of {name}'s 3; generator\) \({100 * aux.max():.1f}%\)"
            )
            self.assertRegex(line, expected)

    def test_predict_bad_input(self):
        """One line and exit 2, before TensorFlow starts: a wrong path, and an image whose header
        does not read as one."""
        broken = os.path.join(self.tmp, "broken.png")
        with open(broken, "w") as f:
            f.write("not a png")
        cases = [
            ([f"--logdir={self.logdir}", os.path.join(self.tmp, "missing.png")], r"missing\.png: no such image", False),
            ([f"--logdir={self.folder}", self.images[0]], r"not a maxl_tf run directory", False),
            ([self.images[0]], r"--logdir is required", False),
            ([f"--logdir={self.logdir}", self.folder], r"is a folder; predict takes image files", False),
            # Every image's header is read before TensorFlow starts (and its pixels counted: --max_image_pixels).
            ([f"--logdir={self.logdir}", broken], r"broken\.png cannot be read as an image", False),
        ]
        for args, pattern, needs_tensorflow in cases:
            code, _, stderr, imported = smoke_util.run_recording_imports("maxl_tf.predict", *args)
            self.assertEqual(code, 2)
            self.assertRegex(stderr, rf"^error: .*{pattern}")
            self.assertLen(stderr.strip().splitlines(), 1)
            self.assertEqual(imported, needs_tensorflow, args)


if __name__ == "__main__":
    tf.test.main()
