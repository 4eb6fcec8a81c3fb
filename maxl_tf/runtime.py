"""TensorFlow's start in a process: its C++ start-up lines kept out of the output, and the
process-wide settings (threads, GPU memory growth, determinism) set before its runtime starts.

The lowest layer beside errors.py: the data layer (tfds) and every command start TensorFlow
through here. Importing this module imports no TensorFlow.
"""

import contextlib
import os
import re
import sys
import tempfile

# C++ INFO and WARNING lines of TensorFlow once its logging is up; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# oneDNN's CPU kernels, which TensorFlow turns on by default only on CPUs with AVX-512 VNNI or
# BF16, AVX-VNNI or AMX. On an AVX2 CPU they ran the VGG-16 steps 1.2x (single-task) and 1.3-1.5x
# (MAXL) faster (docs/measurements.md, "oneDNN on CPUs without AVX-512"), so they are on wherever
# the user has not chosen; set before TensorFlow loads, which reads it once. Determinism and exact
# resume hold under either setting (the suite runs under this one and reruns the precision checks
# under the other: tests/onednn_test.py).
ONEDNN_CHOSEN = "TF_ENABLE_ONEDNN_OPTS" not in os.environ
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# Lines TensorFlow's C++ runtime writes to stderr while it loads, before its logging can be
# configured: notices about oneDNN, CPU instructions, CUDA drivers and GPU libraries, none of
# which says anything is wrong with a run.
_START_UP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|"
    r"Could not find cuda drivers|failed call to cuInit|This TensorFlow binary is optimized|"
    r"To enable the following instructions|Unable to register cu\w+ factory|"
    r"computation placer already registered|TF-TRT Warning|"
    # libjpeg's own lines while data/images.py decodes: a damaged file is then one error naming it.
    r"Premature end of JPEG file|Corrupt JPEG data|Invalid JPEG file structure|"
    r"oneDNN supports DT_UINT8 only"
)


@contextlib.contextmanager
def quiet_start_up():
    """Keeps TensorFlow's C++ start-up lines out of the output: file descriptor 2 points at a
    temporary file meanwhile, and the lines that are not known noise are printed back after.

    Wrap the first `import tensorflow` of a command and its first device query in it; once
    TensorFlow's logging is up, TF_CPP_MIN_LOG_LEVEL filters the rest.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if line.strip() and not _START_UP_NOISE.search(line):
                    print(line, file=sys.stderr)


# CPU flags (/proc/cpuinfo) on which TensorFlow turns its oneDNN kernels on by default.
_ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")


def cpu_description() -> dict:
    """What kernels a CPU run gets: the CPU's model name, its vector flags, and whether
    TensorFlow's oneDNN kernels are on and why (TF_ENABLE_ONEDNN_OPTS, else TensorFlow's default
    for this CPU). Linux's /proc/cpuinfo; elsewhere the flags are unknown (None)."""
    model, flags = None, None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                elif key.strip() == "flags" and flags is None:
                    flags = set(value.split())
    except OSError:
        pass
    has = (lambda flag: flag in flags) if flags is not None else (lambda flag: None)  # noqa: E731
    setting = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    if setting is not None:
        chosen = "maxl_tf's default" if ONEDNN_CHOSEN and setting == "1" else f"TF_ENABLE_ONEDNN_OPTS={setting}"
        onednn = f"{'on' if setting.strip() in ('1', 'true', 'True') else 'off'} ({chosen})"
    elif flags is not None:
        default = any(flag in flags for flag in _ONEDNN_DEFAULT_FLAGS)
        onednn = f"{'on' if default else 'off'} (TensorFlow's default for this CPU)"
    else:
        onednn = "unknown"
    return {
        "model": model,
        "avx2": has("avx2"),
        "avx512": has("avx512f"),
        "avx512_vnni": has("avx512_vnni"),
        "avx512_bf16": has("avx512_bf16"),
        "amx": has("amx_tile"),
        "onednn": onednn,
    }


def start_tensorflow(deterministic: bool = True, start_runtime: bool = True):
    """Imports TensorFlow without its start-up noise and sets the process-wide runtime; returns tf.

    Call it once, in a command's main, before any TensorFlow op runs. On CPUs, intra-op threads =
    cores and a single inter-op thread run VGG steps much faster than TensorFlow's defaults
    (the project's brief, outside this repository, measured it). On GPUs, memory grows as needed
    instead of TensorFlow taking nearly all of it at the start, so several workers of a sweep can
    share one GPU (BUILD.md, "Several runs on one GPU"). Determinism makes every op reproducible, so resumes are exact.

    start_runtime=False leaves the runtime's start to the first op: MultiWorkerMirroredStrategy
    configures its collective ops when it is built, which must come before the runtime starts.
    """
    with quiet_start_up():
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        if not gpus and "TF_NUM_INTRAOP_THREADS" not in os.environ:  # TensorFlow's own variable wins
            tf.config.threading.set_intra_op_parallelism_threads(len(os.sched_getaffinity(0)))
            tf.config.threading.set_inter_op_parallelism_threads(1)
        if deterministic:
            tf.config.experimental.enable_op_determinism()
        if start_runtime:
            tf.config.list_logical_devices()  # starts the runtime, after the settings: cuInit speaks here
    # Each run of a sweep, and each benchmark piece, compiles its own step functions by design;
    # TensorFlow's heuristic reports that as functions retraced in a loop, twice per run.
    tf.get_logger().addFilter(lambda record: "triggered tf.function retracing" not in record.getMessage())
    return tf
