"""Train MAXL or a baseline: maxl-tf after `pip install .`, or python main.py in the clone.

  maxl-tf --flagfile=flags/quickstart.cfg      a preset (flags/ holds one per experiment)
  maxl-tf --dataset=folder --data_dir=my_images --pri=5 --aux=10 --model=vgg_small   your images
  maxl-tf --dataset=cifar100 --pri=20 --aux=100   the paper's CIFAR-100 run (the flag defaults)

The tools, each with its own --help (and each also python -m maxl_tf.<tool>):
  maxl-tf report RUNS_DIR, maxl-tf predict --logdir=RUN IMAGE..., maxl-tf visualise RUN... --out=DIR,
  maxl-tf launch --workers=N -- COMMAND, maxl-tf bench, maxl-tf synthetic --out=DIR.

Every field of maxl_tf.experiment.config.Config is a flag of the same name. A sweep runs the product of
--method (a comma list), --seeds, --train_sizes, --pairs and --entropy_weights one run after another,
each in <--logdir or runs>/[n<size>/]<run name>; rerunning it skips complete runs and resumes the rest
(maxl_tf/experiment/sweep.py). The same command started several times, on one machine or on several
sharing the file system, shares the runs: each worker claims a run before training it
(maxl_tf/experiment/claims.py; maxl-tf launch starts N workers).
"""

import functools
import importlib
import os
import sys

from absl import flags

from maxl_tf import cli
from maxl_tf import errors
from maxl_tf import report
from maxl_tf import runtime
from maxl_tf.experiment import claims
from maxl_tf.experiment import rundir
from maxl_tf.experiment import sweep


def define_flags(flag_values=flags.FLAGS) -> None:
    """Config's flags, the progress bar, and the sweep lists (not fields of Config, which
    describes one run)."""
    cli.define_config_flags(flag_values)
    flags.DEFINE_bool("progress", True, "Show a progress bar per epoch (on a terminal).", flag_values=flag_values)
    flags.DEFINE_string(
        "seeds", "", "Sweep: comma-separated seeds, e.g. 0,1,2,3,4 (replaces --seed).", flag_values=flag_values
    )
    flags.DEFINE_string(
        "pairs",
        "",
        "Sweep: comma-separated pri:aux pairs, e.g. 3:10,3:20,10:100 (replaces --pri and --aux).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "entropy_weights",
        "",
        "Sweep: comma-separated entropy weights, e.g. 0.2,0 (replaces --entropy_weight; maxl only).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "train_sizes",
        "",
        "Sweep: comma-separated training-set sizes, e.g. 500,2000,8000 (replaces --max_train_examples); "
        "each size's runs go in <--logdir>/n<size>/.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "heartbeat_timeout",
        300,
        "Workers sharing a sweep: seconds without a heartbeat "
        "after which a worker's run is taken over by another "
        "(the same for every worker; BUILD.md says why 300).",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "engine",
        "serial",
        ["serial", "ray"],
        "Sweep: serial: this process trains the runs one after another (start several to share them); "
        "ray: each run is a Ray task (maxl_tf/experiment/ray_engine.py; pip install .[ray]).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "ray_address",
        "",
        "--engine=ray: a running Ray cluster's address, e.g. 10.0.0.1:6379 (empty: RAY_ADDRESS, else "
        "the cluster `ray start` started on this machine, else a Ray started for the command).",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "gpus_per_run",
        None,
        "--engine=ray: GPUs each run asks for; a fraction shares one (0.25: four runs per GPU). "
        "Default: 1 where the cluster has GPUs, else 0.",
        flag_values=flag_values,
    )
    flags.DEFINE_float("cpus_per_run", 1, "--engine=ray: CPUs each run asks for.", flag_values=flag_values)


def runs_from_flags(flag_values=flags.FLAGS) -> list:
    """The resolved runs (config_lib.Run) the flags ask for: one, or a sweep's product (several
    share --logdir as their parent)."""
    base = cli.config_from_flags(flag_values)
    return sweep.expand(
        base,
        seeds=sweep.parse_seeds(flag_values.seeds),
        pairs=sweep.parse_pairs(flag_values.pairs),
        entropy_weights=sweep.parse_entropy_weights(flag_values.entropy_weights),
        train_sizes=sweep.parse_train_sizes(flag_values.train_sizes),
    )


def _print_table(all_results) -> None:
    epochs = max(r["config"]["epochs"] for r in all_results)
    print(f"\n| method | {rundir.metric_name(epochs)} | final epoch | epochs |")
    print("|---|---|---|---|")
    for r in all_results:
        print(
            f"| {r['config']['method']} | {r['test_accuracy']:.4f} | "
            f"{r['history'][-1]['test/acc']:.4f} | {r['epochs_completed']} |"
        )


