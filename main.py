"""Train MAXL or a baseline: python main.py --dataset=cifar100 --pri=20 --aux=100

Every field of maxl_tf.config.Config is a flag of the same name; presets live in flags/
(python main.py --flagfile=flags/quickstart.cfg). --method takes a comma-separated list to run
several methods one after another and print a results table. This is the only file that reads flags.
"""
import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # keep TensorFlow's C++ start-up chatter out of the output

from absl import app
from absl import flags
from absl import logging

from maxl_tf import config as config_lib
from maxl_tf import loaders
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
    """One Config per method of a comma-separated --method; several runs share --logdir as parent."""
    methods = base.method.split(",")
    if len(methods) == 1:
        return [base]
    configs = []
    for method in methods:
        config = dataclasses.replace(base, method=method)
        configs.append(dataclasses.replace(config, logdir=os.path.join(base.logdir or "runs", config.name)))
    return configs


def _print_table(all_results) -> None:
    print(f"\n| method | test accuracy (mean of last {train.LAST_EPOCHS_AVERAGED} epochs) | final epoch | epochs |")
    print("|---|---|---|---|")
    for r in all_results:
        print(f"| {r['config']['method']} | {r['test_accuracy']:.4f} | "
              f"{r['history'][-1]['test/acc']:.4f} | {r['epochs_completed']} |")


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; flags look like --name=value.", file=sys.stderr)
        sys.exit(2)
    base = config_from_flags()
    logging.set_verbosity(logging.WARNING)
    train.configure_runtime(base.deterministic)
    configs = _configs(base)
    try:   # every run's flags, before the first one trains
        for config in configs:
            config_lib.validate(config)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    all_results = []
    for config in configs:
        try:
            all_results.append(train.train_and_evaluate(config, progress=flags.FLAGS.progress and sys.stdout.isatty()))
        except (config_lib.ConfigError, loaders.DataError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except train.Interrupted as e:
            print(f"stopped: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
        except train.RunError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
        print(f"{config.name}: test accuracy (mean of the last {train.LAST_EPOCHS_AVERAGED} epochs) "
              f"{all_results[-1]['test_accuracy']:.4f}; results in {config.resolved_logdir()}/results.json")
    _print_table(all_results)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=_parse)
