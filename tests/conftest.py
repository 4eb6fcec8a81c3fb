"""pytest settings for the tf.test suites."""

import os


def pytest_collection_modifyitems(items):
    """tf.test.TestCase has a `test_session` helper that pytest collects and reports as skipped."""
    items[:] = [item for item in items if item.name != "test_session"]


def pytest_configure(config):
    """Under pytest-xdist, each worker (and what it starts) runs TensorFlow on one thread: two
    workers' thread pools of two spinning threads each would compete for the two cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = "1"
