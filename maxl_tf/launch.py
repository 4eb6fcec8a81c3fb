"""Starts N workers of one sweep command on this machine; they share its runs (maxl_tf/experiment/claims.py).

  python -m maxl_tf.launch --workers=4 -- python main.py --flagfile=flags/fig3_sweep.cfg
  python -m maxl_tf.launch --workers=8 --gpus=0,1,2,3 -- python main.py ...   # two per GPU

Worker i runs the command with CUDA_VISIBLE_DEVICES set to the (i mod G)-th entry of --gpus
(G entries), and its output lines start with `[worker i] `. Ctrl-C or SIGTERM is passed on to
every worker once: each stops at its next step after a checkpoint and frees its run; a second one
stops them at once. The exit status is the first non-zero status among the workers, else 0.

A launcher rather than a --workers flag of main.py: one main.py process stays one worker, the
unit a cluster scheduler starts on other hosts (srun, a job array), and the launcher neither
imports TensorFlow nor touches a GPU, so it cannot take memory the workers need.
"""

import os
import signal
import subprocess
import sys
import threading

from absl import flags

from maxl_tf import cli
from maxl_tf import errors

_WORKERS = flags.DEFINE_integer("workers", 2, "How many copies of the command to start.")
_GPUS = flags.DEFINE_string(
    "gpus",
    "",
    "Comma-separated GPU ids, e.g. 0,1: worker i sees only the "
    "(i mod G)-th (CUDA_VISIBLE_DEVICES). Empty: every worker sees "
    "the GPUs this process sees.",
)


def _copy_lines(source, destination, prefix: str, lock: threading.Lock) -> None:
    """Copies a worker's lines, prefixed. Once our own reader went away (`| head`), the lines are
    read and dropped: the worker would block on a full pipe, and it trains on."""
    for line in source:
        with lock:
            try:
                destination.write(prefix + line)
                destination.flush()
            except BrokenPipeError:
                pass


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # -N: killed by signal N


def main(argv):
    command = argv[1:]
    if not command:
        raise errors.Error(
            "no command to start; put it after --, e.g. python -m maxl_tf.launch "
            "--workers=2 -- python main.py --flagfile=flags/digits_sweep.cfg"
        )
    if _WORKERS.value < 1:
        raise errors.Error(f"--workers={_WORKERS.value}: must be at least 1.")
    gpus = [gpu.strip() for gpu in _GPUS.value.split(",") if gpu.strip()]
    workers, copiers, lock, received = [], [], threading.Lock(), []

    def pass_on(signum, frame):
        received.append(signum)
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):  # before the first worker starts: none is missed
        signal.signal(signum, pass_on)
    for i in range(_WORKERS.value):
        if received:  # stopped while starting: start no more
            break
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        try:
            # A session of its own: a terminal's Ctrl-C reaches the launcher only, which passes it on once.
            worker = subprocess.Popen(
                command,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
        except OSError as e:
            for started in workers:
                started.terminate()
            raise errors.Error(f"cannot start {command[0]} ({e.strerror}); check the command after --.") from None
        workers.append(worker)
        for source, destination in ((worker.stdout, sys.stdout), (worker.stderr, sys.stderr)):
            copier = threading.Thread(target=_copy_lines, args=(source, destination, f"[worker {i}] ", lock))
            copier.start()
            copiers.append(copier)
    statuses = [_exit_status(worker.wait()) for worker in workers]
    for copier in copiers:
        copier.join()
    sys.exit(next((status for status in statuses if status), 0))


def command() -> None:
    """maxl-tf launch and python -m maxl_tf.launch."""
    cli.run(main)


if __name__ == "__main__":
    command()
