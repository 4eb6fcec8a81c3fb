"""Sweeps: one run per point of a product of methods, seeds, pri/aux pairs and entropy weights.

main.py hands the list flags (--method, --seeds, --pairs, --entropy_weights) to the parse_*
helpers here, calls expand(), and then run(). Config itself stays one run's settings with scalar
fields; only --method was already a comma list. expand() resolves each run once (a
config_lib.Run); each run of a sweep gets the log directory <--logdir or runs>/<Run.name>, so
rerunning the sweep finds, skips or resumes every run, and several workers started with the same
command share its runs (claims.py). No TensorFlow here: a sweep's flags are all checked before it
starts.
"""

import dataclasses
import itertools
import os
import time

from maxl_tf import errors
from maxl_tf.core import methods
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import rundir


def experiment_key(config: config_lib.Config) -> tuple:
    """What decides a run's results, with the fields its method ignores left out."""
    ignored = methods.get(config.method).ignored_fields
    return tuple(sorted((k, v) for k, v in config.experiment().items() if k not in ignored))


def _split(flag: str, text: str, convert) -> tuple:
    try:
        return tuple(convert(item.strip()) for item in text.split(",") if item.strip())
    except ValueError:
        raise errors.Error(
            f"--{flag}={text}: must be a comma-separated list, e.g. "
            f"{'--' + flag + '=0,1,2' if convert is int else '--entropy_weights=0.2,0'}."
        ) from None


def parse_seeds(text: str) -> tuple:
    return _split("seeds", text, int)


def parse_entropy_weights(text: str) -> tuple:
    return _split("entropy_weights", text, float)


def parse_train_sizes(text: str) -> tuple:
    sizes = _split("train_sizes", text, int)
    if any(size < 1 for size in sizes):
        raise errors.Error(f"--train_sizes={text}: each size must be a positive number of training images.")
    return sizes


def parse_pairs(text: str) -> tuple:
    """'3:10,3:20' -> ((3, 10), (3, 20)): principal and auxiliary class numbers."""

    def pair(item):
        pri, aux = item.split(":")
        return int(pri), int(aux)

    try:
        return _split("pairs", text, pair)
    except errors.Error:
        raise errors.Error(f"--pairs={text}: must be comma-separated pri:aux pairs, e.g. --pairs=3:10,3:20.") from None


def expand(base: config_lib.Config, seeds=(), pairs=(), entropy_weights=(), train_sizes=()) -> list:
    """The runs of a sweep, each resolved once (config_lib.Run), in order: seeds outermost, so a
    sweep stopped half-way has every setting at its first seeds; then training-set sizes, pairs,
    entropy weights and methods (--method's comma list).

    An empty list keeps base's value. A run whose method ignores a swept value (single-task and
    --aux, every baseline and --entropy_weight) is kept once, with the first value. With more than
    one point in the product, every run's logdir is <base.logdir or runs>/<its name>; with
    train_sizes (--max_train_examples values), <base.logdir or runs>/n<size>/<its name>, since a
    run's name does not say its size.
    """
    method_names = base.method.split(",")
    for method in method_names:  # before a method's descriptor is read (experiment_key)
        config_lib.check_method(method)
    seeds = seeds or (base.seed,)
    sizes = train_sizes or (base.max_train_examples,)
    pairs = pairs or ((base.pri, base.aux),)
    entropy_weights = entropy_weights or (base.entropy_weight,)
    points = list(itertools.product(seeds, sizes, pairs, entropy_weights, method_names))
    runs, seen = [], set()
    for seed, size, (pri, aux), entropy_weight, method in points:
        config = dataclasses.replace(
            base,
            seed=seed,
            max_train_examples=size,
            pri=pri,
            aux=aux,
            entropy_weight=entropy_weight,
            method=method,
        )
        key = experiment_key(config)
        if key in seen:
            continue
        seen.add(key)
        parent = os.path.join(base.logdir or "runs", f"n{size}" if train_sizes else "")
        runs.append(config_lib.resolve(config, parent if len(points) > 1 or train_sizes else None))
    return runs


def outcome_line(number: int, total: int, run: config_lib.Run, outcome: str, results=None, seconds=None) -> str:
    """`[k/N] <run>: <outcome>[, <metric>][, <seconds> s][; results in <file>]`: a sweep's line per
    run, the same from every engine."""
    line = f"[{number}/{total}] {run.name}: {outcome}"
    if results is not None:
        line += f", {rundir.metric_name(run.config.epochs)} {results['test_accuracy']:.4f}"
    if seconds is not None:
        line += f", {seconds:.0f} s"
    if results is not None:
        line += f"; results in {run.config.logdir}/results.json"
    return line


