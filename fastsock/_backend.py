"""Engine selection: which implementation drives the server loop.

An engine is a module with this interface:

- ``NAME``: ``"cython"`` or ``"python"``.
- ``ServeLoop(server)``: the loop of one ``serve_forever`` call, with
  ``run(poll_interval)``, ``stop()`` (thread-safe: ends ``run`` as soon as the
  current request is done), ``pause_accepting(until)`` and
  ``resume_accepting()`` (thread-safe), and ``close()``.
- ``wait_readable(fd, timeout) -> bool``: wait until ``fd`` is readable,
  for ``handle_request``.
- ``stream_reader(sock, bufsize)`` / ``stream_writer(sock, bufsize)``: the
  ``rfile`` / ``wfile`` of ``StreamRequestHandler``.
- ``WorkerPool(server)``: the worker pool of a ThreadingMixIn server,
  ``fastsock._workers.WorkerPool`` in the pure engine and its compiled
  build (``fastsock._cworkers``) in the compiled one.

The compiled engine is used when it was built, unless the environment
variable ``FASTSOCK_PURE`` is set to a non-empty value other than ``0``
when fastsock is imported.  ``use(name)`` switches engines at run time
(for tests and benchmarks); servers pick the engine up when they next
start a loop or a handler.  Only the engine in use is imported: a process
forced onto the pure engine does not load the compiled modules (about
0.3 MiB of memory), nor one on the compiled engine the pure modules (import
time), until ``available()`` or ``use()`` asks for them.
"""

import os

_cengine = None
_cengine_tried = False


def _compiled():
    """The compiled engine module, imported on first need; None if not built."""
    global _cengine, _cengine_tried
    if not _cengine_tried:
        _cengine_tried = True
        try:
            from . import _cengine as module
        except ImportError:  # not built: no compiler, or FASTSOCK_NO_EXTENSIONS
            module = None
        _cengine = module
    return _cengine


def _pure():
    """The pure-Python engine module, imported on first need."""
    from . import _pyengine
    return _pyengine


def _engines():
    """Engine modules by name, the compiled one first when built."""
    compiled = _compiled()
    engines = {} if compiled is None else {compiled.NAME: compiled}
    pure = _pure()
    engines[pure.NAME] = pure
    return engines


def _forced_pure():
    return os.environ.get("FASTSOCK_PURE", "") not in ("", "0")


_current = _pure() if _forced_pure() else (_compiled() or _pure())


def engine():
    """The engine module in use."""
    return _current


def available():
    """Names of the engines this installation has, compiled first."""
    return list(_engines())


def use(name):
    """Switch to the engine called ``name``; return the previous name."""
    global _current
    try:
        new = _engines()[name]
    except KeyError:
        raise ValueError(f"no fastsock engine {name!r}; available: "
                         f"{', '.join(available())}") from None
    previous, _current = _current.NAME, new
    return previous
