"""Sweeps: the expansion of list flags into runs, the presets, and a real sweep through main.py."""

import contextlib
import dataclasses
import io
import json
import os
import threading
import time

from absl import flags
import matplotlib.image
import pytest
import tensorflow as tf

from maxl_tf import cli
from maxl_tf import errors
from maxl_tf import main
from maxl_tf import report
from maxl_tf.experiment import claims
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import rundir
from maxl_tf.experiment import sweep
from tests import smoke_util


def _preset(name: str, *extra) -> list:
    """A flags/ preset's runs, parsed and expanded as main.py does."""
    flag_values = flags.FlagValues()
    main.define_flags(flag_values)
    flag_values(["main.py", f"--flagfile={os.path.join(smoke_util.REPO, 'flags', name)}", *extra])
    return sweep.expand(
        cli.config_from_flags(flag_values),
        seeds=sweep.parse_seeds(flag_values.seeds),
        pairs=sweep.parse_pairs(flag_values.pairs),
        entropy_weights=sweep.parse_entropy_weights(flag_values.entropy_weights),
    )


class ParseTest(tf.test.TestCase):
    def test_lists(self):
        self.assertEqual(sweep.parse_seeds("0, 1,2"), (0, 1, 2))
        self.assertEqual(sweep.parse_seeds(""), ())
        self.assertEqual(sweep.parse_entropy_weights("0.2,0"), (0.2, 0.0))
        self.assertEqual(sweep.parse_pairs("3:10,20:100"), ((3, 10), (20, 100)))

    def test_bad_lists_name_the_flag(self):
        for parse, text, message in (
            (sweep.parse_seeds, "0,x", "--seeds=0,x"),
            (sweep.parse_entropy_weights, "0.2,none", "--entropy_weights=0.2,none"),
            (sweep.parse_pairs, "3-10", "--pairs=3-10: must be comma-separated pri:aux"),
            (sweep.parse_pairs, "3:10:20", "--pairs=3:10:20"),
        ):
            with self.assertRaisesRegex(errors.Error, message):
                parse(text)


class ExpandTest(tf.test.TestCase):
    def test_one_run_keeps_its_logdir(self):
        base = config_lib.Config(logdir="/tmp/x")
        [run] = sweep.expand(base)
        self.assertEqual(run.config, config_lib.resolve(base).config)
        self.assertEqual(run.config.logdir, "/tmp/x")

    def test_product_without_runs_that_ignore_a_value(self):
        base = config_lib.Config(dataset="cifar10", pri=10, aux=50, method="maxl,single,random", logdir="out")
        runs = sweep.expand(base, seeds=(0, 1), pairs=((10, 20), (10, 50)), entropy_weights=(0.2, 0.0))
        configs = [run.config for run in runs]
        # Per seed: maxl 2 aux x 2 entropy, random 2 aux (no generator), single once (no aux task).
        self.assertLen(configs, 14)
        self.assertEqual(
            [run.name for run in runs[:7]],
            [
                "cifar10_pri10_aux20_maxl_seed0",
                "cifar10_pri10_aux20_single_seed0",
                "cifar10_pri10_aux20_random_seed0",
                "cifar10_pri10_aux20_maxl_entropy0_seed0",
                "cifar10_pri10_aux50_maxl_seed0",
                "cifar10_pri10_aux50_random_seed0",
                "cifar10_pri10_aux50_maxl_entropy0_seed0",
            ],
        )
        self.assertEqual([c.seed for c in configs], [0] * 7 + [1] * 7)  # seeds outermost
        self.assertEqual({c.logdir for c in configs}, {os.path.join("out", run.name) for run in runs})
        self.assertEqual(configs[1].entropy_weight, 0.2)  # the baselines keep the first value

    def test_only_maxl_runs_differ_by_their_hypergradient(self):
        base = config_lib.Config(dataset="digits", pri=2, aux=10)
        for fields in (
            dict(hypergradient="implicit"),
            dict(hypergradient="implicit", neumann_terms=5),
            dict(meta_every=10),
        ):
            with self.subTest(**fields):
                for method in ("single", "human", "random", "prototypical"):
                    baseline = dataclasses.replace(base, method=method)
                    self.assertEqual(
                        sweep.experiment_key(dataclasses.replace(baseline, **fields)), sweep.experiment_key(baseline)
                    )
                self.assertNotEqual(
                    sweep.experiment_key(dataclasses.replace(base, **fields)), sweep.experiment_key(base)
                )

    def test_a_sweep_defaults_to_runs(self):
        runs = sweep.expand(config_lib.Config(), seeds=(3, 4))
        self.assertEqual(
            [run.config.logdir for run in runs],
            ["runs/cifar100_pri20_aux100_maxl_seed3", "runs/cifar100_pri20_aux100_maxl_seed4"],
        )


