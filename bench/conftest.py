"""Let ``python -m pytest bench/ --benchmark-only`` run the micro-benchmarks.

pyproject's addopts pass --benchmark-disable so that the normal suite runs
each benchmark once as a test; pytest-benchmark refuses --benchmark-only
next to it.  Asking for --benchmark-only means wanting them timed.
"""

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if config.getoption("benchmark_only", False):
        config.option.benchmark_enable = True
