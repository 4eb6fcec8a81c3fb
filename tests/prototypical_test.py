"""The Prototypical-net baseline: nearest-prototype labels, the embedders, and a tiny run."""

import json
import os
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

from maxl_tf import errors
from maxl_tf.core import hierarchy
from maxl_tf.core import labels
from maxl_tf.data import pipeline as data
from maxl_tf.data import registry
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import inputs
from maxl_tf.experiment import train
from maxl_tf.models import embedder
from tests import smoke_util


class NearestPrototypeTest(tf.test.TestCase):
    """Hand-made 2-d embeddings whose nearest prototypes can be read off."""

    def test_nearest_prototype_within_own_block(self):
        psi = (2, 1)  # principal 0 owns slots 0, 1; principal 1 owns slot 2
        embeddings = np.asarray(
            [
                [0.0, 0.0],
                [2.0, 0.0],  # meta, slot 0: prototype (1, 0)
                [10.0, 0.0],  # meta, slot 1: prototype (10, 0)
                [0.0, 10.0],  # meta, slot 2: prototype (0, 10)
                [4.0, 0.0],  # principal 0: 9 from slot 0, 36 from slot 1
                [7.0, 0.0],  # principal 0: 36 from slot 0, 9 from slot 1
                [10.0, 0.0],  # principal 1: on slot 1's prototype, but slot 2 is its only class
            ]
        )
        human_slots = np.asarray([0, 0, 1, 2, 1, 0, 2])  # the non-meta ones are never read
        pri_labels = np.asarray([0, 0, 0, 1, 0, 0, 1])
        out = labels.nearest_prototype_labels(embeddings, human_slots, pri_labels, psi, meta_indices=np.arange(4))
        self.assertEqual(out.dtype, np.int64)
        self.assertAllEqual(out[4:], [0, 1, 2])
        # Meta examples get their nearest prototype too: (2, 0) is nearer slot 0's than slot 1's.
        self.assertAllEqual(out[:4], [0, 0, 1, 2])

    def test_class_without_meta_examples_is_never_assigned(self):
        psi = (3, 1)  # slot 2 of principal 0 has no meta example
        embeddings = np.asarray([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [20.0, 20.0], [9.0, 0.0]])
        human_slots = np.asarray([0, 1, 3, 2, 2])
        pri_labels = np.asarray([0, 0, 1, 0, 0])
        out = labels.nearest_prototype_labels(
            embeddings, human_slots, pri_labels, psi, meta_indices=np.asarray([0, 1, 2])
        )
        # (20, 20) is a slot-2 image far from both prototypes; it gets the nearer, slot 1.
        self.assertAllEqual(out, [0, 1, 3, 1, 1])

    def test_principal_class_without_meta_examples_is_an_error(self):
        embeddings = np.zeros((3, 2))
        with self.assertRaisesRegex(errors.Error, r"principal class\(es\) \[1\].*--meta_split"):
            labels.nearest_prototype_labels(
                embeddings, np.asarray([0, 1, 2]), np.asarray([0, 0, 1]), (2, 1), meta_indices=np.asarray([0, 1])
            )


def _digits(n=200):
    raw = registry.get("digits").load()
    return raw.train.images[:n], raw.train.labels[:n]


class EmbedderTest(tf.test.TestCase):
    def test_saved_model_embeds_what_it_computes(self):
        # A model whose embedding is its input pixels: the labels are nearest prototypes in pixel space.
        inputs = keras.Input((8, 8, 1))
        path = os.path.join(self.get_temp_dir(), "pixels.keras")
        keras.Model(inputs, keras.layers.Flatten()(inputs)).save(path)
        images, fine = _digits()
        saved = embedder.load(path)
        self.assertIn(path, saved.description)
        embeddings = embedder.embed(saved, images)
        self.assertAllEqual(embeddings, images.reshape(len(images), 64).astype(np.float32))

        digits = registry.get("digits").levels()
        _, meta = data.split_meta(len(fine), 0.1, seed=0)
        out = labels.prototypical_aux_labels(embedder.embed(saved, images), digits, 2, 10, (7, 3), fine, meta)
        expected = labels.nearest_prototype_labels(
            embeddings, hierarchy.human_aux_labels(digits, 2, 10, fine), digits.labels_at(2, fine), (7, 3), meta
        )
        self.assertAllEqual(out, expected)
        # Two meta images per digit already recover most human labels from raw pixels (chance ~0.2).
        self.assertGreater(np.mean(out == hierarchy.human_aux_labels(digits, 2, 10, fine)), 0.5)

    def test_saved_model_input_is_resized_and_made_rgb(self):
        inputs = keras.Input((16, 16, 3))
        path = os.path.join(self.get_temp_dir(), "rgb.keras")
        keras.Model(inputs, inputs).save(path)
        images = np.full((3, 8, 8, 1), 200, np.uint8)
        self.assertAllClose(embedder.embed(embedder.load(path), images), np.full((3, 768), 200.0))

    def test_saved_model_for_other_images_names_the_flag(self):
        inputs = keras.Input((8, 8, 4))
        path = os.path.join(self.get_temp_dir(), "four_channels.keras")
        keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs))).save(path)
        with self.assertRaisesRegex(errors.Error, "--embedder: saved Keras model .*four_channels"):
            embedder.embed(embedder.load(path), np.zeros((2, 8, 8, 1), np.uint8))

    def test_unreadable_saved_model_names_the_flag(self):
        path = os.path.join(self.get_temp_dir(), "broken.keras")
        with open(path, "w") as f:
            f.write("not a zip archive")
        with self.assertRaisesRegex(errors.Error, "--embedder=.*broken.keras: cannot load"):
            embedder.load(path)

    def test_missing_path_is_a_config_error(self):
        for path in ("/nonexistent/model.keras", "model.h5"):
            config = config_lib.Config(dataset="digits", pri=2, aux=10, method="prototypical", embedder=path)
            with self.assertRaisesRegex(errors.Error, f"--embedder={path}: no such saved Keras model"):
                config_lib.resolve(config)
        # Other methods ignore --embedder.
        config_lib.resolve(config_lib.Config(dataset="digits", pri=2, aux=10, embedder="/nonexistent"))

    def test_needs_a_human_hierarchy(self):
        for overrides in (dict(dataset="cifar10", pri=10, aux=20), dict(dataset="digits", pri=2, aux=10, psi=(5, 5))):
            with self.assertRaisesRegex(errors.Error, "--method=prototypical"):
                config_lib.resolve(config_lib.Config(method="prototypical", **overrides))

    def test_untrained_is_deterministic_per_seed(self):
        images, _ = _digits(64)
        first = embedder.embed(embedder.load(embedder.UNTRAINED, seed=3), images)
        again = embedder.embed(embedder.load(embedder.UNTRAINED, seed=3), images)
        other = embedder.embed(embedder.load(embedder.UNTRAINED, seed=4), images)
        self.assertEqual(first.shape, (64, 512))
        self.assertAllEqual(first, again)
        self.assertGreater(np.abs(first - other).max(), 1e-3 * np.abs(first).max())


