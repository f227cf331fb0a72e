"""Run the interpreter's own test.test_socketserver against fastsock.

Run as a script in a subprocess (it replaces ``socketserver`` in
``sys.modules``); prints one JSON line with the names of the tests that
failed, errored or were skipped, and how many ran.
"""

import json
import sys
import unittest

import fastsock

sys.modules["socketserver"] = fastsock

from test import test_socketserver  # noqa: E402

suite = unittest.defaultTestLoader.loadTestsFromModule(test_socketserver)
result = unittest.TextTestRunner(stream=sys.stderr, verbosity=2).run(suite)
print(json.dumps({
    "backend": fastsock.BACKEND,
    "ran": result.testsRun,
    "failed": sorted(test.id() for test, _ in result.failures + result.errors),
    "skipped": sorted(test.id() for test, _ in result.skipped),
}))
