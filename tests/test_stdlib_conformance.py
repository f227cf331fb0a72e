"""CPython's own test.test_socketserver, run against fastsock.

Every test must pass except ``MiscTestCase.test_all``, which requires public
objects to report ``__module__ == "socketserver"``; fastsock's classes keep
their true module, and test_api_parity checks the equivalent property.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from fastsock import _backend

HERE = os.path.dirname(os.path.abspath(__file__))
EXPECTED_FAILURES = {"test.test_socketserver.MiscTestCase.test_all"}

if importlib.util.find_spec("test.test_socketserver") is None:
    pytest.skip("this interpreter ships no test package",
                allow_module_level=True)


@pytest.mark.parametrize("engine_name", _backend.available())
def test_cpython_socketserver_suite(engine_name):
    env = dict(os.environ)
    env["FASTSOCK_PURE"] = "1" if engine_name == "python" else "0"
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "_run_stdlib_suite.py")],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.stdout, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["backend"] == engine_name
    assert report["ran"] >= 20
    assert set(report["failed"]) == EXPECTED_FAILURES, proc.stderr[-4000:]