def _offline_vgg16(original):
    """keras.applications.VGG16 as it behaves offline without cached weights."""

    def vgg16(weights, **kwargs):
        if weights == "imagenet":
            raise Exception(
                "URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -2] Name or service not known"
            )
        return original(weights=weights, **kwargs)

    return vgg16


class OfflineImagenetTest(tf.test.TestCase):
    def test_error_names_the_flag_and_every_fix(self):
        with mock.patch.object(keras.applications, "VGG16", _offline_vgg16(keras.applications.VGG16)):
            with self.assertRaises(errors.Error) as caught:
                embedder.load(embedder.IMAGENET)
        message = str(caught.exception)
        self.assertIsInstance(caught.exception, errors.Error)  # main.py: one error line, exit 2
        for part in (
            "--embedder=imagenet",
            "Name or service not known",
            embedder.VGG16_WEIGHTS_FILE,
            os.path.join(".keras", "models"),
            "--embedder=<a saved .keras model>",
            "--embedder_fallback=untrained",
        ):
            self.assertIn(part, message)

    def test_fallback_only_when_asked_and_says_so(self):
        with mock.patch.object(keras.applications, "VGG16", _offline_vgg16(keras.applications.VGG16)):
            used = embedder.load(embedder.IMAGENET, fallback="untrained", seed=0)
        self.assertStartsWith(used.description, "UNTRAINED VGG16")
        self.assertIn("--embedder_fallback=untrained", used.description)
        self.assertIn("Name or service not known", used.description)
        images, _ = _digits(8)
        self.assertAllEqual(
            embedder.embed(used, images), embedder.embed(embedder.load(embedder.UNTRAINED, seed=0), images)
        )


class PrototypicalRunTest(tf.test.TestCase):
    def _aux_labels(self, run_data):
        return np.concatenate([batch["aux_labels"].numpy() for batch in run_data.train.evaluation_batches(1000)])

    def test_prepare_data_labels_train_part_in_blocks_deterministically(self):
        config = smoke_util.smoke_config(self.get_temp_dir(), method="prototypical", embedder="untrained")
        run_data = inputs.prepare(config_lib.resolve(config))
        # Paper 4.1: prototypes from the 10% meta split, the evaluator trains on the other 90%.
        self.assertLen(run_data.train_indices, 180)
        self.assertLen(run_data.meta_indices, 20)
        self.assertEmpty(np.intersect1d(run_data.train_indices, run_data.meta_indices))
        aux = self._aux_labels(run_data)
        principal = np.concatenate([b["labels"].numpy() for b in run_data.train.evaluation_batches(1000)])
        self.assertAllEqual(hierarchy.psi_mask((7, 3))[principal, aux], np.ones(200))
        self.assertStartsWith(run_data.aux_label_info["embedder"], "untrained VGG16")
        self.assertBetween(run_data.aux_label_info["human_agreement"], 0.0, 1.0)
        self.assertAllEqual(self._aux_labels(inputs.prepare(config_lib.resolve(config))), aux)

    def test_tiny_run_records_its_embedder(self):
        logdir = os.path.join(self.get_temp_dir(), "prototypical")
        config = smoke_util.smoke_config(logdir, method="prototypical", embedder="untrained", epochs=1, export=False)
        results = train.train_and_evaluate(config, progress=False)
        record = results["history"][0]
        self.assertGreater(record["train/aux_loss"], 0.0)
        self.assertNotIn("meta/loss", record)
        used = record["labels/aux_used_per_pri"]
        self.assertTrue(1 <= used[0] <= 7 and 1 <= used[1] <= 3, used)
        with open(os.path.join(logdir, "results.json")) as f:
            on_disk = json.load(f)
        self.assertEqual(on_disk["aux_labels"], results["aux_labels"])
        self.assertStartsWith(on_disk["aux_labels"]["embedder"], "untrained VGG16")

    def test_offline_imagenet_stops_the_run_before_training(self):
        logdir = os.path.join(self.get_temp_dir(), "offline")
        config = smoke_util.smoke_config(logdir, method="prototypical")
        with mock.patch.object(keras.applications, "VGG16", _offline_vgg16(keras.applications.VGG16)):
            with self.assertRaisesRegex(errors.Error, "--embedder=imagenet"):
                train.train_and_evaluate(config, progress=False)
        self.assertFalse(os.path.exists(os.path.join(logdir, "results.json")))


if __name__ == "__main__":
    tf.test.main()
