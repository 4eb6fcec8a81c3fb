"""Speed of the training steps and the input pipeline on synthetic CIFAR-shaped data.

Times, after warm-up, the median of several repeats of each piece of one MAXL iteration, run by
train.Trainer itself (its models, optimisers, strategy and compiled iteration, bookkeeping
included; configure_runtime applied first), and prints a markdown table and one JSON line:

    python -m maxl_tf.bench --batch_size=64 --model=vgg16 --what=single,maxl,evaluator,generator,pipeline
    python -m maxl_tf.bench --precision=mixed_bfloat16 --jit --strategy=mirrored   # on GPUs

  single     steps.evaluator_step of a single-task evaluator (method single)
  maxl       steps.evaluator_step + steps.generator_step (one iteration of Algorithm 1)
  evaluator  the MAXL evaluator step alone (generator labels, both heads)
  generator  the second-order generator step alone
  pipeline   data.Pipeline batches with augmentation, nothing else

The timed pieces run round-robin (one repeat of each, then the next), so a burst of load from
other processes on a shared machine hits all of them alike and their ratios stay meaningful.
"""
import argparse
import dataclasses
import json
import os
import resource
import statistics
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
PIPELINE_BATCHES = 10   # batches per timed repeat of the input pipeline
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
    """The training input pipeline alone: gather, normalise, random crop + flip per batch."""
    rng = np.random.default_rng(0)
    examples = data_lib.Examples(rng.integers(0, 256, (num_examples, *IMAGE_SHAPE), np.uint8),
                                 rng.integers(0, 10, num_examples), np.zeros(num_examples, np.int64))
    pipeline = data_lib.Pipeline(examples)
    repeats = [0]

    def run():
        repeats[0] += 1
        order = data_lib.epoch_order(np.arange(num_examples), PIPELINE_BATCHES * batch_size, 0, repeats[0], 0)
        for batch in pipeline.batches(order, batch_size, augment_seed=(0, repeats[0], 0)):
            batch["images"].numpy()

    return Timed("pipeline", run, PIPELINE_BATCHES * batch_size)


def _gpu_peak_bytes():
    if not tf.config.list_logical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"]


def _reset_gpu_peak():
    if tf.config.list_logical_devices("GPU"):
        tf.config.experimental.reset_memory_stats("GPU:0")


def benchmark(whats, batch_size: int = 64, architecture: str = "vgg16", pri: int = 20, aux: int = 100,
              repeats: int = 5, warmup: int = 2, precision: str = "float32", jit: bool = False,
              strategy: str = "none") -> list:
    """Builds and warms up each piece, then times them round-robin.

    Returns:
      one dict per piece: what, images_per_s (median), seconds (median per repeat), cpu_seconds
      (median CPU time of this process per repeat, all threads: less sensitive than wall time to
      other processes sharing the cores), spread
      (max / min seconds over repeats, a noise gauge), peak_rss_mib (this process's peak resident
      memory once the piece was warm, cumulative over the pieces before it), peak_gpu_mib
      (peak GPU memory during its warm-up, None without a GPU).
    """
    timed, memory = [], {}
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
        timed.append(piece)
    seconds = {piece.name: [] for piece in timed}
    cpu_seconds = {piece.name: [] for piece in timed}
    for _ in range(repeats):
        for piece in timed:
            start, cpu_start = time.perf_counter(), time.process_time()
            piece.run()
            seconds[piece.name].append(time.perf_counter() - start)
            cpu_seconds[piece.name].append(time.process_time() - cpu_start)
    rows = []
    for piece in timed:
        median = statistics.median(seconds[piece.name])
        rows.append({"what": piece.name, "images_per_s": round(piece.images_per_run / median, 2),
                     "seconds": round(median, 6),
                     "cpu_seconds": round(statistics.median(cpu_seconds[piece.name]), 6),
                     "spread": round(max(seconds[piece.name]) / min(seconds[piece.name]), 2),
                     "peak_rss_mib": round(memory[piece.name][0]),
                     "peak_gpu_mib": None if memory[piece.name][1] is None else round(memory[piece.name][1])})
    return rows


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
    args = parser.parse_args()
    whats = args.what.split(",")
    unknown = [w for w in whats if w not in WHATS]
    if unknown:
        parser.error(f"--what: unknown {', '.join(unknown)}; choose from {', '.join(WHATS)}")
    if args.pri < 1 or args.aux < args.pri or args.aux % args.pri:
        parser.error(f"--aux={args.aux} must be a positive multiple of --pri={args.pri}")
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 1:
        parser.error("--batch_size, --repeats and --warmup must be at least 1")
    train.configure_runtime(args.deterministic)
    try:
        rows = benchmark(whats, args.batch_size, args.model, args.pri, args.aux, args.repeats, args.warmup,
                         args.precision, args.jit, args.strategy)
    except config_lib.ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    print(markdown_table(rows))
    print(json.dumps({"framework": f"tensorflow {tf.__version__}", "device": "GPU" if tf.config.list_logical_devices("GPU") else "CPU",
                      "cpus": os.cpu_count(), "batch_size": args.batch_size, "model": args.model,
                      "deterministic": args.deterministic, "precision": args.precision, "jit": args.jit,
                      "strategy": args.strategy,
                      **{r["what"] + "_images_per_s": r["images_per_s"] for r in rows}, "rows": rows}))


if __name__ == "__main__":
    main()
