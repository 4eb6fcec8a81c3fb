"""Train MAXL or a baseline: python main.py --dataset=cifar100 --pri=20 --aux=100

Every field of maxl_tf.config.Config is a flag of the same name; presets live in flags/
(python main.py --flagfile=flags/quickstart.cfg). A sweep runs the product of --method (a comma
list), --seeds, --pairs and --entropy_weights one run after another, each in
<--logdir or runs>/<run name>; rerunning it skips complete runs and resumes the rest
(maxl_tf/sweep.py). This is the only file that reads flags.
"""
import dataclasses
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # keep TensorFlow's C++ start-up chatter out of the output

from absl import app
from absl import flags
from absl import logging

from maxl_tf import config as config_lib
from maxl_tf import loaders
from maxl_tf import report
from maxl_tf import sweep
from maxl_tf import train

_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           str: flags.DEFINE_string}


def define_flags(flag_values=flags.FLAGS) -> None:
    """One flag per Config field. Choices are checked by config.validate (exit 2 with one line),
    not by DEFINE_enum."""
    for field in dataclasses.fields(config_lib.Config):
        help_text = field.metadata["help"]
        if field.metadata["choices"]:
            help_text += f" One of: {', '.join(field.metadata['choices'])}."
        _DEFINE[type(field.default)](field.name, field.default, help_text, flag_values=flag_values)
    flags.DEFINE_bool("progress", True, "Show a progress bar per epoch (on a terminal).",
                      flag_values=flag_values)
    # Sweep lists: not fields of Config, which describes one run.
    flags.DEFINE_string("seeds", "", "Sweep: comma-separated seeds, e.g. 0,1,2,3,4 (replaces --seed).",
                        flag_values=flag_values)
    flags.DEFINE_string("pairs", "", "Sweep: comma-separated pri:aux pairs, e.g. 3:10,3:20,10:100 "
                                     "(replaces --pri and --aux).", flag_values=flag_values)
    flags.DEFINE_string("entropy_weights", "", "Sweep: comma-separated entropy weights, e.g. 0.2,0 "
                                               "(replaces --entropy_weight; maxl only).",
                        flag_values=flag_values)


def config_from_flags(flag_values=flags.FLAGS) -> config_lib.Config:
    return config_lib.Config(**{f.name: flag_values[f.name].value for f in dataclasses.fields(config_lib.Config)})


def _parse(argv):
    """absl's parser, but a bad flag ends with one line and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}. See python main.py --helpfull.", file=sys.stderr)
        sys.exit(2)


def _configs(base: config_lib.Config) -> list:
    """The runs the flags ask for: one, or a sweep's product (several share --logdir as parent)."""
    return sweep.expand(base, seeds=sweep.parse_seeds(flags.FLAGS.seeds),
                        pairs=sweep.parse_pairs(flags.FLAGS.pairs),
                        entropy_weights=sweep.parse_entropy_weights(flags.FLAGS.entropy_weights))


def _print_table(all_results) -> None:
    print(f"\n| method | test accuracy (mean of last {train.LAST_EPOCHS_AVERAGED} epochs) | final epoch | epochs |")
    print("|---|---|---|---|")
    for r in all_results:
        print(f"| {r['config']['method']} | {r['test_accuracy']:.4f} | "
              f"{r['history'][-1]['test/acc']:.4f} | {r['epochs_completed']} |")


def _run(config: config_lib.Config) -> tuple:
    """Trains, resumes or skips one run; returns (results, what happened)."""
    results = sweep.completed_results(config)
    if results is not None:
        return results, "skipped (complete)"
    resuming = os.path.isdir(os.path.join(config.resolved_logdir(), "checkpoints"))
    results = train.train_and_evaluate(config, progress=flags.FLAGS.progress and sys.stdout.isatty())
    return results, "done (resumed)" if resuming else "done"


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; flags look like --name=value.", file=sys.stderr)
        sys.exit(2)
    base = config_from_flags()
    logging.set_verbosity(logging.WARNING)
    train.configure_runtime(base.deterministic)
    try:   # every run's flags, before the first one trains
        configs = _configs(base)
        for config in configs:
            config_lib.validate(config)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    all_results = []
    for number, config in enumerate(configs, 1):
        start = time.perf_counter()
        which = f"{config.name}: " if len(configs) > 1 else ""
        try:
            results, outcome = _run(config)
        except (config_lib.ConfigError, loaders.DataError) as e:
            print(f"error: {which}{e}", file=sys.stderr)
            sys.exit(2)
        except train.Interrupted as e:
            print(f"stopped: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
        except train.RunError as e:
            print(f"error: {which}{e}", file=sys.stderr)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:   # before the run's own signal handling took over
            print(f"stopped: interrupted while starting {config.name}; rerun the same command to resume.",
                  file=sys.stderr)
            sys.exit(130)
        all_results.append(results)
        print(f"[{number}/{len(configs)}] {config.name}: {outcome}, test accuracy (mean of the last "
              f"{train.LAST_EPOCHS_AVERAGED} epochs) {results['test_accuracy']:.4f}, "
              f"{time.perf_counter() - start:.0f} s; results in {config.resolved_logdir()}/results.json",
              flush=True)
    if len({(c.seed, c.pri, c.aux, c.entropy_weight) for c in configs}) > 1:   # more than methods
        print("\n" + report.markdown_table(report.group_runs(all_results)))
        print(f"Figures: python -m maxl_tf.report {base.logdir or 'runs'}")
    else:
        _print_table(all_results)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=_parse)
