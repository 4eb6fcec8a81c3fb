"""pytest settings for the tf.test suites."""


def pytest_collection_modifyitems(items):
    """tf.test.TestCase has a `test_session` helper that pytest collects and reports as skipped."""
    items[:] = [item for item in items if item.name != "test_session"]
