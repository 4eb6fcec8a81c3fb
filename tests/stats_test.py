"""maxl_tf.stats on hand-made accuracies: paired differences, intervals, wins, duplicates."""

import numpy as np
import tensorflow as tf

from maxl_tf import stats
from tests.tolerances import FLOAT64

# Student t's 0.975 quantile with 3 and 7 degrees of freedom, from a printed table.
T_975_DF3 = 3.182446305
T_975_DF7 = 2.364624252
# Differences and means of float64 accuracies <= 1: a few roundings of numbers <= 1.
ARITHMETIC = 8 * FLOAT64
# The table's quantiles to 9 decimals, half a unit of the last: 5e-10, times a standard error < 1.
TABLE = 5e-10


class PairedTest(tf.test.TestCase):
    def test_mean_interval_wins_ties(self):
        a = {0: 0.80, 1: 0.82, 2: 0.79, 3: 0.81}
        b = {0: 0.78, 1: 0.80, 2: 0.80, 3: 0.81}
        result = stats.paired(a, b)
        # Differences 0.02, 0.02, -0.01, 0: mean 0.0075; deviations 0.0125, 0.0125, -0.0175,
        # -0.0075 square to 6.75e-4 in all, / 3 = 2.25e-4, so sd = 0.015 and sd / sqrt(4) = 0.0075.
        self.assertEqual(result.seeds, (0, 1, 2, 3))
        self.assertAllClose(result.differences, [0.02, 0.02, -0.01, 0.0], rtol=0, atol=ARITHMETIC)
        self.assertAllClose(result.mean, 0.0075, rtol=0, atol=ARITHMETIC)
        half_width = T_975_DF3 * 0.0075
        self.assertAllClose(result.interval, (0.0075 - half_width, 0.0075 + half_width), rtol=0, atol=TABLE)
        self.assertAllClose(result.interval, (-0.016368347, 0.031368347), rtol=0, atol=2 * TABLE)  # and its 9 decimals
        self.assertEqual((result.pairs, result.wins, result.ties, result.losses), (4, 2, 1, 1))

    def test_eight_seeds_all_won(self):
        b = {seed: 0.7 for seed in range(8)}
        a = {seed: 0.7 + 0.001 * (seed + 1) for seed in range(8)}
        result = stats.paired(a, b)
        # Differences 0.001..0.008: mean 0.0045, sd = 0.001 * sqrt(6) (that of 1..8 is sqrt(6)).
        self.assertAllClose(result.mean, 0.0045, rtol=0, atol=ARITHMETIC)
        half_width = T_975_DF7 * 0.001 * np.sqrt(6) / np.sqrt(8)
        self.assertAllClose(result.interval, (0.0045 - half_width, 0.0045 + half_width), rtol=0, atol=TABLE)
        self.assertEqual((result.wins, result.ties, result.losses), (8, 0, 0))
        # The interval at 99% is wider than at 95%.
        wider = stats.paired(a, b, confidence=0.99).interval
        self.assertLess(wider[0], result.interval[0])
        self.assertGreater(wider[1], result.interval[1])

    def test_only_shared_seeds_are_paired(self):
        result = stats.paired({0: 0.5, 1: 0.6, 5: 0.9}, {1: 0.4, 5: 0.95, 7: 0.1})
        self.assertEqual(result.seeds, (1, 5))
        self.assertAllClose(result.differences, [0.2, -0.05], rtol=0, atol=ARITHMETIC)
        self.assertEqual((result.wins, result.losses), (1, 1))

    def test_single_pair_has_no_interval(self):
        result = stats.paired({3: 0.61}, {3: 0.60})
        self.assertEqual(result.pairs, 1)
        self.assertIsNone(result.interval)
        self.assertAllClose(result.mean, 0.01, rtol=0, atol=ARITHMETIC)
        self.assertEqual(result.wins, 1)

    def test_no_shared_seed(self):
        self.assertIsNone(stats.paired({0: 0.5}, {1: 0.5}))

    def test_constant_difference_has_zero_width(self):
        result = stats.paired({0: 0.5, 1: 0.75}, {0: 0.25, 1: 0.5})
        self.assertEqual(result.interval, (0.25, 0.25))

    def test_ties_absorb_float_rounding_only(self):
        result = stats.paired({0: 0.8 + 1e-12, 1: 0.80002}, {0: 0.8, 1: 0.8})
        self.assertEqual((result.wins, result.ties, result.losses), (1, 1, 0))


def _arm(method, accuracies, **setting):
    return stats.Arm(
        method, {"dataset": "fashion_mnist", "pri": 2, "epochs": 30, "method": method, **setting}, accuracies
    )


