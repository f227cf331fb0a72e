"""The server and handler classes: every socketserver semantic lives here.

A server is a template of small hooks, one per decision, any of which a
subclass may override: ``server_bind`` and ``server_activate`` at start,
``get_request``, ``verify_request``, ``process_request``, ``finish_request``,
``shutdown_request`` and ``close_request`` for each request, ``handle_error``
and ``handle_timeout`` when things go wrong or quiet, ``service_actions`` on
every loop turn and ``server_close`` at the end.  A request handler is built
once per request and runs ``setup``, ``handle`` and ``finish``.

What fastsock changes is who drives the loop.  ``serve_forever`` and
``handle_request`` hand waiting, accepting and dispatching to an *engine*
(``fastsock._backend``): the pure-Python one or the compiled one, bound to
the server when a loop starts.  Both call the hooks defined here at the same
points and in the same order as the standard library; the compiled engine
does a default hook's work itself only where ``SHORTCUTS``, at the end of
this module, says it may, and only while the server keeps that default.
Engines read the server's state (its socket, its attributes) when they run,
never a copy taken at construction.

The ``rfile``/``wfile`` objects of ``StreamRequestHandler`` also come from
the engine: the one the server bound.
"""

import errno
import io
import os
import socket
import sys
import threading
from time import monotonic

from . import _backend

_PY311 = sys.version_info >= (3, 11)
_PY312 = sys.version_info >= (3, 12)
_HAS_FORK = hasattr(os, "fork")
_HAS_UNIX = hasattr(socket, "AF_UNIX")

# The "fastsock" logger, once _prepare_failure_paths() has run.
_logger = None


def _prepare_failure_paths():
    """Import what reporting a failure needs; return the "fastsock" logger.

    A failure path must need nothing it does not already hold: out of
    descriptors, importing a module fails (it opens the module's file), and
    a server whose report of a shortage raises stops serving.  So this runs
    when a server starts serving (``server_activate()`` of a listening
    server, ``serve_forever()``, ``handle_request()``), not at the
    shortage, and not at import either: most servers never fail, and
    logging alone would double fastsock's import time.  It brings in
    logging, for ``_log()``, and traceback for ``handle_error()``, with the
    modules that traceback imports only while printing: tokenize (linecache
    reads source files with it, imported lazily from 3.13) and ast (3.11's
    carets under the failing expression).
    """
    global _logger
    if _logger is None:
        import logging
        import tokenize  # noqa: F401
        import traceback  # noqa: F401
        if _PY311:
            import ast  # noqa: F401
        _logger = logging.getLogger("fastsock")
    return _logger


def _log():
    """The "fastsock" logger, for what goes wrong in the server itself
    rather than in a request (which handle_error() reports): resource
    shortages, failed TLS handshakes.  Ready since the server started
    serving (see _prepare_failure_paths); made ready now otherwise.
    """
    return _logger or _prepare_failure_paths()


def _errnos(*names):
    """The errno values called ``names``, with Windows' WSA twins."""
    return frozenset(getattr(errno, prefix + name)
                     for name in names for prefix in ("", "WSA")
                     if hasattr(errno, prefix + name))


# Failed accepts (or receives), by what _accept_failed() does about them.
_OUT_OF_DESCRIPTORS = _errnos("EMFILE", "ENFILE")
_OUT_OF_MEMORY = _errnos("ENOBUFS", "ENOMEM")
_LISTENER_UNUSABLE = _errnos("EBADF", "ENOTSOCK", "EINVAL")
# Back-off while a shortage lasts: the first pause, and the longest.
_BACKOFF_FIRST = 0.01
_BACKOFF_MAX = 1.0
# A shortage this long after the previous one starts a new episode: logged
# again, back-off from the first pause.  Longer than the longest pause, so
# that an episode spent backing off stays one episode.
_SHORTAGE_EPISODE_GAP = 2 * _BACKOFF_MAX
_SO_ACCEPTCONN = getattr(socket, "SO_ACCEPTCONN", None)

__all__ = ["BaseServer", "TCPServer", "UDPServer",
           "ThreadingUDPServer", "ThreadingTCPServer",
           "BaseRequestHandler", "StreamRequestHandler",
           "DatagramRequestHandler", "ThreadingMixIn"]
if _HAS_FORK:
    __all__ += ["ForkingUDPServer", "ForkingTCPServer", "ForkingMixIn"]
if _HAS_UNIX:
    __all__ += ["UnixStreamServer", "UnixDatagramServer",
                "ThreadingUnixStreamServer", "ThreadingUnixDatagramServer"]
    if _HAS_FORK and _PY312:
        __all__ += ["ForkingUnixStreamServer", "ForkingUnixDatagramServer"]


def _engine_of(server):
    """The engine ``server`` bound, or the one in use where it bound none
    (it has not served yet, or it is not fastsock's)."""
    return getattr(server, "_fastsock_engine", None) or _backend.engine()


def _open_reserve():
    """A spare descriptor to give back when out of them, or None."""
    try:
        return open(os.devnull, "rb", buffering=0)
    except OSError:
        return None


def _on_every_loop_turn(server, action):
    """Make ``server``'s loops call ``action()`` on every turn, after the
    server's own ``service_actions()``; return what undoes it.

    For what must stop when a loop is stuck in a request (the systemd
    watchdog, a worker's heartbeat): an instance attribute
    ``service_actions``, which both engines call on every turn (the
    compiled one notices it and takes one request per turn instead of a
    batch).  The caller cuts the poll interval so that an idle loop turns
    often enough.
    """
    saved = vars(server).get("service_actions")
    own_actions = server.service_actions

    def service_actions():
        own_actions()
        action()

    server.service_actions = service_actions

    def undo():
        if saved is None:
            vars(server).pop("service_actions", None)
        else:
            server.service_actions = saved
    return undo


# Workers for a server whose ``workers`` is None, when serve_forever() runs
# in the main thread: what ``python -m fastsock run --workers N`` sets
# (fastsock._cli).  None: one process.
_command_line_workers = None


