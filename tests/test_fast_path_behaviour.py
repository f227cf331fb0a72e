"""The compiled engine's fast paths, compared with the standard library
without leaving them.

test_server_hooks records hook calls by overriding every hook, which takes
the compiled engine off the paths on which it does the default hooks' work
itself.  Here the servers keep every hook that a fast path replaces (only
``handle_error``, which every path calls as a hook, is overridden where its
arguments are looked at), and what is compared is what a handler records
and what a client's socket sees: the order of ``setup``/``handle``/
``finish``, ``handle_error``'s arguments, the half-close before the close,
one datagram per reply, an exception that is not an Exception leaving
``serve_forever``.

Each test runs against the standard library's ``socketserver`` and against
fastsock on each engine.  On the compiled engine each also checks that the
fast path was taken, from the Python frames between ``handle()`` and the
loop: a hook done in C leaves none (``FAST_PATH_CALLERS``).
"""

import socketserver
import sys

import pytest

import fastsock
from fastsock import _backend
from _server_helpers import (HOST, TIMEOUT, ServerThread, connect,
                             datagram_client, recv_until_eof, serving,
                             wait_until)

IMPLEMENTATIONS = ["socketserver"] + [f"fastsock-{name}"
                                      for name in _backend.available()]

# On the compiled engine, the Python functions between a handler's handle()
# and the loop (serve_forever(), or a worker thread's run()): the
# handler's __init__ where the handler is built as a Python class, and, in
# a stream server's worker, the hooks that it calls from C (TCPServer's
# finish_request calls BaseServer's).
FAST_PATH_CALLERS = {
    "TCPServer": ["__init__"],
    "ThreadingTCPServer": ["__init__", "finish_request", "finish_request",
                           "process_request_thread"],
    "UDPServer": [],
    "ThreadingUDPServer": [],
}
STREAM_SERVERS = ["TCPServer", "ThreadingTCPServer"]
DATAGRAM_SERVERS = ["UDPServer", "ThreadingUDPServer"]


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    """The module under test: socketserver, or fastsock on one engine."""
    if request.param == "socketserver":
        yield socketserver
        return
    with _backend.use(request.param.split("-", 1)[1]):
        yield fastsock


def python_callers():
    """The names of the Python functions that called the caller (a
    handler's handle()), up to the loop: serve_forever(), or the run() of
    the worker thread."""
    names = []
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_name not in (
            "serve_forever", "run"):
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return names


def check_fast_path(impl, server_name, callers):
    """On the compiled engine, that handle() was called on the fast path."""
    if impl is fastsock and _backend.engine().NAME == "cython":
        assert callers == FAST_PATH_CALLERS[server_name]


class ErrorRecords:
    """Server mix-in: what handle_error() was called with."""

    def __init__(self, *args, **kwargs):
        self.errors = []
        super().__init__(*args, **kwargs)

    def handle_error(self, request, client_address):
        self.errors.append((sys.exc_info()[0], request, client_address))


def server_class(impl, server_name, *mixins):
    return type(server_name, (*mixins, getattr(impl, server_name)), {})


# -- The handler's steps -------------------------------------------------------

@pytest.mark.parametrize("server_name", STREAM_SERVERS)
def test_stream_setup_handle_finish(impl, server_name, no_leaks):
    records = []

    class Steps(impl.StreamRequestHandler):
        def setup(self):
            records.append("setup")
            super().setup()

        def handle(self):
            records.append(("handle", python_callers()))
            self.wfile.write(self.rfile.readline().upper())

        def finish(self):
            super().finish()
            records.append("finish")

    server = server_class(impl, server_name)((HOST, 0), Steps)
    with serving(server):
        for _ in range(2):
            with connect(server) as client:
                client.sendall(b"ping\n")
                assert recv_until_eof(client) == b"PING\n"
    steps = [record if isinstance(record, str) else record[0]
             for record in records]
    assert steps == ["setup", "handle", "finish"] * 2
    for step, callers in (record for record in records
                          if not isinstance(record, str)):
        check_fast_path(impl, server_name, callers)


@pytest.mark.parametrize("server_name", DATAGRAM_SERVERS)
def test_datagram_setup_before_handle_and_finish_after(impl, server_name,
                                                       no_leaks):
    # setup() and finish() are left as they are, so that the compiled
    # engine builds the handler in place: setup()'s work shows in what
    # handle() finds, finish()'s in the reply.
    records = []

    class Steps(impl.DatagramRequestHandler):
        def handle(self):
            records.append((self.packet, self.socket is server.socket,
                            self.rfile.read(), self.wfile.getvalue(),
                            python_callers()))
            self.wfile.write(b"from handle")

    server = server_class(impl, server_name)((HOST, 0), Steps)
    with serving(server), datagram_client(server) as client:
        client.sendto(b"ping", server.server_address)
        assert client.recv(100) == b"from handle"
    [(packet, own_socket, read, unsent, callers)] = records
    assert (packet, own_socket, read, unsent) == (b"ping", True, b"ping", b"")
    check_fast_path(impl, server_name, callers)


# -- handle_error ----------------------------------------------------------------

