"""Finished runs -> a results table and the paper's figures: python -m maxl_tf.report RUNS... [--out=DIR]

Reads every results.json under the given folders (a sweep's --logdir, or run folders picked by a
shell glob), groups complete runs that differ only in their seed, and writes report.md (mean ± std
of the test accuracy over seeds: the mean of the last 5 epochs, the paper's metric; each method's
paired difference from single-task, and MAXL's from human and random, with a 95% interval over
seeds: maxl_tf/stats.py) and PNG figures: learning curves per setting (paper Fig. 3 / Fig. 7),
MAXL's improvement over single-task against auxiliary classes per principal class (Fig. 4), and the
generator's label usage per epoch (Section 3.4's collapsing classes). Incomplete runs are listed,
never averaged; a seed found twice in one experiment (a copied run) counts once, and the report
says so. It reads JSON only: TensorFlow is not imported.
"""

import collections
import dataclasses
import os
import re
import stat
import sys

import matplotlib

matplotlib.use("Agg")
from absl import flags
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

from maxl_tf import cli
from maxl_tf import errors
from maxl_tf import stats
from maxl_tf.core import label_health
from maxl_tf.core import methods
from maxl_tf.data import registry
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import rundir
from maxl_tf.experiment import sweep

# The fields a table row and a figure panel are named by; any other field that differs between
# groups is shown too, so runs of different experiments are never shown as one.
NAMED_FIELDS = ("dataset", "pri", "aux", "psi", "method", "entropy_weight")
# Fields that tell lines of one panel apart rather than panels.
LINE_FIELDS = ("method",) + methods.GENERATOR_FIELDS + ("meta_split",) + methods.EMBEDDER_FIELDS


@dataclasses.dataclass
class Group:
    """Complete runs of one experiment that differ only in their seed."""

    config: config_lib.Config  # the first run's; fields its method ignores are not in `setting`
    setting: dict  # experiment fields that decide the results, without the seed
    runs: list  # results.json contents, one per seed, by seed
    duplicates: list = dataclasses.field(default_factory=list)  # stats.Duplicate: runs not counted

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def accuracies(self) -> np.ndarray:
        return np.array([r["test_accuracy"] for r in self.runs])

    @property
    def by_seed(self) -> dict:
        return {r["config"]["seed"]: r["test_accuracy"] for r in self.runs}

    def curve(self, key: str, per_run=None) -> np.ndarray:
        """[seeds, epochs] of a history key, or of per_run(record, results) when given."""
        return np.array(
            [
                [per_run(record, r) if per_run else record.get(key, np.nan) for record in r["history"]]
                for r in self.runs
            ],
            dtype=np.float64,
        )


def load_runs(runs_dirs: list) -> tuple:
    """Every readable results.json under each of runs_dirs: (complete, incomplete, warnings)."""
    for runs_dir in runs_dirs:
        if not os.path.isdir(runs_dir):
            raise errors.Error(
                f"{runs_dir} is not a directory; pass the folder that holds the runs "
                f"(main.py's --logdir of a sweep, or runs)."
            )
    complete, incomplete, warnings = [], [], []
    walks = (step for runs_dir in runs_dirs for step in sorted(os.walk(runs_dir)))
    for folder, subfolders, files in walks:
        subfolders[:] = sorted(d for d in subfolders if d != "checkpoints")
        if "results.json" not in files:
            continue
        path = os.path.join(folder, "results.json")
        try:
            if not _is_regular_file(path):  # a FIFO would wait for a writer forever
                raise errors.Error(f"{path}: not a regular file (a pipe, socket or device)")
            results = rundir.read_results(path)
            problem = _malformed(results)
            if problem:
                raise errors.Error(f"{path}: unreadable ({problem})")
        except errors.Error as e:
            warnings.append(f"warning: skipping {e}.")
            continue
        results["path"] = path
        (complete if results["complete"] else incomplete).append(results)
    return complete, incomplete, warnings


def _is_regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True  # read_results names what is wrong with it


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _malformed(results: dict) -> str:
    """What in a results.json the tables and figures cannot use, or '' (a hand-edited or foreign
    file must cost a warning naming it, not the whole report)."""
    history = results.get("history")
    if results["complete"] and not history:
        return "complete but without a history"
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        return "history is not a list of per-epoch records"
    if results["complete"]:
        if not _is_number(results["test_accuracy"]):
            return f"test_accuracy is {results['test_accuracy']!r}, not a number"
        config = config_lib.Config.from_saved(results["config"])
        if not all(_is_number(r.get("test/acc")) for i, r in enumerate(history) if config.evaluates(i)):
            return "an epoch of its history has no numeric test/acc"  # one --eval_every tested
    psi = results.get("psi", [])
    if not isinstance(psi, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in psi):
        return f"psi is {psi!r}, not a list of positive class counts"
    for record in history:
        used = record.get("labels/aux_used_per_pri")
        if used is not None and (not isinstance(used, list) or len(used) != len(psi)):
            return f"labels/aux_used_per_pri {used!r} does not match psi {psi}"
    return ""


