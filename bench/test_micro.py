"""Micro-benchmarks of the per-request costs fastsock changes.

    python -m pytest bench/test_micro.py --benchmark-only

Each runs for the standard library's socketserver, fastsock's compiled engine
(skipped when it was not built) and fastsock's pure engine, on the same
objects the servers use: the rfile/wfile come from each implementation's own
``StreamRequestHandler.setup()``.  Compare the three within one run.  Under
the normal test suite (``--benchmark-disable``) every benchmark runs once and
checks its result, so they double as quick tests.
"""

import socket
import socketserver
import threading

import pytest

import fastsock
from fastsock import _backend

LINE = b"x" * 63 + b"\n"
BATCH = 100  # lines per round for the stream benchmarks
ROUNDS = 300  # rounds for the benchmarks that need a fresh connection each

IMPLEMENTATIONS = [
    pytest.param("stdlib", id="stdlib"),
    pytest.param(
        "cython",
        id="compiled",
        marks=pytest.mark.skipif(
            "cython" not in _backend.available(), reason="compiled engine not built"
        ),
    ),
    pytest.param("python", id="pure"),
]


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    """The socketserver module under test, with fastsock's engine selected."""
    if request.param == "stdlib":
        assert not hasattr(socketserver, "BACKEND"), "socketserver is not the stdlib's"
        yield socketserver
        return
    with _backend.use(request.param):
        yield fastsock


@pytest.fixture
def stream_pair():
    """A connected pair of stream sockets: (server side, client side)."""
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def handler_files(impl, sock):
    """rfile and wfile exactly as impl's StreamRequestHandler builds them."""
    handler = impl.StreamRequestHandler.__new__(impl.StreamRequestHandler)
    handler.request = sock
    handler.setup()
    return handler


def drain(sock, nbytes):
    """Receive exactly nbytes from sock."""
    view = memoryview(bytearray(nbytes))
    got = 0
    while got < nbytes:
        got += sock.recv_into(view[got:])
    return view.tobytes()


class Connector:
    """Opens client connections to a listening server, closing them at the end."""

    def __init__(self, address):
        self.address = address
        self.clients = []

    def connect(self):
        self.clients.append(socket.create_connection(self.address))

    def close(self):
        for client in self.clients:
            client.close()


def test_handle_request(benchmark, impl):
    """One handle_request() with a connection already waiting: wait, accept,
    verify, process, build the handler, shut the connection down."""
    handled = []

    class Count(impl.BaseRequestHandler):
        def handle(self):
            handled.append(self.client_address)

    with impl.TCPServer(("127.0.0.1", 0), Count) as server:
        connector = Connector(server.server_address)
        try:
            benchmark.pedantic(
                server.handle_request, setup=connector.connect, rounds=ROUNDS
            )
        finally:
            connector.close()
    assert handled and len(handled) == len(connector.clients)


def test_serve_forever_round_trip(benchmark, impl):
    """A request through the serve_forever() loop: connect, the loop accepts
    and dispatches, the handler answers, the client reads to EOF."""

    class Answer(impl.BaseRequestHandler):
        def handle(self):
            self.request.sendall(b"ok")

    with impl.TCPServer(("127.0.0.1", 0), Answer) as server:
        loop = threading.Thread(target=server.serve_forever, args=(0.5,))
        loop.start()

        def round_trip():
            with socket.create_connection(server.server_address) as client:
                return b"".join(iter(lambda: client.recv(16), b""))

        try:
            answer = benchmark(round_trip)
        finally:
            server.shutdown()
            loop.join()
    assert answer == b"ok"


def test_accept(benchmark, impl):
    """get_request() on a listening socket with a connection waiting."""
    with impl.TCPServer(("127.0.0.1", 0), impl.BaseRequestHandler) as server:
        connector = Connector(server.server_address)

        def accept_one():
            request, address = server.get_request()
            server.close_request(request)
            return address

        try:
            address = benchmark.pedantic(
                accept_one, setup=connector.connect, rounds=ROUNDS
            )
        finally:
            connector.close()
    assert address[0] == "127.0.0.1"


def test_handler_construction(benchmark, impl, stream_pair):
    """Build a StreamRequestHandler (setup, empty handle, finish) on a socket."""
    server_side, _ = stream_pair

    class Nothing(impl.StreamRequestHandler):
        def handle(self):
            pass

    handler = benchmark(Nothing, server_side, ("peer", 0), None)
    assert handler.rfile.closed and handler.wfile.closed
    assert server_side.fileno() >= 0  # the connection itself stays open


def test_readline(benchmark, impl, stream_pair):
    """rfile.readline() of 64-byte lines already in the socket buffer."""
    server_side, client_side = stream_pair
    rfile = handler_files(impl, server_side).rfile

    def read_lines():
        return [rfile.readline() for _ in range(BATCH)]

    lines = benchmark.pedantic(
        read_lines, setup=lambda: client_side.sendall(LINE * BATCH), rounds=ROUNDS
    )
    assert lines == [LINE] * BATCH


def test_read(benchmark, impl, stream_pair):
    """rfile.read(64) of data already in the socket buffer."""
    server_side, client_side = stream_pair
    rfile = handler_files(impl, server_side).rfile

    def read_chunks():
        return [rfile.read(len(LINE)) for _ in range(BATCH)]

    chunks = benchmark.pedantic(
        read_chunks, setup=lambda: client_side.sendall(LINE * BATCH), rounds=ROUNDS
    )
    assert chunks == [LINE] * BATCH


@pytest.mark.parametrize("size", [64, 4096])
def test_write(benchmark, impl, stream_pair, size):
    """wfile.write() of a line (unbuffered, as StreamRequestHandler's default)."""
    server_side, client_side = stream_pair
    wfile = handler_files(impl, server_side).wfile
    data = b"y" * (size - 1) + b"\n"
    written = []

    def write_lines():
        for _ in range(BATCH // 10):
            wfile.write(data)
        written.append(BATCH // 10 * size)

    def take_previous_round():
        while written:
            assert drain(client_side, written.pop()) == data * (BATCH // 10)

    benchmark.pedantic(write_lines, setup=take_previous_round, rounds=ROUNDS)
    take_previous_round()


HTTP_REQUEST = (b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
                b"User-Agent: bench\r\nAccept: */*\r\n\r\n")


@pytest.mark.parametrize("module_name", ["http.server", "fastsock.http"])
def test_http_request(benchmark, module_name):
    """One keep-alive HTTP/1.1 request through handle_one_request(), from
    parsing to the response, on in-memory files: the handler's own cost."""
    import importlib
    import io

    module = importlib.import_module(module_name)

    class Page(module.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format, *args):
            pass

    handler = Page.__new__(Page)
    handler.client_address = ("127.0.0.1", 1)
    handler.wfile = io.BytesIO()

    def one_request():
        handler.rfile = io.BytesIO(HTTP_REQUEST)
        handler.handle_one_request()

    benchmark(one_request)
    assert handler.wfile.getvalue().endswith(b"\r\n\r\nok")
    assert not handler.close_connection
