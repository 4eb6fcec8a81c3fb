"""Sweeps: one Config per point of a product of methods, seeds, pri/aux pairs and entropy weights.

main.py hands the list flags (--method, --seeds, --pairs, --entropy_weights) to the parse_*
helpers here and calls expand(). Config itself stays one run's settings with scalar fields; only
--method was already a comma list. Each run of a sweep gets the log directory
<--logdir or runs>/<Config.name>, so rerunning the sweep finds, skips or resumes every run.
No TensorFlow here: a sweep's flags are all checked before it starts.
"""
import dataclasses
import itertools
import os

from maxl_tf import config as config_lib
from maxl_tf import errors

GENERATOR_FIELDS = ("entropy_weight", "generator_lr", "generator_weight_decay",
                    "generator_weight_decay_type", "schedule", "hypergradient", "neumann_terms", "meta_every")


def ignored_fields(method: str) -> frozenset:
    """Config fields that cannot change the results of a run of this method.

    Only maxl has a generator; single-task learning has no auxiliary task, so its --aux and --psi
    only name the run; only the methods in config.USES_META_SPLIT hold out meta data; only
    prototypical embeds images.
    """
    ignored = set()
    if method != "maxl":
        ignored.update(GENERATOR_FIELDS)
    if method == "single":
        ignored.update(("aux", "psi"))
    if method not in config_lib.USES_META_SPLIT:
        ignored.add("meta_split")
    if method != "prototypical":
        ignored.update(("embedder", "embedder_fallback"))
    return frozenset(ignored)


def experiment_key(config: config_lib.Config) -> tuple:
    """What decides a run's results, with the fields its method ignores left out."""
    ignored = ignored_fields(config.method)
    return tuple(sorted((k, v) for k, v in config.experiment().items() if k not in ignored))


def _split(flag: str, text: str, convert) -> tuple:
    try:
        return tuple(convert(item.strip()) for item in text.split(",") if item.strip())
    except ValueError:
        raise errors.Error(f"--{flag}={text}: must be a comma-separated list, e.g. "
                           f"{'--seeds=0,1,2' if convert is int else '--entropy_weights=0.2,0'}.") from None


def parse_seeds(text: str) -> tuple:
    return _split("seeds", text, int)


def parse_entropy_weights(text: str) -> tuple:
    return _split("entropy_weights", text, float)


def parse_pairs(text: str) -> tuple:
    """'3:10,3:20' -> ((3, 10), (3, 20)): principal and auxiliary class numbers."""
    def pair(item):
        pri, aux = item.split(":")
        return int(pri), int(aux)
    try:
        return _split("pairs", text, pair)
    except errors.Error:
        raise errors.Error(f"--pairs={text}: must be comma-separated pri:aux pairs, e.g. --pairs=3:10,3:20.") from None


def expand(base: config_lib.Config, seeds=(), pairs=(), entropy_weights=()) -> list:
    """The runs of a sweep, in order: seeds outermost, so a sweep stopped half-way has every
    setting at its first seeds; then pairs, entropy weights and methods (--method's comma list).

    An empty list keeps base's value. A run whose method ignores a swept value (single-task and
    --aux, every baseline and --entropy_weight) is kept once, with the first value. With more than
    one point in the product, every run's logdir is <base.logdir or runs>/<its name>.
    """
    methods = base.method.split(",")
    seeds = seeds or (base.seed,)
    pairs = pairs or ((base.pri, base.aux),)
    entropy_weights = entropy_weights or (base.entropy_weight,)
    points = list(itertools.product(seeds, pairs, entropy_weights, methods))
    configs, seen = [], set()
    for seed, (pri, aux), entropy_weight, method in points:
        config = dataclasses.replace(base, seed=seed, pri=pri, aux=aux, entropy_weight=entropy_weight,
                                     method=method)
        key = experiment_key(config)
        if key in seen:
            continue
        seen.add(key)
        if len(points) > 1:
            config = dataclasses.replace(config, logdir=os.path.join(base.logdir or "runs", config.name))
        configs.append(config)
    return configs