class BaseServer:
    """The request loop and its hooks, independent of any socket type.

    Callers use ``serve_forever(poll_interval)``, ``shutdown()``,
    ``handle_request()`` and ``fileno()``; subclasses supply ``fileno``,
    ``get_request`` and ``server_close`` and may override any other hook.
    ``timeout`` (seconds, or None) bounds how long ``handle_request`` waits.

    Every core (fastsock extensions; see fastsock._supervisor): with
    ``workers`` set to N > 1, ``serve_forever()`` forks N worker processes
    that share the listening socket, each running the ordinary loop (with
    the server's mix-in: threads or children per worker), and supervises
    them: a worker that dies is replaced, SIGHUP replaces them all one by
    one, SIGTTIN adds a worker and SIGTTOU retires one, SIGTERM or SIGINT
    (where their handlers are the defaults) and
    ``shutdown()`` stop them gracefully, after which serve_forever()
    returns in the calling process only.  ``workers`` None or 1: one
    process, as before (``python -m fastsock run --workers N`` makes None
    mean N for servers served from the main thread).  The other settings:

    - ``graceful_timeout``: seconds a stopping worker gives its running
      requests before it closes what is left (default 30);
    - ``max_requests``: a worker stops gracefully and is replaced after
      that many requests, plus a random ``0..max_requests_jitter``
      (default None: never);
    - ``worker_cpu_affinity``: pin worker i to the i-th CPU the process
      may use, modulo their number (default False);
    - ``worker_timeout``: a worker whose loop has not turned for that many
      seconds (stuck in a request, deadlocked) is killed and replaced
      (default None: never);
    - ``worker_init(index)``: a hook called in each worker after the fork,
      before it serves; ``worker_index`` is that index in a worker and None
      elsewhere.
    """

    timeout = None
    workers = None
    graceful_timeout = 30.0
    max_requests = None
    max_requests_jitter = 0
    worker_cpu_affinity = False
    worker_timeout = None
    worker_index = None
    # Whether other processes wait on this server's listening socket too
    # (set True in each prefork worker by fastsock._supervisor): an engine
    # reads it when a loop starts, to wake one idle worker per connection
    # where the platform can (see fastsock._backend).
    _listener_shared = False
    # The engine (a fastsock._backend engine module) that this server's
    # loops, handlers and worker pool use: bound by serve_forever() and
    # handle_request() when they start, so that every part of a request is
    # served by the same one.  A long name: "_engine" is an application's.
    _fastsock_engine = None

    def __init__(self, server_address, RequestHandlerClass):
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass
        # The same private names as the standard library's, for code that
        # peeks at them.
        self.__is_shut_down = threading.Event()
        self.__shutdown_request = False
        # The engine loop inside serve_forever(): shutdown() wakes it at once
        # rather than letting it sleep out the poll interval.
        self.__loop = None

    def server_activate(self):
        """Start accepting (a no-op here; TCPServer listens)."""

    def serve_forever(self, poll_interval=0.5):
        """Serve requests one by one until shutdown() is called.

        ``service_actions()`` runs on every loop turn, and at least every
        ``poll_interval`` seconds while no request comes.
        """
        self.__is_shut_down.clear()
        notifier = None
        try:
            engine = self._bind_engine()
            supervise = self._worker_count() > 1
            if not supervise:
                # A supervisor serves no request: each worker prepares for
                # itself as its own loop starts (its pool publishes that
                # worker's load, fastsock._supervisor).
                self._prepare_to_serve()
            if "NOTIFY_SOCKET" in os.environ:  # under systemd (or alike)
                from .systemd import _LoopNotifier
                notifier = _LoopNotifier(self)
            if supervise:
                from ._supervisor import Supervisor
                loop = self.__loop = Supervisor(self, notifier)
            else:
                if notifier is not None:
                    poll_interval = notifier.start(poll_interval)
                loop = self.__loop = engine.ServeLoop(self)
            try:
                if not self.__shutdown_request:
                    loop.run(poll_interval)
            finally:
                self.__loop = None
                loop.close()
        finally:
            if notifier is not None:
                notifier.stop()
            self.__shutdown_request = False
            self.__is_shut_down.set()

    def _worker_count(self):
        """How many processes serve_forever() is to serve with (1: this
        one alone).  A worker serves alone."""
        workers = self.workers
        if workers is None:
            workers = _command_line_workers
            if (workers is None
                    or threading.current_thread() is not threading.main_thread()):
                return 1
        if self.worker_index is not None:
            return 1
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be None or a positive integer, "
                             f"not {workers!r}")
        return workers

    def worker_init(self, index):
        """Called in each worker process before it serves; override at will.

        ``index`` (also ``self.worker_index``) is the worker's number, from
        0 to ``workers - 1``; a replacement takes the number of the worker
        it replaces.
        """

    def _bind_engine(self):
        """Bind the engine in use (fastsock._backend) to this server."""
        engine = self._fastsock_engine = _backend.engine()
        return engine

    def shutdown(self):
        """Ask serve_forever() to stop and wait until it has.

        Call it from another thread than the one running serve_forever().
        """
        self._request_shutdown()
        self.__is_shut_down.wait()

    def _request_shutdown(self):
        """What shutdown() does before it waits: serve_forever() stops once
        the current request is done.  Takes no lock, so that a signal
        handler of the thread that serves may call it."""
        self.__shutdown_request = True
        loop = self.__loop
        if loop is not None:
            loop.stop()

    def _serve_forever_ended(self):
        """Whether serve_forever() has returned since it last started
        (False before it ever ran); thread-safe."""
        return self.__is_shut_down.is_set()

    def _prepare_to_serve(self):
        """Make ready what serving needs before a shortage can stop it:
        called as serve_forever() and handle_request() start.

        Here, what reporting a failure needs (``_prepare_failure_paths``);
        the mix-ins add their worker pool or child reaper, which the first
        request would otherwise make, importing their module.
        """
        if _logger is None:
            _prepare_failure_paths()

    def _pause_accepting(self, until=None):
        """Make serve_forever() stop taking requests, until ``until``.

        ``until`` is a ``time.monotonic()`` deadline, or None to wait for
        _resume_accepting().  The loop keeps running service_actions() and
        answering shutdown() meanwhile.  Thread-safe; does nothing outside
        serve_forever().
        """
        loop = self.__loop
        if loop is not None:
            loop.pause_accepting(until)

    def _resume_accepting(self):
        """Undo _pause_accepting() at once; thread-safe."""
        loop = self.__loop
        if loop is not None:
            loop.resume_accepting()

    def service_actions(self):
        """Run once per turn of the serve_forever() loop; override at will."""

    def handle_request(self):
        """Wait for one request and handle it; honours ``self.timeout``.

        The wait is bounded by the smaller of the listening socket's timeout
        and ``self.timeout``; when it runs out, ``handle_timeout()`` is called.
        """
        self._prepare_to_serve()
        timeout = self.socket.gettimeout()
        if timeout is None:
            timeout = self.timeout
        elif self.timeout is not None:
            timeout = min(timeout, self.timeout)
        if timeout is not None:
            deadline = monotonic() + timeout

        wait_readable = self._bind_engine().wait_readable
        while True:
            if wait_readable(self.fileno(), timeout):
                return self._handle_request_noblock()
            if timeout is not None:
                timeout = deadline - monotonic()
                if timeout < 0:
                    return self.handle_timeout()

    def _handle_request_noblock(self):
        """Take one ready request through get/verify/process.

        Called once the socket is known to be readable.  A failing
        get_request() goes to _accept_failed(); an Exception from
        process_request() is reported by handle_error() and the request shut
        down; anything else (SystemExit, KeyboardInterrupt) shuts the request
        down and propagates.
        """
        try:
            request, client_address = self.get_request()
        except OSError as exc:
            self._accept_failed(exc)
            return
        if not self.verify_request(request, client_address):
            self.shutdown_request(request)
            return
        try:
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
        except BaseException:
            self.shutdown_request(request)
            raise

    # The current accept back-off (seconds) and when the last shortage was
    # reported (monotonic), for _accept_failed().
    _backoff = 0.0
    _last_shortage = None

    def _accept_failed(self, exc):
        """get_request() raised ``exc`` (an OSError): decide what follows.

        Both engines report every failed accept or receive here, so the
        policy is the same whichever runs the loop:

        - Out of descriptors (EMFILE, ENFILE): the connection that could
          not be taken is shed (``_shed_connection``), so that its client
          learns at once and the listening socket stops waking the loop.
          Where nothing could be shed, ``serve_forever()`` stops accepting
          for a while instead: 10 ms, doubling up to 1 s while the shortage
          lasts (gevent's back-off).  Accepting resumes as soon as a
          descriptor is free, or at the latest when the pause ends.
        - Out of memory (ENOBUFS, ENOMEM): the same back-off.
        - The server socket itself unusable (EBADF, ENOTSOCK or EINVAL, and
          ``_listener_broken()`` confirms it: closed, or not listening):
          OSError, which ends serve_forever() or handle_request() instead
          of letting them spin on a socket that can never deliver.
        - Anything else (ECONNABORTED, EPROTO, EINTR, EAGAIN, ...) concerns
          one connection: the turn is dropped, as the standard library does.

        A shortage is logged as a warning on the ``fastsock`` logger once
        per episode; an episode ends after 2 s without a shortage.
        Outside serve_forever() there is no back-off: handle_request()
        returns and its caller decides when to call it again.
        """
        code = exc.errno
        if code in _OUT_OF_DESCRIPTORS or code in _OUT_OF_MEMORY:
            self._resource_shortage(exc)
        elif code in _LISTENER_UNUSABLE and self._listener_broken():
            raise OSError(code, f"cannot accept on {self.server_address!r}: "
                          f"the server socket is closed or not listening "
                          f"({exc.strerror})") from exc

    def _resource_shortage(self, exc):
        """Shed the request that ``exc`` kept out, or back off; log once."""
        now = monotonic()
        last, self._last_shortage = self._last_shortage, now
        if last is None or now - last > _SHORTAGE_EPISODE_GAP:
            self._backoff = 0.0
            try:
                _log().warning("server at %r: %s; shedding or holding back "
                               "new requests until it passes",
                               self.server_address, exc)
            except Exception:  # e.g. MemoryError: the back-off matters more
                pass
        if exc.errno in _OUT_OF_DESCRIPTORS and self._shed_connection():
            return
        self._backoff = min(max(2 * self._backoff, _BACKOFF_FIRST),
                            _BACKOFF_MAX)
        self._pause_accepting(now + self._backoff)

    def _shed_connection(self):
        """Drop one pending request when out of descriptors; return whether
        one was dropped.  A server with no connections to drop cannot."""
        return False

    def _listener_broken(self):
        """Whether the server socket can no longer deliver requests.

        Unknown here: assume it can, as the standard library does.
        """
        return False

    def handle_timeout(self):
        """Called when handle_request() waited ``timeout`` for nothing."""

    def verify_request(self, request, client_address):
        """Return whether to go on with this request (always, by default)."""
        return True

    def process_request(self, request, client_address):
        """Finish the request in this thread, then shut it down.

        The threading and forking mix-ins move this elsewhere.
        """
        self.finish_request(request, client_address)
        self.shutdown_request(request)

    def server_close(self):
        """Release the server's resources."""

    def finish_request(self, request, client_address):
        """Build the request handler; its constructor does all the work."""
        self.RequestHandlerClass(request, client_address, self)

    def shutdown_request(self, request):
        """End one request: shut it down and close it."""
        self.close_request(request)

    def close_request(self, request):
        """Release one request's resources."""

    def handle_error(self, request, client_address):
        """Report an exception from a request on stderr, then carry on.

        The traceback module is imported by the time a server serves
        (``_prepare_failure_paths``).  Printing a traceback also reads the
        source files of its frames, which out of descriptors cannot be
        opened: linecache then leaves the source lines out.  Should printing
        fail all the same (a module traceback imports lazily, memory), the
        interpreter's own display, written in C, prints the exception
        instead: handle_error() itself never raises for want of resources.
        """
        rule = '-' * 40
        print(rule, file=sys.stderr)
        print('Exception occurred during processing of request from',
              client_address, file=sys.stderr)
        exc_info = sys.exc_info()
        try:
            import traceback
            traceback.print_exc()
        except Exception:
            sys.__excepthook__(*exc_info)
        finally:
            del exc_info  # a cycle through the traceback's frames
        print(rule, file=sys.stderr)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.server_close()


