"""pytest settings for the tf.test suites."""

import os
import shutil
import tempfile

from tests import smoke_util


def pytest_collection_modifyitems(items):
    """tf.test.TestCase has a `test_session` helper that pytest collects and reports as skipped.
    The classes that train whole runs (marked slow) come first: pytest-xdist hands out classes in
    this order (pytest_configure), so the many short ones fill the workers' ends, not a minute-long
    class."""
    items[:] = [item for item in items if item.name != "test_session"]
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order otherwise


def pytest_configure(config):
    """Under pytest-xdist, each worker (and what it starts) runs TensorFlow on one thread: two
    workers' thread pools of two spinning threads each would compete for the two cores. Thread
    counts set in the environment win, as in runtime.start_tensorflow, so the precision checks can
    be run under other counts (TF_NUM_INTRAOP_THREADS=2 pytest -n 2 ...). And its --dist
    loadscope keeps the collection's order of classes, instead of putting the classes with the
    fewest tests (here the longest) last."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_sessionstart(session):
    """One folder for smoke_util.finished_run, made by the first process (pytest, or xdist's
    controller, which starts the workers after this and so hands them the variable)."""
    if smoke_util.SHARED_RUNS not in os.environ:
        os.environ[smoke_util.SHARED_RUNS] = tempfile.mkdtemp(prefix="maxl_tf_tests_")
        session.config.add_cleanup(lambda: shutil.rmtree(os.environ.pop(smoke_util.SHARED_RUNS), ignore_errors=True))
