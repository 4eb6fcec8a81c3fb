"""What every command line of the project shares (main.py and python -m maxl_tf.<command>).

- absl flags, parsed so that a bad value, an unknown flag or a missing --flagfile ends with one
  `error:` line and exit status 2, and --help prints the help with status 0;
- an errors.Error raised anywhere below main becomes `error: <message>` (`stopped: ...` for a
  signal) and exits with its status, without a traceback;
- TensorFlow is started only by the commands that need it, after their flags were checked, with
  the C++ start-up lines that TF_CPP_MIN_LOG_LEVEL cannot filter kept out of the output.

This module imports no TensorFlow itself.
"""

import contextlib
import dataclasses
import logging as std_logging
import os
import re
import signal
import sys
import textwrap

# C++ INFO and WARNING lines of TensorFlow once its logging is up; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags
from absl import logging

from maxl_tf import errors
from maxl_tf import runtime
from maxl_tf.experiment import config as config_lib

_HELP = ("--help", "-h", "-?", "--helpshort", "--helpfull")
_DEFINE = {
    bool: flags.DEFINE_bool,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    str: flags.DEFINE_string,
    tuple: flags.DEFINE_string,
}


def define_config_flags(flag_values=flags.FLAGS) -> None:
    """One flag per Config field, with the field's help and choices. Choices are checked by
    config.check_flags (one line, exit 2), not by DEFINE_enum; a tuple is a comma list."""
    for field in dataclasses.fields(config_lib.Config):
        help_text = field.metadata["help"]
        if field.metadata["choices"]:
            help_text += f" One of: {', '.join(field.metadata['choices'])}."
        default = ",".join(map(str, field.default)) if isinstance(field.default, tuple) else field.default
        _DEFINE[type(field.default)](field.name, default, help_text, flag_values=flag_values)


def config_from_flags(flag_values=flags.FLAGS) -> config_lib.Config:
    """The Config the flags of define_config_flags describe (not yet resolved: config.resolve)."""
    values = {field.name: flag_values[field.name].value for field in dataclasses.fields(config_lib.Config)}
    values["psi"] = config_lib.parse_psi(values["psi"])
    return config_lib.Config(**values)


def fail(error: errors.Error):
    """Prints `error: [context: ]message` (`stopped:` for a signal) and exits with its status."""
    word = "stopped" if isinstance(error, errors.Interrupted) else "error"
    print(f"{word}: {error.context + ': ' if error.context else ''}{error}", file=sys.stderr, flush=True)
    sys.exit(error.exit_code)


def _flag_help(flag) -> str:
    """One flag as --help shows it: name, help and default, wrapped."""
    name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
    text = f"{name}: {flag.help} (default: {flag.default_as_str})"
    return textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="      ")


def help_text(main, argv, groups=None) -> str:
    """What --help prints: the command's docstring, then its flags (by the topics of groups, as
    (title, flag names) pairs, where given), or every flag for --helpfull."""
    module = main.__module__
    text = (sys.modules[module].__doc__ or "").strip() + "\n\n"
    if "--helpfull" in argv:
        return text + flags.FLAGS.get_help()
    if not groups:  # absl keys the flags defined in a script (python -m) by its path
        own = flags.FLAGS.get_key_flags_for_module(sys.argv[0] if module == "__main__" else module)
        groups = [("Flags", sorted(flag.name for flag in own))] if own else []
    text += "\n\n".join(
        f"{title}:\n" + "\n".join(_flag_help(flags.FLAGS[name]) for name in names) for title, names in groups
    )
    return text + "\n\nEvery flag, the less common ones too: --helpfull."


def _parser(main, groups):
    def parse(argv):
        if any(arg in _HELP for arg in argv[1:]):
            print(help_text(main, argv, groups), flush=True)
            sys.exit(0)
        flags.FLAGS.set_gnu_getopt(True)  # flags may follow positional arguments (run folders)
        try:
            return flags.FLAGS(argv)
        except flags.CantOpenFlagFileError as e:  # absl: "ERROR:: Unable to open flagfile: [Errno 2] <why>: '<path>'"
            why = re.search(r"\] (.*): '(.*)'$", str(e))
            where = f"={why.group(2)}: cannot open it ({why.group(1)})" if why else f": {e}"
            fail(errors.Error(f"--flagfile{where}; pass an existing flags file, e.g. --flagfile=flags/quickstart.cfg."))
        except flags.Error as e:
            fail(errors.Error(f"{e}. See --help."))

    return parse


def _quiet_closed_pipe() -> None:
    """The reader of stdout went away (`maxl-tf ... | head -1`): stop as a Unix tool does on
    SIGPIPE, without a traceback, and keep Python's exit from failing on the final flush."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(128 + signal.SIGPIPE)


def _third_party_chatter(record) -> bool:
    """False for the INFO and WARNING lines other libraries send through absl's logger (e.g.
    tensorflow-datasets on its folders), which would stand before our own `error:` line."""
    return record.levelno >= std_logging.ERROR or "tensorflow_datasets" not in record.pathname


def run(main, help_groups=None) -> None:
    """Runs main(argv) as a command: argv holds the program name and the positional arguments.

    help_groups: (title, flag names) pairs that --help shows; without them, the flags that
    main's module defines."""

    def guarded(argv):
        logging.set_verbosity(logging.WARNING)  # absl's INFO lines (checkpoint sharding) are noise here
        logging.get_absl_logger().addFilter(_third_party_chatter)
        try:
            try:
                return main(argv)
            finally:
                sys.stdout.flush()  # a closed pipe shows here, not in Python's exit
        except BrokenPipeError:
            _quiet_closed_pipe()
        except errors.Error as e:
            fail(e)
        except KeyboardInterrupt:  # before a training run's own signal handling took over
            fail(errors.Interrupted("interrupted; rerun the same command to resume.", signal.SIGINT))

    # With TensorFlow imported at the top of a command's module, absl's start-up (between the flags
    # and main) makes CUDA speak; the quiet window covers it and closes when main is called.
    start_up = contextlib.ExitStack()
    start_up.enter_context(runtime.quiet_start_up())
    app.call_after_init(start_up.close)
    try:
        app.run(guarded, flags_parser=_parser(main, help_groups))
    except BrokenPipeError:  # in --help
        _quiet_closed_pipe()
    finally:
        start_up.close()