def group_runs(runs: list) -> list:
    """Complete runs grouped by experiment, seeds pooled (the first run of a seed, in the order
    given, counts; the others are kept in Group.duplicates); sorted by dataset, pri, aux, method."""
    groups = collections.OrderedDict()
    for results in runs:
        config = config_lib.Config.from_saved(results["config"])
        setting = {k: v for k, v in sweep.experiment_key(config) if k != "seed"}
        if results.get(rundir.DATA_KEY):  # runs of different data are different experiments
            setting["data"] = rundir.describe_data(results[rundir.DATA_KEY])
        key = tuple(sorted(setting.items()))
        if key not in groups:
            groups[key] = Group(config, setting, [])
        groups[key].runs.append(results)
    for group in groups.values():
        keep, group.duplicates = stats.unique_by_seed(
            [r["config"]["seed"] for r in group.runs],
            [r.get("path", r.get("name", "?")) for r in group.runs],
            [r["test_accuracy"] for r in group.runs],
        )
        group.runs = sorted((group.runs[i] for i in keep), key=lambda r: r["config"]["seed"])
    return sorted(
        groups.values(),
        key=lambda g: (g.config.dataset, g.config.pri, g.setting.get("aux", 0), g.method, -g.config.entropy_weight),
    )


def _varying(groups, exclude) -> list:
    """Experiment fields, other than `exclude`, whose value differs between some groups."""
    values = collections.defaultdict(set)
    for group in groups:
        for k, v in group.setting.items():
            values[k].add(v)
    return sorted(k for k, v in values.items() if len(v) > 1 and k not in exclude + ("seed",))


def _fields_text(setting: dict, fields) -> str:
    """'lr=0.1 no hierarchy': the settings `fields` tell apart (an empty one as 'no <field>')."""
    return " ".join(f"no {k}" if setting[k] in ("", ()) else f"{k}={setting[k]}" for k in fields if k in setting)


def _others(group, fields) -> str:
    return _fields_text(group.setting, fields)


def _psi_text(group) -> str:
    if "aux" not in group.setting:
        return "–"
    psi = group.runs[0].get("psi") or []
    return str(psi[0]) if psi and len(set(psi)) == 1 else ",".join(map(str, psi))


def _short(key: str, value) -> str:
    """A setting as a figure's legend shows it: 'no hierarchy' for an empty one, a file by its
    name, a number without trailing zeros."""
    if value in ("", ()):
        return f"no {key}"
    if isinstance(value, str) and os.sep in value:
        value = os.path.basename(value)
    return f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"


def _label(group, line_fields, short: bool = False) -> str:
    """How tables (and, short, figure legends) name a group among the others of its setting."""
    label = group.method
    if group.setting.get("embedder") == config_lib.UNTRAINED:  # not the paper's ImageNet baseline
        label += " (untrained embedder)"
    if "entropy_weight" in group.setting:
        label += f" (entropy {group.setting['entropy_weight']:g})"
    if short:
        others = ", ".join(_short(k, group.setting[k]) for k in line_fields if k in group.setting)
        return f"{label}, {others}" if others else label
    others = _others(group, line_fields)
    return f"{label} {others}" if others else label


def _data_name(config: config_lib.Config) -> str:
    """The data a figure panel shows: your folder by its name, else the data set's name."""
    if config.dataset == "folder":
        return f"folder {os.path.basename(os.path.normpath(config.data_dir)) or config.data_dir}"
    return config.dataset


def _training_seconds(group) -> str:
    """Mean over seeds of a run's training time (its epochs' perf/epoch_seconds, without the test
    passes): what a method costs, beside what it gives."""
    seconds = [sum(r.get("perf/epoch_seconds", np.nan) for r in run["history"]) for run in group.runs]
    return "–" if np.isnan(seconds).any() else f"{np.mean(seconds):.0f} s"


