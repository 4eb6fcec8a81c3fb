"""Shared by the end-to-end suites: the smoke preset as a Config, and main.py as a subprocess."""

import dataclasses
import os
import subprocess
import sys

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


def run_python(*args, timeout=300, **env) -> subprocess.CompletedProcess:
    """Runs `python ARGS` in the repository, as a user runs it from the clone, to completion;
    returns the process with text stdout/stderr. env: variables to add to the environment."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=REPO, **env),
    )


def run_main(*args, timeout=300) -> subprocess.CompletedProcess:
    """Runs main.py to completion; returns the process with text stdout/stderr."""
    return run_python(*main_command(*args)[1:], timeout=timeout)
