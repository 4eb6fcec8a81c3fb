"""Train MAXL or a baseline: python main.py --dataset=cifar100 --pri=20 --aux=100

Every field of maxl_tf.config.Config is a flag of the same name; presets live in flags/
(python main.py --flagfile=flags/quickstart.cfg). A sweep runs the product of --method (a comma
list), --seeds, --pairs and --entropy_weights one run after another, each in
<--logdir or runs>/<run name>; rerunning it skips complete runs and resumes the rest
(maxl_tf/sweep.py).
"""
import sys
import time

from absl import flags

from maxl_tf import cli
from maxl_tf import config as config_lib
from maxl_tf import errors
from maxl_tf import report
from maxl_tf import rundir
from maxl_tf import sweep


def define_flags(flag_values=flags.FLAGS) -> None:
    """Config's flags, the progress bar, and the sweep lists (not fields of Config, which
    describes one run)."""
    cli.define_config_flags(flag_values)
    flags.DEFINE_bool("progress", True, "Show a progress bar per epoch (on a terminal).",
                      flag_values=flag_values)
    flags.DEFINE_string("seeds", "", "Sweep: comma-separated seeds, e.g. 0,1,2,3,4 (replaces --seed).",
                        flag_values=flag_values)
    flags.DEFINE_string("pairs", "", "Sweep: comma-separated pri:aux pairs, e.g. 3:10,3:20,10:100 "
                                     "(replaces --pri and --aux).", flag_values=flag_values)
    flags.DEFINE_string("entropy_weights", "", "Sweep: comma-separated entropy weights, e.g. 0.2,0 "
                                               "(replaces --entropy_weight; maxl only).",
                        flag_values=flag_values)


def configs_from_flags(flag_values=flags.FLAGS) -> list:
    """The validated runs the flags ask for: one, or a sweep's product (several share --logdir
    as their parent)."""
    base = cli.config_from_flags(flag_values)
    configs = sweep.expand(base, seeds=sweep.parse_seeds(flag_values.seeds),
                           pairs=sweep.parse_pairs(flag_values.pairs),
                           entropy_weights=sweep.parse_entropy_weights(flag_values.entropy_weights))
    return [config_lib.validate(config) for config in configs]


def _print_table(all_results) -> None:
    epochs = max(r["config"]["epochs"] for r in all_results)
    print(f"\n| method | {rundir.metric_name(epochs)} | final epoch | epochs |")
    print("|---|---|---|---|")
    for r in all_results:
        print(f"| {r['config']['method']} | {r['test_accuracy']:.4f} | "
              f"{r['history'][-1]['test/acc']:.4f} | {r['epochs_completed']} |")


def main(argv):
    if len(argv) > 1:
        raise errors.Error(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
    configs = configs_from_flags()   # every run's flags, checked before anything starts
    cli.start_tensorflow(configs[0].deterministic)
    from maxl_tf import train  # TensorFlow and the models: only once the flags are known to be good

    all_results = []
    for number, config in enumerate(configs, 1):
        start = time.perf_counter()
        try:
            results = rundir.completed_results(config)
            if results is not None:
                outcome = "skipped (complete)"
            else:
                outcome = "done (resumed)" if rundir.holds_training(config.logdir) else "done"
                results = train.train_and_evaluate(config, progress=flags.FLAGS.progress and sys.stdout.isatty())
        except errors.Error as e:
            cli.fail(e, context=config.name if len(configs) > 1 else "")
        all_results.append(results)
        print(f"[{number}/{len(configs)}] {config.name}: {outcome}, {rundir.metric_name(config.epochs)} "
              f"{results['test_accuracy']:.4f}, {time.perf_counter() - start:.0f} s; results in "
              f"{config.logdir}/results.json", flush=True)
    if len({(c.seed, c.pri, c.aux, c.entropy_weight) for c in configs}) > 1:   # more than methods
        print("\n" + report.markdown_table(report.group_runs(all_results)))
        print(f"Figures: python -m maxl_tf.report {flags.FLAGS.logdir or 'runs'}")
    else:
        _print_table(all_results)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
