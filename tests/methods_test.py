"""The method and hypergradient registries (core/methods.py): every module reads them, a new
baseline is one class and one entry, and the k-means baseline is that."""

import ast
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

from maxl_tf import errors
from maxl_tf.core import hierarchy
from maxl_tf.core import labels as labels_lib
from maxl_tf.core import meta
from maxl_tf.core import methods
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import sweep
from tests import smoke_util

PACKAGE = pathlib.Path(smoke_util.REPO) / "maxl_tf"
# The registries themselves, and the label source of each method, keyed by its name.
REGISTRIES = {"core/methods.py", "core/labels.py", "core/meta.py"}
# Names that are a variable holding a --method or --hypergradient value.
VALUE_NAMES = ("method", "hypergradient")


def _names_a_value(node) -> bool:
    """config.method, method, self.hypergradient, ...: an expression holding a --method or
    --hypergradient string."""
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
    return name.endswith(VALUE_NAMES)


def _literals(node) -> set:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*map(_literals, node.elts)) if node.elts else set()
    return set()


def literal_comparisons(source: str) -> list:
    """Line numbers where a --method or --hypergradient value is compared with a registered name
    written out, or picks from a dict literal keyed by such names."""
    registered = set(methods.REGISTRY) | set(methods.HYPERGRADIENTS)
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(map(_names_a_value, sides)) and set().union(*map(_literals, sides)) & registered:
                found.append(node.lineno)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Dict) and _names_a_value(node.slice):
            found.append(node.lineno)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Dict)
            and node.func.attr == "get"
            and node.args
            and _names_a_value(node.args[0])
        ):
            found.append(node.lineno)
    return found


class RegistryTest(tf.test.TestCase):
    def test_no_method_or_hypergradient_name_is_compared_outside_the_registries(self):
        found = []
        for path in sorted(PACKAGE.rglob("*.py")):
            if str(path.relative_to(PACKAGE)) in REGISTRIES:
                continue
            found += [f"{path.relative_to(PACKAGE)}:{line}" for line in literal_comparisons(path.read_text())]
        self.assertEqual(found, [], "read core/methods.py's descriptors instead of comparing names")

    def test_the_check_finds_what_it_looks_for(self):
        self.assertLen(literal_comparisons('if config.method == "maxl": pass'), 1)
        self.assertLen(literal_comparisons('x = method in ("human", "prototypical")'), 1)
        self.assertLen(literal_comparisons('x = {"maxl": 1}.get(config.method, 0)'), 1)
        self.assertLen(literal_comparisons('x = {"maxl": 1}[task.hypergradient]'), 1)
        self.assertEqual(literal_comparisons('x = what == "maxl"'), [])  # a benchmark's piece, not a method

    def test_registries_import_without_tensorflow(self):
        code = (
            "import sys; import maxl_tf.core.methods; from maxl_tf.experiment import config, sweep;"
            "assert 'tensorflow' not in sys.modules, 'the registries started TensorFlow'"
        )
        subprocess.run([sys.executable, "-c", code], check=True, cwd=smoke_util.REPO)

    def test_every_method_has_a_label_source_and_every_hypergradient_a_function(self):
        self.assertCountEqual(labels_lib.SOURCES, methods.REGISTRY)
        self.assertEqual(tuple(meta.HYPERGRADIENTS), methods.HYPERGRADIENTS)
        for name in methods.REGISTRY:
            self.assertEqual(labels_lib.source(name).method, methods.get(name))

    def test_descriptors_say_what_each_method_ignores(self):
        self.assertNotIn("entropy_weight", methods.MAXL.ignored_fields)
        self.assertIn("entropy_weight", methods.get("kmeans").ignored_fields)
        self.assertNotIn("embedder", methods.get("kmeans").ignored_fields)
        self.assertIn("meta_split", methods.get("kmeans").ignored_fields)
        self.assertTrue({"aux", "psi", "embedder"} <= methods.SINGLE.ignored_fields)

    def test_unknown_method_names_the_flag(self):
        config = smoke_util.smoke_config("", method="kmean")
        with self.assertRaisesRegex(errors.Error, r"--method=kmean: unknown; use one of .*kmeans"):
            config_lib.resolve(config)