def markdown_table(groups: list) -> str:
    """One row per experiment: mean ± sample std (ddof 1) of test_accuracy over its seeds, and the
    mean training time of a run."""
    others = _varying(groups, NAMED_FIELDS)
    header = [
        "dataset",
        "pri",
        "aux",
        "psi[i]",
        "method",
        "entropy",
        "test accuracy (mean ± std)",
        "seeds",
        "epochs",
        "training time per run",
    ] + (["other"] if others else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in groups:
        acc = g.accuracies
        spread = f" ± {acc.std(ddof=1):.4f}" if len(acc) > 1 else ""
        row = [
            g.config.dataset,
            str(g.config.pri),
            str(g.setting.get("aux", "–")),
            _psi_text(g),
            g.method,
            f"{g.setting['entropy_weight']:g}" if "entropy_weight" in g.setting else "–",
            f"{acc.mean():.4f}{spread}",
            str(len(acc)),
            str(g.config.epochs),
            _training_seconds(g),
        ]
        lines.append("| " + " | ".join(row + ([_others(g, others)] if others else [])) + " |")
    return "\n".join(lines) + "\n"


def _setting_title(setting: dict, data: str = "") -> str:
    """'fashion_mnist: pri 2 (clothes, goods), aux 10': principal classes named where few; `data`
    names the data in place of the data set's name (your folder's)."""
    dataset, pri = setting["dataset"], setting["pri"]
    names = ""
    if pri <= 6 and dataset in registry.names() and not registry.is_user_data(dataset):  # no folder is listed
        levels = registry.get(dataset).levels()
        if pri in levels.levels:
            names = f" ({', '.join(levels.names_at(pri))})"
    return f"{data or dataset}: pri {pri}{names}, aux {setting.get('aux', '–')}"


def _signed(x: float) -> str:
    return f"{x:+.4f}"


def paired_tables(groups: list) -> str:
    """Per setting, each method minus single-task and MAXL minus human and random, paired by
    seed (stats.comparisons): mean difference, its 95% interval, wins / ties / losses."""
    arms = [stats.Arm(g.method, g.setting, g.by_seed) for g in groups]
    group_of = {id(arm): group for arm, group in zip(arms, groups)}
    line_fields = [k for k in _varying(groups, ()) if k in LINE_FIELDS and k != "method"]
    by_setting = collections.OrderedDict()
    for row in stats.comparisons(arms):
        panel = {k: v for k, v in row.arm.setting.items() if k not in LINE_FIELDS}
        by_setting.setdefault(tuple(sorted(panel.items())), (panel, []))[1].append(row)
    others = [k for k in _varying(groups, NAMED_FIELDS) if k not in LINE_FIELDS]
    blocks = []
    for panel, rows in by_setting.values():
        title = f"{_setting_title(panel)} {_fields_text(panel, others)}".strip()
        lines = [
            f"### {title}",
            "",
            "| comparison | mean difference | 95% interval | wins / ties / losses | seeds |",
            "|---|---|---|---|---|",
        ]
        for row in rows:
            c = row.comparison
            interval = f"[{_signed(c.interval[0])}, {_signed(c.interval[1])}]" if c.interval else "– (one seed)"
            lines.append(
                f"| {_label(group_of[id(row.arm)], line_fields)} − "
                f"{_label(group_of[id(row.baseline)], line_fields)} | {_signed(c.mean)} | {interval} | "
                f"{c.wins} / {c.ties} / {c.losses} | {c.pairs} |"
            )
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def duplicates_note(groups: list) -> str:
    """The runs not counted because their experiment and seed were already there, or ''."""
    lines = []
    for group in groups:
        for d in group.duplicates:
            same = (
                "same test accuracy"
                if d.same_accuracy
                else "DIFFERENT test accuracy: not deterministic, or not run by the same code"
            )
            lines.append(
                f"- {group.method}, seed {d.seed}: counted {d.kept}; not counted {', '.join(d.dropped)} ({same})"
            )
    return "\n".join(lines) + "\n" if lines else ""


def _matches(group, panel: dict) -> bool:
    return all(group.setting.get(k, v) == v for k, v in panel.items())


def _panels(groups) -> list:
    """Panel settings (every field but the line fields); single-task joins each panel it fits."""
    panels = []
    for group in sorted(groups, key=lambda g: "aux" not in g.setting):
        panel = {k: v for k, v in group.setting.items() if k not in LINE_FIELDS}
        if not any(_matches(group, p) for p in panels):
            panels.append(panel)
    return panels


# What a line and its band are, said in every figure that draws them.
BAND_NOTE = "lines: mean over seeds (n); shaded band (one epoch: bar): ±1 std over seeds"


def _band(ax, x, values, label, limits=None, **style):
    """Mean over seeds with a ±1 std band (none for one seed), within `limits` (a fraction's
    band stops at 1). A run of one epoch is a marker with an error bar: a line needs two points."""
    tested = ~np.all(np.isnan(values), axis=0)  # epochs --eval_every skipped draw no point
    x, values = np.asarray(x)[tested], np.asarray(values)[:, tested]
    mean = np.nanmean(values, axis=0)
    std = np.nanstd(values, axis=0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
    low, high = mean - std, mean + std
    if limits:
        low, high = np.clip(low, *limits), np.clip(high, *limits)
    if len(x) == 1:
        ax.errorbar(x, mean, yerr=[mean - low, high - mean], label=label, marker="o", capsize=3, **style)
        return
    (line,) = ax.plot(x, mean, label=label, **style)
    if len(values) > 1:
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)


def _epoch_axis(ax) -> None:
    """Whole epochs only: a short run would get ticks at 1.25, 1.5."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, min_n_ticks=1))


def _grid(n, sharey=False):
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(max(7, 5 * cols), 3.8 * rows + 1), squeeze=False, sharey=sharey, layout="constrained"
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _figure_legend(fig, axes) -> None:
    """One legend below the panels for every line any panel draws (a legend inside a panel would
    hide its curves), titled with what the lines and bands are."""
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(
        handles.values(),
        handles.keys(),
        loc="outside lower center",
        ncol=2 if len(handles) > 4 else 1,
        fontsize=8,
        title=BAND_NOTE,
        title_fontsize=8,
    )


def _file_name(text: str) -> str:
    """text as part of a file name: tfds:NAME/CONFIG -> tfds_NAME_CONFIG."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _save(fig, path) -> str:
    if not fig.get_constrained_layout():
        fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_learning_curves(groups, out) -> list:
    """Paper Fig. 3 / Fig. 7: test accuracy per epoch, one panel per setting, one line per method;
    the panels of a data set share their accuracy axis, so their heights compare."""
    paths = []
    line_fields = [k for k in _varying(groups, ()) if k in LINE_FIELDS and k not in ("method", "entropy_weight")]
    for dataset in sorted({g.config.dataset for g in groups}):
        in_dataset = [g for g in groups if g.config.dataset == dataset]
        panels = _panels(in_dataset)
        title_fields = [k for k in _varying(in_dataset, ("dataset", "pri", "aux", "psi")) if k not in LINE_FIELDS]
        fig, axes = _grid(len(panels), sharey=True)
        # One colour per legend entry across the panels (a method keeps its colour everywhere).
        labels = {id(g): f"{_label(g, line_fields, short=True)} (n={len(g.runs)})" for g in in_dataset}
        colours = {label: f"C{i % 10}" for i, label in enumerate(dict.fromkeys(labels.values()))}
        for ax, panel in zip(axes, panels):
            for group in (g for g in in_dataset if _matches(g, panel)):
                accuracy = group.curve("test/acc")
                label = labels[id(group)]
                dashed = group.setting.get("entropy_weight") == 0  # MAXL without the entropy term
                style = {"color": colours[label], "linestyle": "--" if dashed else "-"}
                _band(ax, np.arange(1, accuracy.shape[1] + 1), accuracy, label, **style)
            data = _data_name(next(g for g in in_dataset if _matches(g, panel)).config)
            title = _setting_title(panel, data)
            others = ", ".join(_short(k, panel[k]) for k in title_fields if k in panel)
            ax.set_title(f"{title}, {others}" if others else title, fontsize=10)
            _epoch_axis(ax)
            ax.set_ylabel("test accuracy")
            ax.yaxis.set_tick_params(labelleft=True)  # sharey hides them on all but the first column
            ax.grid(alpha=0.3)
        _figure_legend(fig, axes)
        paths.append(_save(fig, os.path.join(out, f"learning_curves_{_file_name(dataset)}.png")))
    return paths


def improvement_points(groups) -> dict:
    """Fig. 4's data: {(dataset, entropy weight): [(aux per principal class, % improvement)]}.

    The improvement is relative, 100 * (maxl - single) / single, of the seed means of
    test_accuracy, against the single-task group of the same setting.
    """
    series = collections.defaultdict(list)
    singles = [g for g in groups if not methods.get(g.method).auxiliary]
    for group in (g for g in groups if methods.get(g.method).learned):
        panel = {k: v for k, v in group.setting.items() if k not in LINE_FIELDS}
        single = next((s for s in singles if _matches(s, panel)), None)
        if single is None:
            continue
        base = single.accuracies.mean()
        series[(group.config.dataset, group.setting["entropy_weight"])].append(
            (group.config.aux / group.config.pri, 100 * (group.accuracies.mean() - base) / base)
        )
    return {k: sorted(v) for k, v in series.items()}


def plot_improvement(groups, out) -> list:
    """Paper Fig. 4, when MAXL and single-task runs exist at two or more auxiliary sizes."""
    series = improvement_points(groups)
    if not any(len({x for x, _ in points}) > 1 for points in series.values()):
        return []
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = {dataset: f"C{i}" for i, dataset in enumerate(sorted({d for d, _ in series}))}
    for (dataset, entropy_weight), points in sorted(series.items()):
        x, y = zip(*points)
        ax.plot(
            x,
            y,
            marker="o",
            color=colors[dataset],
            linestyle="-" if entropy_weight else "--",
            label=f"{dataset} {'w/' if entropy_weight else 'w/o'} entropy ({entropy_weight:g})",
        )
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xscale("log")
    ticks = sorted({x for points in series.values() for x, _ in points})
    ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
    ax.minorticks_off()
    ax.set_xlabel("auxiliary classes per principal class (aux / pri)")
    ax.set_ylabel("MAXL vs single-task (% relative)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return [_save(fig, os.path.join(out, "improvement_over_single.png"))]


def _fraction_used(record, results) -> float:
    used = record.get("labels/aux_used_per_pri")
    return float(np.mean(np.divide(used, results["psi"]))) if used else np.nan


def plot_label_usage(groups, out) -> list:
    """Section 3.4: the generator's auxiliary classes in use per epoch, with and without entropy,
    and the share of training images whose generated label changed since the previous epoch (does
    the generator move at all?); a row of three panels per data set."""
    maxl = [g for g in groups if methods.get(g.method).learned]
    if not maxl:
        return []
    others = _varying(maxl, ("dataset", "pri", "aux", "psi", "method", "entropy_weight"))
    datasets = sorted({g.config.dataset for g in maxl})

    # A colour per pri/aux pair and per other setting that varies; the entropy term's absence dashed.
    def kind(group):
        return group.config.pri, group.config.aux, _others(group, others)

    colors = {k: f"C{i % 10}" for i, k in enumerate(sorted({kind(g) for g in maxl}))}
    fig, axes = plt.subplots(
        len(datasets), 3, figsize=(16, 3.8 * len(datasets) + 1), squeeze=False, layout="constrained"
    )
    for (used_ax, entropy_ax, changed_ax), dataset in zip(axes, datasets):
        for group in (g for g in maxl if g.config.dataset == dataset):
            pri, aux, setting = kind(group)
            style = {
                "color": colors[pri, aux, setting],
                "linestyle": "--" if group.setting["entropy_weight"] == 0 else "-",
            }
            label = f"pri {pri}, aux {aux}, entropy {group.setting['entropy_weight']:g}"
            label = ", ".join([label] + [_short(k, group.setting[k]) for k in others if k in group.setting])
            label += f" (n={len(group.runs)})"
            used = group.curve(None, _fraction_used)
            epochs = np.arange(1, used.shape[1] + 1)
            _band(used_ax, epochs, used, label, limits=(0, 1), **style)
            entropy = group.curve("labels/aux_entropy_mean")
            if not np.isnan(entropy).all():  # runs from before this diagnostic existed lack it
                _band(entropy_ax, epochs, entropy, label, limits=(0, 1), **style)
            changed = group.curve("labels/changed_since_previous")
            if not np.isnan(changed).all():
                _band(changed_ax, epochs, changed, label, limits=(0, 1), **style)
        used_ax.set_ylabel("auxiliary classes used / psi[i]")
        entropy_ax.set_ylabel("label entropy / log psi[i]")
        changed_ax.set_ylabel("training labels changed since previous epoch")
        titles = (
            "auxiliary classes in use (mean over principal classes)",
            "evenness of their use (mean over principal classes)",
            "MAXL's hard training labels that changed",
        )
        data = ", ".join(sorted({_data_name(g.config) for g in maxl if g.config.dataset == dataset}))
        for ax, title in zip((used_ax, entropy_ax, changed_ax), titles):
            ax.set_title(f"{data}: {title}", fontsize=10)
            _epoch_axis(ax)
            ax.set_ylim(0, 1.05)
            ax.grid(alpha=0.3)
    _figure_legend(fig, axes.flat)
    return [_save(fig, os.path.join(out, "label_usage.png"))]


# The field a training-set-size curve sweeps (--train_sizes), and those a compute-matched
# single-task run changes to train for as long as MAXL does (more epochs, its schedule stretched).
CURVE_FIELD = "max_train_examples"
LONGER_FIELDS = ("epochs", "lr_decay_every")


def _curve_key(group) -> tuple:
    """What a group shares with the other points and methods of its curve (single-task's, having
    no --aux, lacks aux and psi: it joins every curve of its other fields)."""
    ignored = (CURVE_FIELD, "method") + LONGER_FIELDS + LINE_FIELDS
    return tuple(sorted((k, v) for k, v in group.setting.items() if k not in ignored))


def _training_time(run: dict) -> float:
    return float(sum(r.get("perf/epoch_seconds", np.nan) for r in run["history"]))


def accuracy_at_time(run: dict, seconds: float) -> float:
    """The paper's metric (the mean test accuracy of the last evaluated epochs) of a run stopped
    at the first epoch whose cumulative training time reaches `seconds` (its last if none does)."""
    elapsed = np.cumsum([r["perf/epoch_seconds"] for r in run["history"]])
    end = min(int(np.searchsorted(elapsed, seconds)) + 1, len(elapsed))
    return rundir.paper_metric(run["history"][:end])


@dataclasses.dataclass
class CurvePoint:
    """One method at one training-set size: its accuracies by seed and training times."""

    label: str
    method: str
    size: int
    by_seed: dict
    seconds: float
    at_time: bool = False  # a longer run read at the learned-label method's training time


def curve_points(groups: list) -> dict:
    """{curve key: [CurvePoint]} for settings run at two or more training-set sizes.

    Besides each method's own point, "single, at MAXL's time" is a longer single-task run (more
    epochs: LONGER_FIELDS differ) read at the epoch where, seed by seed, its training time reaches
    the MAXL run's of the same size and seed (accuracy_at_time).
    """
    curves = collections.defaultdict(list)
    in_curves = [g for g in groups if CURVE_FIELD in g.setting]
    for group in (g for g in in_curves if methods.get(g.method).auxiliary):
        curves[_curve_key(group)].append(group)
    for group in (g for g in in_curves if not methods.get(g.method).auxiliary):
        for key in [k for k in curves if set(_curve_key(group)) <= set(k)] or [_curve_key(group)]:
            curves[key].append(group)
    points = {}
    for key, members in curves.items():
        if len({g.setting[CURVE_FIELD] for g in members}) < 2:
            continue
        learned = [g for g in members if methods.get(g.method).learned]
        epochs = {g.setting[CURVE_FIELD]: g.config.epochs for g in learned}
        found = []
        for group in members:
            size = group.setting[CURVE_FIELD]
            seconds = float(np.mean([_training_time(r) for r in group.runs]))
            if group.config.epochs == epochs.get(size, group.config.epochs):
                found.append(CurvePoint(_label(group, ()), group.method, size, group.by_seed, seconds))
                continue
            maxl = next((g for g in learned if g.setting[CURVE_FIELD] == size), None)
            if methods.get(group.method).auxiliary or maxl is None:
                continue
            maxl_seconds = {r["config"]["seed"]: _training_time(r) for r in maxl.runs}
            matched = {
                r["config"]["seed"]: accuracy_at_time(r, maxl_seconds[r["config"]["seed"]])
                for r in group.runs
                if r["config"]["seed"] in maxl_seconds
            }
            label = f"{group.method}, at {maxl.method}'s time"
            found.append(CurvePoint(label, group.method, size, matched, seconds, at_time=True))
        points[key] = found
    return points


def _mean_interval(values) -> tuple:
    """stats.mean_interval over seeds, one seed's interval a point: a band needs both ends."""
    mean, interval = stats.mean_interval(values)
    return mean, interval or (mean, mean)


def curve_tables(points: dict) -> str:
    """Per curve, per size: each method's accuracy with its 95% interval and training time, and
    its paired difference from single-task (MAXL's also from every other point of its size)."""
    blocks = []
    for key, found in points.items():
        setting = dict(key)
        title = ", ".join(f"{k} {setting[k]}" for k in ("dataset", "pri", "aux", "model", "width") if k in setting)
        lines = [
            f"### Accuracy against training-set size: {title}",
            "",
            "| training images | method | test accuracy, mean [95% interval] | seeds | training time per run "
            "| − single-task [95% interval] |",
            "|---|---|---|---|---|---|",
        ]
        for size in sorted({p.size for p in found}):
            at_size = [p for p in found if p.size == size]
            single = next((p for p in at_size if p.label == methods.SINGLE.name), None)  # not the longer one
            for point in at_size:
                mean, (low, high) = _mean_interval(list(point.by_seed.values()))
                difference = "–"
                if single is not None and point is not single:
                    c = stats.paired(point.by_seed, single.by_seed)
                    if c is not None and c.interval:
                        difference = f"{_signed(c.mean)} [{_signed(c.interval[0])}, {_signed(c.interval[1])}]"
                lines.append(
                    f"| {size} | {point.label} | {mean:.4f} [{low:.4f}, {high:.4f}] | {len(point.by_seed)} | "
                    f"{point.seconds:.0f} s | {difference} |"
                )
        learned = sorted((p for p in found if methods.get(p.method).learned), key=lambda p: p.size)
        if learned:
            lines += ["", "| training images | comparison | mean difference | 95% interval | wins / ties / losses |"]
            lines.append("|---|---|---|---|---|")
            for point in learned:
                for other in (p for p in found if p.size == point.size and p is not point):
                    c = stats.paired(point.by_seed, other.by_seed)
                    if c is None:
                        continue
                    interval = f"[{_signed(c.interval[0])}, {_signed(c.interval[1])}]" if c.interval else "–"
                    lines.append(
                        f"| {point.size} | {point.label} − {other.label} | {_signed(c.mean)} | {interval} | "
                        f"{c.wins} / {c.ties} / {c.losses} |"
                    )
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def plot_curves(points: dict, out) -> list:
    """Test accuracy against training-set size, one line per method, its 95% interval shaded."""
    paths = []
    for key, found in points.items():
        fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
        for i, label in enumerate(dict.fromkeys(p.label for p in found)):
            line = sorted((p for p in found if p.label == label), key=lambda p: p.size)
            dotted = line[0].at_time
            sizes = [p.size for p in line]
            summary = [_mean_interval(list(p.by_seed.values())) for p in line]
            means = [m for m, _ in summary]
            style = {"color": f"C{i % 10}", "marker": "o", "linestyle": ":" if dotted else "-"}
            ax.plot(sizes, means, label=f"{label} (n={min(len(p.by_seed) for p in line)})", **style)
            ax.fill_between(
                sizes,
                [lo for _, (lo, _) in summary],
                [hi for _, (_, hi) in summary],
                color=style["color"],
                alpha=0.15,
                linewidth=0,
            )
        ax.set_xscale("log")
        ticks = sorted({p.size for p in found})
        ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("training images")
        ax.set_ylabel("test accuracy")
        setting = dict(key)
        ax.set_title(
            f"{setting.get('dataset', '')}: pri {setting.get('pri', '')}, aux {setting.get('aux', '–')}; "
            "mean, 95% interval over seeds",
            fontsize=10,
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        name = _file_name(f"curve_{setting.get('dataset', '')}_pri{setting.get('pri', '')}_aux{setting.get('aux', '')}")
        paths.append(_save(fig, os.path.join(out, f"{name}.png")))
    return paths


def labels_health(groups: list) -> str:
    """Per auxiliary method: the last epoch's label entropy and auxiliary classes used (as shares
    of psi), the epochs in which some principal class collapsed, and, for embedded labels, their
    agreement with the human hierarchy; means over seeds."""
    lines = [
        "| method | setting | label entropy, last epoch | auxiliary classes used, last epoch | "
        "epochs with collapsing classes | agreement with human classes |",
        "|---|---|---|---|---|---|",
    ]
    curve_fields = [k for k in _varying(groups, NAMED_FIELDS) if k not in LINE_FIELDS]
    for group in groups:
        if not methods.get(group.method).auxiliary:
            continue
        entropy = [r["history"][-1].get("labels/aux_entropy_mean", np.nan) for r in group.runs]
        used = [_fraction_used(r["history"][-1], r) for r in group.runs]
        collapsing = [
            sum(
                bool(label_health.collapsed_classes(record.get("labels/aux_used_per_pri") or [], r["psi"]))
                for record in r["history"]
            )
            for r in group.runs
        ]
        agreement = [r.get("aux_labels", {}).get("human_agreement") for r in group.runs]
        agreement = [a for a in agreement if a is not None]
        setting = f"{_setting_title(group.setting)} {_fields_text(group.setting, curve_fields)}".strip()
        lines.append(
            f"| {_label(group, ())} | {setting} | {np.nanmean(entropy):.3f} | {np.nanmean(used):.0%} | "
            f"{np.mean(collapsing):.1f} of {group.config.epochs} | "
            f"{f'{np.mean(agreement):.1%}' if agreement else '–'} |"
        )
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def write_report(runs_dirs: list, out: str) -> str:
    """Writes report.md and the figures of the runs under runs_dirs into out; returns its text.

    Raises:
      errors.Error: no directory, no readable runs, or no complete run.
    """
    complete, incomplete, warnings = load_runs(runs_dirs)
    runs_dir = ", ".join(runs_dirs)
    if len(runs_dirs) > 3:  # a shell glob's run folders
        runs_dir = f"{len(runs_dirs)} folders under {os.path.commonpath(runs_dirs)}"
    for warning in warnings:
        print(warning, file=sys.stderr)
    unfinished = [f"- {r['path']}: {r['epochs_completed']}/{r['config'].get('epochs')} epochs" for r in incomplete]
    if not complete:
        if incomplete:
            raise errors.Error(
                f"{runs_dir} has only incomplete runs:\n"
                + "\n".join(unfinished)
                + "\nFinish them (rerun their command: it resumes), or pass a finished sweep's folder."
            )
        raise errors.Error(
            f"{runs_dir} has no readable results.json; pass the folder that holds the runs "
            f"(main.py's --logdir of a sweep, or runs)."
        )
    groups = group_runs(complete)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise errors.Error(f"--out={out} cannot be written ({e.strerror}); pass a writable --out.") from None
    figures = plot_learning_curves(groups, out) + plot_improvement(groups, out) + plot_label_usage(groups, out)
    text = (
        f"# Results of {runs_dir}\n\nTest accuracy: the mean of the last {rundir.LAST_EPOCHS_AVERAGED} "
        f"epochs of each run "
        f"(the paper's metric); mean ± sample standard deviation over seeds.\n\n" + markdown_table(groups)
    )
    paired = paired_tables(groups)
    if paired:
        text += (
            "\n## Paired differences\n\nTest accuracy of the first method minus the second's, paired by "
            "seed (same seed: same meta split, example order and augmentation); the interval is Student "
            "t's 95% over seeds; wins / ties / losses count seeds.\n\n" + paired
        )
    points = curve_points(groups)
    if points:
        text += (
            "\n## Accuracy against training-set size\n\nEach method at each size: the mean test accuracy over "
            "seeds with Student t's 95% interval of the mean, its training time per run (without the test "
            "passes), and its difference from single-task paired by seed; then each learned-label method "
            "against every other run of its size. A longer single-task run (more epochs) is read at MAXL's "
            'training time, seed by seed ("at maxl\'s time").\n\n' + curve_tables(points)
        )
        figures += plot_curves(points, out)
    health = labels_health(groups)
    if health:
        text += (
            "\n## The labels' health\n\nPer auxiliary method, means over seeds: the entropy of its labels "
            "within each principal class's block in the last epoch (1: all of a block's classes used equally, "
            "0: one class), the share of auxiliary classes used, the epochs in which some principal class "
            "labelled fewer than half of its classes (collapse, paper Section 3.4), and, for labels made "
            "from an embedding, their agreement with the human hierarchy's classes.\n\n" + health
        )
    duplicates = duplicates_note(groups)
    if duplicates:
        text += (
            "\n## Duplicate runs (counted once)\n\nThese runs repeat an experiment and seed already "
            "found; only the first is in the tables and figures.\n\n" + duplicates
        )
    if unfinished:
        text += "\n## Incomplete runs (not in the table or figures)\n\n" + "\n".join(unfinished) + "\n"
    text += "\n" + "".join(f"![{os.path.basename(p)}]({os.path.basename(p)})\n" for p in figures)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    return text


def main(argv):
    if len(argv) < 2:
        raise errors.Error("pass a folder of runs, e.g. python -m maxl_tf.report runs/digits_sweep.")
    if len(argv) > 2 and not flags.FLAGS.out:
        raise errors.Error("several folders of runs: pass --out=DIR for the report.")
    out = flags.FLAGS.out or os.path.join(argv[1], "report")
    print(write_report(argv[1:], out))
    print(f"Wrote {os.path.join(out, 'report.md')} and its figures.")


def command() -> None:
    """maxl-tf report and python -m maxl_tf.report."""
    flags.DEFINE_string("out", "", "Where report.md and the PNGs go (default: <runs_dir>/report; needed with several).")
    cli.run(main)


if __name__ == "__main__":
    command()
