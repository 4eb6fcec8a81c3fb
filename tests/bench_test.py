"""The benchmark runs every piece on a tiny model and reports consistent figures."""
import tensorflow as tf

from maxl_tf import bench


class BenchTest(tf.test.TestCase):

    def test_every_piece_is_timed_and_tabled(self):
        rows = bench.benchmark(bench.WHATS, batch_size=4, architecture="vgg_small", pri=2, aux=4,
                               repeats=2, warmup=1)
        self.assertEqual([r["what"] for r in rows], list(bench.WHATS))
        for r in rows:
            per_run = bench.PIPELINE_BATCHES * 4 if r["what"] == "pipeline" else 4
            self.assertAllClose(r["images_per_s"], per_run / r["seconds"], rtol=1e-2)
            self.assertGreaterEqual(r["spread"], 1.0)
            self.assertGreater(r["peak_rss_mib"], 0)
        table = bench.markdown_table(rows).splitlines()
        self.assertLen(table, 2 + len(bench.WHATS))
        self.assertTrue(table[2].startswith("| single | "))

    def test_precision_option_reaches_the_trainer(self):
        rows = bench.benchmark(["maxl"], batch_size=4, architecture="vgg_small", pri=2, aux=4,
                               repeats=1, warmup=1, precision="mixed_bfloat16")
        self.assertEqual(rows[0]["what"], "maxl")
        self.assertGreater(rows[0]["images_per_s"], 0)


if __name__ == "__main__":
    tf.test.main()
