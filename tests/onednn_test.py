"""The precision checks, rerun under the oneDNN setting this suite does not run under.

TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI or BF16, AVX-VNNI
or AMX, so an AVX2 machine and an AVX-512 one run the suite on different kernels, which round
differently. The tests below derive their tolerances from the precision, not from one machine's
kernels (tolerances.py); this reruns them in a subprocess with TF_ENABLE_ONEDNN_OPTS set the other
way, so a run on either kind of CPU checks both kernel sets (issue 28).
"""

import os
import subprocess
import sys

import pytest
import tensorflow as tf

from tests import smoke_util

# The checks whose numbers depend on the CPU's kernels: half precision against float32, and
# float32 against float64.
PRECISION_CHECKS = (
    "tests/hypergradient_test.py::MixedPrecisionTest",
    "tests/hypergradient_test.py::BatchNormSecondDerivativeTest",
    "tests/hypergradient_test.py::QuickstartModelsTest::test_first_order_radius_on_the_quickstart_model",
    "tests/precision_test.py::MixedPrecisionTest",
    "tests/meta_test.py::FusedBatchNormTest",
)


def onednn_in_use() -> bool:
    """Whether this process's TensorFlow runs its oneDNN kernels (TF_ENABLE_ONEDNN_OPTS, else the CPU's default)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # a private module: read the variable, else the CPU's flags
        setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
        if setting is not None:
            return setting.strip().lower() in ("1", "true")
        with open("/proc/cpuinfo") as cpuinfo:
            flags = set(cpuinfo.read().split())
        return bool(flags & {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile"})


@pytest.mark.slow
class OtherKernelsTest(tf.test.TestCase):
    def test_precision_checks_hold_under_the_other_onednn_setting(self):
        other = "0" if onednn_in_use() else "1"
        env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_XDIST")}
        env["TF_ENABLE_ONEDNN_OPTS"] = other  # the thread settings conftest.py gave this worker carry over
        process = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *PRECISION_CHECKS],
            cwd=smoke_util.REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.assertEqual(process.returncode, 0, f"TF_ENABLE_ONEDNN_OPTS={other}:\n{process.stdout[-4000:]}")


if __name__ == "__main__":
    tf.test.main()
