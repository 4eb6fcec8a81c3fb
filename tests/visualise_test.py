"""Pictures of what runs learned, from two tiny real runs on digits: the suite's shared maxl smoke run and a
one-epoch single-task run."""

import dataclasses
import os
import shutil
import tempfile

from google.protobuf import text_format
import matplotlib.image
import numpy as np
import pytest
from tensorboard.backend.event_processing import data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins import projector
from tensorboard.plugins.projector import projector_plugin
import tensorflow as tf

from maxl_tf import errors
from maxl_tf import visualise
from maxl_tf.core import hierarchy as hierarchy_lib
from maxl_tf.core import labels as labels_lib
from maxl_tf.data import registry
from maxl_tf.experiment import rundir
from maxl_tf.experiment import train
from maxl_tf.models import vgg
from tests import smoke_util
from tests.tolerances import FLOAT32
from tests.tolerances import probabilistic_error

MAX_EXAMPLES = 40  # of smoke.cfg's 100 test images, so the subsample is exercised


def _trunk_by_hand(evaluator, images):
    """The evaluator's layers applied one by one up to the trunk's flatten layer."""
    x = images
    for layer in evaluator.layers[1:]:
        x = layer(x, training=False)
        if layer.name == vgg.TRUNK_PREFIX + "flatten":
            return x
    raise AssertionError("no trunk_flatten layer")


