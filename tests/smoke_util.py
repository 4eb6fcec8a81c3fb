"""Shared by the end-to-end suites: the smoke preset as a Config, the runs a test session trains
once for several suites, and main.py as a subprocess."""

import dataclasses
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile

from absl import flags

from maxl_tf import cli
from maxl_tf import main
from maxl_tf.experiment import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_FLAGFILE = os.path.join(REPO, "flags", "smoke.cfg")


def smoke_config(logdir: str, **overrides) -> config_lib.Config:
    """flags/smoke.cfg, parsed by main.py's own flag definitions, with overrides."""
    flag_values = flags.FlagValues()
    main.define_flags(flag_values)
    flag_values(["main.py", f"--flagfile={SMOKE_FLAGFILE}"])
    return dataclasses.replace(cli.config_from_flags(flag_values), logdir=logdir, **overrides)


SHARED_RUNS = "MAXL_TF_TEST_SHARED_RUNS"  # set by conftest.py: a folder the test session's processes share


def finished_run(**overrides) -> str:
    """The log directory of a complete run of flags/smoke.cfg with overrides, trained once per test
    session and shared by the suites that read it or compare with it: copy it before changing it.
    The first process to ask trains it in-process; under pytest-xdist the others wait on a lock.
    Its numbers equal a main.py process's: conftest.py gives the workers and what they start the
    same TensorFlow threads."""
    if SHARED_RUNS not in os.environ:  # a suite run without pytest
        os.environ[SHARED_RUNS] = tempfile.mkdtemp(prefix="maxl_tf_tests_")
    name = "_".join(["smoke", *(f"{key}={value}" for key, value in sorted(overrides.items()))])
    logdir = os.path.join(os.environ[SHARED_RUNS], name)
    with open(logdir + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(logdir + ".done"):  # trained where it stays: its flags.cfg names it
            from maxl_tf.experiment import train  # here: most users of this module never train

            train.train_and_evaluate(smoke_config(logdir, **overrides), progress=False)
            open(logdir + ".done", "w").close()
    return logdir


def copy_run(source: str, logdir: str) -> str:
    """A copy of the run in source at logdir, its recorded --logdir made logdir's, as if it had
    been trained there (a rerun of a moved run rewrites them first). Returns logdir."""
    shutil.copytree(source, logdir)
    for name in ("config.json", "flags.cfg", "results.json"):
        path = os.path.join(logdir, name)
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace(source, logdir))
    return logdir


def main_command(*args) -> list:
    return [sys.executable, os.path.join(REPO, "main.py"), "--noprogress", *args]


# A command run as a user runs it, recording on its last stderr line whether TensorFlow was imported.
_RECORDING_IMPORTS = """
import runpy, sys
target, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
try:
    run = runpy.run_path if target.endswith(".py") else runpy.run_module
    run(target, run_name="__main__")
finally:
    sys.stderr.write("tensorflow imported: %s\\n" % ("tensorflow" in sys.modules))
"""


def run_recording_imports(target: str, *args, timeout=120) -> tuple:
    """Runs main.py (a path) or `python -m <module>`; returns (exit status, stdout, stderr without
    the record, whether TensorFlow was imported)."""
    process = subprocess.run(
        [sys.executable, "-c", _RECORDING_IMPORTS, target, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=REPO),
    )
    stderr, _, imported = process.stderr.rpartition("tensorflow imported: ")
    return process.returncode, process.stdout, stderr, imported.strip() == "True"


def run_python(*args, timeout=300, cwd=REPO, **env) -> subprocess.CompletedProcess:
    """Runs `python ARGS` in the repository (or cwd), as a user runs it from the clone, to
    completion; returns the process with text stdout/stderr. env: variables to add to the environment."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=REPO, **env),
    )


def run_main(*args, timeout=300) -> subprocess.CompletedProcess:
    """Runs main.py to completion; returns the process with text stdout/stderr."""
    return run_python(*main_command(*args)[1:], timeout=timeout)