class TCPServer(BaseServer):
    """A server on a stream socket: TCP by default.

    Class attributes a subclass or an instance may change before binding:
    ``address_family``, ``socket_type``, ``request_queue_size`` (the listen
    backlog), ``allow_reuse_address`` and ``allow_reuse_port``.
    ``bind_and_activate=False`` leaves binding and listening to the caller.

    Out of descriptors: from ``server_activate()`` to ``server_close()`` a
    listening server holds one spare descriptor (on the null device), its
    reserve.  When accept() fails with EMFILE or ENFILE, the reserve is
    closed, the waiting connection accepted and closed, and the reserve
    reopened (libuv's technique): the client is told at once, and the loop
    neither spins on a readable socket nor stops.  The reserve costs one
    descriptor per server and is taken before it is needed, which is the
    only time it can be.

    TLS (a fastsock extension): with ``tls_context`` set to a server-side
    ``ssl.SSLContext``, ``get_request()`` wraps each accepted connection
    without any I/O, and ``finish_request()`` performs the handshake, in the
    thread or process that serves the request, within
    ``tls_handshake_timeout`` seconds (None: no limit).  A client that
    connects and says nothing then delays nobody but itself (a plain
    server, which has nobody else to serve meanwhile, waits at most the
    timeout).  A failed handshake is logged at INFO level on the
    ``fastsock`` logger and the connection closed.  A connection that is
    already an ``ssl.SSLSocket`` (a listening socket wrapped by the
    application) is never wrapped again; one that reaches finish_request()
    unwrapped (a get_request() of the application's own) is refused rather
    than served in clear.  Set ``tls_context`` before serving.

    Nagle stalls (``avoid_nagle_stalls``, a fastsock extension, default
    True): a response written in two pieces (headers, then body) waits for
    the client's delayed ACK, about 40 ms, under Nagle's algorithm.  fastsock
    sets TCP_NODELAY on a TCP listening socket, which the connections
    accepted from it inherit (Linux, BSD, macOS), so every write goes on the
    wire at once and nothing a handler wrote is held back, at no cost per
    connection.  False keeps the standard library's behaviour.

    PROXY protocol (a fastsock extension, HAProxy's versions 1 and 2; see
    ``fastsock._proxy``): with ``proxy_protocol`` true, every connection
    must start with a PROXY header -- none is an error, never guessed --
    which ``finish_request()`` reads before the TLS handshake, in the
    thread or process that serves the request, consuming exactly the
    header's bytes: what the client sent after it reaches ``rfile``,
    ``recv()`` or the handshake unchanged.  Only peers that
    ``proxy_protocol_trusted`` names may send one: None (the default)
    means loopback addresses and Unix-socket peers, otherwise an iterable
    of addresses and networks as strings (``"10.0.0.7"``,
    ``"10.0.0.0/8"``; ``"unix"`` for Unix-socket peers), read when serving
    starts.  The handler's ``client_address`` is the header's source
    ``(host, port)`` for IPv4 and IPv6; for a LOCAL header (the proxy's
    health checks), UNKNOWN or Unix sources it stays the proxy's.  The
    handler's ``proxy_header`` and ``proxy_address`` give the parsed header
    (with its TLVs) and the proxy's own address.  A connection from an
    untrusted peer, with a malformed header (rejected as soon as its bytes
    show it), or whose header is not complete within
    ``proxy_protocol_timeout`` seconds (None: no limit), is closed without
    running the handler, with a warning on the ``fastsock`` logger (at most
    one a second, the others counted).  A server without ThreadingMixIn
    or ForkingMixIn reads the header in its loop: a proxy that stalls
    delays the other clients by at most the timeout.

    Sockets handed over by a service manager (``fastsock.systemd``): a
    server offered an inherited listening socket takes it in
    ``server_bind()`` instead of binding, and ``server_activate()`` does
    not listen() again on it when it listens already.
    ``server_close()`` only closes the listening socket, never shuts it
    down, so the service manager's copy keeps working.
    """

    address_family = socket.AF_INET
    socket_type = socket.SOCK_STREAM
    request_queue_size = 5
    allow_reuse_address = False
    avoid_nagle_stalls = True
    if _PY311:
        allow_reuse_port = False
    tls_context = None
    tls_handshake_timeout = 10.0
    proxy_protocol = False
    proxy_protocol_trusted = None
    proxy_protocol_timeout = 5.0
    _proxy_policy = None
    _inherited_socket = False  # taken from fastsock.systemd
    _reserve = None

    def __init__(self, server_address, RequestHandlerClass,
                 bind_and_activate=True):
        BaseServer.__init__(self, server_address, RequestHandlerClass)
        self.socket = socket.socket(self.address_family, self.socket_type)
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                raise

    def server_bind(self):
        """Apply the reuse options, bind, and record the bound address.

        A listening socket offered by fastsock.systemd is taken instead.
        """
        if _offered_sockets and _take_offered_socket(self):
            return
        sock = self.socket
        if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if (getattr(self, "allow_reuse_port", False)
                and hasattr(socket, "SO_REUSEPORT")):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(self.server_address)
        self.server_address = sock.getsockname()

    def server_activate(self):
        """Listen with a backlog of ``request_queue_size``; take a reserve
        and what reporting a shortage needs (``_prepare_failure_paths``).

        With ``avoid_nagle_stalls``, TCP_NODELAY is set on the listening
        socket, and so on every connection accepted from it.
        """
        if (self.avoid_nagle_stalls
                and self.socket.family in (socket.AF_INET, socket.AF_INET6)):
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not (self._inherited_socket and self._already_listening()):
            self.socket.listen(self.request_queue_size)
        if self._reserve is None:
            self._reserve = _open_reserve()
        if _logger is None:
            _prepare_failure_paths()

    def _already_listening(self):
        """Whether the socket listens already.  Asked only of a socket
        inherited from systemd, whose backlog systemd set and on which
        some security policies refuse a second listen(); any other socket
        is listened on again, as the standard library does (a way to change
        the backlog)."""
        if _SO_ACCEPTCONN is None:
            return False
        try:
            return bool(self.socket.getsockopt(socket.SOL_SOCKET,
                                               _SO_ACCEPTCONN))
        except OSError:
            return False

    def server_close(self):
        """Close the listening socket and the reserve descriptor."""
        self.socket.close()
        reserve, self._reserve = self._reserve, None
        if reserve is not None:
            reserve.close()

    def fileno(self):
        """The listening socket's descriptor, for select() and friends."""
        return self.socket.fileno()

    def get_request(self):
        """Accept a connection: return ``(connection, client_address)``."""
        connection, client_address = self.socket.accept()
        if self.tls_context is not None:
            connection = self._wrap_tls(connection)
        return connection, client_address

    def finish_request(self, request, client_address):
        """Read the PROXY header (``proxy_protocol``), complete a pending
        TLS handshake, then build the request handler."""
        proxied = None
        if self.proxy_protocol:
            proxied = self._read_proxy_header(request, client_address)
            if proxied is None:
                return
            client_address = proxied.client_address
        if (self.tls_context is not None
                and not self._tls_ready(request, client_address)):
            return
        if proxied is None:
            super().finish_request(request, client_address)
            return
        # What the handler's proxy_header and proxy_address read, for as
        # long as the request lasts.
        connections = self._proxy_policy.connections
        connections[request] = proxied
        try:
            super().finish_request(request, client_address)
        finally:
            del connections[request]

    def _prepare_to_serve(self):
        """With ``proxy_protocol``: read ``proxy_protocol_trusted`` and get
        what a refused connection needs (the parser, the logger) now."""
        super()._prepare_to_serve()
        if self.proxy_protocol:
            policy = self._proxy_policy
            if (policy is None or policy.trusted_setting
                    is not self.proxy_protocol_trusted):
                self._proxy_policy = _ProxyPolicy(self)

    def _read_proxy_header(self, connection, client_address):
        """Read the PROXY header from ``connection``; return a
        ``_ProxiedConnection``, or None when it must be closed (logged)."""
        policy = self._proxy_policy
        if (policy is None
                or policy.trusted_setting is not self.proxy_protocol_trusted):
            # handle_request(), or the setting changed since serving began.
            policy = self._proxy_policy = _ProxyPolicy(self)
        if not policy.trusts(client_address):
            policy.log.warning("connection from %r refused: not a trusted "
                               "PROXY protocol sender", client_address)
            return None
        try:
            header = policy.receive_header(
                connection, self.proxy_protocol_timeout,
                _engine_of(self).wait_readable)
        except (OSError, ValueError) as exc:  # ValueError: ProxyProtocolError
            policy.log.warning("connection from %r refused: no valid PROXY "
                               "header: %s", client_address, exc)
            return None
        return _ProxiedConnection(header, client_address)

    def _wrap_tls(self, connection):
        """Wrap a new connection in ``tls_context``, with no I/O yet."""
        import ssl
        if isinstance(connection, ssl.SSLSocket):
            return connection
        try:
            return self.tls_context.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False)
        except BaseException:
            connection.close()  # a no-op once wrap_socket() has taken it
            raise

    def _tls_ready(self, connection, client_address):
        """Handshake within ``tls_handshake_timeout`` unless done already;
        return whether the connection can be served."""
        import ssl
        if not isinstance(connection, ssl.SSLSocket):
            # Never serve in clear what should be encrypted.
            _log().error("connection from %r refused: it did not go "
                         "through TCPServer.get_request(), which applies "
                         "tls_context", client_address)
            return False
        if connection.version() is not None:
            return True
        timeout = connection.gettimeout()
        connection.settimeout(self.tls_handshake_timeout)
        try:
            connection.do_handshake()
        except OSError as exc:  # SSLError, TimeoutError, ConnectionError
            _log().info("TLS handshake with %r failed: %s",
                        client_address, exc)
            return False
        connection.settimeout(timeout)
        return True

    def _shed_connection(self):
        """Accept and close one waiting connection, using the reserve.

        The reserve is closed so that accept() has a descriptor, and
        reopened once the connection is closed; if another thread took the
        descriptor meanwhile, nothing is shed and the reserve is tried again
        at the next shortage.  Only a connection that poll() reports waiting
        is accepted, so this does not block (unless another process sharing
        the socket takes that connection first).
        """
        if self.socket.type != socket.SOCK_STREAM:
            return False
        if self._reserve is None:
            self._reserve = _open_reserve()
            if self._reserve is None:
                return False
        self._reserve.close()
        try:
            if _engine_of(self).wait_readable(self.fileno(), 0):
                # The plain accept(): an SSL listener's would handshake.
                connection, _ = socket.socket.accept(self.socket)
                connection.close()
                return True
        except OSError:
            pass
        finally:
            self._reserve = _open_reserve()
        return False

    def _listener_broken(self):
        """Whether the socket is closed or, for a stream, not listening."""
        sock = self.socket
        try:
            if sock.type == socket.SOCK_STREAM and _SO_ACCEPTCONN is not None:
                return not sock.getsockopt(socket.SOL_SOCKET, _SO_ACCEPTCONN)
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        except OSError:
            return True
        return False

    def shutdown_request(self, request):
        """Send FIN, then close; close() alone could leave it to the GC."""
        try:
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # e.g. ENOTCONN once the peer has gone
        self.close_request(request)

    def close_request(self, request):
        """Close the connection."""
        request.close()


