"""Speed of the training steps and the input pipeline on synthetic CIFAR-shaped data.

Times, after warm-up, the median of several repeats of each piece of one MAXL iteration, run by
train.Trainer itself (its models, optimisers, strategy and compiled iteration, bookkeeping
included; configure_runtime applied first), and prints a markdown table and one JSON line:

    python -m maxl_tf.bench --batch_size=64 --model=vgg16 --what=single,maxl,evaluator,generator,pipeline
    python -m maxl_tf.bench --precision=mixed_bfloat16 --jit --nodeterministic --strategy=mirrored   # GPUs
    python -m maxl_tf.bench --what=single,maxl --reference=../shared/bench/torch_reference.py --cycles=4

  single     steps.evaluator_step of a single-task evaluator (method single)
  maxl       steps.evaluator_step + steps.generator_step (one iteration of Algorithm 1)
  evaluator  the MAXL evaluator step alone (generator labels, both heads)
  generator  the second-order generator step alone
  pipeline   data.Pipeline batches with augmentation, nothing else (an epoch's worth per repeat)

The timed pieces run round-robin (one repeat of each, then the next), so a burst of load from
other processes on a shared machine hits all of them alike and their ratios stay meaningful.
--reference runs another implementation's benchmark script (the PyTorch one beside this project)
in its own process before each of --cycles rounds of ours, and tables the ratios cycle by cycle.
"""
import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from maxl_tf import config as config_lib
from maxl_tf import data as data_lib
from maxl_tf import distribute
from maxl_tf import hierarchy
from maxl_tf import models
from maxl_tf import train

WHATS = ("single", "maxl", "evaluator", "generator", "pipeline")
IMAGE_SHAPE = (32, 32, 3)
PIPELINE_EPOCH = 45_000   # images per timed repeat of the input pipeline: a CIFAR-100 training epoch
EVALUATOR_LR, GENERATOR_LR = 0.01, 1e-5


@dataclasses.dataclass
class Timed:
    """One timed piece: `run()` does one repeat and blocks until its results exist."""
    name: str
    run: object
    images_per_run: int