@pytest.mark.slow
class VisualiseTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp()
        single = os.path.join(cls.root, "single")
        train.train_and_evaluate(
            smoke_util.smoke_config(single, method="single", epochs=1, export=False), progress=False
        )
        cls.logdirs = [smoke_util.finished_run(), single]  # the shared maxl run: visualise only reads it
        cls.out = os.path.join(cls.root, "out")
        cls.written = visualise.visualise(cls.logdirs, cls.out, max_examples=MAX_EXAMPLES, aux_classes=3, top_k=5)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root)
        super().tearDownClass()

    def test_tsne_figure_has_one_panel_per_run(self):
        image = matplotlib.image.imread(self.written["tsne"])
        self.assertEqual(image.shape, (440, 800, 4))  # two 4-inch panels at 100 dpi
        self.assertGreater(image[..., :3].std(), 0.05)  # not blank

    def test_projected_features_are_the_evaluators_trunk_output(self):
        maxl = self.written["runs"][0]
        indices = self.written["indices"][maxl.key]
        self.assertAllEqual(indices, visualise.subsample(100, MAX_EXAMPLES))
        reader = tf.train.load_checkpoint(self.out)
        features = reader.get_tensor(f"{maxl.key}/.ATTRIBUTES/VARIABLE_VALUE")
        self.assertEqual(features.shape, (MAX_EXAMPLES, 32))  # smoke.cfg: 256 filters * width 0.125

        # Independently: a fresh restore, the layers applied by hand, two of the subsample's images.
        run, state, run_data = rundir.load_run(self.logdirs[0])
        batch = next(iter(run_data.test.evaluation_batches(1000)))
        rows = [0, MAX_EXAMPLES - 1]
        expected = _trunk_by_hand(state.evaluator, tf.gather(batch["images"], indices[rows]))
        # float32 sums in other orders, up to 288 terms (3 x 3 x 32 channels) in 3 blocks: lambda
        # sqrt(3 x 288) u32 with lambda = 3, of the features' scale.
        atol = 3 * probabilistic_error(3 * 288, FLOAT32) * float(np.abs(expected).max())
        self.assertAllClose(features[rows], expected, rtol=0, atol=atol)
        self.assertAllEqual(maxl.labels, batch["labels"])

        # The generator's masked softmax for the top-k grid, against labels.generated_labels.
        probabilities = labels_lib.generated_labels(
            state.generator,
            batch["images"],
            batch["labels"],
            tf.constant(hierarchy_lib.psi_mask(run.config.psi)),
            training=False,
        )
        self.assertAllClose(maxl.aux_probabilities, probabilities, rtol=0, atol=16 * FLOAT32)  # the same softmax
        self.assertEqual(maxl.aux_source, "generator")

        # Human and random runs rank by the evaluator's auxiliary head under the same mask.
        as_human = visualise.run_on_test_set(dataclasses.replace(run.config, method="human"), state, run_data, "h")
        _, aux_logits = state.evaluator(batch["images"], training=False)
        probabilities = tf.nn.softmax(aux_logits).numpy() * hierarchy_lib.psi_mask(run.config.psi)[batch["labels"]]
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        # Two float32 ways to a masked softmax, 16 u each of probabilities <= 1.
        self.assertAllClose(as_human.aux_probabilities, probabilities, rtol=0, atol=32 * FLOAT32)
        self.assertEqual(as_human.aux_source, "evaluator's auxiliary head")

    def test_projector_files_name_the_tensors_and_metadata(self):
        with open(os.path.join(self.out, "projector_config.pbtxt")) as f:
            config = text_format.Parse(f.read(), projector.ProjectorConfig())
        reader = tf.train.load_checkpoint(self.out)
        self.assertLen(config.embeddings, 2)
        for run, embedding in zip(self.written["runs"], config.embeddings):
            indices = self.written["indices"][run.key]
            self.assertEqual(embedding.tensor_name, f"{run.key}/.ATTRIBUTES/VARIABLE_VALUE")
            self.assertAllEqual(reader.get_tensor(embedding.tensor_name), run.features[indices])
            with open(os.path.join(self.out, embedding.metadata_path)) as f:
                lines = f.read().splitlines()
            self.assertEqual(lines[0], "test_index\tprincipal\tprincipal_predicted\tauxiliary")
            table = [line.split("\t") for line in lines[1:]]
            self.assertEqual([int(row[0]) for row in table], indices.tolist())
            self.assertEqual([int(row[1]) for row in table], run.labels[indices].tolist())
            auxiliary = [row[3] for row in table]
            if run.aux_probabilities is None:
                self.assertEqual(set(auxiliary), {"-"})
            else:
                self.assertEqual(auxiliary, run.aux_probabilities[indices].argmax(1).astype(str).tolist())
            # Sprite: a 7x7 grid of 8x8 digits; tile 8 (row 1, column 1) is the 9th image.
            sprite = matplotlib.image.imread(os.path.join(self.out, embedding.sprite.image_path))
            self.assertEqual(sprite.shape, (56, 56, 4))
            self.assertEqual(list(embedding.sprite.single_image_dim), [8, 8])
            # An 8-bit PNG: one level, whether written rounded or truncated.
            self.assertAllClose(sprite[8:16, 8:16, 0], run.images[indices[8], :, :, 0], atol=1 / 255)

    def test_tensorboard_over_the_runs_folder_finds_the_projector(self):
        # What `tensorboard --logdir <root>` does: list the runs (folders with event files), then
        # let the projector plugin read each run's projector_config.pbtxt.
        multiplexer = plugin_event_multiplexer.EventMultiplexer()
        multiplexer.AddRunsFromDirectory(self.root)
        multiplexer.Reload()
        provider = data_provider.MultiplexerDataProvider(multiplexer, self.root)
        plugin = projector_plugin.ProjectorPlugin(base_plugin.TBContext(logdir=self.root, data_provider=provider))
        plugin._update_configs()
        self.assertIn("out", plugin._configs)
        names = sorted(embedding.tensor_name for embedding in plugin._configs["out"].embeddings)
        self.assertEqual(names, sorted(f"{run.key}/.ATTRIBUTES/VARIABLE_VALUE" for run in self.written["runs"]))

    def test_top_k_grid_only_for_runs_with_an_auxiliary_task(self):
        maxl, single = self.written["runs"]
        self.assertEqual(list(self.written["top_k"]), [maxl.key])
        # The 3 auxiliary classes drawn with seed 0 from psi = [7, 3], a row per principal class.
        chosen = np.sort(np.random.default_rng(0).choice(10, 3, replace=False))
        per_row = np.bincount(hierarchy_lib.owners((7, 3))[chosen])
        rows, cols = np.count_nonzero(per_row), 5 * per_row.max()
        image = matplotlib.image.imread(self.written["top_k"][maxl.key])
        self.assertEqual(image.shape[:2], (round(100 * (1.3 * rows + 0.8)), round(100 * (1.2 * cols + 1.2))))
        self.assertIsNone(single.aux_probabilities)
        self.assertEqual(maxl.class_names, ("curved", "straight"))

    def test_top_k_titles_name_human_auxiliary_classes(self):
        maxl, _ = self.written["runs"]
        self.assertIsNone(maxl.aux_names)  # MAXL's classes are learned: numbers only
        self.assertEqual(visualise.aux_class_label(maxl, 5), "aux 5")
        human = dataclasses.replace(maxl, aux_names=("0", "2", "3", "5", "6", "8", "9", "1", "4", "7"))
        self.assertEqual(visualise.aux_class_label(human, 5), "aux 5 (8)")

    def test_the_command_prints_no_warnings(self):
        process = smoke_util.run_python(
            "-m", "maxl_tf.visualise", self.logdirs[0], f"--out={os.path.join(self.root, 'quiet')}"
        )
        self.assertEqual(process.returncode, 0, process.stderr)
        self.assertEqual(process.stderr, "")  # e.g. none about checkpoint values left unrestored
        self.assertIn("t-SNE:", process.stdout)

    def test_fig6_grid_of_every_class_of_a_10_by_3_run(self):
        psi = (3,) * 10
        pri_of_aux = hierarchy_lib.owners(psi)
        rows, places = visualise.top_k_layout(pri_of_aux, np.arange(30))
        self.assertEqual(rows, list(range(10)))
        self.assertEqual(places, [(a // 3, a % 3) for a in range(30)])
        rng = np.random.default_rng(0)
        labels = np.repeat(np.arange(10), 20)
        probabilities = rng.random((200, 30)) * hierarchy_lib.psi_mask(psi)[labels]
        run = visualise.RunOutputs(
            key="fig6",
            title="maxl (fashion_mnist, pri 10, aux 30)",
            images=rng.random((200, 32, 32, 1)),
            labels=labels,
            predicted=labels,
            features=np.zeros((200, 4)),
            aux_probabilities=probabilities,
            aux_source="generator",
            pri_of_aux=pri_of_aux,
            class_names=registry.get("fashion_mnist").levels().names_at(10),
            aux_names=None,
        )
        path = os.path.join(self.root, "fig6.png")
        selection = visualise.top_k_per_aux_class(probabilities, labels, pri_of_aux, np.arange(30), 5)
        visualise.plot_top_k(run, np.arange(30), selection, path)
        # 10 rows (principal classes) of 3 x 5 images at 100 dpi.
        self.assertEqual(matplotlib.image.imread(path).shape[:2], (1380, 1920))

    def test_top_k_selection_is_the_highest_probabilities_within_the_principal_class(self):
        # psi = [2, 1]: auxiliary classes 0, 1 belong to principal class 0, class 2 to class 1.
        pri_of_aux = np.array([0, 0, 1])
        labels = np.array([0, 0, 1, 0, 1, 0])
        probabilities = np.array(
            [
                [0.4, 0.6, 0.0],
                [0.2, 0.8, 0.0],
                [0.0, 0.0, 1.0],
                [0.9, 0.1, 0.0],
                [0.99, 0.0, 0.01],  # principal class 1: never chosen for auxiliary class 0
                [0.4, 0.6, 0.0],
            ]
        )
        selection = visualise.top_k_per_aux_class(probabilities, labels, pri_of_aux, [0, 1, 2], k=3)
        self.assertAllEqual(
            selection,
            [
                [3, 0, 5],  # 0.9, then the tie at 0.4: lower index first
                [1, 0, 5],  # 0.8, then the tie at 0.6
                [2, 4, -1],
            ],
        )  # only two examples of principal class 1

    def test_a_directory_that_is_not_a_run_is_refused(self):
        empty = os.path.join(self.root, "empty")
        os.makedirs(empty)
        with self.assertRaisesRegex(errors.Error, "not a maxl_tf run directory"):
            visualise.visualise([empty], os.path.join(self.root, "refused"))
        untrained = os.path.join(self.root, "untrained")
        os.makedirs(untrained)
        shutil.copy(os.path.join(self.logdirs[0], "config.json"), untrained)
        with self.assertRaisesRegex(errors.Error, "no checkpoint yet"):
            visualise.visualise([untrained], os.path.join(self.root, "refused"))
        self.assertFalse(os.path.exists(os.path.join(self.root, "refused")))

        process = smoke_util.run_python(
            "-m",
            "maxl_tf.visualise",
            empty,
            f"--out={os.path.join(self.root, 'refused')}",
            timeout=120,
            TF_CPP_MIN_LOG_LEVEL="2",
        )
        self.assertEqual(process.returncode, 2)
        self.assertNotIn("Traceback", process.stderr)
        self.assertRegex(process.stderr, r"(?m)^error: .*empty is not a maxl_tf run directory")
        self.assertEqual(process.stdout, "")
