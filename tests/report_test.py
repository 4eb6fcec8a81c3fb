"""maxl_tf.report on runs directories written by hand: numbers, figures and errors."""

import dataclasses
import glob
import io
import json
import os
import re
from unittest import mock

import matplotlib.image
import numpy as np
import tensorflow as tf

from maxl_tf import report
from maxl_tf.experiment import config as config_lib
from tests import smoke_util


def fake_run(
    root,
    method,
    seed,
    accuracies,
    aux=10,
    entropy_weight=0.2,
    complete=True,
    dataset="digits",
    pri=2,
    used=None,
    entropy=None,
    epoch_seconds=None,
    **other_fields,
):
    """Writes a results.json as train.py does; the last 5 epochs' mean is test_accuracy.
    other_fields: any other Config field (lr, embedder, ...)."""
    config = config_lib.Config(
        dataset=dataset,
        pri=pri,
        aux=aux,
        method=method,
        seed=seed,
        entropy_weight=entropy_weight,
        epochs=len(accuracies) + (0 if complete else 1),
        **other_fields,
    )
    psi = [aux // pri] * pri
    history = []
    for epoch, accuracy in enumerate(accuracies):
        record = {"epoch": epoch + 1, "test/acc": accuracy}
        if method != "single":
            record["labels/aux_used_per_pri"] = used or psi
            record["labels/aux_entropy_mean"] = 1.0 if entropy is None else entropy
        if method == "maxl":
            record["labels/changed_since_previous"] = 0.5 / (epoch + 1)
        if epoch_seconds is not None:
            record["perf/epoch_seconds"] = epoch_seconds
        history.append(record)
    name = config_lib.run_name(config, dataset, default_psi=tuple(psi))
    logdir = os.path.join(root, name)
    os.makedirs(logdir)
    results = {
        "name": name,
        "config": dataclasses.asdict(config),
        "psi": psi,
        "complete": complete,
        "epochs_completed": len(accuracies),
        "test_accuracy": float(np.mean(accuracies[-5:])),
        "history": history,
    }
    with open(os.path.join(logdir, "results.json"), "w") as f:
        json.dump(results, f)
    return results["test_accuracy"]


def _rows(text):
    """{(method, aux, entropy): cells} of the markdown table."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| digits") or line.startswith("| cifar10"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[(cells[4], cells[2], cells[5])] = cells
    return rows


def _run_main(*args):
    """python -m maxl_tf.report as a user runs it; it must never import TensorFlow."""
    code, stdout, stderr, tensorflow_imported = smoke_util.run_recording_imports("maxl_tf.report", *args)
    assert not tensorflow_imported, f"python -m maxl_tf.report imported TensorFlow: {stderr[-2000:]}"
    return code, stdout, stderr


class TableTest(tf.test.TestCase):
    def test_mean_std_and_seed_counts(self):
        root = self.get_temp_dir() + "/runs"
        maxl = [fake_run(root, "maxl", seed, [0.5] * 3 + [0.8 + 0.01 * seed] * 5) for seed in range(3)]
        single = [fake_run(root, "single", seed, [0.7] * 8) for seed in range(2)]
        # single-task ignores --aux: a run named aux 20 is the same experiment, a third seed.
        single.append(fake_run(root, "single", 2, [0.9] * 8, aux=20))
        fake_run(root, "random", 0, [0.6, 0.6], complete=False)
        code, stdout, _ = _run_main(root, f"--out={self.get_temp_dir()}/out")
        self.assertEqual(code, 0)
        rows = _rows(stdout)
        self.assertEqual(set(rows), {("maxl", "10", "0.2"), ("single", "–", "–")})
        self.assertEqual(rows[("maxl", "10", "0.2")][6], f"{np.mean(maxl):.4f} ± {np.std(maxl, ddof=1):.4f}")
        self.assertEqual(rows[("maxl", "10", "0.2")][6], "0.8100 ± 0.0100")
        self.assertEqual(rows[("maxl", "10", "0.2")][7], "3")
        self.assertEqual(rows[("single", "–", "–")][6], f"{np.mean(single):.4f} ± {np.std(single, ddof=1):.4f}")
        self.assertEqual(rows[("single", "–", "–")][7], "3")
        # The unfinished run is listed, not averaged.
        self.assertRegex(
            stdout, r"Incomplete runs[^\n]*\n\n- .*digits_pri2_aux10_random_seed0/results.json: 2/3 epochs"
        )
        with open(f"{self.get_temp_dir()}/out/report.md") as f:
            self.assertEqual(f.read().strip(), stdout.split("\nWrote ")[0].strip())

    def test_runs_of_other_settings_are_told_apart(self):
        root = self.get_temp_dir() + "/other"
        fake_run(root, "maxl", 0, [0.8] * 5)
        os.rename(f"{root}/digits_pri2_aux10_maxl_seed0", f"{root}/a")
        fake_run(root, "maxl", 0, [0.6] * 5, lr=0.1)  # the same run name: only --lr differs
        os.rename(f"{root}/digits_pri2_aux10_maxl_seed0", f"{root}/b")
        groups = report.group_runs(report.load_runs([root])[0])
        self.assertLen(groups, 2)
        self.assertIn("| other |", report.markdown_table(groups))
        self.assertIn("lr=0.1", report.markdown_table(groups))


class PairedTest(tf.test.TestCase):
    def test_paired_tables_and_duplicates(self):
        root = self.get_temp_dir() + "/paired"
        # Seeds 0..3. Single: 0.80, 0.82, 0.79, 0.81; MAXL: +0.02, +0.02, -0.01, 0 (a tie);
        # human 0.805 everywhere; random ran seeds 0 and 1 only.
        single = [0.80, 0.82, 0.79, 0.81]
        maxl = [0.82, 0.84, 0.78, 0.81]
        for seed in range(4):
            fake_run(root, "single", seed, [single[seed]] * 5)
            fake_run(root, "maxl", seed, [maxl[seed]] * 5)
            fake_run(root, "human", seed, [0.805] * 5)
        for seed in range(2):
            fake_run(root, "random", seed, [0.78] * 5)
        # A copy of maxl's seed 0 in another folder: one seed, not a second one.
        os.makedirs(f"{root}/copy")
        os.rename(f"{root}/digits_pri2_aux10_maxl_seed0", f"{root}/copy/digits_pri2_aux10_maxl_seed0")
        fake_run(root, "maxl", 0, [maxl[0]] * 5)
        text = report.write_report([root], self.get_temp_dir() + "/paired_out")

        rows = {}
        for line in text.splitlines():
            if " − " in line:
                cells = [c.strip() for c in line.strip("|").split("|")]
                rows[cells[0]] = cells[1:]
        self.assertIn("### digits: pri 2 (curved, straight), aux 10", text)
        # maxl - single: mean 0.0075, sd 0.015, half width t(0.975, 3) * 0.0075 = 0.023868.
        self.assertEqual(rows["maxl (entropy 0.2) − single"], ["+0.0075", "[-0.0164, +0.0314]", "2 / 1 / 1", "4"])
        # maxl - human: 0.015, 0.035, -0.025, 0.005: mean 0.0075.
        self.assertEqual(rows["maxl (entropy 0.2) − human"][0], "+0.0075")
        self.assertEqual(rows["maxl (entropy 0.2) − human"][2:], ["3 / 0 / 1", "4"])
        # maxl - random on seeds 0 and 1: 0.04 and 0.06.
        self.assertEqual(rows["maxl (entropy 0.2) − random"][0], "+0.0500")
        self.assertEqual(rows["maxl (entropy 0.2) − random"][2:], ["2 / 0 / 0", "2"])
        # human - single: 0.005, -0.015, 0.015, -0.005; random - single on two seeds.
        self.assertEqual(rows["human − single"][0], "+0.0000")
        self.assertEqual(rows["random − single"][0], "-0.0300")
        self.assertLen(rows, 5)
        # The copy counts once: 4 seeds in the table (deviations 0.0075, 0.0275, -0.0325, -0.0025 from
        # 0.8125: sd 0.025), and a note names both folders.
        self.assertRegex(text, r"\| maxl \| 0\.2 \| 0\.8125 ± 0\.0250 \| 4 \|")
        self.assertRegex(text, r"## Duplicate runs \(counted once\)")
        self.assertRegex(
            text,
            r"- maxl, seed 0: counted .*/copy/digits_pri2_aux10_maxl_seed0/results.json; not "
            r"counted .*paired/digits_pri2_aux10_maxl_seed0/results.json \(same test accuracy\)",
        )

    def test_untrained_prototypical_is_labelled_so(self):
        root = self.get_temp_dir() + "/proto"
        fake_run(root, "single", 0, [0.7] * 5)
        fake_run(root, "prototypical", 0, [0.72] * 5, embedder="untrained")
        text = report.write_report([root], self.get_temp_dir() + "/proto_out")
        self.assertIn("| prototypical (untrained embedder) − single | +0.0200 |", text)

    def test_single_seed_has_no_interval_and_no_duplicates_note(self):
        root = self.get_temp_dir() + "/one"
        fake_run(root, "single", 0, [0.7] * 5)
        fake_run(root, "maxl", 0, [0.75] * 5)
        text = report.write_report([root], self.get_temp_dir() + "/one_out")
        self.assertIn("| maxl (entropy 0.2) − single | +0.0500 | – (one seed) | 1 / 0 / 0 | 1 |", text)
        self.assertNotIn("Duplicate", text)


class TrainingTimeTest(tf.test.TestCase):
    def test_mean_training_time_per_run(self):
        root = self.get_temp_dir() + "/timed"
        fake_run(root, "maxl", 0, [0.8] * 8, epoch_seconds=2.0)  # 16 s of training
        fake_run(root, "maxl", 1, [0.8] * 8, epoch_seconds=3.0)  # 24 s
        fake_run(root, "single", 0, [0.7] * 8)  # no timings recorded
        rows = _rows(report.markdown_table(report.group_runs(report.load_runs([root])[0])))
        self.assertEqual(rows[("maxl", "10", "0.2")][9], "20 s")
        self.assertEqual(rows[("single", "–", "–")][9], "–")


class FigureTest(tf.test.TestCase):
    def test_panels_share_the_accuracy_axis(self):
        root = self.get_temp_dir() + "/shared"
        fake_run(root, "single", 0, [0.5] * 5)
        for aux, accuracy in ((10, 0.9), (20, 0.6)):
            fake_run(root, "maxl", 0, [accuracy] * 5, aux=aux)
        groups = report.group_runs(report.load_runs([root])[0])
        captured = {}
        with mock.patch.object(report, "_save", lambda fig, path: captured.setdefault("fig", fig) and path):
            report.plot_learning_curves(groups, self.get_temp_dir())
        axes = [ax for ax in captured["fig"].axes if ax.get_visible()]
        self.assertLen(axes, 2)
        self.assertEqual(axes[0].get_ylim(), axes[1].get_ylim())
        low, high = axes[0].get_ylim()
        self.assertLess(low, 0.5)
        self.assertGreater(high, 0.9)
        self.assertEqual(axes[0].get_title(), "digits: pri 2 (curved, straight), aux 10")

    @staticmethod
    def _visible_xticks(ax):
        low, high = ax.get_xlim()
        return [tick for tick in ax.get_xticks() if low <= tick <= high]

    def _figure(self, plot, groups):
        captured = []
        with mock.patch.object(report, "_save", lambda fig, path: captured.append(fig) or path):
            plot(groups, self.get_temp_dir())
        [fig] = captured
        return fig, [ax for ax in fig.axes if ax.get_visible()]

    def test_a_folder_run_of_one_epoch(self):
        """A visible marker with a ±1 std bar, whole epochs on the axis, the folder in the title,
        short legends, the band's meaning said, and a fraction's band that stops at 1."""
        root = self.get_temp_dir() + "/one_epoch"
        for seed, used in ((0, [2, 2]), (1, [2, 1])):  # classes used / psi: 1.0 and 0.75
            for hierarchy_file in ("", "/data/tree.json"):
                fake_run(
                    root + ("/tree" if hierarchy_file else "/flat"),
                    "maxl",
                    seed,
                    [0.8 + 0.01 * seed],
                    dataset="folder",
                    aux=4,
                    used=used,
                    data_dir="/data/my_images",
                    hierarchy=hierarchy_file,
                )
        groups = report.group_runs(report.load_runs([root])[0])
        fig, axes = self._figure(report.plot_learning_curves, groups)
        self.assertEqual(
            [ax.get_title() for ax in axes],
            [
                "folder my_images: pri 2, aux 4, no hierarchy",
                "folder my_images: pri 2, aux 4, hierarchy tree.json",
            ],
        )
        [marker] = axes[0].lines[:1]
        self.assertEqual(marker.get_marker(), "o")
        self.assertEqual(self._visible_xticks(axes[0]), [1.0])
        [legend] = fig.legends
        self.assertEqual(legend.get_title().get_text(), report.BAND_NOTE)
        self.assertIn("±1 std", report.BAND_NOTE)

        fig, axes = self._figure(report.plot_label_usage, groups)
        labels = [text.get_text() for text in fig.legends[0].get_texts()]
        self.assertEqual(
            labels,
            ["pri 2, aux 4, entropy 0.2, no hierarchy (n=2)", "pri 2, aux 4, entropy 0.2, hierarchy tree.json (n=2)"],
        )
        [bar, *_] = axes[0].containers
        _, _, (bar_lines,) = bar.lines
        # Clipped at 1; the std, 0.25 / sqrt(2), written to 4 decimals: half a unit of the last.
        self.assertAllClose(bar_lines.get_segments()[0][:, 1], [0.875 - 0.1768, 1.0], rtol=0, atol=5e-5)

        # Several epochs: a band, clipped at 1 as well, and whole epochs.
        root = self.get_temp_dir() + "/three_epochs"
        for seed, used in ((0, [2, 2]), (1, [2, 1])):
            fake_run(root, "maxl", seed, [0.7, 0.8, 0.8], aux=4, used=used)
        _, axes = self._figure(report.plot_label_usage, report.group_runs(report.load_runs([root])[0]))
        [band] = axes[0].collections
        self.assertLessEqual(band.get_paths()[0].vertices[:, 1].max(), 1.0)
        self.assertEqual(self._visible_xticks(axes[0]), [1.0, 2.0, 3.0])

    def test_figures_decode_and_fig4_numbers(self):
        root = self.get_temp_dir() + "/fig4"
        for seed in (0, 1):
            fake_run(root, "single", seed, [0.80] * 6, dataset="cifar10", pri=10, aux=20)
            for aux, gain in ((20, 0.02), (50, 0.04)):
                fake_run(root, "maxl", seed, [0.80 + gain] * 6, dataset="cifar10", pri=10, aux=aux)
                fake_run(
                    root,
                    "maxl",
                    seed,
                    [0.80 + gain / 2] * 6,
                    dataset="cifar10",
                    pri=10,
                    aux=aux,
                    entropy_weight=0.0,
                    used=[1] * 10,
                    entropy=0.1,
                )
        groups = report.group_runs(report.load_runs([root])[0])
        points = report.improvement_points(groups)
        self.assertAllClose(points[("cifar10", 0.2)], [(2, 2.5), (5, 5.0)])  # 100 * 0.02 / 0.8 ...
        self.assertAllClose(points[("cifar10", 0.0)], [(2, 1.25), (5, 2.5)])
        out = self.get_temp_dir() + "/fig4_out"
        text = report.write_report([root], out)
        for name in ("learning_curves_cifar10.png", "improvement_over_single.png", "label_usage.png"):
            image = matplotlib.image.imread(os.path.join(out, name))
            self.assertEqual(image.ndim, 3)
            self.assertGreater(image.shape[0], 100)
            self.assertIn(f"]({name})", text)

    def test_no_fig4_or_label_usage_without_such_runs(self):
        root = self.get_temp_dir() + "/baselines"
        fake_run(root, "single", 0, [0.7] * 5)
        fake_run(root, "random", 0, [0.7] * 5)
        out = self.get_temp_dir() + "/baselines_out"
        report.write_report([root], out)
        self.assertEqual(sorted(os.listdir(out)), ["learning_curves_digits.png", "report.md"])


class CurveTest(tf.test.TestCase):
    """--train_sizes runs: accuracy against size, and single-task at MAXL's training time."""

    def _curve(self, root):
        for size, base in ((500, 0.70), (2000, 0.80)):
            folder = os.path.join(root, f"n{size}")
            for seed in range(3):
                common = dict(max_train_examples=size, epoch_seconds=1.0)
                fake_run(folder, "single", seed, [base + 0.01 * seed] * 6, **common)
                fake_run(folder, "random", seed, [base + 0.01 * seed + 0.002] * 6, **common)
                fake_run(folder, "maxl", seed, [base + 0.01 * seed + 0.004 * (1 + seed)] * 6, used=[1, 5], **common)
                # 5x as long: 30 epochs of 1 s, better by 0.03 from epoch 11 on; MAXL's runs took 6 s.
                matched = [base + 0.01 * seed] * 10 + [base + 0.01 * seed + 0.03] * 20
                fake_run(os.path.join(root, "matched", f"n{size}"), "single", seed, matched, **common)

    def test_accuracy_against_size_with_intervals_and_the_time_matched_single(self):
        root = self.get_temp_dir()
        self._curve(root)
        text = report.write_report([root], os.path.join(root, "report"))
        self.assertIn("## Accuracy against training-set size", text)
        self.assertTrue(os.path.exists(os.path.join(root, "report", "curve_digits_pri2_aux10.png")))
        rows = [line for line in text.splitlines() if line.startswith("| 500 |")]
        # MAXL beats single by 0.004, 0.008, 0.012 over seeds 0-2: mean 0.008, std 0.004, t(2) = 4.303.
        maxl = next(r for r in rows if "| maxl (entropy 0.2) |" in r)
        half = 4.302653 * 0.004 / np.sqrt(3)
        self.assertIn(f"| +0.0080 [{0.008 - half:+.4f}, {0.008 + half:+.4f}] |", maxl)
        # At MAXL's 6 s the long single run is at epoch 6: its first 10 epochs are its plain accuracy.
        at_time = next(r for r in rows if "at maxl's time" in r and "−" not in r)
        self.assertIn("| +0.0000 [", at_time)
        self.assertIn("| 500 | maxl (entropy 0.2) − single, at maxl's time | +0.0080 |", text)

    def test_accuracy_at_time_reads_the_tested_epochs_up_to_it(self):
        run = {"history": [{"perf/epoch_seconds": 2.0, "test/acc": a} for a in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)]}
        self.assertAlmostEqual(report.accuracy_at_time(run, 12.0), np.mean([0.2, 0.3, 0.4, 0.5, 0.6]))
        self.assertAlmostEqual(report.accuracy_at_time(run, 1e9), np.mean([0.3, 0.4, 0.5, 0.6, 0.7]))
        del run["history"][5]["test/acc"]  # --eval_every skipped epoch 6
        self.assertAlmostEqual(report.accuracy_at_time(run, 12.0), np.mean([0.1, 0.2, 0.3, 0.4, 0.5]))

    def test_labels_health_counts_collapsing_epochs(self):
        root = self.get_temp_dir()
        self._curve(root)
        text = report.write_report([root], os.path.join(root, "report"))
        health = text[text.index("## The labels' health") :]
        # used [1, 5] of psi [5, 5]: class 0 collapsed in all 6 epochs; 60% of the classes used.
        self.assertRegex(health, r"\| maxl \(entropy 0.2\) \| digits: .* \| 1.000 \| 60% \| 6.0 of 6 \| – \|")
        self.assertRegex(health, r"\| random \| digits: .* \| 1.000 \| 100% \| 0.0 of 6 \| – \|")


