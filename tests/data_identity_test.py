"""A run knows its data: names, refusals, sweeps and reports keep runs of different data apart;
streamed and in-memory data give the same run; a user's own source from Python and the CLI."""

import dataclasses
import glob
import hashlib
import json
import os
import re
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
from maxl_tf.data import images as images_lib
from maxl_tf.data import registry
from maxl_tf.data import source as source_lib
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import inputs
from maxl_tf.experiment import rundir
from maxl_tf.experiment import sweep
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
            configs = [folder_config(path) for path in (one, other)]
            names = [config_lib.run_name(c, config_lib.source(c).name, default_psi=None) for c in configs]
        self.assertNotEqual(names[0], names[1])
        self.assertStartsWith(names[0], "folder_images_")

    def test_built_in_names_unchanged(self):
        config = config_lib.Config(dataset="cifar100", pri=20, aux=100)
        self.assertEqual(config_lib.resolve(config).name, "cifar100_pri20_aux100_maxl_seed0")


@pytest.mark.slow
class ResolvedOnceTest(tf.test.TestCase):
    """A run is resolved once (config_lib.resolve): from its sweep's expansion to its results, one
    check of its flags, one listing of its folder, one ask of its levels and one of its identity."""

    def test_a_run_checks_lists_and_identifies_once(self):
        data_dir = os.path.join(self.get_temp_dir(), "once")
        write_folder(data_dir)
        base = folder_config(data_dir, os.path.join(self.get_temp_dir(), "run_once"), epochs=1)
        counted = {
            "flag checks": mock.patch.object(config_lib, "check_flags", wraps=config_lib.check_flags),
            "listings": mock.patch.object(folder_lib, "list_folder", wraps=folder_lib.list_folder),
            "levels": mock.patch.object(
                folder_lib.Folder, "levels", autospec=True, side_effect=folder_lib.Folder.levels
            ),
            "identities": mock.patch.object(
                folder_lib.Folder, "identity", autospec=True, side_effect=folder_lib.Folder.identity
            ),
        }
        mocks = {what: patch.start() for what, patch in counted.items()}
        for patch in counted.values():
            self.addCleanup(patch.stop)
        runs = sweep.expand(base)
        inputs.check_available(runs)
        [results] = sweep.run(runs, lambda run, claim=None: train.train_and_evaluate(run, progress=False, claim=claim))
        self.assertTrue(results["complete"])
        self.assertEqual({what: mock_.call_count for what, mock_ in mocks.items()}, dict.fromkeys(counted, 1))
        self.assertEqual(results["name"], runs[0].name)


def write_bmps(root: str, level: int = 0, per_class: int = 3) -> None:
    """BMPs: a file's size depends on the image's size only, as `cp -p` of other pixels keeps it."""
    for label, name in enumerate(("a", "b")):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            pixels = np.full((8, 8), 40 + 80 * label + 5 * i + level, np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, name, f"{i}.bmp"))


