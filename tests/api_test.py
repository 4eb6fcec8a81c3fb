"""The public API: `import maxl_tf` gives MAXL, heads, psi, labels, methods, callbacks and the
data registry, and starts no TensorFlow until one of them is used."""

import unittest

from tests import smoke_util

_SCRIPT = """
import sys
import maxl_tf
assert "tensorflow" not in sys.modules, "import maxl_tf started TensorFlow"
assert maxl_tf.psi.uniform(2, 6) == (3, 3)
assert "tensorflow" not in sys.modules, "maxl_tf.psi started TensorFlow"
assert maxl_tf.methods.get("kmeans").embeds
assert "tensorflow" not in sys.modules, "maxl_tf.methods started TensorFlow"
import maxl_tf.report
assert "tensorflow" not in sys.modules, "maxl_tf.report started TensorFlow"
print(sorted(maxl_tf.__all__))
"""


class PublicApiTest(unittest.TestCase):
    def test_import_starts_no_tensorflow(self):
        result = smoke_util.run_python("-c", _SCRIPT, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        self.assertIn("'MAXL'", result.stdout)

    def test_names_resolve(self):
        import keras

        import maxl_tf
        from maxl_tf.models import maxl

        self.assertIs(maxl_tf.MAXL, maxl.MAXL)
        self.assertTrue(issubclass(maxl_tf.MAXL, keras.Model))
        for name in maxl_tf.__all__:
            self.assertIsNotNone(getattr(maxl_tf, name), name)
        self.assertIsInstance(maxl_tf.labels.source("random"), maxl_tf.labels.Random)
        with self.assertRaisesRegex(AttributeError, "no attribute 'nothing'"):
            maxl_tf.nothing  # noqa: B018