# The socket module's own method, for the PROXY header: an ssl.SSLSocket
# not yet handshaken is read in clear.
_plain_recv = socket.socket.recv
# The most one look at a PROXY header reads.
_PROXY_PEEK = 4096


def _receive_exactly(connection, size):
    """Consume ``size`` bytes that a peek has shown are there."""
    chunks = []
    while size > 0:
        chunk = _plain_recv(connection, size)
        if not chunk:
            raise ConnectionError("connection closed during the PROXY header")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class _ProxiedConnection:
    """A connection whose PROXY header has been read: the header, the
    proxy's own address, and the address the handler gets."""

    __slots__ = ("header", "proxy_address", "client_address")

    def __init__(self, header, proxy_address):
        self.header = header
        self.proxy_address = proxy_address
        self.client_address = (header.source if header.has_address
                               else proxy_address)


class _ProxyPolicy:
    """A server's PROXY protocol settings, read once when serving starts
    (whom to trust, where to log), and the connections being served, by
    request socket (the handler's proxy_header reads them)."""

    def __init__(self, server):
        import ipaddress
        from . import _proxy
        if server.socket_type != socket.SOCK_STREAM:
            raise ValueError("proxy_protocol is for stream servers only")
        self._parse_header = _proxy.parse_header
        self._ip_address = ipaddress.ip_address
        self.trusted_setting = setting = server.proxy_protocol_trusted
        if setting is None:
            self.networks = None
            self.trust_unix = True
        else:
            entries = [setting] if isinstance(setting, str) else list(setting)
            entries = [str(entry).strip() for entry in entries]
            self.trust_unix = "unix" in entries
            self.networks = tuple(ipaddress.ip_network(entry, strict=False)
                                  for entry in entries if entry != "unix")
        self.log = _RateLimitedLog(_log())
        self.connections = {}

    def trusts(self, peer):
        """Whether ``peer`` (the address accept() gave) may send a header."""
        if not isinstance(peer, tuple):  # a Unix socket's peer
            return self.trust_unix
        try:
            address = self._ip_address(peer[0].split("%", 1)[0])
        except ValueError:
            return False
        if getattr(address, "ipv4_mapped", None) is not None:
            address = address.ipv4_mapped  # a dual-stack socket's IPv4 peer
        if self.networks is None:
            return address.is_loopback
        return any(address in network for network in self.networks)

    def receive_header(self, connection, timeout, wait_readable):
        """Read exactly one PROXY header from ``connection``; return it.

        Bytes are looked at (MSG_PEEK) before they are consumed, and only
        the header's are consumed: what follows stays in the socket.  While
        the header is incomplete, all that arrived is header: it is
        consumed, and the connection waited on for the time left.  Raises
        ProxyProtocolError, TimeoutError or ConnectionError.
        ``wait_readable`` is the server's engine's.
        """
        deadline = None if timeout is None else monotonic() + timeout
        received = b""
        while True:
            left = None if deadline is None else deadline - monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(
                    f"no complete header within {timeout} s")
            if not wait_readable(connection.fileno(), left):
                continue
            peeked = _plain_recv(connection, _PROXY_PEEK, socket.MSG_PEEK)
            if not peeked:
                raise ConnectionError("closed before the end of the header")
            parsed = self._parse_header(received + peeked)
            if parsed is None:
                received += _receive_exactly(connection, len(peeked))
                continue
            header, length = parsed
            _receive_exactly(connection, length - len(received))
            return header


