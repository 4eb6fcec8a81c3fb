"""Ctrl-C and SIGTERM as requests to stop at the next step boundary, after a checkpoint."""

import signal


class StopRequests:
    """Turns SIGINT/SIGTERM into a request the loop honours at the next step boundary.

    A second signal of the same kind kills the process at once (the default action), so a stuck
    run can still be stopped; it then resumes from the last checkpoint.
    """

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        signal.signal(signum, signal.SIG_DFL)

    @property
    def reason(self) -> str:
        return f"signal {self.signum}" if self.signum is not None else "a signal on another worker"

    @property
    def exit_signal(self) -> int:
        """The signal to report in the exit status: this process's, else SIGTERM (another
        worker's, which stopped the whole cluster)."""
        return self.signum if self.signum is not None else signal.SIGTERM

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
