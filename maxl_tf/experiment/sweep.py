"""Sweeps: one Config per point of a product of methods, seeds, pri/aux pairs and entropy weights.

main.py hands the list flags (--method, --seeds, --pairs, --entropy_weights) to the parse_*
helpers here, calls expand(), and then run(). Config itself stays one run's settings with scalar
fields; only --method was already a comma list. Each run of a sweep gets the log directory
<--logdir or runs>/<Config.name>, so rerunning the sweep finds, skips or resumes every run, and
several workers started with the same command share its runs (claims.py). No TensorFlow here: a
sweep's flags are all checked before it starts.
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
    """The runs of a sweep, in order: seeds outermost, so a sweep stopped half-way has every
    setting at its first seeds; then training-set sizes, pairs, entropy weights and methods
    (--method's comma list).

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
    configs, seen = [], set()
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
        if len(points) > 1 or train_sizes:
            config = dataclasses.replace(config, logdir=os.path.join(parent, config.name))
        configs.append(config)
    return configs


def outcome_line(number: int, total: int, config, outcome: str, results=None, seconds=None) -> str:
    """`[k/N] <run>: <outcome>[, <metric>][, <seconds> s][; results in <file>]`: a sweep's line per
    run, the same from every engine."""
    line = f"[{number}/{total}] {config.name}: {outcome}"
    if results is not None:
        line += f", {rundir.metric_name(config.epochs)} {results['test_accuracy']:.4f}"
    if seconds is not None:
        line += f", {seconds:.0f} s"
    if results is not None:
        line += f"; results in {config.logdir}/results.json"
    return line


def data_identity(config: config_lib.Config) -> dict:
    """The data's identity as this machine sees it (Source.identity), for finished().

    Raises:
      errors.Error: the data cannot be found or listed here.
    """
    return config_lib.source(config).identity()


def finished(config: config_lib.Config, identity: dict) -> dict | None:
    """A run's results.json if every engine skips the run as complete; else None.

    The one skip-and-resume decision of the serial sweep, its workers (claims.py's is_complete)
    and Ray's driver: a run is skipped only if its results.json is complete for this experiment
    on this data (identity: data_identity(config), never None: an engine that cannot tell the
    data must not skip), and, when it exports, its exports are whole (rundir.exports_intact).
    None sends the run to train.train_and_evaluate, which resumes it, writes its exports again
    from the final checkpoint, or refuses its directory (rundir.check: a run on other data).
    """
    results = rundir.completed_results(config, identity)
    if results is None or (config.export and not rundir.exports_intact(config)):
        return None
    return results


def run(configs: list, train_and_evaluate, worker=None) -> list:
    """Trains, resumes or skips each run of a sweep in order; returns their results.json contents.

    Prints one `[k/N] <run>: <outcome>` line per run. With a claims.Worker, a run another live
    worker holds is left to it; once through the list, this worker waits for those runs and takes
    over any whose worker stops sending heartbeats.

    Args:
      configs: validated Configs, one per run.
      train_and_evaluate: train.train_and_evaluate (with its progress argument bound).
      worker: a claims.Worker to share the runs with other workers; None trains every run.
    Raises:
      errors.Error: a run that cannot train, with the run's name as its context in a sweep.
    """
    by_logdir = {config.logdir: config for config in configs}
    numbers = {config.logdir: number for number, config in enumerate(configs, 1)}
    results_of = {}

    def report(config, outcome, results=None, start=None):
        seconds = None if start is None else time.perf_counter() - start
        print(outcome_line(numbers[config.logdir], len(configs), config, outcome, results, seconds), flush=True)

    def failed(config, error):
        if len(configs) > 1:
            error.context = config.name
        return error

    def attempt(config, claim) -> bool:
        """Trains a claimed run (or any run, without a worker); False if another worker took it over."""
        start = time.perf_counter()
        outcome = "done (resumed)" if rundir.holds_training(config.logdir) else "done"
        if claim is not None and claim.previous is not None:
            print(
                f"{config.name}: taking over from worker {claim.previous.get('worker', '?')}, whose heartbeat stopped",
                flush=True,
            )
        try:
            results_of[config.logdir] = train_and_evaluate(config, claim=claim)
        except errors.ClaimLost as e:
            report(config, f"left to another worker: {e}")
            return False
        except errors.Error as e:
            raise failed(config, e) from None
        finally:
            if claim is not None:
                claim.release()
        report(config, outcome, results_of[config.logdir], start)
        return True

    waiting = []  # runs another worker held at their turn
    for config in configs:
        start = time.perf_counter()
        try:
            identity = data_identity(config)
            results = finished(config, identity)
            if results is not None:
                results_of[config.logdir] = results
                report(config, "skipped (complete)", results, start)
                continue
            rundir.check(config, identity=identity)  # before claiming: nothing is written into a directory it refuses
            claim = worker.claim(config.logdir) if worker else None
        except errors.Error as e:
            raise failed(config, e) from None
        if worker and claim is None:
            report(config, "held by another worker")
            waiting.append(config.logdir)
        elif not attempt(config, claim):
            waiting.append(config.logdir)

    def complete(logdir):  # another worker's run: finished as this worker would skip it
        return logdir in results_of or finished(by_logdir[logdir], data_identity(by_logdir[logdir])) is not None

    # Until the other workers finish their runs, or one of them stops and its run is taken over.
    unfinished = [logdir for logdir in waiting if not complete(logdir)]
    if unfinished:
        print(
            f"waiting for {len(unfinished)} runs held by other workers; a run whose worker sends no "
            f"heartbeat for {worker.heartbeat_timeout:g} s is taken over",
            flush=True,
        )
        while (claim := worker.wait_for_run(unfinished, complete)) is not None:
            attempt(by_logdir[claim.run_dir], claim)
    for logdir in waiting:
        if logdir not in results_of:
            results_of[logdir] = finished(by_logdir[logdir], data_identity(by_logdir[logdir]))
            report(by_logdir[logdir], "done by another worker", results_of[logdir])
    return [results_of[config.logdir] for config in configs]