class PresetTest(tf.test.TestCase):
    """Each paper preset expands to the runs its header counts, each resolved (its flags checked)."""

    def test_presets(self):
        for name, runs, first_seed_names in (
            ("fig3_sweep.cfg", 27, None),
            ("fig4_cifar10_sweep.cfg", 19, None),
            ("fig4_cifar10_1_sweep.cfg", 19, None),
            (
                "digits_sweep.cfg",
                25,
                ["digits_pri2_aux10_" + m + "_seed0" for m in ("maxl", "single", "human", "random", "prototypical")],
            ),
        ):
            with self.subTest(name):
                expanded = _preset(name)
                self.assertLen(expanded, runs)
                if first_seed_names:
                    self.assertEqual([run.name for run in expanded[:5]], first_seed_names)
        quick = [run.config for run in _preset("fashion_mnist_quick.cfg")]
        self.assertLen(quick, 40)  # 5 methods x 8 seeds
        self.assertEqual({c.psi for c in quick}, {(3, 1, 1, 1, 1, 3)})
        self.assertEqual({c.method for c in quick}, {"maxl", "single", "human", "random", "prototypical"})
        wide = [run.config for run in _preset("fashion_mnist_10x30.cfg")]
        self.assertLen(wide, 24)  # maxl, single, random x 8 seeds
        self.assertEqual({c.psi for c in wide}, {(3,) * 10})
        fig3 = [run.config for run in _preset("fig3_sweep.cfg")]
        self.assertEqual(
            sorted({(c.pri, c.aux) for c in fig3 if c.method == "human"}),
            [(3, 10), (3, 20), (3, 100), (10, 20), (10, 100), (20, 100)],
        )
        self.assertEqual(sorted(c.pri for c in fig3 if c.method == "single"), [3, 10, 20])
        fig4 = [run.config for run in _preset("fig4_cifar10_sweep.cfg")]
        self.assertEqual(
            sorted((c.aux, c.entropy_weight) for c in fig4 if c.method == "maxl"),
            [(a, w) for a in (20, 50, 100, 200, 500, 1000) for w in (0.0, 0.2)],
        )


class CompletedResultsTest(tf.test.TestCase):
    def test_only_a_complete_run_of_the_same_experiment_is_skipped(self):
        config = config_lib.Config(dataset="digits", pri=2, aux=10, logdir=self.get_temp_dir() + "/run")
        os.makedirs(config.logdir)
        path = os.path.join(config.logdir, "results.json")

        def write(text):
            with open(path, "w") as f:
                f.write(text)

        self.assertIsNone(rundir.completed_results(config))  # no file
        results = json.loads(json.dumps({"config": dataclasses.asdict(config), "complete": True, "test_accuracy": 0.5}))
        write(json.dumps(results))
        self.assertEqual(rundir.completed_results(config), results)
        self.assertEqual(rundir.completed_results(dataclasses.replace(config, log_every=3)), results)  # bookkeeping
        self.assertIsNone(rundir.completed_results(dataclasses.replace(config, epochs=3)))
        write(json.dumps(dict(results, complete=False)))
        self.assertIsNone(rundir.completed_results(config))
        write("{not json")
        self.assertIsNone(rundir.completed_results(config))