def synthetic_batch(batch_size: int, pri: int, psi, seed: int) -> dict:
    """A batch shaped like data.Pipeline's: normalised random pixels, random labels in range."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, pri, batch_size)
    offsets = hierarchy.block_offsets(psi)
    aux_labels = offsets[labels] + rng.integers(0, np.asarray(psi)[labels])
    return {"images": data_lib.normalise(rng.integers(0, 256, (batch_size, *IMAGE_SHAPE), np.uint8)),
            "labels": tf.constant(labels, tf.int64), "aux_labels": tf.constant(aux_labels, tf.int64),
            "indices": tf.range(batch_size, dtype=tf.int64)}


def _synthetic_run_data(batch_size: int, pri: int) -> train.RunData:
    """What train.Trainer needs of a data set, from random pixels (it draws its probe batch here)."""
    rng = np.random.default_rng(0)
    examples = data_lib.Examples(rng.integers(0, 256, (batch_size, *IMAGE_SHAPE), np.uint8),
                                 rng.integers(0, pri, batch_size), np.zeros(batch_size, np.int64))
    pipeline = data_lib.Pipeline(examples)
    return train.RunData(train=pipeline, test=pipeline, train_indices=np.arange(batch_size),
                         meta_indices=np.arange(batch_size), input_shape=IMAGE_SHAPE, source="synthetic")


def build_step(what: str, batch_size: int, architecture: str, pri: int, aux: int,
               precision: str = "float32", jit: bool = False, strategy: str = "none") -> Timed:
    """One training iteration for `what`, exactly as train.Trainer runs it: the same models,
    optimisers, strategy and compiled function, bookkeeping included, on fixed synthetic batches.

    Raises:
      config.ConfigError: a strategy that cannot start, or a batch its replicas cannot split.
    """
    psi = (aux // pri,) * pri   # uniform, as the paper's CIFAR-100 20/100 split
    config = config_lib.Config(
        dataset="cifar100", pri=pri, aux=aux, psi=",".join(map(str, psi)),
        method="single" if what == "single" else "maxl", model=architecture, batch_size=batch_size,
        lr=EVALUATOR_LR, generator_lr=GENERATOR_LR, precision=precision, jit=jit, strategy=strategy)
    distribution = train.run_strategy(config)
    state = train.TrainState(config, IMAGE_SHAPE, psi, distribution)
    trainer = train.Trainer(config, psi, _synthetic_run_data(batch_size, pri), state, distribution)

    def fixed(seed):   # one global batch, split over the replicas as training splits it
        return next(iter(trainer.distribute(tf.data.Dataset.from_tensors(synthetic_batch(batch_size, pri, psi, seed)))))

    args = {"single": (fixed(1), None), "evaluator": (fixed(1), None),
            "generator": (None, fixed(2)), "maxl": (fixed(1), fixed(2))}[what]

    def run():
        trainer.iteration(*args)
        state.sums.numpy()   # waits for the step: a tf.function call returns before a GPU finishes

    return Timed(what, run, batch_size)


def build_pipeline(batch_size: int, num_examples: int = 5000) -> Timed:
    """The training input pipeline alone: gather, normalise, random crop + flip per batch.

    Each repeat streams one epoch's worth of batches through a fresh tf.data stream, as every
    training epoch does, so the stream's start-up is amortised as in training (over 10 batches,
    start-up was most of the time: 8,331 against 58,573 images/s on 2 cores).
    """
    steps = max(1, PIPELINE_EPOCH // batch_size)
    rng = np.random.default_rng(0)
    examples = data_lib.Examples(rng.integers(0, 256, (num_examples, *IMAGE_SHAPE), np.uint8),
                                 rng.integers(0, 10, num_examples), np.zeros(num_examples, np.int64))
    pipeline = data_lib.Pipeline(examples)
    repeats = [0]

    def run():
        repeats[0] += 1
        order = data_lib.epoch_order(np.arange(num_examples), steps * batch_size, 0, repeats[0], 0)
        for batch in pipeline.batches(order, batch_size, augment_seed=(0, repeats[0], 0)):
            batch["images"].numpy()

    return Timed("pipeline", run, steps * batch_size)


def _gpu_peak_bytes():
    if not tf.config.list_logical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"]


def _reset_gpu_peak():
    if tf.config.list_logical_devices("GPU"):
        tf.config.experimental.reset_memory_stats("GPU:0")


class BenchError(Exception):
    """A reference script that fails or prints no result; main() reports it as one error line."""


def prepare(whats, batch_size: int = 64, architecture: str = "vgg16", pri: int = 20, aux: int = 100,
            warmup: int = 2, precision: str = "float32", jit: bool = False, strategy: str = "none"):
    """Builds and warms up each piece.

    Returns:
      (pieces, memory): the Timed pieces, and per piece (peak RSS MiB of this process once it was
      warm, cumulative over the pieces before it; peak GPU MiB during its warm-up or None).
    """
    pieces, memory = [], {}
    for what in whats:
        keras.utils.set_random_seed(0)
        piece = build_pipeline(batch_size) if what == "pipeline" else build_step(
            what, batch_size, architecture, pri, aux, precision, jit, strategy)
        _reset_gpu_peak()
        for _ in range(warmup):
            piece.run()
        peak = _gpu_peak_bytes()
        memory[what] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,   # KiB on Linux
                        None if peak is None else peak / 2**20)
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
        rows.append({"what": piece.name, "images_per_s": round(piece.images_per_run / median, 2),
                     "seconds": round(median, 6), "cpu_seconds": round(statistics.median(cpu_seconds), 6),
                     "spread": round(max(seconds) / min(seconds), 2), "peak_rss_mib": round(rss),
                     "peak_gpu_mib": None if gpu is None else round(gpu)})
    return rows


def benchmark(whats, batch_size: int = 64, architecture: str = "vgg16", pri: int = 20, aux: int = 100,
              repeats: int = 5, warmup: int = 2, precision: str = "float32", jit: bool = False,
              strategy: str = "none") -> list:
    """Builds and warms up each piece, then times them round-robin; rows as summarise()."""
    pieces, memory = prepare(whats, batch_size, architecture, pri, aux, warmup, precision, jit, strategy)
    return summarise(pieces, memory, time_pieces(pieces, repeats))


def reference_rates(script: str, batch_size: int, steps: int, pri: int, aux: int) -> dict:
    """Images/s of a reference implementation of the VGG-16 steps, run in its own process.

    The script takes --batch_size, --steps, --pri and --aux and prints, as its last line, JSON
    with single_step_images_per_s and maxl_iteration_images_per_s
    (../shared/bench/torch_reference.py).

    Raises:
      BenchError: the script fails or prints no such line.
    """
    command = [sys.executable, script, f"--batch_size={batch_size}", f"--steps={steps}", f"--pri={pri}", f"--aux={aux}"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    try:
        values = json.loads(lines[-1])
        return {"framework": values.get("framework", script), "single": float(values["single_step_images_per_s"]),
                "maxl": float(values["maxl_iteration_images_per_s"])}
    except (IndexError, ValueError, KeyError, TypeError):
        why = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"--reference={script} exited with {result.returncode} and printed no "
                         f"JSON line with single_step_images_per_s and maxl_iteration_images_per_s "
                         f"({why})") from None


def compare(pieces, memory, script: str, cycles: int, batch_size: int, repeats: int, pri: int, aux: int):
    """Alternates the reference script and our single and maxl pieces, `cycles` times.

    Each of our figures is divided by the reference's from the run just before it, so load that
    drifts over minutes hits both sides of a ratio alike.

    Returns:
      (cycle rows: reference / our images/s and the three ratios per cycle; our pieces' rows over
       all cycles' repeats, as summarise()).
    """
    cycle_rows, pooled = [], {piece.name: ([], []) for piece in pieces}
    for cycle in range(1, cycles + 1):
        reference = reference_rates(script, batch_size, repeats, pri, aux)
        times = time_pieces(pieces, repeats)
        ours = {row["what"]: row["images_per_s"] for row in summarise(pieces, memory, times)}
        cycle_rows.append({"cycle": cycle, "reference": reference, "single": ours["single"], "maxl": ours["maxl"],
                           "single_vs_reference": ours["single"] / reference["single"],
                           "maxl_vs_reference": ours["maxl"] / reference["maxl"],
                           "maxl_time_vs_single": ours["single"] / ours["maxl"]})
        for name, (wall, cpu) in times.items():
            pooled[name][0].extend(wall)
            pooled[name][1].extend(cpu)
    return cycle_rows, summarise(pieces, memory, pooled)


def comparison_table(cycle_rows) -> str:
    lines = ["| cycle | reference single / MAXL, images/s | ours single / MAXL, images/s | single-task, ours / reference "
             "| MAXL, ours / reference | our MAXL time / single time |", "|---|---|---|---|---|---|"]
    for r in cycle_rows:
        lines.append(f"| {r['cycle']} | {r['reference']['single']:.1f} / {r['reference']['maxl']:.1f} | "
                     f"{r['single']:.1f} / {r['maxl']:.1f} | {r['single_vs_reference']:.2f}x | "
                     f"{r['maxl_vs_reference']:.2f}x | {r['maxl_time_vs_single']:.2f}x |")
    median = {key: statistics.median(r[key] for r in cycle_rows)
              for key in ("single", "maxl", "single_vs_reference", "maxl_vs_reference", "maxl_time_vs_single")}
    ref_single = statistics.median(r["reference"]["single"] for r in cycle_rows)
    ref_maxl = statistics.median(r["reference"]["maxl"] for r in cycle_rows)
    lines.append(f"| median | {ref_single:.1f} / {ref_maxl:.1f} | {median['single']:.1f} / {median['maxl']:.1f} | "
                 f"{median['single_vs_reference']:.2f}x | {median['maxl_vs_reference']:.2f}x | "
                 f"{median['maxl_time_vs_single']:.2f}x |")
    return "\n".join(lines)


def markdown_table(rows) -> str:
    lines = ["| what | images/s | s per repeat | CPU s per repeat | max/min over repeats | peak RSS MiB | peak GPU MiB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        gpu = "-" if r["peak_gpu_mib"] is None else r["peak_gpu_mib"]
        lines.append(f"| {r['what']} | {r['images_per_s']} | {r['seconds']} | {r['cpu_seconds']} | {r['spread']} | "
                     f"{r['peak_rss_mib']} | {gpu} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--model", choices=sorted(models.ARCHITECTURES), default="vgg16")
    parser.add_argument("--pri", type=int, default=20, help="principal classes")
    parser.add_argument("--aux", type=int, default=100, help="auxiliary classes, a multiple of --pri")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each piece; the median counts")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs of each piece first (tracing)")
    parser.add_argument("--what", default="single,maxl,evaluator,generator,pipeline",
                        help=f"comma list of: {', '.join(WHATS)}")
    parser.add_argument("--precision", choices=models.PRECISIONS, default="float32")
    parser.add_argument("--jit", action="store_true", help="compile the steps with XLA")
    parser.add_argument("--strategy", choices=distribute.STRATEGIES, default="none")
    parser.add_argument("--nodeterministic", dest="deterministic", action="store_false",
                        help="without tf.config.experimental.enable_op_determinism")
    parser.add_argument("--reference", help="a reference benchmark script to alternate with, e.g. "
                        "../shared/bench/torch_reference.py; needs --what with single and maxl, --model=vgg16")
    parser.add_argument("--cycles", type=int, default=1, help="rounds of reference, then ours (with --reference)")
    args = parser.parse_args()
    whats = args.what.split(",")
    unknown = [w for w in whats if w not in WHATS]
    if unknown:
        parser.error(f"--what: unknown {', '.join(unknown)}; choose from {', '.join(WHATS)}")
    if args.pri < 1 or args.aux < args.pri or args.aux % args.pri:
        parser.error(f"--aux={args.aux} must be a positive multiple of --pri={args.pri}")
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 1 or args.cycles < 1:
        parser.error("--batch_size, --repeats, --warmup and --cycles must be at least 1")
    if args.reference and not ({"single", "maxl"} <= set(whats) and args.model == "vgg16"):
        parser.error("--reference compares the VGG-16 single and maxl pieces: give --what with both and --model=vgg16")
    if args.reference and not os.path.isfile(args.reference):
        parser.error(f"--reference={args.reference}: no such file")
    if args.cycles > 1 and not args.reference:
        parser.error("--cycles needs --reference")
    if args.jit and args.deterministic:
        parser.error(config_lib.JIT_NEEDS_NODETERMINISTIC)
    train.configure_runtime(args.deterministic)
    cycle_rows = None
    try:
        pieces, memory = prepare(whats, args.batch_size, args.model, args.pri, args.aux, args.warmup,
                                 args.precision, args.jit, args.strategy)
        if args.reference:
            cycle_rows, rows = compare(pieces, memory, args.reference, args.cycles, args.batch_size,
                                       args.repeats, args.pri, args.aux)
        else:
            rows = summarise(pieces, memory, time_pieces(pieces, args.repeats))
    except (config_lib.ConfigError, BenchError) as e:
        parser.exit(2, f"error: {e}\n")
    if cycle_rows:
        print(f"reference: {cycle_rows[0]['reference']['framework']} ({args.reference})")
        print(comparison_table(cycle_rows) + "\n")
    print(markdown_table(rows))
    print(json.dumps({"framework": f"tensorflow {tf.__version__}", "device": "GPU" if tf.config.list_logical_devices("GPU") else "CPU",
                      "cpus": os.cpu_count(), "batch_size": args.batch_size, "model": args.model,
                      "deterministic": args.deterministic, "precision": args.precision, "jit": args.jit,
                      "strategy": args.strategy,
                      **{r["what"] + "_images_per_s": r["images_per_s"] for r in rows}, "rows": rows,
                      **({"cycles": cycle_rows} if cycle_rows else {})}))


if __name__ == "__main__":
    main()
