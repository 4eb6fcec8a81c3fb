"""The benchmark runs every piece on a tiny model and reports consistent figures."""

import dataclasses
import os
import subprocess
import sys
import tempfile
import textwrap
from unittest import mock

import pytest
import tensorflow as tf

from maxl_tf import bench
from maxl_tf import errors
from maxl_tf.experiment import config as config_lib

TINY = config_lib.Config(model="vgg_small", width=0.125, pri=2, aux=4, batch_size=4)

# A stand-in for benchmarks/torch_reference.py: same flags, fixed rates, so CI needs no torch.
FAKE_REFERENCE = textwrap.dedent("""
    import argparse, json, sys
    parser = argparse.ArgumentParser()
    for flag in ("--batch_size", "--steps", "--pri", "--aux"):
        parser.add_argument(flag, type=int)
    args = parser.parse_args()
    if args.pri != 2 or args.aux != 4:
        sys.exit("wrong classes")
    print("warming up")
    print(json.dumps({"framework": "fake", "single_step_images_per_s": 10.0, "maxl_iteration_images_per_s": 2.5}))
""")


@pytest.mark.slow
class BenchTest(tf.test.TestCase):
    @mock.patch.object(bench, "PIPELINE_EPOCH", 40)  # 10 batches of 4 per repeat, not an epoch
    def test_every_piece_is_timed_and_tabled(self):
        rows = bench.benchmark(TINY, bench.WHATS, repeats=2, warmup=1)
        self.assertEqual([r["what"] for r in rows], list(bench.WHATS))
        for r in rows:
            per_run = 40 if r["what"] == "pipeline" else 4
            # Both are written rounded: seconds to 6 decimals, images/s to 2.
            rounding = 0.5e-6 / r["seconds"] + 0.005 / r["images_per_s"]
            self.assertAllClose(r["images_per_s"], per_run / r["seconds"], rtol=rounding, atol=0)
            self.assertGreaterEqual(r["spread"], 1.0)
            self.assertGreater(r["peak_rss_mib"], 0)
        table = bench.markdown_table(rows).splitlines()
        self.assertLen(table, 2 + len(bench.WHATS))
        self.assertTrue(table[2].startswith("| single | "))

    def test_precision_option_reaches_the_trainer(self):
        rows = bench.benchmark(dataclasses.replace(TINY, precision="mixed_bfloat16"), ["maxl"], repeats=1, warmup=1)
        self.assertEqual(rows[0]["what"], "maxl")
        self.assertGreater(rows[0]["images_per_s"], 0)

    def test_pieces_name_their_hypergradient(self):
        for what, hypergradient in (
            ("maxl", "second_order"),
            ("generator", "second_order"),
            ("maxl_first_order", "first_order"),
            ("generator_implicit", "implicit"),
        ):
            self.assertEqual(bench.bench_config(TINY, what).hypergradient, hypergradient)
        # --neumann_terms reaches the implicit pieces only (the others would refuse it).
        terms = dataclasses.replace(TINY, neumann_terms=5)
        self.assertEqual(bench.bench_config(terms, "maxl_implicit").neumann_terms, 5)
        self.assertEqual(bench.bench_config(terms, "maxl").neumann_terms, config_lib.DEFAULT_NEUMANN_TERMS)
        with self.assertRaisesRegex(errors.Error, "--hypergradient=implicit: the benchmark's pieces name"):
            bench.bench_config(dataclasses.replace(TINY, hypergradient="implicit"), "maxl")

    def test_meta_every_reaches_the_trainer(self):
        calls = []
        make_iteration = bench.train.make_iteration

        def recording(*args):
            iteration = make_iteration(*args)

            def record(train_batch, meta_batch, *rest):
                calls.append((train_batch is not None, meta_batch is not None, *rest))
                return iteration(train_batch, meta_batch, *rest)

            return record

        with mock.patch.object(bench.train, "make_iteration", recording):
            pieces, _ = bench.prepare(
                dataclasses.replace(TINY, meta_every=3), ["maxl_implicit", "generator_implicit"], warmup=1
            )
        # A maxl repeat is three iterations, the generator's last; the generator piece is its step
        # alone, with the training batch at hand.
        self.assertEqual(calls, [(True, False), (True, False), (True, True), (True, True, False)])
        self.assertEqual([piece.images_per_run for piece in pieces], [12, 4])

    def test_reference_is_alternated_and_ratios_are_per_cycle(self):
        with tempfile.TemporaryDirectory() as root:
            script = os.path.join(root, "reference.py")
            with open(script, "w") as f:
                f.write(FAKE_REFERENCE)
            pieces, memory = bench.prepare(TINY, ["single", "maxl"], warmup=1)
            cycle_rows, rows = bench.compare(pieces, memory, script, cycles=2, config=TINY, repeats=2)
            self.assertLen(cycle_rows, 2)
            for r in cycle_rows:
                self.assertEqual(r["reference"], {"framework": "fake", "single": 10.0, "maxl": 2.5})
                self.assertAllClose(r["single_vs_reference"], r["single"] / 10.0)
                self.assertAllClose(r["maxl_vs_reference"], r["maxl"] / 2.5)
                self.assertAllClose(r["maxl_time_vs_single"], r["single"] / r["maxl"])
            self.assertEqual([r["what"] for r in rows], ["single", "maxl"])  # over both cycles' repeats
            table = bench.comparison_table(cycle_rows).splitlines()
            self.assertLen(table, 2 + 2 + 1)
            self.assertTrue(table[-1].startswith("| median | 10.0 / 2.5 | "))

            with self.assertRaisesRegex(errors.Error, "--reference=.*wrong classes"):
                bench.compare(
                    pieces, memory, script, cycles=1, config=dataclasses.replace(TINY, pri=3, aux=6), repeats=1
                )

    def test_jit_without_nodeterministic_is_refused_before_any_work(self):
        process = subprocess.run(
            [sys.executable, "-m", "maxl_tf.bench", "--model=vgg_small", "--jit"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(process.returncode, 2, process.stderr[-2000:])
        # One line: TensorFlow, imported at the module's top, says nothing of its start-up (CUDA spoke
        # during absl's start-up before cli.run's quiet window covered it).
        self.assertRegex(process.stderr, r"^error: --jit: XLA has no deterministic max-pool gradient[^\n]*\n$")


if __name__ == "__main__":
    tf.test.main()