class ErrorTest(tf.test.TestCase):
    def test_missing_empty_and_partial_directories_exit_2(self):
        empty = self.get_temp_dir() + "/empty"
        os.makedirs(empty)
        partial = self.get_temp_dir() + "/partial"
        fake_run(partial, "maxl", 0, [0.5], complete=False)
        for runs_dir, message in (
            (self.get_temp_dir() + "/nope", "is not a directory"),
            (empty, "has no readable results.json"),
            (partial, "has only incomplete runs:\n- .*maxl_seed0/results.json: 1/2 epochs"),
        ):
            with self.subTest(message):
                code, stdout, stderr = _run_main(runs_dir)
                self.assertEqual(code, 2)
                self.assertRegex(stderr, f"^error: {re.escape(runs_dir)} {message}")
                self.assertNotIn("Traceback", stderr)
                self.assertFalse(os.path.exists(os.path.join(runs_dir, "report")))

    def test_several_folders_make_one_report_given_out(self):
        # A sweep's baselines in one folder and a variant's runs in another: one table, paired.
        base, variant = self.get_temp_dir() + "/several/base", self.get_temp_dir() + "/several/variant"
        for seed in range(2):
            fake_run(base, "single", seed, [0.7] * 5)
            fake_run(variant, "maxl", seed, [0.72 + 0.02 * seed] * 5)
        code, _, stderr = _run_main(base, variant)
        self.assertEqual(code, 2)
        self.assertRegex(stderr, "^error: several folders of runs: pass --out=DIR")
        out = self.get_temp_dir() + "/several_out"
        code, stdout, stderr = _run_main(base, variant, f"--out={out}")
        self.assertEqual(code, 0, stderr)
        self.assertRegex(stdout, r"\| maxl \(entropy 0.2\) − single \| \+0.0300 \|")
        self.assertIn(f"# Results of {base}, {variant}", stdout)

    def test_a_tfds_config_name_makes_a_figure_file_name(self):
        """tfds:NAME/CONFIG has a '/' that must not reach a file name."""
        root = self.get_temp_dir() + "/tfds_config"
        fake_run(root, "maxl", 0, [0.5] * 5, dataset="tfds:beans/small", pri=3, aux=6)
        out = self.get_temp_dir() + "/tfds_config_out"
        report.write_report([root], out)
        self.assertTrue(os.path.isfile(f"{out}/learning_curves_tfds_beans_small.png"))

    def test_malformed_history_accuracy_or_psi_is_one_warning_naming_the_file(self):
        root = self.get_temp_dir() + "/malformed"
        fake_run(root, "maxl", 0, [0.5] * 5)
        damage = {
            "history_not_a_list": lambda r: r.update(history={"epoch": 1}),
            "record_not_a_dict": lambda r: r.update(history=[1, 2]),
            "accuracy_a_string": lambda r: r.update(test_accuracy="0.5"),
            "epoch_accuracy_missing": lambda r: r["history"][0].pop("test/acc"),
            "psi_zero": lambda r: r.update(psi=[0, 5]),
            "usage_of_other_psi": lambda r: r["history"][0].update({"labels/aux_used_per_pri": [1, 2, 3]}),
        }
        for seed, (name, damaged) in enumerate(damage.items(), 1):
            fake_run(root, "maxl", seed, [0.6] * 5)
            path = glob.glob(f"{root}/*seed{seed}/results.json")[0]
            with open(path) as f:
                results = json.load(f)
            damaged(results)
            os.rename(os.path.dirname(path), f"{root}/{name}")
            with open(f"{root}/{name}/results.json", "w") as f:
                json.dump(results, f)
        with mock.patch("sys.stderr", new_callable=io.StringIO) as stderr:
            text = report.write_report([root], self.get_temp_dir() + "/malformed_out")
        warnings = stderr.getvalue().splitlines()
        self.assertLen(warnings, len(damage))
        for name, warning in zip(sorted(damage), warnings):
            self.assertRegex(warning, rf"^warning: skipping {root}/{name}/results.json: unreadable \(.+\)\.$")
        self.assertIn("| digits | 2 | 10 | 5 | maxl | 0.2 | 0.5000 | 1 |", text)

    def test_unreadable_results_are_named_and_skipped(self):
        root = self.get_temp_dir() + "/damaged"
        fake_run(root, "maxl", 0, [0.5] * 5)
        os.makedirs(f"{root}/broken")
        with open(f"{root}/broken/results.json", "w") as f:
            f.write('{"config": ')
        code, stdout, stderr = _run_main(root)
        self.assertEqual(code, 0)
        self.assertRegex(stderr, r"warning: skipping .*broken/results.json: unreadable")
        self.assertLen(_rows(stdout), 1)


if __name__ == "__main__":
    tf.test.main()
