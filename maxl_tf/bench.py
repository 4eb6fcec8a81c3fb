"""Speed of the training steps and the input pipeline on synthetic CIFAR-shaped data.

Times, after warm-up, the median of several repeats of each piece of one MAXL iteration, run by
train.py's own compiled iteration (its models, optimisers, strategy and bookkeeping; the runtime
set up as for training), and prints a markdown table and one JSON line:

    python -m maxl_tf.bench --batch_size=64 --model=vgg16 --what=single,maxl,evaluator,generator,pipeline
    python -m maxl_tf.bench --what=single,maxl,maxl_first_order,maxl_implicit --meta_every=10
    python -m maxl_tf.bench --precision=mixed_bfloat16 --jit --nodeterministic --strategy=mirrored   # GPUs
    python -m maxl_tf.bench --what=single,maxl --reference=benchmarks/torch_reference.py --cycles=4

  single     steps.evaluator_step of a single-task evaluator (method single)
  maxl       steps.evaluator_step + steps.generator_step (one iteration of Algorithm 1), second order
  maxl_first_order, maxl_implicit   the same with --hypergradient=first_order, implicit
  maxl_fit   the maxl piece's iterations through MAXL.fit's train function (models/maxl.py), as
             Keras' fit calls it once a step: the same networks, batches and process
  evaluator  the MAXL evaluator step alone (generator labels, both heads)
  generator  the second-order generator step alone
  generator_first_order, generator_implicit   the generator step alone with those hypergradients
  pipeline   data/pipeline.Pipeline batches with augmentation, nothing else (an epoch's worth per repeat)

Every training flag of main.py applies (--model, --width, --pri, --aux, --precision, --jit,
--strategy, --lr, --neumann_terms, ...), with --batch_size defaulting to 64; the pieces' names
choose their hypergradient, so --hypergradient is refused. With --meta_every=K a repeat of a
maxl piece is K iterations, as training runs them: K - 1 evaluator steps and one evaluator step
followed by a generator step. The timed pieces run round-robin (one
repeat of each, then the next), so a burst of load from other processes on a shared machine hits
all of them alike and their ratios stay meaningful. --reference runs another implementation's
benchmark script (benchmarks/torch_reference.py, PyTorch) in its own process before each of
--cycles rounds of ours, and tables the ratios cycle by cycle.
"""

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from maxl_tf import cli
from maxl_tf import runtime

with runtime.quiet_start_up():  # this command's first import of TensorFlow
    import tensorflow as tf

from absl import flags
import keras
import numpy as np

from maxl_tf import errors
from maxl_tf.core import distribute
from maxl_tf.core import hierarchy
from maxl_tf.core import methods
from maxl_tf.data import pipeline
from maxl_tf.experiment import config as config_lib
from maxl_tf.experiment import state as state_lib
from maxl_tf.experiment import train
from maxl_tf.models import maxl as maxl_lib

WHATS = (
    "single",
    "maxl",
    "maxl_first_order",
    "maxl_implicit",
    "maxl_fit",
    "evaluator",
    "generator",
    "generator_first_order",
    "generator_implicit",
    "pipeline",
)
IMAGE_SHAPE = (32, 32, 3)
PIPELINE_EPOCH = 45_000  # images per timed repeat of the input pipeline: a CIFAR-100 training epoch


@dataclasses.dataclass
class Timed:
    """One timed piece: `run()` does one repeat and blocks until its results exist."""

    name: str
    run: object
    images_per_run: int


