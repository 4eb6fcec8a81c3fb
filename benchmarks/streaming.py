"""Streamed against in-memory data on a generated folder: peak memory, input speed, first step.

    python benchmarks/streaming.py --images=100000 --folder=/tmp/stream_bench

Writes the folder once (10 class folders of random 32x32 RGB PNGs), then runs each mode in a
fresh process (so peak RSS is the mode's own): decodes the folder into an empty cache, reads an
epoch of the training pipeline (the batches a run sees, raw float pixels), and times single-task
steps of vgg_small on them. Prints one line per mode and a markdown table for
docs/measurements.md.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_folder(folder: str, images: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    per_class = images // 10
    for label in range(10):
        class_dir = os.path.join(folder, f"class{label}")
        os.makedirs(class_dir, exist_ok=True)
        existing = len(os.listdir(class_dir))
        for i in range(existing, per_class):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(class_dir, f"{i:06d}.png"), compress_level=1)


def measure(folder: str, stream: str, cache: str, steps: int) -> dict:
    """One mode, in this process."""
    sys.path.insert(0, REPO)
    from maxl_tf import runtime

    tf = runtime.start_tensorflow()
    from maxl_tf.core import evaluator
    from maxl_tf.data import folder as folder_lib
    from maxl_tf.data import pipeline
    from maxl_tf.data import source as source_lib
    from maxl_tf.models import vgg

    start = time.perf_counter()
    options = source_lib.Options(data_dir=folder, cache_dir=cache, stream=stream, test_fraction=0.1)
    loaded = folder_lib.Folder(options).load()
    decoded = time.perf_counter() - start
    split = loaded.train
    examples = pipeline.Examples(split.images, split.labels, np.zeros(len(split.labels), np.int64))
    train = pipeline.Pipeline(examples)
    batch = 100
    order = pipeline.epoch_order(np.arange(len(split.labels)), (len(split.labels) // batch) * batch, 0, 0, 0)
    t0 = time.perf_counter()
    count = 0
    for item in train.batches(order, batch, augment_seed=(0, 0, 0)):
        count += int(item["images"].shape[0])
    input_rate = count / (time.perf_counter() - t0)

    import keras

    model = vgg.build_evaluator((32, 32, 3), 10, 0, "vgg_small")
    optimizer = keras.optimizers.SGD(0.01)

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = evaluator.outputs(model(images, training=True))[0]
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    stream_of_batches = iter(train.batches(order, batch, augment_seed=(0, 0, 0)))
    item = next(stream_of_batches)
    step(item["images"], item["labels"]).numpy()
    first_step = time.perf_counter() - start
    t0 = time.perf_counter()
    for _ in range(steps):
        item = next(stream_of_batches)
        step(item["images"], item["labels"]).numpy()
    step_rate = steps * batch / (time.perf_counter() - t0)
    return {
        "mode": "streamed" if loaded.streamed else "in memory",
        "images": len(split.labels) + len(loaded.test.labels),
        "decode_s": round(decoded, 1),
        "first_step_s": round(first_step, 1),
        "input_images_per_s": round(input_rate),
        "single_task_images_per_s": round(step_rate),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--folder", default="/tmp/stream_bench")
    parser.add_argument("--steps", type=int, default=30, help="single-task steps timed per mode")
    parser.add_argument("--mode", choices=("on", "off"), help=argparse.SUPPRESS)  # the child's mode
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args.folder, args.mode, args.cache, args.steps)))
        return
    write_folder(args.folder, args.images)
    rows = []
    for mode in ("off", "on"):
        cache = os.path.join(args.folder + "_cache", mode)
        for name in os.listdir(cache) if os.path.isdir(cache) else []:
            os.remove(os.path.join(cache, name))  # every mode decodes from scratch
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                f"--folder={args.folder}",
                f"--mode={mode}",
                f"--cache={cache}",
                f"--steps={args.steps}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
