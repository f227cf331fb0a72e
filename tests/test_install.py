"""fastsock.install(), uninstall(), is_installed() and ``python -m fastsock run``.

In-process tests swap ``sys.modules["socketserver"]`` and always put it back;
the behaviour of a fresh interpreter (install() before any import) is
checked in subprocesses, one per engine.
"""

import importlib
import json
import os
import socketserver
import subprocess
import sys
import threading
import types
import warnings

import pytest

import fastsock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(fastsock.__file__)))
SUBPROCESS_TIMEOUT = 60


def engine_env(engine):
    """Environment for a subprocess that must use ``engine`` and this fastsock."""
    env = dict(os.environ)
    env["FASTSOCK_PURE"] = "1" if engine == "python" else "0"
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [REPO, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_python(engine, args, cwd=None):
    return subprocess.run([sys.executable, *args], env=engine_env(engine),
                          cwd=cwd, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT)


def last_json_line(proc):
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1])


@pytest.fixture
def socketserver_entry():
    """Restore ``sys.modules["socketserver"]`` whatever the test does."""
    before = sys.modules.get("socketserver")
    try:
        yield before
    finally:
        fastsock.uninstall()
        if before is None:
            sys.modules.pop("socketserver", None)
        else:
            sys.modules["socketserver"] = before


def _stale_modules(message):
    """The module names listed in install()'s warning."""
    listed = message.split(" before install() by: ", 1)[1]
    return set(listed.split("; ", 1)[0].split(", "))


def _install_quietly():
    # This very module imported the standard socketserver: install() names it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fastsock.install()


# --- in process -----------------------------------------------------------

def test_install_and_uninstall_are_idempotent(engine, socketserver_entry):
    assert socketserver_entry is socketserver  # the standard module
    assert not fastsock.is_installed()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fastsock.install()
        fastsock.install()
    assert fastsock.is_installed()
    assert sys.modules["socketserver"] is fastsock
    assert importlib.import_module("socketserver") is fastsock
    # Only the first call looked for stale modules and warned.
    assert len([w for w in caught if w.category is RuntimeWarning]) == 1

    fastsock.uninstall()
    assert not fastsock.is_installed()
    assert sys.modules["socketserver"] is socketserver
    fastsock.uninstall()
    assert sys.modules["socketserver"] is socketserver
    assert importlib.import_module("socketserver") is socketserver


def test_uninstall_forgets_a_module_never_imported(engine, socketserver_entry,
                                                   monkeypatch):
    monkeypatch.delitem(sys.modules, "socketserver")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing imported it: no warning
        fastsock.install()
    assert fastsock.is_installed()
    fastsock.uninstall()
    assert "socketserver" not in sys.modules


def test_warning_names_each_module_that_imported_socketserver_first(
        engine, socketserver_entry, monkeypatch):
    bound = types.ModuleType("fs_probe_bound")
    bound.socketserver = socketserver  # import socketserver

    derived = types.ModuleType("fs_probe_derived")

    class EchoServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
        pass
    derived.EchoServer = EchoServer

    imported_class = types.ModuleType("fs_probe_imported_class")
    imported_class.StreamRequestHandler = socketserver.StreamRequestHandler

    clean = types.ModuleType("fs_probe_clean")
    clean.socketserver = fastsock  # import fastsock as socketserver
    clean.Server = type("Server", (fastsock.TCPServer,), {})
    clean.Selector = socketserver._ServerSelector  # a selectors class
    clean.Other = type("Other", (), {})

    for module in (bound, derived, imported_class, clean):
        monkeypatch.setitem(sys.modules, module.__name__, module)

    with pytest.warns(RuntimeWarning) as record:
        fastsock.install()
    assert len(record) == 1
    assert record[0].filename == __file__  # points at the caller
    named = _stale_modules(str(record[0].message))
    assert {"fs_probe_bound", "fs_probe_derived", "fs_probe_imported_class",
            __name__} <= named
    assert "fs_probe_clean" not in named
    assert not any(name.startswith("fastsock") for name in named)
    # Nothing was patched in place: the stale modules keep what they had.
    assert bound.socketserver is socketserver
    assert EchoServer.__mro__[1] is socketserver.ThreadingMixIn


def test_install_from_many_threads_at_once(engine, socketserver_entry,
                                           monkeypatch):
    original = types.ModuleType("socketserver")
    monkeypatch.setitem(sys.modules, "socketserver", original)
    barrier = threading.Barrier(8)
    errors = []

    def race():
        try:
            barrier.wait(5)
            fastsock.install()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not errors
    assert fastsock.is_installed()
    # Whichever thread won, what uninstall() restores is the original,
    # never fastsock recorded by a second installer.
    fastsock.uninstall()
    assert sys.modules["socketserver"] is original


def test_fastsock_public_names_stay_socketservers(engine, socketserver_entry):
    _install_quietly()
    assert "install" not in fastsock.__all__
    assert sorted(fastsock.__all__) == sorted(socketserver.__all__)


# --- fresh interpreters ---------------------------------------------------