def finished(run: config_lib.Run) -> dict | None:
    """A run's results.json if every engine skips the run as complete; else None.

    The one skip-and-resume decision of the serial sweep, its workers (claims.py's is_complete)
    and Ray's driver: a run is skipped only if its results.json is complete for this experiment
    on this data (run.identity: an engine that cannot tell the data, its errors.Error, must not
    skip), and, when it exports, its exports are whole (rundir.exports_intact). None sends the
    run to train.train_and_evaluate, which resumes it, writes its exports again from the final
    checkpoint, or refuses its directory (rundir.check: a run on other data).

    Raises:
      errors.Error: the run's data cannot be found or listed here (Source.identity).
    """
    config = run.config
    results = rundir.completed_results(config, run.identity)
    if results is None or (config.export and not rundir.exports_intact(config)):
        return None
    return results


def run(runs: list, train_and_evaluate, worker=None) -> list:
    """Trains, resumes or skips each run of a sweep in order; returns their results.json contents.

    Prints one `[k/N] <run>: <outcome>` line per run. With a claims.Worker, a run another live
    worker holds is left to it; once through the list, this worker waits for those runs and takes
    over any whose worker stops sending heartbeats.

    Args:
      runs: the sweep's resolved runs (expand()).
      train_and_evaluate: train.train_and_evaluate (with its progress argument bound).
      worker: a claims.Worker to share the runs with other workers; None trains every run.
    Raises:
      errors.Error: a run that cannot train, with the run's name as its context in a sweep.
    """
    sweep = _Sweep(runs, train_and_evaluate)
    waiting = []  # runs another worker held at their turn
    for run in runs:
        start = time.perf_counter()
        try:
            results = finished(run)
            if results is not None:
                sweep.results_of[run.config.logdir] = results
                sweep.report(run, "skipped (complete)", results, start)
                continue
            # Before claiming: nothing is written into a directory it refuses.
            rundir.check(run.config, identity=run.identity)
            claim = worker.claim(run.config.logdir) if worker else None
        except errors.Error as e:
            raise sweep.failed(run, e) from None
        if worker and claim is None:
            sweep.report(run, "held by another worker")
            waiting.append(run.config.logdir)
        elif not sweep.attempt(run, claim):
            waiting.append(run.config.logdir)
    if waiting:
        sweep.wait_for_others(waiting, worker)
    return [sweep.results_of[run.config.logdir] for run in runs]


class _Sweep:
    """run()'s bookkeeping: each run's number and results, and its lines."""

    def __init__(self, runs: list, train_and_evaluate):
        self.runs = runs
        self.train_and_evaluate = train_and_evaluate
        self.by_logdir = {run.config.logdir: run for run in runs}
        self.numbers = {run.config.logdir: number for number, run in enumerate(runs, 1)}
        self.results_of = {}

    def report(self, run, outcome, results=None, start=None):
        seconds = None if start is None else time.perf_counter() - start
        number = self.numbers[run.config.logdir]
        print(outcome_line(number, len(self.runs), run, outcome, results, seconds), flush=True)

    def failed(self, run, error):
        if len(self.runs) > 1:
            error.context = run.name
        return error

    def attempt(self, run, claim) -> bool:
        """Trains a claimed run (or any run, without a worker); False if another worker took it over."""
        start = time.perf_counter()
        outcome = "done (resumed)" if rundir.holds_training(run.config.logdir) else "done"
        if claim is not None and claim.previous is not None:
            print(
                f"{run.name}: taking over from worker {claim.previous.get('worker', '?')}, whose heartbeat stopped",
                flush=True,
            )
        try:
            self.results_of[run.config.logdir] = self.train_and_evaluate(run, claim=claim)
        except errors.ClaimLost as e:
            self.report(run, f"left to another worker: {e}")
            return False
        except errors.Error as e:
            raise self.failed(run, e) from None
        finally:
            if claim is not None:
                claim.release()
        self.report(run, outcome, self.results_of[run.config.logdir], start)
        return True

    def complete(self, logdir) -> bool:
        """Another worker's run: finished as this worker would skip it."""
        return logdir in self.results_of or finished(self.by_logdir[logdir]) is not None

    def wait_for_others(self, waiting: list, worker) -> None:
        """Until the other workers finish their runs, or one of them stops and its run is taken over."""
        unfinished = [logdir for logdir in waiting if not self.complete(logdir)]
        if unfinished:
            print(
                f"waiting for {len(unfinished)} runs held by other workers; a run whose worker sends no "
                f"heartbeat for {worker.heartbeat_timeout:g} s is taken over",
                flush=True,
            )
            while (claim := worker.wait_for_run(unfinished, self.complete)) is not None:
                self.attempt(self.by_logdir[claim.run_dir], claim)
        for logdir in waiting:
            if logdir not in self.results_of:
                self.results_of[logdir] = finished(self.by_logdir[logdir])
                self.report(self.by_logdir[logdir], "done by another worker", self.results_of[logdir])
