"""A run knows its data: names, refusals, sweeps and reports keep runs of different data apart;
streamed and in-memory data give the same run; a user's own source from Python and the CLI."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from unittest import mock

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from maxl_tf import errors
from maxl_tf import report
from maxl_tf.data import folder as folder_lib
from maxl_tf.data import registry
from maxl_tf.data import source as source_lib
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import rundir
from maxl_tf.experiment import train
from tests import smoke_util


def write_folder(root: str, classes=("a", "b", "c"), per_class: int = 20, size: int = 8) -> None:
    """Per class, noisy grey images around a class level, so a tiny network learns something."""
    rng = np.random.default_rng(len(root))
    for label, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(40 + 80 * label + rng.normal(0, 20, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, name, f"{i:03d}.png"))


def folder_config(data_dir: str, logdir: str = "", **overrides) -> config_lib.Config:
    values = dict(
        dataset="folder",
        data_dir=data_dir,
        pri=3,
        aux=6,
        model="vgg_small",
        width=0.25,
        epochs=2,
        batch_size=10,
        generator_lr=1e-3,
        augment=False,
        lr_decay_every=10,
        logdir=logdir,
        cache_dir="",
        export=False,  # these tests read what a run records of its data, not its networks
    )
    values.update(overrides)
    return config_lib.Config(**values)


class NamesTest(tf.test.TestCase):
    def test_folders_of_one_base_name_get_different_names_without_listing(self):
        one, other = (os.path.join(self.get_temp_dir(), where, "images") for where in ("x", "y"))
        with mock.patch.object(folder_lib, "list_folder", side_effect=AssertionError("listed")):
            names = [folder_config(path).name for path in (one, other)]
        self.assertNotEqual(names[0], names[1])
        self.assertStartsWith(names[0], "folder_images_")

    def test_built_in_names_unchanged(self):
        config = config_lib.Config(dataset="cifar100", pri=20, aux=100)
        self.assertEqual(config.name, "cifar100_pri20_aux100_maxl_seed0")

    def test_naming_and_validating_list_the_folder_once(self):
        data_dir = os.path.join(self.get_temp_dir(), "once")
        write_folder(data_dir, per_class=3)
        config = folder_config(data_dir, logdir=os.path.join(self.get_temp_dir(), "run_once"), cache_dir="")
        with mock.patch.object(folder_lib, "list_folder", wraps=folder_lib.list_folder) as listed:
            validated = config_lib.validate(config)
            validated.name  # noqa: B018  (the property is what is checked)
            config_lib.source(validated).identity()
            config_lib.validate(validated)
        self.assertEqual(listed.call_count, 1)


@pytest.mark.slow
class RunKnowsItsDataTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.data = os.path.join(self.get_temp_dir(), "data")
        if not os.path.isdir(self.data):
            write_folder(self.data)

    def test_config_and_results_record_the_folder(self):
        logdir = os.path.join(self.get_temp_dir(), "recorded")
        results = train.train_and_evaluate(folder_config(self.data, logdir, epochs=1), progress=False)
        identity = results[rundir.DATA_KEY]
        self.assertEqual(identity["kind"], "folder")
        self.assertEqual(identity["path"], os.path.abspath(self.data))
        self.assertLen(identity["fingerprint"], 16)
        with open(os.path.join(logdir, "config.json")) as f:
            self.assertEqual(json.load(f)[rundir.DATA_KEY], identity)

    def test_logdir_of_other_data_is_refused_saying_both(self):
        other = os.path.join(self.get_temp_dir(), "other_data")
        write_folder(other, per_class=21)
        logdir = os.path.join(self.get_temp_dir(), "refused")
        train.train_and_evaluate(folder_config(self.data, logdir, epochs=1), progress=False)
        before = sorted(os.listdir(logdir))
        with self.assertRaisesRegex(errors.Error, "holds a run on other data.*data.*other_data"):
            train.train_and_evaluate(folder_config(other, logdir, epochs=1), progress=False)
        self.assertEqual(sorted(os.listdir(logdir)), before)

    def test_a_changed_folder_is_not_skipped_as_complete(self):
        data = os.path.join(self.get_temp_dir(), "changing")
        write_folder(data)
        config = config_lib.validate(folder_config(data, os.path.join(self.get_temp_dir(), "changing_run"), epochs=1))
        train.train_and_evaluate(config, progress=False)
        identity = config_lib.source(config).identity()
        self.assertIsNotNone(rundir.completed_results(config, identity))
        write_folder(data, per_class=21)  # one more image per class
        changed = folder_lib.Folder(config_lib.data_options(config)).identity()
        self.assertNotEqual(changed, identity)
        self.assertIsNone(rundir.completed_results(config, changed))

    def test_report_keeps_runs_of_different_data_apart(self):
        runs = []
        for seed, path in ((0, "/data/x"), (1, "/data/y")):
            config = dataclasses.replace(folder_config(path), seed=seed, pri=3, aux=6, psi=(2, 2, 2))
            runs.append(
                {
                    "config": dataclasses.asdict(config),
                    "test_accuracy": 0.5,
                    "complete": True,
                    "history": [],
                    rundir.DATA_KEY: {"kind": "folder", "path": path, "fingerprint": "0" * 16, "images": 10},
                }
            )
        self.assertLen(report.group_runs(runs), 2)
        same = [dict(r, **{rundir.DATA_KEY: runs[0][rundir.DATA_KEY]}) for r in runs]
        self.assertLen(report.group_runs(same), 1)


@pytest.mark.slow
class StreamingTest(tf.test.TestCase):
    def test_streamed_and_in_memory_runs_are_identical_and_resume_exactly(self):
        data = os.path.join(self.get_temp_dir(), "stream_data")
        write_folder(data)

        def run(name, stream, **overrides):
            config = folder_config(
                data,
                os.path.join(self.get_temp_dir(), name),
                stream=stream,
                cache_dir=os.path.join(self.get_temp_dir(), f"cache_{name}"),
                **overrides,
            )
            return train.train_and_evaluate(config, progress=False)

        def numbers(results):
            return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in results["history"]]

        in_memory = run("memory", "off", augment=True)
        streamed = run("streamed", "on", augment=True)
        self.assertIn("streamed from disk", streamed["data"])
        self.assertNotIn("streamed", in_memory["data"])
        self.assertEqual(numbers(streamed), numbers(in_memory))

        def stop_after_step_5(loop, stop, vote=True):
            return int(loop.state.global_step.numpy()) == 5

        with mock.patch.object(train, "stop_agreed", stop_after_step_5):
            with self.assertRaises(errors.Interrupted):
                run("streamed_stopped", "on", augment=True)
        resumed = run("streamed_stopped", "on", augment=True)
        self.assertEqual(numbers(resumed), numbers(in_memory))

    def test_auto_streams_above_the_memory_budget(self):
        data = os.path.join(self.get_temp_dir(), "budget")
        write_folder(data, per_class=4)
        cache = os.path.join(self.get_temp_dir(), "budget_cache")
        options = source_lib.Options(data_dir=data, cache_dir=cache, stream="auto", memory_budget_mb=0)
        self.assertTrue(folder_lib.Folder(options).load().streamed)
        options = dataclasses.replace(options, memory_budget_mb=1)
        loaded = folder_lib.Folder(options).load()
        self.assertFalse(loaded.streamed)
        self.assertIsInstance(loaded.train.images, np.ndarray)


@pytest.mark.slow
class OwnSourceTest(tf.test.TestCase):
    def test_registered_from_python(self):
        class Tiny(source_lib.Source):
            name = "tiny"

            def __init__(self, options):
                del options

            def levels(self):
                return registry.get("digits").levels()

            def identity(self):
                return {"kind": "tiny"}

            def load(self):
                return registry.get("digits").load()

        # The registry is the process's: leave it as found, for the tests that list its names.
        with mock.patch.dict(registry._FACTORIES), mock.patch.dict(registry._RECENT):
            registry.register("tiny", Tiny)
            config = config_lib.validate(config_lib.Config(dataset="tiny", pri=2, aux=10))
            self.assertEqual(config.name, "tiny_pri2_aux10_maxl_seed0")
            self.assertIn("tiny", registry.names())
        self.assertNotIn("tiny", registry.names())

    def test_module_source_from_the_command_line(self):
        tmp = self.get_temp_dir()
        with open(os.path.join(tmp, "my_sources.py"), "w") as f:
            f.write(
                textwrap.dedent(
                    """
                    from maxl_tf.data import registry, source

                    class Digits(source.Source):
                        name = "mydigits"
                        augmentation = source.Augmentation(1, horizontal_flip=False)

                        def __init__(self, options):
                            self._digits = registry.get("digits")

                        def levels(self):
                            return self._digits.levels()

                        def identity(self):
                            return {"kind": "mine"}

                        def load(self):
                            return self._digits.load()
                    """
                )
            )
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([tmp, smoke_util.REPO]))
        logdir = os.path.join(tmp, "module_run")
        process = subprocess.run(
            smoke_util.main_command(
                "--flagfile=" + os.path.join(smoke_util.REPO, "flags", "smoke.cfg"),
                "--dataset=my_sources:Digits",
                "--epochs=1",
                f"--logdir={logdir}",
            ),
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        self.assertEqual(process.returncode, 0, process.stderr[-2000:])
        with open(os.path.join(logdir, "results.json")) as f:
            self.assertEqual(json.load(f)[rundir.DATA_KEY], {"kind": "mine"})
        bad = subprocess.run(
            smoke_util.main_command("--dataset=no_such_module:Source", "--pri=2", "--aux=4"),
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        self.assertEqual(bad.returncode, 2)
        self.assertRegex(bad.stderr.strip().splitlines()[-1], r"^error: --dataset=no_such_module:Source: cannot import")


if __name__ == "__main__":
    sys.exit(tf.test.main())
