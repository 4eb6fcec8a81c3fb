"""runtime.cpu_description: what the benchmark records of the CPU it ran on (issue 28)."""

import os
import unittest
from unittest import mock

from maxl_tf import runtime


class CpuDescriptionTest(unittest.TestCase):
    def test_names_the_cpu_and_the_onednn_state(self):
        with mock.patch.dict(os.environ, {}, clear=False):
            os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)
            described = runtime.cpu_description()
        self.assertEqual(set(described), {"model", "avx2", "avx512", "avx512_vnni", "avx512_bf16", "amx", "onednn"})
        if os.path.exists("/proc/cpuinfo"):
            self.assertTrue(described["model"])
            with open("/proc/cpuinfo") as f:
                flags = set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
            # TensorFlow's default: on where the CPU has VNNI, BF16 or AMX.
            fast = {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile"} & flags
            self.assertEqual(described["onednn"].startswith("on"), bool(fast))
            self.assertEqual(described["avx2"], "avx2" in flags)
        for value, state in (("0", "off"), ("1", "on")):
            with mock.patch.dict(os.environ, {"TF_ENABLE_ONEDNN_OPTS": value}):
                with mock.patch.object(runtime, "ONEDNN_CHOSEN", False):  # the user's own setting
                    self.assertEqual(runtime.cpu_description()["onednn"], f"{state} (TF_ENABLE_ONEDNN_OPTS={value})")
                with mock.patch.object(runtime, "ONEDNN_CHOSEN", True):  # maxl_tf's, where the user set none
                    expected = "on (maxl_tf's default)" if value == "1" else "off (TF_ENABLE_ONEDNN_OPTS=0)"
                    self.assertEqual(runtime.cpu_description()["onednn"], expected)

    def test_maxl_tf_turns_onednn_on_where_the_user_set_nothing(self):
        import subprocess
        import sys

        script = "import os, maxl_tf; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
        env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
        for setting, expected in ((None, "1"), ("0", "0")):
            if setting is not None:
                env["TF_ENABLE_ONEDNN_OPTS"] = setting
            result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
            self.assertEqual(result.stdout.strip(), expected, result.stderr)


if __name__ == "__main__":
    unittest.main()
