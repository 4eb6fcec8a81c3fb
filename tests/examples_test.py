"""examples/ run as a user runs them, on tiny settings."""

import os
import re
import unittest

import pytest

from tests import smoke_util


@pytest.mark.slow
class ExamplesTest(unittest.TestCase):
    def test_train_own_backbone(self):
        result = smoke_util.run_python(
            os.path.join("examples", "train_own_backbone.py"), "--epochs=2", "--examples=300", timeout=600
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        self.assertIn("trunk_grad_cosine", result.stdout)
        accuracy = float(re.search(r"test accuracy ([0-9.]+) on 60 digits", result.stdout).group(1))
        self.assertGreater(accuracy, 0.1)  # above chance (10 classes) after two epochs