# What --help shows: the flags a first run needs, by topic; --helpfull lists all of them.
HELP_GROUPS = (
    (
        "Data",
        ("dataset", "data_dir", "hierarchy", "image_size", "test_fraction", "stream", "max_train_examples"),
    ),
    ("Task: principal and auxiliary classes", ("pri", "aux", "psi")),
    ("Model", ("model", "width", "pretrained")),
    ("Method", ("method", "embedder", "entropy_weight", "generator_lr", "hypergradient", "meta_every")),
    ("Training", ("epochs", "batch_size", "lr", "seed", "augment")),
    ("Output", ("logdir", "keep_checkpoints", "export", "progress")),
    ("Sweep: one command, many runs", ("seeds", "pairs", "entropy_weights", "train_sizes", "engine")),
)
# What a Ray task runs for one run: the clone's main.py, at the same path on every node.
MAIN_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "main.py")
# The tools, as `maxl-tf <tool> ...` (each is also python -m maxl_tf.<tool>).
TOOLS = ("report", "predict", "visualise", "launch", "bench", "synthetic")
# Added to an input error when --dataset was left at its default: the likeliest slip of a first run.
OWN_DATA_HINT = (
    "(--dataset was not given, so it is cifar100. Your own images: --dataset=folder "
    "--data_dir=<a folder with one subfolder per class>; a first run: --flagfile=flags/quickstart.cfg.)"
)


def _checked_runs() -> list:
    """Every run's flags, and (after TensorFlow started) its data and embedder, checked before
    the first one trains."""
    runs = runs_from_flags()
    if not flags.FLAGS.heartbeat_timeout > 0:
        raise errors.Error(
            f"--heartbeat_timeout={flags.FLAGS.heartbeat_timeout}: must be a positive number of seconds."
        )
    if flags.FLAGS.engine == "ray":  # the runs train in Ray's tasks; this process needs no TensorFlow
        return runs
    first = runs[0].config
    runtime.start_tensorflow(first.deterministic, start_runtime=first.strategy != "multi_worker")
    # TensorFlow and the models: only once the flags are known to be good.
    from maxl_tf.experiment import inputs

    inputs.check_available(runs)
    return runs


def main(argv):
    if len(argv) > 1:
        raise errors.Error(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
    if not flags.FLAGS.heartbeat_timeout > 0:
        raise errors.Error(
            f"--heartbeat_timeout={flags.FLAGS.heartbeat_timeout}: must be a positive number of seconds."
        )
    try:
        runs = _checked_runs()
    except errors.Error as e:  # the data's or a flag's, named in e
        if type(e) is not errors.Error or flags.FLAGS["dataset"].present:
            raise
        raise errors.Error(f"{e} {OWN_DATA_HINT}") from None
    if flags.FLAGS.engine == "ray":
        from maxl_tf.experiment import ray_engine

        all_results = ray_engine.run_sweep(
            runs,
            main_py=MAIN_PY,
            address=flags.FLAGS.ray_address,
            gpus_per_run=flags.FLAGS.gpus_per_run,
            cpus_per_run=flags.FLAGS.cpus_per_run,
            heartbeat_timeout=flags.FLAGS.heartbeat_timeout,
        )
    else:
        all_results = _train_here(runs)
    _print_tables([run.config for run in runs], all_results)


def _train_here(runs: list) -> list:
    """The serial engine: this process trains, resumes or skips each run in turn."""
    from maxl_tf.experiment import train

    # Workers of one sweep share its runs through claims; the processes of a multi-worker
    # strategy train each run together, so there the claims are off.
    worker = claims.Worker(flags.FLAGS.heartbeat_timeout) if runs[0].config.strategy != "multi_worker" else None
    progress = flags.FLAGS.progress and sys.stdout.isatty()
    return sweep.run(runs, functools.partial(train.train_and_evaluate, progress=progress), worker)


def _print_tables(configs: list, all_results: list) -> None:
    if len({(c.seed, c.pri, c.aux, c.entropy_weight) for c in configs}) > 1:  # more than methods
        groups = report.group_runs(all_results)
        print("\n" + report.markdown_table(groups))
        paired = report.paired_tables(groups)
        if paired:
            print("Paired by seed (first minus second; Student t 95% interval over seeds):\n\n" + paired)
        print(f"Figures: python -m maxl_tf.report {flags.FLAGS.logdir or 'runs'}")
    else:
        _print_table(all_results)


def run() -> None:
    """Trains as the flags say: python main.py and `maxl-tf`."""
    define_flags()
    cli.run(main, HELP_GROUPS)


def console() -> None:
    """The `maxl-tf` command of `pip install .`: `maxl-tf <tool> ...` runs a tool (maxl-tf report
    runs/x), anything else trains."""
    if len(sys.argv) > 1 and sys.argv[1] in TOOLS:
        tool = sys.argv[1]
        sys.argv = [f"{sys.argv[0]} {tool}", *sys.argv[2:]]
        importlib.import_module(f"maxl_tf.{tool}").command()
    else:
        run()
