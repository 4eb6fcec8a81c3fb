"""The project's one error convention.

Whatever a user can fix (a flag, a file, missing data, a log directory in the way) is raised as
an `Error` whose message is one line naming the flag or file and the fix. Library code raises it
and never catches it to re-wrap it; the command-line entry points (maxl_tf/cli.py) print
`error: <message>` and exit with its status: 2 for bad input, 1 for a run that diverged,
128 + signal number for a run stopped by a signal. ClaimLost is caught by main.py's sweep loop,
which moves on to the next run.
"""


class Error(Exception):
    """Bad input or a run that cannot go on; str(error) is the message shown to the user."""

    exit_code = 2
    context = ""  # what it happened to, shown before the message: the run of a sweep that failed


class NonFiniteLoss(Error):
    """A loss became NaN or infinite; nothing after the last checkpoint was saved."""

    exit_code = 1


class Interrupted(Error):
    """A run stopped on SIGINT or SIGTERM after saving a checkpoint; rerunning resumes it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class ClaimLost(Error):
    """Another worker of the sweep took the run over (this one was paused or cut off for longer
    than --heartbeat_timeout); nothing was written after that was seen (maxl_tf/experiment/claims.py)."""

    exit_code = 75  # EX_TEMPFAIL: the run goes on elsewhere


def first_line(error: BaseException, limit: int = 300) -> str:
    """'TypeName: first line of its message', or just the type name for an empty message.

    For quoting a third-party exception inside one of ours without its traceback; a line over
    `limit` characters is cut at a space and ends in " ...".
    """
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else ""
    if len(line) > limit:  # cut at a word's end, never inside one ("Checksum does" + "n't")
        cut = line[: limit + 1].rsplit(" ", 1)[0] if " " in line[:limit] else line[:limit]
        line = cut.rstrip(" ,;:") + " ..."
    return f"{type(error).__name__}: {line}" if line else type(error).__name__
