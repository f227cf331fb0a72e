"""Shared fixtures: every engine-dependent test runs once per engine."""

import os
import shutil
import tempfile
import threading

import pytest

from fastsock import _backend

ENGINES = _backend.available()


@pytest.fixture(params=ENGINES)
def engine(request):
    """Switch fastsock to each available engine in turn."""
    with _backend.use(request.param):
        yield request.param


@pytest.fixture
def sock_dir():
    """A short private directory for Unix socket paths (108-byte limit)."""
    path = tempfile.mkdtemp(prefix="fs-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def open_fds():
    """The set of this process's open file descriptors (Linux and macOS)."""
    for path in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(path):
            return set(int(name) for name in os.listdir(path))
    pytest.skip("no way to list open descriptors on this platform")


@pytest.fixture
def no_leaks():
    """Fail the test if it leaves descriptors open or threads alive."""
    fds_before = open_fds()
    threads_before = set(threading.enumerate())
    yield
    leaked_threads = [t for t in threading.enumerate()
                      if t not in threads_before and t.is_alive()]
    for thread in leaked_threads:
        thread.join(2.0)
    leaked_threads = [t for t in leaked_threads if t.is_alive()]
    leaked_fds = open_fds() - fds_before
    assert not leaked_threads, f"threads left alive: {leaked_threads}"
    assert not leaked_fds, f"descriptors left open: {sorted(leaked_fds)}"