class ToyMethodTest(tf.test.TestCase):
    """A new baseline is a descriptor and a label source, registered: the whole command-line
    path (validation, sweep, training, results.json) takes it without another change."""

    def setUp(self):
        super().setUp()
        methods.register(methods.Method("first_slot", "every image labelled its block's first class"))

        @labels_lib.register
        class FirstSlot(labels_lib.FixedLabels):
            name = "first_slot"

            def fixed_labels(self, run):
                return hierarchy.block_offsets(run.psi)[run.pri_labels], {}

        self.addCleanup(methods.REGISTRY.pop, "first_slot")
        self.addCleanup(labels_lib.SOURCES.pop, "first_slot")

    def test_a_registered_method_trains_from_the_command_line_path(self):
        from maxl_tf.experiment import train

        logdir = tempfile.mkdtemp()
        run = config_lib.resolve(smoke_util.smoke_config(logdir, method="first_slot", epochs=1))
        self.assertNotIn("entropy_weight", dict(sweep.experiment_key(run.config)))  # not learned: ignored
        results = train.train_and_evaluate(run, progress=False)
        self.assertTrue(results["complete"])
        with open(os.path.join(logdir, "results.json")) as f:
            self.assertEqual(json.load(f)["config"]["method"], "first_slot")


class KMeansTest(tf.test.TestCase):
    def test_clusters_stay_in_their_principal_class_block(self):
        rng = np.random.default_rng(0)
        pri_labels = np.repeat([0, 1], 30)
        embeddings = rng.normal(size=(60, 4))
        out = labels_lib.kmeans_aux_labels(embeddings, pri_labels, (3, 2), seed=0)
        self.assertAllInSet(out[:30], [0, 1, 2])
        self.assertAllInSet(out[30:], [3, 4])
        self.assertAllEqual(out, labels_lib.kmeans_aux_labels(embeddings, pri_labels, (3, 2), seed=0))

    def test_separated_clusters_are_found_and_matched_to_the_human_classes(self):
        toy = hierarchy.Hierarchy("toy", {4: np.arange(4), 2: np.array([0, 0, 1, 1])})
        finest = np.repeat([0, 1, 2, 3], 20)
        centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], np.float64)
        embeddings = centres[finest] + np.random.default_rng(1).normal(scale=0.1, size=(80, 2))
        everything = np.arange(80)
        run = labels_lib.RunLabels(toy, 2, 4, (2, 2), finest, 0, everything, everything, lambda: (embeddings, "toy"))
        labels, info = labels_lib.KMeans().fixed_labels(run)
        self.assertEqual(info, {"embedder": "toy", "human_agreement": 1.0})  # whatever ids k-means gave
        self.assertLen(set(zip(labels, finest)), 4)

    def test_a_class_smaller_than_its_clusters_names_the_fix(self):
        with self.assertRaisesRegex(errors.Error, "--method=kmeans: principal class 1 has 2 training examples"):
            labels_lib.kmeans_aux_labels(np.eye(12), np.array([0] * 10 + [1] * 2), (2, 3), seed=0)

    def test_a_kmeans_run_records_its_embedder_and_agreement_with_the_human_classes(self):
        from maxl_tf.experiment import train

        logdir = tempfile.mkdtemp()
        run = config_lib.resolve(smoke_util.smoke_config(logdir, method="kmeans", embedder="untrained", epochs=1))
        results = train.train_and_evaluate(run, progress=False)
        self.assertTrue(results["complete"])
        self.assertIn("untrained", results["aux_labels"]["embedder"])
        self.assertBetween(results["aux_labels"]["human_agreement"], 0.0, 1.0)


if __name__ == "__main__":
    tf.test.main()