class ComparisonsTest(tf.test.TestCase):
    def test_who_is_compared_with_whom(self):
        seeds = range(3)
        single = _arm("single", {s: 0.80 for s in seeds})
        maxl = _arm("maxl", {s: 0.81 for s in seeds}, aux=10, entropy_weight=0.2)
        maxl_no_entropy = _arm("maxl", {s: 0.79 for s in seeds}, aux=10, entropy_weight=0.0)
        human = _arm("human", {s: 0.805 for s in seeds}, aux=10)
        random = _arm("random", {0: 0.78, 1: 0.79}, aux=10)
        prototypical = _arm("prototypical", {s: 0.80 for s in seeds}, aux=10, embedder="untrained")
        maxl_20 = _arm("maxl", {s: 0.82 for s in seeds}, aux=20, entropy_weight=0.2)
        random_20 = _arm("random", {s: 0.80 for s in seeds}, aux=20)
        other_epochs = _arm("single", {s: 0.5 for s in seeds}, epochs=5)
        other_data = stats.Arm("single", {"dataset": "mnist", "pri": 2, "epochs": 30}, {0: 0.9})
        arms = [
            single,
            maxl,
            maxl_no_entropy,
            human,
            random,
            prototypical,
            maxl_20,
            random_20,
            other_epochs,
            other_data,
        ]

        rows = stats.comparisons(arms)

        names = {
            id(a): n
            for n, a in zip(
                ["single", "maxl", "maxl0", "human", "random", "proto", "maxl20", "random20", "single5", "mnist"], arms
            )
        }
        self.assertEqual(
            [(names[id(r.arm)], names[id(r.baseline)]) for r in rows],
            [
                ("maxl", "single"),
                ("maxl", "human"),
                ("maxl", "random"),
                ("maxl0", "single"),
                ("maxl0", "human"),
                ("maxl0", "random"),
                ("human", "single"),
                ("random", "single"),
                ("proto", "single"),
                ("maxl20", "single"),
                ("maxl20", "random20"),
                ("random20", "single"),
            ],
        )
        by_pair = {(names[id(r.arm)], names[id(r.baseline)]): r.comparison for r in rows}
        self.assertAllClose(by_pair["maxl", "single"].mean, 0.01, rtol=0, atol=ARITHMETIC)
        self.assertAllClose(by_pair["maxl", "human"].mean, 0.005, rtol=0, atol=ARITHMETIC)
        self.assertAllClose(by_pair["maxl0", "single"].mean, -0.01, rtol=0, atol=ARITHMETIC)
        self.assertEqual(by_pair["maxl0", "single"].losses, 3)
        # Random ran seeds 0 and 1 only: two pairs.
        self.assertEqual(by_pair["maxl", "random"].seeds, (0, 1))
        self.assertAllClose(by_pair["maxl", "random"].differences, [0.03, 0.02], rtol=0, atol=ARITHMETIC)

    def test_no_single_no_rows(self):
        self.assertEqual(stats.comparisons([_arm("maxl", {0: 0.8}, aux=10)]), [])


class UniqueBySeedTest(tf.test.TestCase):
    def test_duplicates_count_once(self):
        seeds = [0, 1, 0, 2, 1, 0]
        names = ["a/0", "a/1", "b/0", "a/2", "b/1", "c/0"]
        accuracies = [0.7, 0.8, 0.7, 0.75, 0.81, 0.7]
        keep, duplicates = stats.unique_by_seed(seeds, names, accuracies)
        self.assertEqual(keep, [0, 1, 3])
        self.assertEqual(
            duplicates,
            [
                stats.Duplicate(seed=0, kept="a/0", dropped=("b/0", "c/0"), same_accuracy=True),
                stats.Duplicate(seed=1, kept="a/1", dropped=("b/1",), same_accuracy=False),
            ],
        )

    def test_distinct_seeds(self):
        keep, duplicates = stats.unique_by_seed([2, 0, 1], ["x", "y", "z"], [0.1, 0.2, 0.3])
        self.assertEqual(keep, [0, 1, 2])
        self.assertEqual(duplicates, [])

    def test_repeated_seed_zero_is_one_pair_not_a_zero_spread(self):
        # The bug this guards against: one run found in two folders read as "2 seeds, ± 0.0000".
        keep, duplicates = stats.unique_by_seed([0, 0], ["runs/x", "copy/x"], [0.8, 0.8])
        self.assertEqual(keep, [0])
        self.assertEqual(duplicates, [stats.Duplicate(0, "runs/x", ("copy/x",), True)])


if __name__ == "__main__":
    tf.test.main()