def complete_run(config: config_lib.Config, identity: dict, recorded: dict | None = None) -> None:
    """A complete run of config in its logdir, as train.train_and_evaluate leaves one (without
    training): config.json and results.json recording `recorded` (default: identity) as its data,
    and stand-in exports with their manifest."""
    recorded = identity if recorded is None else recorded
    rundir.create(config, recorded)
    history = [{"test/acc": 0.5}] * config.epochs
    name = os.path.basename(config.logdir)
    rundir.write_results(config.logdir, rundir.results_summary(config, name, history, "digits", identity=recorded))
    staging = os.path.join(config.logdir, "exports.tmp")
    os.makedirs(os.path.join(staging, rundir.SERVING))
    for name in (rundir.EVALUATOR, rundir.CLASSES, os.path.join(rundir.SERVING, "saved_model.pb")):
        with open(os.path.join(staging, name), "w") as f:
            f.write("stand-in for an export " * 10)
    rundir.publish_exports(config.logdir, staging)
    assert rundir.exports_intact(config)


def truncate_evaluator(config: config_lib.Config) -> None:
    with open(os.path.join(config.logdir, rundir.EVALUATOR), "r+") as f:
        f.truncate(10)


def other_data(identity: dict) -> dict:
    """A record of other data than identity (the folder changed, another version of the set)."""
    return dict(identity, version="0.0") if "version" in identity else dict(identity, images=-1)


class SkipDecisionTest(tf.test.TestCase):
    """sweep.finished decides for the serial sweep, its workers and Ray's driver (ray_engine_test):
    a run is skipped only when complete on the same data with its exports whole."""

    def setUp(self):
        super().setUp()
        self.resolved = config_lib.resolve(
            smoke_util.smoke_config(os.path.join(self.get_temp_dir(), self._testMethodName), method="single", epochs=1)
        )
        self.config, self.identity = self.resolved.config, self.resolved.identity
        self.trained = []

    def _train(self, run, claim=None):
        """train.train_and_evaluate's stand-in: records the call; the run (its exports) repaired."""
        self.trained.append((run.config.logdir, claim is not None))
        return rundir.completed_results(run.config, self.identity)

    def _sweep(self, worker=None) -> str:
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            sweep.run([self.resolved], self._train, worker)
        return output.getvalue()

    def test_a_whole_run_is_skipped_by_the_serial_sweep_and_a_worker(self):
        complete_run(self.config, self.identity)
        for worker in (None, claims.Worker(60)):
            self.assertIn("[1/1] digits_pri2_aux10_single_seed0: skipped (complete)", self._sweep(worker))
        self.assertEqual(self.trained, [])
        self.assertFalse(os.path.exists(claims.claims_dir(self.config.logdir)))  # nothing claimed

    def test_a_truncated_export_is_rewritten_not_skipped(self):
        complete_run(self.config, self.identity)
        truncate_evaluator(self.config)
        self.assertIsNone(sweep.finished(self.resolved))
        self.assertRegex(self._sweep(), r"\[1/1\] digits_pri2_aux10_single_seed0: done \(resumed\)")
        self.assertRegex(self._sweep(claims.Worker(60)), r"done \(resumed\)")
        self.assertEqual(self.trained, [(self.config.logdir, False), (self.config.logdir, True)])

    def test_a_run_on_other_data_is_refused_not_skipped(self):
        complete_run(self.config, self.identity, recorded=other_data(self.identity))
        self.assertIsNone(sweep.finished(self.resolved))
        for worker in (None, claims.Worker(60)):
            with self.assertRaisesRegex(errors.Error, r"holds a run on other data"):
                self._sweep(worker)
        self.assertEqual(self.trained, [])
        self.assertFalse(os.path.exists(claims.claims_dir(self.config.logdir)))  # refused before claiming

    def test_a_waiting_worker_repairs_a_released_run_it_would_not_skip(self):
        """Another worker holds the run, then releases it with its exports cut short: the waiting
        worker takes it (the decision of its first pass), not "done by another worker"."""
        complete_run(self.config, self.identity)
        truncate_evaluator(self.config)
        held = claims.Worker(0.4, worker_id="other").claim(self.config.logdir)
        release = threading.Timer(0.5, held.release)
        release.start()
        try:
            output = self._sweep(claims.Worker(0.4))
        finally:
            release.cancel()
            held.release()
        self.assertIn("[1/1] digits_pri2_aux10_single_seed0: held by another worker", output)
        self.assertIn("[1/1] digits_pri2_aux10_single_seed0: done (resumed)", output)
        self.assertNotIn("done by another worker", output)
        self.assertEqual(self.trained, [(self.config.logdir, True)])


