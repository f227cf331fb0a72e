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
(``fastsock._backend``): the pure-Python one or the compiled one.  Both call
the hooks defined here at the same points and in the same order as the
standard library; the compiled engine runs the default hooks' work in C only
after checking, once per ``serve_forever``, that the server's class keeps
those defaults.  Engines read the server's state (its socket, its attributes)
when they run, never a copy taken at construction.

The ``rfile``/``wfile`` objects of ``StreamRequestHandler`` also come from
the engine.
"""

import io
import os
import socket
import sys
import threading
import traceback
from time import monotonic

from . import _backend
from ._workers import WorkerPool

_PY311 = sys.version_info >= (3, 11)
_PY312 = sys.version_info >= (3, 12)
_HAS_FORK = hasattr(os, "fork")
_HAS_UNIX = hasattr(socket, "AF_UNIX")

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


class BaseServer:
    """The request loop and its hooks, independent of any socket type.

    Callers use ``serve_forever(poll_interval)``, ``shutdown()``,
    ``handle_request()`` and ``fileno()``; subclasses supply ``fileno``,
    ``get_request`` and ``server_close`` and may override any other hook.
    ``timeout`` (seconds, or None) bounds how long ``handle_request`` waits.
    """

    timeout = None

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
        try:
            loop = self.__loop = _backend.engine().ServeLoop(self)
            try:
                if not self.__shutdown_request:
                    loop.run(poll_interval)
            finally:
                self.__loop = None
                loop.close()
        finally:
            self.__shutdown_request = False
            self.__is_shut_down.set()

    def shutdown(self):
        """Ask serve_forever() to stop and wait until it has.

        Call it from another thread than the one running serve_forever().
        """
        self.__shutdown_request = True
        loop = self.__loop
        if loop is not None:
            loop.stop()
        self.__is_shut_down.wait()

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
        timeout = self.socket.gettimeout()
        if timeout is None:
            timeout = self.timeout
        elif self.timeout is not None:
            timeout = min(timeout, self.timeout)
        if timeout is not None:
            deadline = monotonic() + timeout

        wait_readable = _backend.engine().wait_readable
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
        get_request() goes to _accept_failed(); an Exception from process_request() is
        reported by handle_error() and the request shut down; anything else
        (SystemExit, KeyboardInterrupt) shuts the request down and propagates.
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

    def _accept_failed(self, exc):
        """get_request() raised ``exc`` (an OSError): drop this turn.

        Both engines report every failed accept or receive here.
        """

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
        """Report an exception from a request on stderr, then carry on."""
        rule = '-' * 40
        print(rule, file=sys.stderr)
        print('Exception occurred during processing of request from',
              client_address, file=sys.stderr)
        traceback.print_exc()
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
    """

    address_family = socket.AF_INET
    socket_type = socket.SOCK_STREAM
    request_queue_size = 5
    allow_reuse_address = False
    if _PY311:
        allow_reuse_port = False

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
        """Apply the reuse options, bind, and record the bound address."""
        sock = self.socket
        if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if (getattr(self, "allow_reuse_port", False)
                and hasattr(socket, "SO_REUSEPORT")):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(self.server_address)
        self.server_address = sock.getsockname()

    def server_activate(self):
        """Listen with a backlog of ``request_queue_size``."""
        self.socket.listen(self.request_queue_size)

    def server_close(self):
        """Close the listening socket."""
        self.socket.close()

    def fileno(self):
        """The listening socket's descriptor, for select() and friends."""
        return self.socket.fileno()

    def get_request(self):
        """Accept a connection: return ``(connection, client_address)``."""
        return self.socket.accept()

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

        At most ``max_children`` children run at once: when that many are
        alive the server waits for one to exit before taking the next
        request.  Exited children are reaped on every loop turn.
        ``server_close()`` waits for all of them when ``block_on_close``.
        """

        timeout = 300
        active_children = None
        max_children = 40
        block_on_close = True

        def collect_children(self, *, blocking=False):
            """Reap exited children; block while there are too many alive."""
            children = self.active_children
            if children is None:
                return
            # Over the limit: wait for any child to exit, one at a time.
            while len(children) >= self.max_children:
                try:
                    pid, _ = os.waitpid(-1, 0)
                except ChildProcessError:
                    children.clear()  # none left to wait for
                except OSError:
                    break
                else:
                    children.discard(pid)
            # Then reap ours that have exited (or, blocking, all of ours).
            # Waiting on each pid, not on -1, leaves other children of the
            # process to whoever started them.
            flags = 0 if blocking else os.WNOHANG
            for pid in list(children):
                try:
                    reaped, _ = os.waitpid(pid, flags)
                except ChildProcessError:
                    children.discard(pid)  # reaped by someone else
                except OSError:
                    continue
                else:
                    if reaped:
                        children.discard(pid)

        def handle_timeout(self):
            """An idle server reaps its children."""
            self.collect_children()

        def service_actions(self):
            """Reap exited children on every loop turn."""
            self.collect_children()

        def process_request(self, request, client_address):
            """Fork; the child finishes the request and exits."""
            pid = os.fork()
            if pid:
                if self.active_children is None:
                    self.active_children = set()
                self.active_children.add(pid)
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

    Threads are reused (``fastsock._workers``): a request goes to an idle
    worker when there is one, and a new worker starts only when none is idle;
    a worker idle for ``worker_idle_timeout`` seconds exits.  One request
    runs per thread at a time and concurrency is unbounded, as in the
    standard library, unless ``max_threads`` (a fastsock extension) is set:
    then at most that many requests run at once, and while the limit is
    reached the server stops accepting, leaving connections in the listen
    backlog.  ``daemon_threads`` and ``block_on_close`` mean what they mean
    in the standard library.
    """

    daemon_threads = False
    block_on_close = True
    _threads = _NoThreads()
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
        pool = vars(self).get("_workers")
        if pool is None:
            pool = self._workers = WorkerPool(self)
            if self.block_on_close:
                # What server_close() joins, and what len() counts.
                self._threads = pool
        pool.submit(request, client_address)

    def server_close(self):
        super().server_close()
        pool = vars(self).get("_workers")
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


_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class StreamRequestHandler(BaseRequestHandler):
    """A handler with file objects over a stream connection.

    ``rfile`` reads the connection (buffered by ``rbufsize``), ``wfile``
    writes it (``wbufsize`` 0: every write is sent at once).  ``timeout``,
    when not None, is applied to the connection.  The file objects come from
    the engine: compiled in the compiled engine, ``socket.makefile`` objects
    and an unbuffered writer in the pure one.

    Nagle stalls: a response written in two pieces (headers, then body)
    waits for the client's delayed ACK, about 40 ms, under Nagle's
    algorithm.  fastsock sets TCP_NODELAY on TCP connections while
    ``avoid_nagle_stalls`` is true (the default), so every write goes on the
    wire at once and nothing a handler wrote is held back.
    """

    rbufsize = -1
    wbufsize = 0
    timeout = None
    disable_nagle_algorithm = False
    avoid_nagle_stalls = True

    def setup(self):
        self.connection = connection = self.request
        if self.timeout is not None:
            connection.settimeout(self.timeout)
        if self.disable_nagle_algorithm or (
                self.avoid_nagle_stalls
                and connection.family in _TCP_FAMILIES):
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        engine = _backend.engine()
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
