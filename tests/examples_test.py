"""examples/ run as a user runs them: README's "Use it from Python" block, verbatim."""

import os
import re
import tempfile
import unittest

import pytest

from tests import smoke_util

EXAMPLE = os.path.join(smoke_util.REPO, "examples", "from_python.py")


class ReadmeBlockTest(unittest.TestCase):
    def test_the_example_is_readmes_block(self):
        with open(os.path.join(smoke_util.REPO, "README.md")) as f:
            readme = f.read()
        block = readme.split("## Use it from Python\n")[1].split("```python\n")[1].split("```")[0]
        with open(EXAMPLE) as f:
            self.assertTrue(f.read().endswith(block), "examples/from_python.py differs from README's block")


@pytest.mark.slow
class ExamplesTest(unittest.TestCase):
    def test_from_python(self):
        with tempfile.TemporaryDirectory() as scratch:
            result = smoke_util.run_python(EXAMPLE, timeout=600, cwd=scratch)
            self.assertEqual(result.returncode, 0, result.stderr[-3000:])
            for name in ("digits.keras", "digits.csv", "digits_export/serving/saved_model.pb"):
                self.assertTrue(os.path.exists(os.path.join(scratch, name)), name)
        accuracies = [float(a) for a in re.findall(r"val_principal_accuracy: ([0-9.]+)", result.stdout)]
        self.assertEqual(len(accuracies), 5, result.stdout[-2000:])
        self.assertGreater(accuracies[-1], 0.5)  # well above chance (10 classes); README's run: 0.919
        predicted, true = re.findall(r"\[([0-9 ]+)\]", result.stdout.strip().splitlines()[-1])
        self.assertEqual(len(predicted.split()), 4)