def synthetic_batch(batch_size: int, pri: int, psi, seed: int) -> dict:
    """A batch shaped like data/pipeline.Pipeline's: random raw pixels (float32 0..255), random labels in range."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, pri, batch_size)
    offsets = hierarchy.block_offsets(psi)
    aux_labels = offsets[labels] + rng.integers(0, np.asarray(psi)[labels])
    return {
        "images": tf.constant(rng.integers(0, 256, (batch_size, *IMAGE_SHAPE)), tf.float32),
        "labels": tf.constant(labels, tf.int64),
        "aux_labels": tf.constant(aux_labels, tf.int64),
        "indices": tf.range(batch_size, dtype=tf.int64),
    }


def _hypergradient(what: str) -> str:
    """The hypergradient a piece names: maxl_implicit -> implicit; maxl, generator -> second_order."""
    suffix = what.partition("_")[2]
    return suffix if suffix in methods.HYPERGRADIENTS else methods.EXACT_HYPERGRADIENT


def bench_config(config: config_lib.Config, what: str) -> config_lib.Config:
    """The run a piece times: config's flags, the method and hypergradient `what` needs (its
    --neumann_terms only for the implicit one), uniform psi (any --aux that is a multiple of
    --pri: the batches are synthetic, no data set's hierarchy applies).

    Raises:
      errors.Error: a bad flag.
    """
    if config.hypergradient != methods.EXACT_HYPERGRADIENT:
        raise errors.Error(
            f"--hypergradient={config.hypergradient}: the benchmark's pieces name their "
            f"hypergradient; drop it and list them in --what (e.g. maxl_{config.hypergradient})."
        )
    hypergradient = _hypergradient(what)
    config = dataclasses.replace(
        config,
        method="single" if what == "single" else "maxl",
        hypergradient=hypergradient,
        neumann_terms=config.neumann_terms
        if hypergradient == methods.IMPLICIT_HYPERGRADIENT
        else config_lib.DEFAULT_NEUMANN_TERMS,
    )
    config_lib.check_flags(config)
    if config.pri < 1 or config.aux < config.pri or config.aux % config.pri:
        raise errors.Error(f"--aux={config.aux}: must be a positive multiple of --pri={config.pri}.")
    return dataclasses.replace(config, psi=(config.aux // config.pri,) * config.pri)


def build_step(config: config_lib.Config, what: str) -> Timed:
    """One training iteration for `what`, exactly as train.py runs it: the same models,
    optimisers, strategy and compiled iteration, bookkeeping included, on fixed synthetic batches.

    Raises:
      errors.Error: a strategy that cannot start, or a batch its replicas cannot split.
    """
    config = bench_config(config, what)
    strategy = distribute.make_strategy(config.strategy, config.batch_size)
    state = state_lib.TrainState(config, IMAGE_SHAPE, strategy)
    iteration = train.make_iteration(config, state, state_lib.task(config), strategy)

    def fixed(seed):  # one global batch, split over the replicas as training splits it
        batch = synthetic_batch(config.batch_size, config.pri, config.psi, seed)
        return next(iter(distribute.distribute_dataset(strategy, tf.data.Dataset.from_tensors(batch))))

    train_batch, meta_batch = fixed(1), fixed(2)
    if what.startswith("generator"):  # the generator step alone; the implicit one reads the training batch
        iterations = [(train_batch, meta_batch, False)]
    elif what.startswith("maxl"):
        iterations = [(train_batch, None)] * (config.meta_every - 1) + [(train_batch, meta_batch)]
    else:
        iterations = [(train_batch, None)]

    def run():
        for args in iterations:
            iteration(*args)
        state.sums.totals.numpy()  # waits for the steps: a tf.function call returns before a GPU finishes

    return Timed(what, run, config.batch_size * len(iterations))


def build_fit_step(config: config_lib.Config) -> Timed:
    """The maxl piece's iterations through the Keras model's path: MAXL over a TrainState's
    networks, its train function called once per step on an iterator of the same fixed batches,
    as Keras' fit calls it.

    Raises:
      errors.Error: a precision other than float32 (MAXL has no float32 lookahead twin), or as
        build_step.
    """
    config = bench_config(config, "maxl")
    if config.precision != "float32":
        raise errors.Error(f"--precision={config.precision}: maxl_fit runs in float32 only; drop it from --what.")
    strategy = distribute.make_strategy(config.strategy, config.batch_size)
    state = state_lib.TrainState(config, IMAGE_SHAPE, strategy)
    task = state_lib.task(config)
    with strategy.scope():
        model = maxl_lib.MAXL(
            state.evaluator,
            state.generator,
            psi=config.psi,
            hypergradient=task.hypergradient,
            meta_every=config.meta_every,
            entropy_weight=task.entropy_weight,
            focal_gamma=task.gamma,
            generator_weight_decay=task.generator_weight_decay,
            generator_weight_decay_type=task.generator_weight_decay_type,
            neumann_terms=task.neumann_terms,
            generator_labels_training=task.generator_labels_training,
        )
        model.compile(
            keras.optimizers.SGD(config.lr), keras.optimizers.SGD(config.generator_lr), jit_compile=config.jit
        )

    def fixed(seed):
        return tf.data.Dataset.from_tensors(synthetic_batch(config.batch_size, config.pri, config.psi, seed))

    train_batches = iter(distribute.distribute_dataset(strategy, fixed(1).repeat()))
    model.use_meta_data(fixed(2))  # as fit does with meta_data
    train_function = model.make_train_function()

    def run():
        for _ in range(config.meta_every):
            logs = train_function(train_batches)
        logs["loss"].numpy()  # waits for the steps

    return Timed("maxl_fit", run, config.batch_size * config.meta_every)


def build_pipeline(batch_size: int, num_examples: int = 5000) -> Timed:
    """The training input pipeline alone: gather, cast to float, random crop + flip per batch.

    Each repeat streams one epoch's worth of batches through a fresh tf.data stream, as every
    training epoch does, so the stream's start-up is amortised as in training (over a few
    batches, start-up is most of the time).
    """
    steps = max(1, PIPELINE_EPOCH // batch_size)
    rng = np.random.default_rng(0)
    examples = pipeline.Examples(
        rng.integers(0, 256, (num_examples, *IMAGE_SHAPE), np.uint8),
        rng.integers(0, 10, num_examples),
        np.zeros(num_examples, np.int64),
    )
    batches = pipeline.Pipeline(examples)
    repeats = [0]

    def run():
        repeats[0] += 1
        order = pipeline.epoch_order(np.arange(num_examples), steps * batch_size, 0, repeats[0], 0)
        for batch in batches.batches(order, batch_size, augment_seed=(0, repeats[0], 0)):
            batch["images"].numpy()

    return Timed("pipeline", run, steps * batch_size)


def _gpu_peak_bytes():
    if not tf.config.list_logical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"]


def _reset_gpu_peak():
    if tf.config.list_logical_devices("GPU"):
        tf.config.experimental.reset_memory_stats("GPU:0")


def prepare(config: config_lib.Config, whats, warmup: int = 2):
    """Builds and warms up each piece.

    Returns:
      (pieces, memory): the Timed pieces, and per piece (peak RSS MiB of this process once it was
      warm, cumulative over the pieces before it; peak GPU MiB during its warm-up or None).
    """
    pieces, memory = [], {}
    for what in whats:
        keras.utils.set_random_seed(0)
        if what == "pipeline":
            piece = build_pipeline(config.batch_size)
        elif what == "maxl_fit":
            piece = build_fit_step(config)
        else:
            piece = build_step(config, what)
        _reset_gpu_peak()
        for _ in range(warmup):
            piece.run()
        peak = _gpu_peak_bytes()
        memory[what] = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
            None if peak is None else peak / 2**20,
        )
        pieces.append(piece)
    return pieces, memory


def time_pieces(pieces, repeats: int) -> dict:
    """{name: ([wall seconds], [CPU seconds])} of `repeats` round-robin runs of every piece."""
    times = {piece.name: ([], []) for piece in pieces}
    for _ in range(repeats):
        for piece in pieces:
            start, cpu_start = time.perf_counter(), time.process_time()
            piece.run()
            times[piece.name][0].append(time.perf_counter() - start)
            times[piece.name][1].append(time.process_time() - cpu_start)
    return times


def summarise(pieces, memory, times) -> list:
    """One dict per piece: what, images_per_s (median), seconds (median per repeat), cpu_seconds
    (median CPU time of this process per repeat, all threads: less sensitive than wall time to
    other processes sharing the cores), spread (max / min seconds over repeats, a noise gauge),
    peak_rss_mib and peak_gpu_mib (see prepare)."""
    rows = []
    for piece in pieces:
        seconds, cpu_seconds = times[piece.name]
        median = statistics.median(seconds)
        rss, gpu = memory[piece.name]
        rows.append(
            {
                "what": piece.name,
                "images_per_s": round(piece.images_per_run / median, 2),
                "seconds": round(median, 6),
                "cpu_seconds": round(statistics.median(cpu_seconds), 6),
                "spread": round(max(seconds) / min(seconds), 2),
                "peak_rss_mib": round(rss),
                "peak_gpu_mib": None if gpu is None else round(gpu),
            }
        )
    return rows


def benchmark(config: config_lib.Config, whats, repeats: int = 5, warmup: int = 2) -> list:
    """Builds and warms up each piece, then times them round-robin; rows as summarise()."""
    pieces, memory = prepare(config, whats, warmup)
    return summarise(pieces, memory, time_pieces(pieces, repeats))


def reference_rates(script: str, batch_size: int, steps: int, pri: int, aux: int) -> dict:
    """Images/s of a reference implementation of the VGG-16 steps, run in its own process.

    The script takes --batch_size, --steps, --pri and --aux and prints, as its last line, JSON
    with single_step_images_per_s and maxl_iteration_images_per_s
    (benchmarks/torch_reference.py).

    Raises:
      errors.Error: the script fails or prints no such line.
    """
    command = [sys.executable, script, f"--batch_size={batch_size}", f"--steps={steps}", f"--pri={pri}", f"--aux={aux}"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    try:
        values = json.loads(lines[-1])
        return {
            "framework": values.get("framework", script),
            "single": float(values["single_step_images_per_s"]),
            "maxl": float(values["maxl_iteration_images_per_s"]),
        }
    except (IndexError, ValueError, KeyError, TypeError):
        why = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise errors.Error(
            f"--reference={script} exited with {result.returncode} and printed no "
            f"JSON line with single_step_images_per_s and maxl_iteration_images_per_s "
            f"({why})"
        ) from None


def compare(pieces, memory, script: str, cycles: int, config: config_lib.Config, repeats: int):
    """Alternates the reference script and our single and maxl pieces, `cycles` times.

    Each of our figures is divided by the reference's from the run just before it, so load that
    drifts over minutes hits both sides of a ratio alike.

    Returns:
      (cycle rows: reference / our images/s and the three ratios per cycle; our pieces' rows over
       all cycles' repeats, as summarise()).
    """
    cycle_rows, pooled = [], {piece.name: ([], []) for piece in pieces}
    for cycle in range(1, cycles + 1):
        reference = reference_rates(script, config.batch_size, repeats, config.pri, config.aux)
        times = time_pieces(pieces, repeats)
        ours = {row["what"]: row["images_per_s"] for row in summarise(pieces, memory, times)}
        cycle_rows.append(
            {
                "cycle": cycle,
                "reference": reference,
                "single": ours["single"],
                "maxl": ours["maxl"],
                "single_vs_reference": ours["single"] / reference["single"],
                "maxl_vs_reference": ours["maxl"] / reference["maxl"],
                "maxl_time_vs_single": ours["single"] / ours["maxl"],
            }
        )
        for name, (wall, cpu) in times.items():
            pooled[name][0].extend(wall)
            pooled[name][1].extend(cpu)
    return cycle_rows, summarise(pieces, memory, pooled)


def comparison_table(cycle_rows) -> str:
    lines = [
        "| cycle | reference single / MAXL, images/s | ours single / MAXL, images/s "
        "| single-task, ours / reference "
        "| MAXL, ours / reference | our MAXL time / single time |",
        "|---|---|---|---|---|---|",
    ]
    for r in cycle_rows:
        lines.append(
            f"| {r['cycle']} | {r['reference']['single']:.1f} / {r['reference']['maxl']:.1f} | "
            f"{r['single']:.1f} / {r['maxl']:.1f} | {r['single_vs_reference']:.2f}x | "
            f"{r['maxl_vs_reference']:.2f}x | {r['maxl_time_vs_single']:.2f}x |"
        )
    median = {
        key: statistics.median(r[key] for r in cycle_rows)
        for key in ("single", "maxl", "single_vs_reference", "maxl_vs_reference", "maxl_time_vs_single")
    }
    ref_single = statistics.median(r["reference"]["single"] for r in cycle_rows)
    ref_maxl = statistics.median(r["reference"]["maxl"] for r in cycle_rows)
    lines.append(
        f"| median | {ref_single:.1f} / {ref_maxl:.1f} | {median['single']:.1f} / {median['maxl']:.1f} | "
        f"{median['single_vs_reference']:.2f}x | {median['maxl_vs_reference']:.2f}x | "
        f"{median['maxl_time_vs_single']:.2f}x |"
    )
    return "\n".join(lines)


def markdown_table(rows) -> str:
    lines = [
        "| what | images/s | s per repeat | CPU s per repeat | max/min over repeats | peak RSS MiB | peak GPU MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gpu = "-" if r["peak_gpu_mib"] is None else r["peak_gpu_mib"]
        lines.append(
            f"| {r['what']} | {r['images_per_s']} | {r['seconds']} | {r['cpu_seconds']} | {r['spread']} | "
            f"{r['peak_rss_mib']} | {gpu} |"
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise errors.Error(f"unexpected arguments {argv[1:]}; flags look like --name=value.")
    values = flags.FLAGS
    config = cli.config_from_flags(values)
    whats = values.what.split(",")
    unknown = [w for w in whats if w not in WHATS]
    problems = [
        (unknown, f"--what: unknown {', '.join(unknown)}; choose from {', '.join(WHATS)}."),
        (min(values.repeats, values.warmup, values.cycles) < 1, "--repeats, --warmup and --cycles must be at least 1."),
        (
            values.reference and not ({"single", "maxl"} <= set(whats) and config.model == "vgg16"),
            "--reference compares the VGG-16 single and maxl pieces: give --what with both and --model=vgg16.",
        ),
        (values.reference and not os.path.isfile(values.reference), f"--reference={values.reference}: no such file."),
        (values.cycles > 1 and not values.reference, "--cycles needs --reference."),
        (
            values.reference and config.meta_every != 1,
            f"--meta_every={config.meta_every}: --reference compares one iteration of each; drop --meta_every.",
        ),
    ]
    for bad, message in problems:
        if bad:
            raise errors.Error(message)
    bench_config(config, "maxl")  # the flags, before TensorFlow starts
    runtime.start_tensorflow(config.deterministic)
    cycle_rows = None
    pieces, memory = prepare(config, whats, values.warmup)
    if values.reference:
        cycle_rows, rows = compare(pieces, memory, values.reference, values.cycles, config, values.repeats)
    else:
        rows = summarise(pieces, memory, time_pieces(pieces, values.repeats))
    if cycle_rows:
        print(f"reference: {cycle_rows[0]['reference']['framework']} ({values.reference})")
        print(comparison_table(cycle_rows) + "\n")
    print(markdown_table(rows))
    print(
        json.dumps(
            {
                "framework": f"tensorflow {tf.__version__}",
                "device": "GPU" if tf.config.list_logical_devices("GPU") else "CPU",
                "cpus": os.cpu_count(),
                "cpu": runtime.cpu_description(),
                "batch_size": config.batch_size,
                "model": config.model,
                "width": config.width,
                "deterministic": config.deterministic,
                "precision": config.precision,
                "jit": config.jit,
                "strategy": config.strategy,
                **{r["what"] + "_images_per_s": r["images_per_s"] for r in rows},
                "rows": rows,
                **({"cycles": cycle_rows} if cycle_rows else {}),
            }
        )
    )


def command() -> None:
    """maxl-tf bench and python -m maxl_tf.bench."""
    cli.define_config_flags()
    flags.FLAGS.set_default("batch_size", 64)
    flags.DEFINE_integer("repeats", 5, "Timed repeats of each piece; the median counts.")
    flags.DEFINE_integer("warmup", 2, "Untimed runs of each piece first (tracing).")
    flags.DEFINE_string("what", "single,maxl,evaluator,generator,pipeline", f"Comma list of: {', '.join(WHATS)}.")
    flags.DEFINE_string(
        "reference",
        "",
        "A reference benchmark script to alternate with, e.g. "
        "benchmarks/torch_reference.py; needs --what with single and maxl, "
        "--model=vgg16.",
    )
    flags.DEFINE_integer("cycles", 1, "Rounds of reference, then ours (with --reference).")
    cli.run(main)


if __name__ == "__main__":
    command()