class _RateLimitedLog:
    """Warnings on a logger, at most one per ``interval`` seconds; those
    left out are counted in the next."""

    def __init__(self, logger, interval=1.0):
        self._logger = logger
        self._interval = interval
        self._last = None
        self._suppressed = 0

    def warning(self, message, *args):
        now = monotonic()
        if self._last is not None and now - self._last < self._interval:
            self._suppressed += 1
            return
        self._last = now
        suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            message += " (and %d more refused since the last report)"
            args += (suppressed,)
        self._logger.warning(message, *args)


# Listening sockets that servers take instead of binding (fastsock.systemd
# offers them); TCPServer.server_bind() looks only while there are some.
_offered_sockets = []


def _take_offered_socket(server):
    """Give ``server`` the first offered socket of its kind; return True.

    Of its kind: the same socket type, and IP for IP or Unix for Unix.  An
    IPv4 server takes an IPv6 socket and the other way round: the server
    takes the socket's family.  Raises ValueError when sockets are offered
    but none is of the server's kind.
    """
    def is_ip(family):
        return family in (socket.AF_INET, socket.AF_INET6)

    family, kind = server.address_family, server.socket_type
    for index, sock in enumerate(_offered_sockets):
        if sock.type == kind and (sock.family == family
                                  or is_ip(sock.family) and is_ip(family)):
            del _offered_sockets[index]
            break
    else:
        offered = ", ".join(f"{sock.family.name}/{sock.type.name}"
                            for sock in _offered_sockets)
        raise ValueError(
            f"{type(server).__name__} needs a "
            f"{socket.AddressFamily(family).name}/"
            f"{socket.SocketKind(kind).name} socket, but the sockets "
            f"handed over are {offered}")
    server.socket.close()  # the one __init__() made, never bound
    server.socket = sock
    server._inherited_socket = True
    server.address_family = sock.family
    server.server_address = sock.getsockname()
    return True


