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

The compiled engine is used when it was built, unless the environment
variable ``FASTSOCK_PURE`` is set to a non-empty value other than ``0``
when fastsock is imported.  ``use(name)`` switches engines at run time
(for tests and benchmarks); servers pick the engine up when they next
start a loop or a handler.
"""

import os

from . import _pyengine

try:
    from . import _cengine
except ImportError:  # not built: no compiler, or FASTSOCK_NO_EXTENSIONS
    _cengine = None

_ENGINES = {_pyengine.NAME: _pyengine}
if _cengine is not None:
    _ENGINES[_cengine.NAME] = _cengine


def _forced_pure():
    return os.environ.get("FASTSOCK_PURE", "") not in ("", "0")


_current = _pyengine if _forced_pure() or _cengine is None else _cengine


def engine():
    """The engine module in use."""
    return _current


def available():
    """Names of the engines this installation has, compiled first."""
    return sorted(_ENGINES, key=lambda name: name == _pyengine.NAME)


def use(name):
    """Switch to the engine called ``name``; return the previous name."""
    global _current
    try:
        new = _ENGINES[name]
    except KeyError:
        raise ValueError(f"no fastsock engine {name!r}; available: "
                         f"{', '.join(available())}") from None
    previous, _current = _current.NAME, new
    return previous