def rewrite_keeping_size_and_mtime(path: str, level: int) -> None:
    """What `cp -p`, `rsync -a` or `tar x` of other pixels does to a file: other bytes, the same
    size and modification time (only the change time, which no tool can set, moves)."""
    before = os.stat(path)
    Image.fromarray(np.full((8, 8), level, np.uint8)).save(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


class ContentIdentityTest(tf.test.TestCase):
    """Same data is decided by content: renamed, touched or linked folders are the same data; a
    folder whose pixels changed under the same sizes and modification times is not."""

    def setUp(self):
        super().setUp()
        self.data = os.path.join(self.get_temp_dir(), "data")
        write_bmps(self.data)
        self.cache_dir = os.path.join(self.get_temp_dir(), "cache")

    def identity(self, data_dir: str, cache_dir: str = None) -> dict:
        cache_dir = self.cache_dir if cache_dir is None else cache_dir
        return folder_lib.Folder(source_lib.Options(data_dir=data_dir, cache_dir=cache_dir)).identity()

    def test_touched_renamed_or_linked_images_are_the_same_data(self):
        first = self.identity(self.data)
        self.assertLen(first["content"], 32)
        for path in glob.glob(os.path.join(self.data, "*", "*.bmp")):
            os.utime(path, ns=(10**18, 10**18))  # touch
        touched = self.identity(self.data)
        renamed = os.path.join(self.get_temp_dir(), "renamed")
        os.rename(self.data, renamed)
        moved = self.identity(renamed)
        link = os.path.join(self.get_temp_dir(), "link")
        os.symlink(renamed, link)
        self.addCleanup(os.remove, link)
        linked = self.identity(link)
        for other in (touched, moved, linked):
            self.assertTrue(rundir.same_data(first, other), other)
            self.assertEqual(rundir.describe_data(first), rundir.describe_data(other))  # the report's key
        # What the records held before content hashes would have called each of them other data.
        self.assertNotEqual(first["fingerprint"], touched["fingerprint"])
        self.assertEqual([moved["path"], linked["path"]], [renamed, link])

    def test_pixels_changed_under_the_same_size_and_mtime_are_other_data_and_not_read_from_the_cache(self):
        options = source_lib.Options(data_dir=self.data, cache_dir=self.cache_dir, test_fraction=0.5)
        before = folder_lib.Folder(options)
        loaded = before.load()
        self.assertIn("cached in", loaded.description)
        changed = os.path.join(self.data, "b", "0.bmp")
        rewrite_keeping_size_and_mtime(changed, level=250)
        after = folder_lib.Folder(options)
        self.assertFalse(rundir.same_data(before.identity(), after.identity()))
        self.assertEqual(before.identity()["fingerprint"], after.identity()["fingerprint"])  # the old test passed
        reloaded = after.load()
        self.assertIn("cached in", reloaded.description)  # decoded, not the stale pixels
        both = np.concatenate([reloaded.train.images, reloaded.test.images])
        self.assertIn(250, both)
        self.assertNotIn(250, np.concatenate([loaded.train.images, loaded.test.images]))

    def test_each_files_digest_is_kept_and_read_again_only_when_its_stat_changes(self):
        listing = folder_lib.list_folder(self.data)
        content, read = folder_lib.content_hash(listing, self.cache_dir)
        self.assertEqual(read, 6)
        self.assertEqual(folder_lib.content_hash(folder_lib.list_folder(self.data), self.cache_dir), (content, 0))
        os.utime(os.path.join(self.data, "a", "1.bmp"))
        self.assertEqual(folder_lib.content_hash(folder_lib.list_folder(self.data), self.cache_dir), (content, 1))
        rewrite_keeping_size_and_mtime(os.path.join(self.data, "a", "2.bmp"), level=3)
        changed, read = folder_lib.content_hash(folder_lib.list_folder(self.data), self.cache_dir)
        self.assertEqual(read, 1)
        self.assertNotEqual(changed, content)
        # Without a cache folder, every file is read each time; the hash is the same.
        self.assertEqual(folder_lib.content_hash(folder_lib.list_folder(self.data)), (changed, 6))
        # A kept digest file that fails its checksum (edited, planted) is not believed.
        [memo] = glob.glob(os.path.join(self.cache_dir, "content", "*"))
        with open(memo, "rb") as f:
            kept = f.read()
        digest = hashlib.sha256(open(os.path.join(self.data, "a", "2.bmp"), "rb").read()).hexdigest().encode()
        self.assertIn(digest, kept)
        with open(memo, "wb") as f:
            f.write(kept.replace(digest, b"0" * 64))
        self.assertEqual(folder_lib.content_hash(folder_lib.list_folder(self.data), self.cache_dir), (changed, 6))

    def _logdir_holding(self, identity: dict) -> config_lib.Config:
        """A run directory that trained on `identity` (config.json and a results.json)."""
        run = config_lib.resolve(folder_config(self.data, os.path.join(self.get_temp_dir(), "run"), pri=2, aux=4))
        config = run.config
        rundir.create(config, identity)
        history = [{"test/acc": 0.5}] * config.epochs  # complete
        summary = rundir.results_summary(config, run.name, history, "test", identity=identity)
        rundir.write_results(config.logdir, summary)
        return config

    def test_a_relinked_folders_refusal_gives_advice_that_applies(self):
        link = os.path.join(self.get_temp_dir(), "current")
        os.symlink(self.data, link)
        config = self._logdir_holding(self.identity(link))
        other = os.path.join(self.get_temp_dir(), "other")
        write_bmps(other, level=1)
        os.remove(link)
        os.symlink(other, link)  # re-pointed: the same path, other images
        self.addCleanup(os.remove, link)
        identity = self.identity(link)
        with self.assertRaises(errors.Error) as caught:
            rundir.check(config, identity=identity)
        message = str(caught.exception)
        self.assertIn("holds a run on other data", message)
        self.assertNotIn("leave it out", message)  # the default name is this same path: it would not help
        advice = re.search(r"--logdir=(\S+)\)\.$", message).group(1)
        self.assertNotEqual(advice, config.logdir)
        rundir.check(dataclasses.replace(config, logdir=advice), identity=identity)  # the advice works

    def test_runs_recorded_before_content_hashes_are_compared_as_then(self):
        now = self.identity(self.data)
        old = {k: now[k] for k in ("kind", "path", "fingerprint", "images")}  # what older versions wrote
        config = self._logdir_holding(old)
        rundir.check(config, identity=now)  # unchanged: resumes
        self.assertIsNotNone(rundir.completed_results(config, now))  # a sweep skips it, as before
        self.assertEqual(rundir.describe_data(old), f"folder {self.data} (6 images, fingerprint {old['fingerprint']})")
        os.utime(os.path.join(self.data, "a", "0.bmp"), ns=(10**18, 10**18))
        touched = self.identity(self.data)
        with self.assertRaisesRegex(errors.Error, "holds a run on other data: folder .* fingerprint"):
            rundir.check(config, identity=touched)  # as older versions did; restoring the times resumes
        self.assertIsNone(rundir.completed_results(config, touched))
        runs = [
            {"config": dataclasses.asdict(config), "test_accuracy": 0.5, "complete": True, "history": [], **r}
            for r in ({rundir.DATA_KEY: old}, {rundir.DATA_KEY: now})
        ]
        self.assertLen(report.group_runs(runs), 2)  # no crash; an old record is its own group


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
        self.assertLen(identity["content"], 32)
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
        run = config_lib.resolve(folder_config(data, os.path.join(self.get_temp_dir(), "changing_run"), epochs=1))
        config = run.config
        train.train_and_evaluate(run, progress=False)
        identity = run.identity
        self.assertIsNotNone(rundir.completed_results(config, identity))
        write_folder(data, per_class=21)  # one more image per class
        changed = folder_lib.Folder(config_lib.data_options(config)).identity()
        self.assertNotEqual(changed, identity)
        self.assertIsNone(rundir.completed_results(config, changed))

    def test_renamed_touched_and_linked_images_resume_changed_pixels_are_refused(self):
        data = os.path.join(self.get_temp_dir(), "resumed_data")
        write_folder(data)
        logdir = os.path.join(self.get_temp_dir(), "resumed")

        def stop_after_step_5(loop, stop, vote=True):
            return int(loop.state.global_step.numpy()) == 5  # in the second epoch

        with mock.patch.object(train, "stop_agreed", stop_after_step_5):
            with self.assertRaises(errors.Interrupted):
                train.train_and_evaluate(folder_config(data, logdir), progress=False)
        first = rundir.read_results(os.path.join(logdir, "results.json"))
        self.assertEqual(first["epochs_completed"], 1)
        renamed = os.path.join(self.get_temp_dir(), "resumed_data_renamed")
        os.rename(data, renamed)
        for path in glob.glob(os.path.join(renamed, "*", "*.png")):
            os.utime(path)  # touch
        link = os.path.join(self.get_temp_dir(), "resumed_link")
        os.symlink(renamed, link)
        self.addCleanup(os.remove, link)
        resumed = train.train_and_evaluate(folder_config(link, logdir), progress=False)
        self.assertEqual(resumed["epochs_completed"], 2)
        self.assertEqual(resumed["history"][0], first["history"][0])  # resumed, not started again
        self.assertEqual(resumed[rundir.DATA_KEY]["content"], first[rundir.DATA_KEY]["content"])
        self.assertEqual(resumed[rundir.DATA_KEY]["path"], link)
        # Pixels changed under the same size and modification time (cp -p, rsync -a): refused.
        png = os.path.join(renamed, "a", "000.png")
        before = os.stat(png)
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(png)  # smaller than the noisy one
        with open(png, "ab") as f:  # padded to the old size: decoders stop at the PNG's IEND
            f.write(b"\0" * (before.st_size - os.path.getsize(png)))
        os.utime(png, ns=(before.st_atime_ns, before.st_mtime_ns))
        self.assertEqual(os.path.getsize(png), before.st_size)
        with (
            mock.patch.dict(registry._RECENT, clear=True),  # a new process's Source: it lists and hashes anew
            self.assertRaisesRegex(
                errors.Error, f"holds a run on other data: .*Restore .*--logdir={re.escape(logdir)}_data"
            ),
        ):
            train.train_and_evaluate(folder_config(link, logdir), progress=False)

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

    def test_a_cache_file_evicted_before_the_first_batch_does_not_stop_the_run(self):
        # Another run's --cache_limit_mb trim (or a user) deletes the file between this run's cache
        # check and its first batch: the run reads the file it opened at the check.
        data = os.path.join(self.get_temp_dir(), "evicted_data")
        write_folder(data, per_class=10)
        cache = os.path.join(self.get_temp_dir(), "evicted_cache")
        config = folder_config(
            data, os.path.join(self.get_temp_dir(), "evicted"), stream="on", cache_dir=cache, epochs=1
        )
        prepare = inputs.prepare

        def prepare_then_evict(run):
            run_data = prepare(run)
            images_lib.trim_cache(cache, 0)
            self.assertEqual(glob.glob(os.path.join(cache, "*.npy")), [])
            return run_data

        with mock.patch.object(inputs, "prepare", prepare_then_evict):
            results = train.train_and_evaluate(config, progress=False)
        self.assertTrue(results["complete"])
        self.assertIn("streamed from disk", results["data"])

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
            run = config_lib.resolve(config_lib.Config(dataset="tiny", pri=2, aux=10))
            self.assertEqual(run.name, "tiny_pri2_aux10_maxl_seed0")
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