@pytest.mark.slow
class SweepCommandTest(tf.test.TestCase):
    """2 methods x 2 seeds of the smoke preset through main.py, then a report of it."""

    def test_sweep_skips_complete_runs_and_stops_at_an_error(self):
        root = os.path.join(self.get_temp_dir(), "sweep")
        args = (
            f"--flagfile={smoke_util.SMOKE_FLAGFILE}",
            "--epochs=1",
            "--method=single,random",
            "--noexport",
            f"--logdir={root}",
        )
        first = smoke_util.run_main(*args, "--seeds=0")
        self.assertEqual(first.returncode, 0, first.stderr[-2000:])
        progress = [line for line in first.stdout.splitlines() if line.startswith("[")]
        self.assertLen(progress, 2)
        self.assertRegex(progress[0], r"^\[1/2\] digits_pri2_aux10_single_seed0: done, test accuracy .* \d\.\d{4}")
        # One seed: a table of the runs, a row per method.
        rows = [line for line in first.stdout.splitlines() if line.startswith("| ") and "method" not in line]
        self.assertEqual([row.split("|")[1].strip() for row in rows], ["single", "random"])

        # More seeds: the complete runs are skipped, nothing is built for them, the rest train.
        second = smoke_util.run_main(*args, "--seeds=0,1")
        self.assertEqual(second.returncode, 0, second.stderr[-2000:])
        self.assertLen([line for line in second.stdout.splitlines() if "skipped (complete)" in line], 2)
        self.assertRegex(second.stdout, r"\[4/4\] digits_pri2_aux10_random_seed1: done,")
        self.assertEqual(second.stdout.count("starting"), 2)
        # The sweep prints the paired comparison of its methods over its seeds.
        self.assertRegex(second.stdout, r"\| random − single \| [+-]\d\.\d{4} \| \[[^]]+\] \| \d / \d / \d \| 2 \|")

        # A run that cannot start stops the sweep with one error line; what ran before is kept,
        # and nothing is built or trained for it.
        blocker = os.path.join(root, "digits_pri2_aux10_single_seed2")
        os.makedirs(blocker)
        open(os.path.join(blocker, "notes.txt"), "w").close()
        start = time.perf_counter()
        third = smoke_util.run_main(*args, "--seeds=0,1,2")
        self.assertEqual(third.returncode, 2)
        self.assertNotIn("Traceback", third.stderr)
        self.assertRegex(
            third.stderr, r"error: digits_pri2_aux10_single_seed2: --logdir=.* is not a maxl_tf log directory"
        )
        self.assertLen([line for line in third.stdout.splitlines() if "skipped (complete)" in line], 4)
        self.assertNotIn("starting", third.stdout)
        self.assertLess(time.perf_counter() - start, 30)

        out = os.path.join(self.get_temp_dir(), "report")
        text = report.write_report([root], out)
        accuracies = {}
        for seed in (0, 1):
            for method in ("single", "random"):
                with open(os.path.join(root, f"digits_pri2_aux10_{method}_seed{seed}", "results.json")) as f:
                    accuracies.setdefault(method, []).append(json.load(f)["test_accuracy"])
        rows = {row.split("|")[5].strip(): row for row in text.splitlines() if row.startswith("| digits")}
        self.assertEqual(set(rows), {"single", "random"})
        for method, values in accuracies.items():
            cells = [cell.strip() for cell in rows[method].split("|")]
            mean, std = (float(x) for x in cells[7].split(" ± "))
            # The table writes 4 decimals: half a unit of the last.
            self.assertAllClose(mean, sum(values) / 2, rtol=0, atol=5e-5)
            self.assertAllClose(std, abs(values[0] - values[1]) / 2**0.5, rtol=0, atol=5e-5)
            self.assertEqual(cells[8], "2")
        image = matplotlib.image.imread(os.path.join(out, "learning_curves_digits.png"))
        self.assertGreater(image.shape[0] * image.shape[1], 10000)


if __name__ == "__main__":
    tf.test.main()
