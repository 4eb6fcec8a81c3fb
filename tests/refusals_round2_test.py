"""Issue 31's refusals (items 2, 8, 10): each bad input is one `error:` line (or one warning) with
exit status 2, naming the flag or file and the fix, before the work it would spoil; nothing hangs.

- predict checks every image's header against --max_image_pixels before decoding (item 2);
- predict refuses networks that do not fit config.json, and its advice for a moved run repairs
  the directory named (item 8);
- a file name that is not UTF-8, --seed out of range, --max_image_pixels above PIL's own limit,
  a FIFO as --hierarchy or as a results.json (item 10).
"""

import json
import os
import re
import shutil
import struct
import subprocess
import time
import warnings
import zlib

import keras
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from maxl_tf import errors
from maxl_tf import predict
from maxl_tf.data import folder
from maxl_tf.data import hierarchy_file
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import exports
from tests import smoke_util


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height RGB pixels in a few dozen bytes (its data is empty: only a
    decoder would find out, after allocating the pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def write_image(path: str, value: int, size: int = 8) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


def assert_one_error_line(test, code: int, stderr: str, pattern: str) -> None:
    test.assertEqual(code, 2, stderr)
    test.assertNotIn("Traceback", stderr)
    test.assertLen(stderr.strip().splitlines(), 1, stderr)
    test.assertRegex(stderr.strip(), rf"^error: .*{pattern}")


@pytest.mark.slow
class PredictTest(tf.test.TestCase):
    """predict on a finished smoke run (shared with the other suites; copied before any change)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.finished = smoke_util.finished_run()
        cls.tmp = tf.compat.v1.test.get_temp_dir()
        cls.image = os.path.join(cls.tmp, "digit.png")
        write_image(cls.image, 200)

    def _copy(self, name: str) -> str:
        logdir = os.path.join(self.get_temp_dir(), name)
        shutil.copytree(self.finished, logdir)
        return logdir

    def test_an_image_of_too_many_pixels_is_refused_from_its_header(self):
        """A 23000x23000 PNG of 60 bytes (1.5 GB decoded) is refused by name, before TensorFlow even
        starts (so nothing is decoded), in a few seconds; so is one above PIL's own limit, whose
        DecompressionBombError does not leak."""
        huge_files = []
        for width, height in ((23000, 23000), (20000, 10000)):
            huge = os.path.join(self.get_temp_dir(), f"huge_{width}x{height}.png")
            with open(huge, "wb") as f:
                f.write(png_header(width, height))
            huge_files.append(huge)
            start = time.monotonic()
            code, stdout, stderr, imported = smoke_util.run_recording_imports(
                "maxl_tf.predict", f"--logdir={self.finished}", self.image, huge
            )
            with self.subTest(f"{width}x{height}"):
                assert_one_error_line(
                    self,
                    code,
                    stderr,
                    rf"{re.escape(huge)} is {width}x{height} pixels, more than the limit of 40,000,000 "
                    r"\(--max_image_pixels\): shrink it, delete it, or raise --max_image_pixels\.$",
                )
                self.assertEqual(stdout, "")  # not even the good image's answer: every header comes first
                self.assertFalse(imported)
                self.assertLess(time.monotonic() - start, 60)
        # The flag sets the limit (0: the run's own); the library function checks as the command does.
        code, _, stderr, _ = smoke_util.run_recording_imports(
            "maxl_tf.predict", f"--logdir={self.finished}", "--max_image_pixels=63", self.image
        )
        assert_one_error_line(self, code, stderr, r"digit\.png is 8x8 pixels, more than the limit of 63 ")
        code, _, stderr, _ = smoke_util.run_recording_imports(
            "maxl_tf.predict", f"--logdir={self.finished}", "--max_image_pixels=-1", self.image
        )
        assert_one_error_line(self, code, stderr, r"--max_image_pixels=-1: must not be negative")
        with self.assertRaisesRegex(errors.Error, r"is 23000x23000 pixels, more than the limit of 40,000,000"):
            predict.predict(self.finished, [self.image, huge_files[0]])
        self.assertLen(predict.predict(self.finished, [self.image], max_pixels=64)[1], 1)

    def test_an_image_name_that_is_not_utf8_is_named(self):
        """TensorFlow takes UTF-8 paths only: such a name was a traceback naming no file."""
        latin1 = os.path.join(os.fsencode(self.get_temp_dir()), b"caf\xe9.png")
        shutil.copy(self.image, latin1)
        code, stdout, stderr, imported = smoke_util.run_recording_imports(
            "maxl_tf.predict", f"--logdir={self.finished}", os.fsdecode(latin1)
        )
        assert_one_error_line(self, code, stderr, r"/caf\\xe9\.png: its name is not valid UTF-8, .* rename it\.$")
        self.assertFalse(imported)

    def _forge(self, logdir: str, name: str, forged) -> None:
        """Puts forged (a network, or classes.json's content) in place of the run's export `name`,
        its manifest entry rewritten to fit."""
        path = os.path.join(logdir, name)
        if isinstance(forged, dict):
            with open(path, "w") as f:
                json.dump(forged, f)
        else:
            forged.save(path)
        manifest_path = os.path.join(logdir, "exports.json")
        with open(manifest_path) as f:
            manifest = json.load(f)
        manifest[name] = os.path.getsize(path)
        with open(manifest_path, "w") as f:
            json.dump(manifest, f)

    def test_networks_that_do_not_fit_config_json_are_one_line(self):
        """An evaluator or generator from a run of other class counts (the manifest forged to fit)
        failed deep in TensorFlow (GatherV2, IndexError); now one line names the file and the fix."""
        with open(os.path.join(self.finished, "config.json")) as f:
            saved = json.load(f)
        pri, aux = saved["pri"], saved["aux"]
        image = keras.Input((8, 8, 1))
        features = keras.layers.Flatten()(image)
        other_evaluator = keras.Model(
            image, [keras.layers.Softmax()(keras.layers.Dense(n)(features)) for n in (10, 20)]
        )
        other_generator = keras.Model(image, keras.layers.Dense(aux + 3)(features))
        classes = {"principal": ["one"] * (pri + 1), "auxiliary": None}
        for name, forged, pattern in (
            (
                exports.EVALUATOR,
                other_evaluator,
                rf"evaluator\.keras gives \[10, 20\] classes where config\.json "
                rf"says \[{pri}, {aux}\] \(--pri, --aux\)",
            ),
            (exports.GENERATOR, other_generator, r"generator\.keras maps .* auxiliary classes"),
            (exports.CLASSES, classes, rf"classes\.json: its principal names are not a list of {pri}"),
        ):
            logdir = self._copy(f"forged_{name}")
            self._forge(logdir, name, forged)
            with self.subTest(name):
                with self.assertRaisesRegex(
                    errors.Error,
                    rf"^{re.escape(logdir)}/{pattern}.*the run's files do not belong together .*"
                    rf"--logdir={re.escape(logdir)} --export\.$",
                ):
                    predict.predict(logdir, [self.image])
        code, stdout, stderr, _ = smoke_util.run_recording_imports("maxl_tf.predict", f"--logdir={logdir}", self.image)
        assert_one_error_line(self, code, stderr, r"classes\.json: its principal names are not a list")
        self.assertEqual(stdout, "")

    def test_the_advice_for_a_moved_run_repairs_the_directory_named(self):
        """A run moved elsewhere keeps the old --logdir in its flags.cfg: the advice adds the one
        named, and running it verbatim writes the exports there (not into the old directory), after
        which predict answers as the original run does."""
        moved = self._copy("moved")
        os.remove(os.path.join(moved, exports.EVALUATOR))
        code, _, stderr, _ = smoke_util.run_recording_imports("maxl_tf.predict", f"--logdir={moved}", self.image)
        assert_one_error_line(self, code, stderr, r"has no complete exported networks")
        command = re.search(r"run (python main\.py .*?), which finishes", stderr).group(1)
        self.assertIn(f"--logdir={moved} --export", command)
        before = os.path.getmtime(os.path.join(self.finished, exports.EVALUATOR))
        repair = smoke_util.run_python(*command.split()[1:], "--noprogress")
        self.assertEqual(repair.returncode, 0, repair.stderr)
        self.assertIn(f"results in {moved}/results.json", repair.stdout)
        self.assertEqual(os.path.getmtime(os.path.join(self.finished, exports.EVALUATOR)), before)
        self.assertEqual(predict.predict(moved, [self.image])[1], predict.predict(self.finished, [self.image])[1])


class FlagsBeforeTensorFlowTest(tf.test.TestCase):
    """Flags out of range: one line, exit 2, before TensorFlow starts."""

    def test_seed_out_of_range(self):
        for flag in ("--seed=-1", "--seed=18446744073709551616", "--seeds=0,4294967296"):
            value = flag.split("=")[1].split(",")[-1]
            code, _, stderr, imported = smoke_util.run_recording_imports(
                os.path.join(smoke_util.REPO, "main.py"), f"--flagfile={smoke_util.SMOKE_FLAGFILE}", flag
            )
            with self.subTest(flag):
                assert_one_error_line(self, code, stderr, rf"--seed={value}: must be between 0 and 4294967295")
                self.assertFalse(imported)

    def test_max_image_pixels_above_pils_limit(self):
        code, _, stderr, imported = smoke_util.run_recording_imports(
            os.path.join(smoke_util.REPO, "main.py"),
            f"--flagfile={smoke_util.SMOKE_FLAGFILE}",
            "--max_image_pixels=178956971",
        )
        assert_one_error_line(
            self, code, stderr, r"--max_image_pixels=178956971: above 178,956,970, where PIL, .* at most"
        )
        self.assertFalse(imported)
        self.assertEqual(config_lib.PIL_MAX_PIXELS, 2 * Image.MAX_IMAGE_PIXELS)


class FilesTest(tf.test.TestCase):
    def _folder(self) -> str:
        root = os.path.join(self.get_temp_dir(), "images")
        for label, name in enumerate(("cat", "dog")):
            for i in range(3):
                write_image(os.path.join(root, name, f"{i}.png"), 60 + 100 * label + i)
        return root

    def test_a_file_name_that_is_not_utf8_is_named(self):
        """It stopped the run in TensorFlow with a traceback naming no file."""
        root = self._folder()
        bad = os.path.join(os.fsencode(root), b"cat", b"caf\xe9.png")
        os.rename(os.path.join(os.fsencode(root), b"cat", b"0.png"), bad)
        with self.assertRaisesRegex(
            errors.Error, rf"^{re.escape(root)}/cat/caf\\xe9\.png: its name is not valid UTF-8, .*rename it"
        ) as caught:
            folder.list_folder(root)
        self.assertLen(str(caught.exception).splitlines(), 1)
        str(caught.exception).encode("utf-8")  # printable: no lone surrogates
        os.rename(bad, os.path.join(os.fsencode(root), b"cat", b"0.png"))
        os.rename(os.path.join(os.fsencode(root), b"dog"), os.path.join(os.fsencode(root), b"d\xf6g"))
        with self.assertRaisesRegex(errors.Error, r"/d\\xf6g: its name is not valid UTF-8"):
            folder.list_folder(root)

    def test_an_image_above_pils_own_limit_is_refused_by_ours(self):
        """PIL raises DecompressionBombError above 178,956,970 pixels (and warns above half that),
        which read as 'cannot be read as an image: replace it with a PNG'; our limit speaks."""
        root = self._folder()
        for width, height in ((20000, 10000), (10000, 10000)):
            path = os.path.join(root, "dog", f"{width}.png")
            with open(path, "wb") as f:
                f.write(png_header(width, height))
            with (
                self.subTest(width),
                self.assertRaisesRegex(
                    errors.Error, rf"{width}\.png is {width}x{height} pixels, more than the limit of 40,000,000"
                ),
            ):
                folder.read_headers([path], 40_000_000)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # PIL's DecompressionBombWarning too
                self.assertLen(folder.read_headers([path], width * height), 1)
            os.remove(path)

    def test_a_fifo_as_hierarchy_does_not_hang_main(self):
        root = self._folder()
        fifo = os.path.join(self.get_temp_dir(), "tree.json")
        os.mkfifo(fifo)
        with self.assertRaisesRegex(errors.Error, r"^--hierarchy=.*tree\.json: not a regular file"):
            hierarchy_file.load(fifo, "images", ("cat", "dog"))
        process = subprocess.run(
            smoke_util.main_command(
                f"--flagfile={smoke_util.SMOKE_FLAGFILE}",
                "--dataset=folder",
                f"--data_dir={root}",
                f"--hierarchy={fifo}",
                f"--logdir={os.path.join(self.get_temp_dir(), 'run')}",
            ),
            cwd=smoke_util.REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, PYTHONPATH=smoke_util.REPO, XDG_CACHE_HOME=self.get_temp_dir()),
        )
        assert_one_error_line(self, process.returncode, process.stderr, r"--hierarchy=.*tree\.json: not a regular file")

    def test_a_fifo_named_results_json_does_not_hang_the_report(self):
        runs = os.path.join(self.get_temp_dir(), "runs")
        os.makedirs(os.path.join(runs, "fifo_run"))
        fifo = os.path.join(runs, "fifo_run", "results.json")
        os.mkfifo(fifo)
        process = smoke_util.run_python("-m", "maxl_tf.report", runs, timeout=120)
        lines = process.stderr.strip().splitlines()
        self.assertEqual(process.returncode, 2, process.stderr)
        self.assertEqual(lines[0], f"warning: skipping {fifo}: not a regular file (a pipe, socket or device).")
        self.assertRegex(lines[1], r"^error: .* has no readable results\.json")
        self.assertLen(lines, 2)

    def test_a_fifo_named_results_json_does_not_hang_a_sweeps_check(self):
        # main.py asks rundir.completed_results whether a run is done: read_results, bounded.
        from maxl_tf.experiment import rundir

        fifo = os.path.join(self.get_temp_dir(), "results.json")
        os.mkfifo(fifo)
        with self.assertRaisesRegex(errors.Error, r"results\.json: unreadable \(ValueError: not a regular file\)$"):
            rundir.read_results(fifo)


if __name__ == "__main__":
    tf.test.main()