AFTER_INSTALL = """
import json, sys
import fastsock
fastsock.install()
import socketserver, http.server, xmlrpc.server, wsgiref.simple_server
import logging.config
report = {
    "backend": fastsock.BACKEND,
    "installed": fastsock.is_installed(),
    "socketserver_is_fastsock": socketserver is fastsock,
    "http_server": issubclass(http.server.ThreadingHTTPServer,
                              fastsock.ThreadingMixIn),
    "http_handler": issubclass(http.server.SimpleHTTPRequestHandler,
                               fastsock.StreamRequestHandler),
    "xmlrpc": issubclass(xmlrpc.server.SimpleXMLRPCServer, fastsock.TCPServer),
    "wsgiref": issubclass(wsgiref.simple_server.WSGIServer, fastsock.TCPServer),
    "logging": logging.config.ThreadingTCPServer is fastsock.ThreadingTCPServer,
}
fastsock.uninstall()
report["uninstalled"] = "socketserver" not in sys.modules
import socketserver as fresh
report["fresh_is_stdlib"] = (fresh is not fastsock
                             and fresh.TCPServer is not fastsock.TCPServer)
print(json.dumps(report))
"""


def test_modules_imported_after_install_run_on_fastsock(engine):
    proc = run_python(engine, ["-W", "error::RuntimeWarning",
                               "-c", AFTER_INSTALL])
    assert proc.returncode == 0, proc.stderr
    report = last_json_line(proc)
    assert report.pop("backend") == engine
    assert all(report.values()), report
    assert "Warning" not in proc.stderr


IMPORTED_TOO_EARLY = """
import json
import http.server, http.client, email.message
import fastsock
fastsock.install()
print(json.dumps({
    "installed": fastsock.is_installed(),
    "http_server_untouched": not issubclass(http.server.HTTPServer,
                                            fastsock.TCPServer),
}))
"""


def test_install_warns_about_http_server_imported_first(engine):
    proc = run_python(engine, ["-c", IMPORTED_TOO_EARLY])
    assert proc.returncode == 0, proc.stderr
    assert last_json_line(proc) == {"installed": True,
                                    "http_server_untouched": True}
    warning = [line for line in proc.stderr.splitlines()
               if "RuntimeWarning" in line]
    assert len(warning) == 1, proc.stderr
    # Exactly http.server among the ~80 modules loaded: not http.client or
    # email, which never saw socketserver, nor __main__, nor fastsock.
    assert _stale_modules(warning[0]) == {"http.server"}, warning[0]


# --- python -m fastsock run -----------------------------------------------

PROBE = """
import json, os, sys
import socketserver
import http.server
import fastsock

class Point:  # classes of __main__ pickle as they would run directly
    pass

import pickle
pickle.loads(pickle.dumps(Point()))
print(json.dumps({
    "name": __name__,
    "argv": sys.argv,
    "path0": sys.path[0],
    "file": os.path.realpath(__file__),
    "main_is_this": sys.modules["__main__"].Point is Point,
    "backend": fastsock.BACKEND,
    "installed": socketserver is fastsock,
    "http_on_fastsock": issubclass(http.server.HTTPServer, fastsock.TCPServer),
}))
sys.exit(int(sys.argv[-1]))
"""


@pytest.fixture
def program(tmp_path):
    """A package ``fsprobe`` in tmp_path/lib, with the probe as a module."""
    package = tmp_path / "lib" / "fsprobe"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "probe.py").write_text(PROBE)
    return package / "probe.py"


def _compare_runs(direct, wrapped, expected_status):
    assert direct.returncode == expected_status, direct.stderr
    assert wrapped.returncode == expected_status, wrapped.stderr
    plain, installed = last_json_line(direct), last_json_line(wrapped)
    assert plain.pop("installed") is False
    assert plain.pop("http_on_fastsock") is False
    assert installed.pop("installed") is True
    assert installed.pop("http_on_fastsock") is True
    assert installed == plain
    return installed


def test_run_script_as_if_run_directly(engine, program, tmp_path):
    args = [os.path.relpath(program, tmp_path), "a b", "--flag", "7"]
    direct = run_python(engine, args, cwd=tmp_path)
    wrapped = run_python(engine, ["-m", "fastsock", "run", *args],
                         cwd=tmp_path)
    seen = _compare_runs(direct, wrapped, 7)
    assert seen["name"] == "__main__"
    assert seen["argv"] == args
    assert seen["path0"] == os.path.realpath(program.parent)
    assert seen["main_is_this"] is True
    assert seen["backend"] == engine


def test_run_module_as_if_run_with_dash_m(engine, program, tmp_path):
    cwd = tmp_path / "lib"
    direct = run_python(engine, ["-m", "fsprobe.probe", "x", "0"], cwd=cwd)
    wrapped = run_python(
        engine, ["-m", "fastsock", "run", "-m", "fsprobe.probe", "x", "0"],
        cwd=cwd)
    seen = _compare_runs(direct, wrapped, 0)
    assert seen["name"] == "__main__"
    assert seen["argv"] == [str(program), "x", "0"]
    assert seen["path0"] == str(cwd)
    assert seen["backend"] == engine


def test_run_reports_failures_like_python(engine, tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("raise LookupError('from the script')\n")
    proc = run_python(engine, ["-m", "fastsock", "run", str(script)])
    assert proc.returncode == 1
    assert "LookupError: from the script" in proc.stderr

    proc = run_python(engine, ["-m", "fastsock", "run",
                               str(tmp_path / "missing.py")])
    assert proc.returncode == 2
    assert "missing.py" in proc.stderr

    proc = run_python(engine, ["-m", "fastsock", "run", "-m",
                               "fs_no_such_package.module"])
    assert proc.returncode == 1
    assert "fs_no_such_package.module" in proc.stderr

    proc = run_python(engine, ["-m", "fastsock", "bogus"])
    assert proc.returncode == 2
    assert "usage:" in proc.stderr