@pytest.mark.parametrize("server_name", STREAM_SERVERS)
def test_stream_handle_error_arguments(impl, server_name, no_leaks):
    handlers = []

    class Failing(impl.StreamRequestHandler):
        def handle(self):
            handlers.append((self.request, self.client_address,
                             python_callers()))
            self.wfile.write(b"partial\n")
            raise ValueError("from handle")

    server = server_class(impl, server_name, ErrorRecords)((HOST, 0),
                                                           Failing)
    with serving(server), connect(server) as client:
        # Shut down after handle_error(), which saw it open.
        assert recv_until_eof(client) == b"partial\n"
        client_address = client.getsockname()
    [(kind, request, address)] = server.errors
    [(handler_request, handler_address, callers)] = handlers
    assert kind is ValueError
    assert request is handler_request
    assert address == handler_address == client_address
    assert request.fileno() == -1  # closed once handle_error() returned
    check_fast_path(impl, server_name, callers)


@pytest.mark.parametrize("server_name", DATAGRAM_SERVERS)
def test_datagram_handle_error_arguments_and_the_reply(impl, server_name,
                                                       no_leaks):
    handlers = []

    class Failing(impl.DatagramRequestHandler):
        def handle(self):
            handlers.append((self.request, self.client_address,
                             python_callers()))
            self.wfile.write(b"partial")
            raise ValueError("from handle")

    server = server_class(impl, server_name, ErrorRecords)((HOST, 0),
                                                           Failing)
    with serving(server), datagram_client(server) as client:
        client.sendto(b"boom", server.server_address)
        # finish() ran all the same: what handle() wrote is sent.
        assert client.recv(100) == b"partial"
        client_address = client.getsockname()
        # Reported once the reply is out.
        wait_until(lambda: server.errors, "handle_error()")
    [(kind, request, address)] = server.errors
    [(handler_request, handler_address, callers)] = handlers
    assert kind is ValueError
    assert request is handler_request
    assert request == (b"boom", server.socket)
    assert address == handler_address == client_address
    check_fast_path(impl, server_name, callers)


# -- What the client sees ------------------------------------------------------

@pytest.mark.parametrize("server_name", STREAM_SERVERS)
def test_half_close_before_close(impl, server_name, no_leaks):
    # The handler leaves part of the request unread.  A bare close() would
    # send only a reset, and the client would lose the end of the stream;
    # shutdown(SHUT_WR) first sends FIN, so the client reads the reply,
    # then a clean EOF, and only then does the reset matter.
    callers = []

    class ReadsFour(impl.BaseRequestHandler):
        def handle(self):
            callers.extend(python_callers())
            self.request.sendall(self.request.recv(4).upper())

    server = server_class(impl, server_name)((HOST, 0), ReadsFour)
    with serving(server), connect(server) as client:
        client.sendall(b"one\ntwo\n")
        assert client.makefile("rb").readline() == b"ONE\n"
        assert client.recv(100) == b""  # EOF, not ConnectionResetError
    check_fast_path(impl, server_name, callers)


@pytest.mark.parametrize("server_name", DATAGRAM_SERVERS)
def test_one_datagram_per_reply(impl, server_name, no_leaks):
    # However many writes make it, and even when there are none.
    callers = []

    class ByteByByte(impl.DatagramRequestHandler):
        def handle(self):
            callers.append(python_callers())
            for byte in self.rfile.read():
                self.wfile.write(bytes([byte]).upper())

    server = server_class(impl, server_name)((HOST, 0), ByteByByte)
    with serving(server), datagram_client(server) as client:
        replies = []
        for request in (b"abc", b"", b"d"):
            client.sendto(request, server.server_address)
            replies.append(client.recv(100))
    assert replies == [b"ABC", b"", b"D"]
    for each in callers:
        check_fast_path(impl, server_name, each)


# -- An exception that is not an Exception --------------------------------------

@pytest.mark.parametrize("server_name", ["TCPServer", "UDPServer"])
def test_a_base_exception_leaves_serve_forever(impl, server_name, no_leaks):
    # KeyboardInterrupt from handle(): finish() runs, handle_error() does
    # not, a stream request is shut down, and serve_forever() raises it.
    # Called again, serve_forever() serves.
    records = []
    stream = server_name == "TCPServer"
    base = impl.StreamRequestHandler if stream else impl.DatagramRequestHandler

    class Interrupting(base):
        def handle(self):
            records.append(python_callers())
            line = self.rfile.readline()
            self.wfile.write(line.upper())
            if line == b"stop\n":
                raise KeyboardInterrupt

    server = server_class(impl, server_name, ErrorRecords)((HOST, 0),
                                                           Interrupting)

    def exchange(payload):
        if stream:
            with connect(server) as client:
                client.sendall(payload)
                return recv_until_eof(client)
        with datagram_client(server) as client:
            client.sendto(payload, server.server_address)
            return client.recv(100)

    with server:
        runner = ServerThread(server).start()
        assert exchange(b"stop\n") == b"STOP\n"
        runner.thread.join(TIMEOUT)
        assert not runner.thread.is_alive()
        assert isinstance(runner.error, KeyboardInterrupt)
        with serving(server):
            assert exchange(b"again\n") == b"AGAIN\n"
    assert server.errors == []
    assert len(records) == 2
    for callers in records:
        check_fast_path(impl, server_name, callers)