class UDPServer(TCPServer):
    """A server on a datagram socket: each datagram is one request.

    The request handed to the handler is ``(data, server_socket)``;
    datagrams longer than ``max_packet_size`` are truncated.
    """

    allow_reuse_address = False
    if _PY311:
        allow_reuse_port = False
    socket_type = socket.SOCK_DGRAM
    max_packet_size = 8192

    def get_request(self):
        data, client_address = self.socket.recvfrom(self.max_packet_size)
        return (data, self.socket), client_address

    def server_activate(self):
        """Datagram sockets do not listen."""

    def shutdown_request(self, request):
        self.close_request(request)

    def close_request(self, request):
        """The socket is the server's own: nothing to close."""


if _HAS_FORK:
    class ForkingMixIn:
        """Mix-in that runs each request in a child process.

        At most ``max_children`` children are alive at once.  When that many
        are, the server stops accepting, leaving new connections in the
        listen backlog (datagrams in the socket buffer) instead of waiting
        in ``waitpid`` as the standard library does: the loop keeps
        answering ``shutdown()`` and looks for exited children every
        ``_full_recheck_interval`` seconds until one has gone.  Should a
        request arrive anyway (``handle_request()``, a loop started with the
        server full, or a loop held up past the end of a pause),
        ``process_request`` waits for a child to exit before forking.

        Exited children are reaped on every loop turn for the cost of the
        children that exited, not of all of them (``_workers.ChildReaper``),
        and never with ``waitpid(-1)``, so the application's own children
        are left alone.  ``server_close()`` waits for all of them when
        ``block_on_close``.
        """

        timeout = 300
        active_children = None
        max_children = 40
        block_on_close = True
        _reaper = None
        # While full: how long each pause lasts before exited children are
        # looked for again, and the monotonic deadline of the current one.
        _full_recheck_interval = 0.01
        _full_pause_until = None

        def collect_children(self, *, blocking=False):
            """Reap exited children (``blocking``: wait for all of them)."""
            children = self.active_children
            if children is None:
                return
            # The hot path of the parent calls as few functions as it can:
            # each one's objects are pages written after the fork, paid for
            # in copy-on-write faults (see _workers.ChildReaper).
            reaper = self._reaper or self._child_reaper()
            if blocking:
                reaper.reap_all(children)
            else:
                reaper.reap(children)
                if (self._full_pause_until is not None
                        or len(children) >= self.max_children):
                    self._pause_while_full()

        def _prepare_to_serve(self):
            super()._prepare_to_serve()
            if self._reaper is None:
                self._child_reaper()

        def _child_reaper(self):
            reaper = self._reaper
            if reaper is None:
                from ._workers import ChildReaper  # forking servers only
                reaper = self._reaper = ChildReaper()
            return reaper

        def _pause_while_full(self):
            """Stop accepting while ``max_children`` children are alive.

            Each pause ends after ``_full_recheck_interval`` and is renewed
            by the service_actions() of the loop turn that it ends while the
            server is still full: the loop wakes up to look for exited
            children without spinning.
            """
            children = self.active_children
            if children and len(children) >= self.max_children:
                now = monotonic()
                until = self._full_pause_until
                if until is None or now >= until:
                    until = now + self._full_recheck_interval
                    self._full_pause_until = until
                    self._pause_accepting(until)
            elif self._full_pause_until is not None:
                self._full_pause_until = None
                self._resume_accepting()

        def handle_timeout(self):
            """An idle server reaps its children."""
            self.collect_children()

        def service_actions(self):
            """Reap exited children on every loop turn."""
            self.collect_children()

        def process_request(self, request, client_address):
            """Fork; the child finishes the request and exits."""
            children = self.active_children
            if children is None:
                children = self.active_children = set()
            reaper = self._reaper or self._child_reaper()
            while children and len(children) >= self.max_children:
                reaper.reap(children)
                if len(children) >= self.max_children:
                    reaper.wait()
            pid = os.fork()
            if pid:
                children.add(pid)
                reaper.track(pid)
                if (self._full_pause_until is not None
                        or len(children) >= self.max_children):
                    self._pause_while_full()
                self.close_request(request)
                return
            # In the child: never return into the server loop.
            status = 1
            try:
                self.finish_request(request, client_address)
                status = 0
            except Exception:
                self.handle_error(request, client_address)
            finally:
                try:
                    self.shutdown_request(request)
                finally:
                    os._exit(status)

        def server_close(self):
            super().server_close()
            self.collect_children(blocking=self.block_on_close)
            reaper, self._reaper = self._reaper, None
            if reaper is not None:
                reaper.close()


