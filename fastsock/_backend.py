"""Engine selection: which implementation drives the server loop.

The engine seam: what an engine provides, and what it relies on
===============================================================

An engine is a module with this interface (``_backend.pyi`` states it as
the ``Engine`` protocol):

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

What an engine may read or call on the server, when it runs (never a copy
taken earlier), and nothing else (``_backend.pyi``: ``EngineServer``):

- to wait and take requests: ``fileno()``, ``socket`` (the listening
  socket: its ``fileno()``, ``family``, ``type``, ``proto``,
  ``gettimeout()``, and ``sendto()`` for a datagram's reply),
  ``_handle_request_noblock()``, ``service_actions()``,
  ``_accept_failed(exc)`` for a failed accept or receive, and
  ``max_packet_size`` for a datagram;
- ``_listener_shared``, once when a ``ServeLoop`` is made: true where
  other processes wait on the same listening socket (set in each prefork
  worker by fastsock._supervisor; BaseServer's default is False).  The
  loop then waits so that a new connection wakes one idle process, idle
  processes in turn, where the platform allows (EPOLLEXCLUSIVE on Linux;
  elsewhere all wake), and a wait that times out looks at the listener
  itself, since a wake-up taken by a sibling that was stopping or pausing
  reaches no other;
- per request, the hooks ``_handle_request_noblock`` calls, in its order:
  ``get_request``, ``verify_request``, ``process_request``,
  ``finish_request``, ``shutdown_request`` (``close_request`` through it),
  ``handle_error``, and ``RequestHandlerClass``;
- for ThreadingMixIn: ``_workers`` (the pool, once made), and for the
  pool: ``process_request_thread``, ``max_threads``, ``daemon_threads``,
  ``worker_idle_timeout``, ``_pause_accepting()``, ``_resume_accepting()``;
- to decide where it may do a hook's work itself (the compiled engine):
  the server's class and instance ``__dict__``, looked up for the hooks
  and attributes that ``fastsock._server.SHORTCUTS`` names (today also
  ``tls_context``); handler classes, for ``HANDLER_SHORTCUTS``.

An engine calls each hook at the point and in the order the standard
library does, except where ``fastsock._server.SHORTCUTS`` lets it do a
default hook's work itself; it adds no hook and sets nothing on the server.

Which engine
============

The compiled engine is used when it was built, unless the environment
variable ``FASTSOCK_PURE`` is set to a non-empty value other than ``0``
when fastsock is imported.  A server binds the engine in use when
``serve_forever()`` or ``handle_request()`` starts (``_fastsock_engine``),
and its handlers and worker pool take the one it bound.  ``use(name)``
switches engines within a ``with`` block, for tests and benchmarks only.
Only the engine in use is imported: a process forced onto the pure engine
does not load the compiled modules (about 0.3 MiB of memory), nor one on
the compiled engine the pure modules (import time), until ``available()``
or ``use()`` asks for them.
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
    """The engine module in use: the one servers bind when they start."""
    return _current


def available():
    """Names of the engines this installation has, compiled first."""
    return list(_engines())


class use:
    """For tests and benchmarks: ``with use(name):`` makes the engine called
    ``name`` the one in use within the block, and restores the previous one
    after it.  A server binds the engine when a loop starts: one already
    serving keeps its own."""

    def __init__(self, name):
        try:
            self._engine = _engines()[name]
        except KeyError:
            raise ValueError(f"no fastsock engine {name!r}; available: "
                             f"{', '.join(available())}") from None
        self._previous = None

    def __enter__(self):
        global _current
        self._previous, _current = _current, self._engine
        return self._engine

    def __exit__(self, *exc_info):
        global _current
        _current = self._previous
