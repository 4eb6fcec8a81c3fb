"""How sure a comparison of two methods is: paired differences of test accuracy over seeds.

Two runs with the same seed share everything the seed decides (meta split, example order,
augmentation, random labels), so the per-seed difference of their test accuracies cancels that
shared noise: its mean, a Student t confidence interval over seeds, and the seeds each method wins
say more than two overlapping "mean ± std" cells. A seed counts once per experiment: the same run
found twice (copied, or rerun in another folder) would otherwise add a pair with no new evidence.

numpy and scipy only (and core/methods.py's registry), so the report can use it without TensorFlow.
"""

from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses

import numpy as np

from maxl_tf.core import methods

CONFIDENCE = 0.95
# Accuracies closer than this are a tie. A test set of N images averaged over 5 epochs moves in
# steps of 1 / (5 N) (2e-5 for 10,000 images); this only absorbs float rounding.
TIE_TOLERANCE = 1e-9


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Method A minus method B, paired by seed.

    Attributes:
      seeds: the seeds both ran, ascending.
      differences: A's test accuracy minus B's, per seed in `seeds` order.
      mean: the mean difference.
      interval: (low, high), the CONFIDENCE interval of the mean difference (Student t with
        len(seeds) - 1 degrees of freedom); None for a single pair, which has no spread.
      wins: seeds where A is more accurate; ties: seeds where they are equal (TIE_TOLERANCE).
    """

    seeds: tuple
    differences: tuple
    mean: float
    interval: tuple | None
    wins: int
    ties: int

    @property
    def pairs(self) -> int:
        return len(self.seeds)

    @property
    def losses(self) -> int:
        return self.pairs - self.wins - self.ties


def mean_interval(values, confidence: float = CONFIDENCE) -> tuple:
    """(mean, its Student t interval over the values (len - 1 degrees of freedom)); the interval
    is None for a single value, which has no spread."""
    values = np.asarray(values, np.float64)
    n, mean = len(values), float(values.mean())
    if n < 2:
        return mean, None
    import scipy.stats  # here: it costs most of a second of every command's start, tables or not

    half_width = scipy.stats.t.ppf((1 + confidence) / 2, df=n - 1) * values.std(ddof=1) / np.sqrt(n)
    return mean, (mean - half_width, mean + half_width)


def paired(a: Mapping, b: Mapping, confidence: float = CONFIDENCE) -> Comparison | None:
    """Compares two methods' test accuracies on the seeds both ran.

    Args:
      a, b: seed -> test accuracy of each method.
      confidence: coverage of the interval.

    Returns:
      The Comparison of a - b, or None when no seed is in both.
    """
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        return None
    differences = np.array([a[s] - b[s] for s in seeds], np.float64)
    mean, interval = mean_interval(differences, confidence)
    tied = np.abs(differences) <= TIE_TOLERANCE
    return Comparison(
        seeds=seeds,
        differences=tuple(differences.tolist()),
        mean=mean,
        interval=interval,
        wins=int(np.sum(~tied & (differences > 0))),
        ties=int(np.sum(tied)),
    )


@dataclasses.dataclass(frozen=True)
class Arm:
    """One experiment's runs, as the report groups them.

    Attributes:
      method: the --method of its runs.
      setting: the fields that decide its results, without the seed; fields its method ignores
        (single-task's --aux, a baseline's generator settings) are absent.
      accuracies: seed -> test accuracy, one run per seed (see unique_by_seed).
    """

    method: str
    setting: Mapping
    accuracies: Mapping


@dataclasses.dataclass(frozen=True)
class Row:
    """`arm` against `baseline` in the same setting."""

    arm: Arm
    baseline: Arm
    comparison: Comparison


def _same_setting(arm: Arm, baseline: Arm) -> bool:
    """The baseline's fields, but its method, agree with the arm's; a field the arm lacks does not
    change the arm's results, so it cannot separate them (single-task has no --aux)."""
    return all(arm.setting.get(k, v) == v for k, v in baseline.setting.items() if k != "method")


def comparisons(arms: Sequence[Arm], confidence: float = CONFIDENCE) -> list:
    """Each method against its baselines (core/methods.py: every method against single-task, MAXL also
    against human, random and k-means), setting by setting.

    Returns:
      Rows in the order of `arms`, each arm's in the order of its method's baselines
      (core/methods.py); a pair of arms without a seed in common gives no row.
    """
    rows = []
    for arm in arms:
        for baseline_method in methods.get(arm.method).baselines:
            for baseline in arms:
                if baseline.method != baseline_method or not _same_setting(arm, baseline):
                    continue
                comparison = paired(arm.accuracies, baseline.accuracies, confidence)
                if comparison is not None:
                    rows.append(Row(arm, baseline, comparison))
    return rows


@dataclasses.dataclass(frozen=True)
class Duplicate:
    """Runs of one experiment with the same seed: the first is counted, the rest are not.

    Attributes:
      seed: the seed they share.
      kept: name (e.g. results.json path) of the run counted.
      dropped: names of the others.
      same_accuracy: whether all of them have the same test accuracy (a deterministic rerun); if
        not, the runs were not deterministic or not run by the same code.
    """

    seed: int
    kept: str
    dropped: tuple
    same_accuracy: bool


def unique_by_seed(seeds: Sequence[int], names: Sequence[str], accuracies: Sequence[float]) -> tuple:
    """One run per seed among runs of one experiment: the first of each seed in the given order.

    Args:
      seeds, names, accuracies: per run, in the order to prefer (e.g. by path).

    Returns:
      (indices of the runs to count, ascending; Duplicates, by seed).
    """
    by_seed = {}
    for i, seed in enumerate(seeds):
        by_seed.setdefault(seed, []).append(i)
    duplicates = []
    for seed, runs in sorted(by_seed.items()):
        if len(runs) > 1:
            spread = np.ptp([accuracies[i] for i in runs])
            duplicates.append(
                Duplicate(seed, names[runs[0]], tuple(names[i] for i in runs[1:]), bool(spread <= TIE_TOLERANCE))
            )
    return sorted(runs[0] for runs in by_seed.values()), duplicates
