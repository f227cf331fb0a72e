"""fastsock's public API matches the running interpreter's socketserver."""

import inspect
import os
import socketserver
import subprocess
import sys

import pytest

import fastsock


def test_all_names_match_stdlib():
    assert sorted(fastsock.__all__) == sorted(socketserver.__all__)


def test_every_exported_name_is_fastsock_own():
    # The equivalent of CPython's MiscTestCase.test_all: every public class
    # comes from fastsock itself, none is the stdlib's object re-exported.
    for name in fastsock.__all__:
        ours = getattr(fastsock, name)
        assert ours is not getattr(socketserver, name), name
        assert ours.__module__.startswith("fastsock"), name
        assert ours.__name__ == name


def _public_attrs(cls):
    return {name for klass in cls.__mro__ if klass is not object
            for name in vars(klass) if not name.startswith("_")}


@pytest.mark.parametrize("name", socketserver.__all__)
def test_class_has_stdlib_attributes_and_defaults(name):
    theirs, ours = getattr(socketserver, name), getattr(fastsock, name)
    missing = _public_attrs(theirs) - _public_attrs(ours)
    assert not missing, f"{name} lacks {sorted(missing)}"
    for attr in _public_attrs(theirs):
        their_value = getattr(theirs, attr)
        if callable(their_value):
            assert inspect.signature(getattr(ours, attr)) == \
                inspect.signature(their_value), f"{name}.{attr}"
        else:
            assert getattr(ours, attr) == their_value, f"{name}.{attr}"


@pytest.mark.parametrize("name", socketserver.__all__)
def test_mro_mirrors_stdlib(name):
    theirs, ours = getattr(socketserver, name), getattr(fastsock, name)
    their_names = [k.__name__ for k in theirs.__mro__]
    our_names = [k.__name__ for k in ours.__mro__]
    assert our_names == their_names


def test_backend_names_an_available_engine():
    assert fastsock.BACKEND in fastsock._backend.available()


def test_import_stays_light():
    # `import fastsock` must cost about what `import socketserver` does:
    # logging, ssl and the install/graceful-stop helpers load on first use.
    code = ("import sys, fastsock; "
            "print(sorted(m for m in ('logging', 'ssl', 'fastsock._install', "
            "'fastsock._graceful') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
    assert callable(fastsock.install) and callable(fastsock.serve_until_signal)


# What `import fastsock` must not load on each engine: the other engine, and
# (compiled) the worker pool, which only threading servers need.
NOT_IMPORTED = {
    "cython": ["fastsock._cworkers", "fastsock._pyengine", "fastsock._workers"],
    "python": ["fastsock._cengine", "fastsock._cio", "fastsock._cworkers"],
}


@pytest.mark.parametrize("name", fastsock._backend.available())
def test_import_loads_only_the_engine_in_use(name):
    code = ("import sys, fastsock; "
            f"print(fastsock.BACKEND, [m for m in {NOT_IMPORTED[name]!r} "
            "if m in sys.modules])")
    env = dict(os.environ, FASTSOCK_PURE="1" if name == "python" else "0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True, env=env).stdout
    assert out.split(" ", 1) == [name, "[]\n"]
