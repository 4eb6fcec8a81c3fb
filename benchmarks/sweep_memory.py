"""Memory of one sweep process, run by run: does a long sweep grow?

    PYTHONPATH=. python benchmarks/sweep_memory.py [--runs=50] [--logdir=/tmp/sweep_memory]

Runs flags/smoke.cfg over seeds 0..runs-1 in this process, as main.py's sweep does
(sweep.run -> train.train_and_evaluate), and prints the resident set size (RSS, from
/proc/self/status) after each run, then the growth per run over the second half (the first runs
warm caches: TensorFlow's kernels, the data set). docs/measurements.md has the figures.
"""

import argparse
import functools
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--logdir", default="/tmp/sweep_memory")
    args = parser.parse_args()
    shutil.rmtree(args.logdir, ignore_errors=True)

    from absl import flags

    from maxl_tf import main as main_module
    from maxl_tf import runtime
    from maxl_tf.experiment import sweep

    main_module.define_flags()
    seeds = ",".join(map(str, range(args.runs)))
    flags.FLAGS(["sweep_memory", "--flagfile=flags/smoke.cfg", f"--seeds={seeds}", f"--logdir={args.logdir}"])
    runs = main_module.runs_from_flags()
    runtime.start_tensorflow(runs[0].config.deterministic)
    from maxl_tf.experiment import train

    sizes = []

    def train_and_measure(run, claim=None):
        results = train.train_and_evaluate(run, progress=False, claim=claim)
        sizes.append(rss_mib())
        print(f"run {len(sizes)}: RSS {sizes[-1]:.0f} MiB", flush=True)
        return results

    start = time.perf_counter()
    sweep.run(runs, functools.partial(train_and_measure))
    half = len(sizes) // 2
    growth = (sizes[-1] - sizes[half - 1]) / (len(sizes) - half) if half else float("nan")
    print(
        f"{len(sizes)} runs in {time.perf_counter() - start:.0f} s: RSS {sizes[0]:.0f} MiB after the first, "
        f"{sizes[-1]:.0f} MiB after the last; {growth:+.2f} MiB per run over runs {half}..{len(sizes)}"
    )


if __name__ == "__main__":
    main()