class _NoThreads:
    """The thread registry of a server that never joins its threads."""

    def __len__(self):
        return 0

    def append(self, thread):
        pass

    def join(self):
        pass


class ThreadingMixIn:
    """Mix-in that runs each request in a thread of its own.

    Threads are reused (``fastsock._workers.WorkerPool``, the engine's
    build of it, made when the server starts serving): a request goes to
    an idle worker when there is one, and a new worker starts only when none
    is idle; a worker idle for ``worker_idle_timeout`` seconds (None: never)
    exits.  One request runs per thread at a time, through
    ``process_request_thread``.  ``daemon_threads`` and ``block_on_close``
    mean what they mean in the standard library: ``server_close()`` waits
    for every running request unless the threads are daemons or
    ``block_on_close`` is false.

    Concurrency is unbounded, as in the standard library, unless
    ``max_threads`` (a fastsock extension) is set to a positive number:
    then at most that many requests run at once.  While the limit is
    reached, ``serve_forever()`` stops accepting, without spinning: new
    connections wait in the listen backlog (datagrams, for a datagram
    server, in the socket's receive buffer), and accepting resumes as soon
    as a request finishes.  Outside ``serve_forever()`` (``handle_request()``)
    or in a loop started while the limit was already reached,
    ``process_request`` blocks until a request finishes.  ``max_threads`` is
    read at each request.
    """

    daemon_threads = False
    block_on_close = True
    _threads = _NoThreads()
    _workers = None
    max_threads = None
    worker_idle_timeout = 5.0

    def process_request_thread(self, request, client_address):
        """Finish and shut down one request; runs in a worker thread."""
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def process_request(self, request, client_address):
        """Hand the request to a worker thread."""
        pool = self._workers
        if pool is None:
            pool = self._worker_pool()
        pool.submit(request, client_address)

    def _prepare_to_serve(self):
        super()._prepare_to_serve()
        if self._workers is None:
            self._worker_pool()

    def _worker_pool(self):
        """The server's pool, made by the engine in use when first needed:
        when the server starts serving, or at a request that comes another
        way (process_request() called directly)."""
        pool = self._workers
        if pool is None:
            # setdefault: two threads calling handle_request() get one pool.
            pool = vars(self).setdefault("_workers",
                                         _engine_of(self).WorkerPool(self))
            if self.block_on_close:
                # What server_close() waits for, and what len() counts.
                self._threads = pool
        return pool

    def server_close(self):
        super().server_close()
        pool = self._workers
        if pool is not None:
            pool.close(wait=self.block_on_close)


if _HAS_FORK:
    class ForkingUDPServer(ForkingMixIn, UDPServer):
        pass

    class ForkingTCPServer(ForkingMixIn, TCPServer):
        pass


class ThreadingUDPServer(ThreadingMixIn, UDPServer):
    pass


class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    pass


if _HAS_UNIX:
    class UnixStreamServer(TCPServer):
        address_family = socket.AF_UNIX

    class UnixDatagramServer(UDPServer):
        address_family = socket.AF_UNIX

    class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
        pass

    class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer):
        pass

    if _HAS_FORK and _PY312:
        class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
            pass

        class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
            pass


class BaseRequestHandler:
    """Handles one request: built per request, it does its work on creation.

    ``request``, ``client_address`` and ``server`` are set, then ``setup()``,
    ``handle()`` and, whatever happens in handle(), ``finish()`` run.
    """

    def __init__(self, request, client_address, server):
        self.request = request
        self.client_address = client_address
        self.server = server
        self.setup()
        try:
            self.handle()
        finally:
            self.finish()

    def setup(self):
        pass

    def handle(self):
        pass

    def finish(self):
        pass

    @property
    def proxy_header(self):
        """The connection's PROXY header (``fastsock._proxy.ProxyHeader``),
        or None when the server has no ``proxy_protocol``."""
        proxied = self._proxied_connection()
        return None if proxied is None else proxied.header

    @property
    def proxy_address(self):
        """The address of the proxy that sent the PROXY header, or None
        when the server has no ``proxy_protocol``."""
        proxied = self._proxied_connection()
        return None if proxied is None else proxied.proxy_address

    def _proxied_connection(self):
        policy = getattr(self.server, "_proxy_policy", None)
        if policy is None:
            return None
        return policy.connections.get(self.request)




class StreamRequestHandler(BaseRequestHandler):
    """A handler with file objects over a stream connection.

    ``rfile`` reads the connection (buffered by ``rbufsize``), ``wfile``
    writes it (``wbufsize`` 0: every write is sent at once).  ``timeout``,
    when not None, is applied to the connection.  The file objects come from
    the engine: compiled in the compiled engine, ``socket.makefile`` objects
    and an unbuffered writer in the pure one.
    """

    rbufsize = -1
    wbufsize = 0
    timeout = None
    disable_nagle_algorithm = False

    def setup(self):
        self.connection = connection = self.request
        if self.timeout is not None:
            connection.settimeout(self.timeout)
        if self.disable_nagle_algorithm:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        # _engine_of(self.server), without its call, for a handler built by
        # hand too (no server).
        engine = (getattr(getattr(self, "server", None), "_fastsock_engine",
                          None) or _backend.engine())
        self.rfile = engine.stream_reader(connection, self.rbufsize)
        self.wfile = engine.stream_writer(connection, self.wbufsize)

    def finish(self):
        if not self.wfile.closed:
            try:
                self.wfile.flush()
            except OSError:
                pass  # the peer may be gone; nothing more to deliver
        self.wfile.close()
        self.rfile.close()


class DatagramRequestHandler(BaseRequestHandler):
    """A handler with in-memory files over one datagram.

    ``rfile`` holds the datagram; what is written to ``wfile`` is sent back
    to the client as one datagram by ``finish()``.
    """

    def setup(self):
        self.packet, self.socket = self.request
        self.rfile = io.BytesIO(self.packet)
        self.wfile = io.BytesIO()

    def finish(self):
        self.socket.sendto(self.wfile.getvalue(), self.client_address)


# -- Where the compiled engine may do a hook's work itself -------------------
#
# Where a server keeps fastsock's default hooks, the compiled engine does
# their work itself, with fewer Python calls: these tables are the one place
# that says where.  Each shortcut names the default hooks whose work it does,
# as ``(class, hook)``, and the attributes it needs unset (None or false).
# It applies only while, for each of those hooks, the server (or handler
# class) has the very function recorded here when this module ran: a hook
# overridden, set on the instance, or patched on fastsock's own class is
# called instead.  The compiled engine builds its plan for a server from
# these tables alone (fastsock._cengine._ServerPlan) and builds it again
# whenever the server's class or its instance's hooks and watched
# attributes change; the pure engine calls every hook.
#
# An engine may add conditions of its own about how it does the work (a
# plain listening socket, say), never about which hooks it replaces.


class _Shortcut:
    """One shortcut: ``replaces``, the ``(class, hook)`` pairs whose work it
    does; ``defaults``, ``(hook, function)`` for each, the functions taken
    when this module ran; ``unset``, the attributes that must be unset."""

    __slots__ = ("replaces", "defaults", "unset")

    def __init__(self, replaces, unset=()):
        self.replaces = tuple(replaces)
        self.defaults = tuple((name, getattr(cls, name))
                              for cls, name in self.replaces)
        self.unset = tuple(unset)

    def __repr__(self):
        hooks = ", ".join(f"{cls.__name__}.{name}"
                          for cls, name in self.replaces)
        unset = f" while {', '.join(self.unset)} unset" if self.unset else ""
        return f"<shortcut for {hooks}{unset}>"


# The connection preamble: attributes that ask for work on each new
# connection before its handler is built (proxy_protocol: the PROXY header,
# then tls_context: the TLS handshake), which finish_request() does in the
# thread that serves the request.  While one of them is set, no shortcut
# builds the handler in its place.
CONNECTION_PREAMBLE = ("proxy_protocol", "tls_context")

# The server's shortcuts, by name.
SHORTCUTS = {
    # serve_forever() waits and accepts (a stream) or receives (a datagram)
    # in C, then takes the request through _handle_request_noblock's steps,
    # each by the shortcuts below or by its hook.  accept() is TCPServer's
    # only without tls_context: get_request() wraps the connection.
    "accept": _Shortcut([(BaseServer, "_handle_request_noblock"),
                         (TCPServer, "fileno"), (TCPServer, "get_request")],
                        unset=["tls_context"]),
    "receive": _Shortcut([(BaseServer, "_handle_request_noblock"),
                          (UDPServer, "fileno"), (UDPServer, "get_request")]),
    # Hooks that do nothing (and may then go uncalled, which lets the loop
    # take several queued requests per wake-up) or always say yes.
    "skip_service_actions": _Shortcut([(BaseServer, "service_actions")]),
    "skip_verify": _Shortcut([(BaseServer, "verify_request")]),
    # process_request(): finish, then shut down, in the loop's thread.
    "process_in_loop": _Shortcut([(BaseServer, "process_request")]),
    # ThreadingMixIn's process_request(): hand the request to the server's
    # worker pool (once the hook has made one).
    "submit_to_pool": _Shortcut([(ThreadingMixIn, "process_request")]),
    # In a worker: finish, handle_error() on an Exception, shut down.
    "process_in_thread": _Shortcut(
        [(ThreadingMixIn, "process_request_thread")]),
    # finish_request(): RequestHandlerClass(request, client_address, self).
    "build_handler": _Shortcut([(TCPServer, "finish_request")],
                               unset=CONNECTION_PREAMBLE),
    # shutdown_request(): shutdown(SHUT_WR), then close() the connection.
    "shutdown_stream": _Shortcut([(TCPServer, "shutdown_request"),
                                  (TCPServer, "close_request")]),
    # shutdown_request() of a datagram: nothing (the socket is the server's).
    "shutdown_datagram": _Shortcut([(UDPServer, "shutdown_request"),
                                    (UDPServer, "close_request")]),
}

# The handler classes' shortcuts, by name.
HANDLER_SHORTCUTS = {
    # A datagram handler made without calling its class: object.__new__(),
    # the attributes that __init__() and setup() set, set in their order,
    # handle() called, and finish()'s reply sent (to the sender's address
    # as received, where handle() left the reply's socket and address be).
    "datagram_in_place": _Shortcut([
        (object, "__new__"), (object, "__getattribute__"),
        (object, "__setattr__"), (BaseRequestHandler, "__init__"),
        (DatagramRequestHandler, "setup"), (DatagramRequestHandler, "finish"),
    ]),
}
