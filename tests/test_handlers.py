"""Request handlers: the setup/handle/finish contract and the file objects.

Handlers run inside a real server, once per engine: the stream handler's
``rfile`` and ``wfile`` come from the engine.
"""

import array
import io
import os
import socket
import socketserver
import sys
import threading

import pytest

import fastsock
from _server_helpers import (
    HOST, TIMEOUT, DatagramEcho, StreamEcho, connect, datagram_client,
    exchange, recv_until_eof, requires_unix, serving)

# -- BaseRequestHandler --------------------------------------------------------


def _contract_log(module, fail_in):
    """Run one request through a handler that logs its steps."""
    log = []

    class Steps(module.BaseRequestHandler):
        def setup(self):
            log.append(("setup", self.request is not None,
                        self.client_address is not None,
                        isinstance(self.server, module.TCPServer)))
            if fail_in == "setup":
                raise ValueError("setup")

        def handle(self):
            log.append("handle")
            if fail_in == "handle":
                raise ValueError("handle")

        def finish(self):
            log.append("finish")

    class Quiet(module.TCPServer):
        def handle_error(self, request, client_address):
            log.append("handle_error")

    with Quiet((HOST, 0), Steps) as server:
        with connect(server) as client:
            server.handle_request()
            assert recv_until_eof(client) == b""
    return log


@pytest.mark.parametrize("fail_in", [None, "setup", "handle"])
def test_base_handler_contract_matches_stdlib(engine, no_leaks, fail_in):
    ours = _contract_log(fastsock, fail_in)
    assert ours == _contract_log(socketserver, fail_in)
    started = [("setup", True, True, True)]
    assert ours == {
        None: started + ["handle", "finish"],
        # setup() failing skips handle() and finish()
        "setup": started + ["handle_error"],
        # finish() runs whatever handle() does
        "handle": started + ["handle", "finish", "handle_error"],
    }[fail_in]


def test_base_handler_does_nothing_by_default(engine, no_leaks):
    server = fastsock.TCPServer((HOST, 0), fastsock.BaseRequestHandler)
    with serving(server):
        # nothing sent: a handler that reads nothing would reset the
        # connection over unread data
        assert exchange(server, b"") == b""


# -- StreamRequestHandler ------------------------------------------------------

def _run_stream(handler, payload=b"", server_class=None, address=None):
    """Serve one connection with ``handler``; return the client's view."""
    server_class = server_class or fastsock.TCPServer
    server = server_class(address or (HOST, 0), handler)
    with serving(server):
        return exchange(server, payload)


def test_stream_handler_defaults():
    handler = fastsock.StreamRequestHandler
    assert (handler.rbufsize, handler.wbufsize, handler.timeout,
            handler.disable_nagle_algorithm) == (-1, 0, None, False)
    assert fastsock.TCPServer.avoid_nagle_stalls is True  # fastsock's own


def test_unbuffered_writer(engine, no_leaks):
    facts = {}

    class Probe(fastsock.StreamRequestHandler):
        def handle(self):
            wfile = self.wfile
            facts["connection"] = self.connection is self.request
            facts["type"] = isinstance(wfile, io.BufferedIOBase)
            facts["writable"] = wfile.writable()
            facts["fileno"] = wfile.fileno() == self.request.fileno()
            facts["counts"] = [
                wfile.write(b"bytes;"),
                wfile.write(bytearray(b"bytearray;")),
                wfile.write(memoryview(b"view;")),
                wfile.write(array.array("i", [0x41414141])),  # 4 x "A"
            ]

    reply = _run_stream(Probe)
    assert reply == b"bytes;bytearray;view;" + array.array(
        "i", [0x41414141]).tobytes()
    size = array.array("i").itemsize
    assert facts == {"connection": True, "type": True, "writable": True,
                     "fileno": True, "counts": [6, 10, 5, size]}


def test_unbuffered_writer_sends_at_once(engine, no_leaks):
    # The client answers what it already got while handle() still runs.
    class Ask(fastsock.StreamRequestHandler):
        def handle(self):
            self.wfile.write(b"question?")
            self.wfile.write(b"answer was " + self.rfile.readline())

    server = fastsock.TCPServer((HOST, 0), Ask)
    with serving(server):
        with connect(server) as client:
            assert client.recv(100) == b"question?"
            client.sendall(b"42\n")
            assert recv_until_eof(client) == b"answer was 42\n"


def test_unbuffered_writer_close_leaves_the_connection_open(engine, no_leaks):
    class CloseEarly(fastsock.StreamRequestHandler):
        def handle(self):
            self.wfile.close()
            self.request.sendall(b"still open")

    assert _run_stream(CloseEarly) == b"still open"


def test_buffered_writer_holds_data_until_flushed(engine, no_leaks):
    written, checked = threading.Event(), threading.Event()

    class Buffered(fastsock.StreamRequestHandler):
        wbufsize = 64 * 1024

        def handle(self):
            self.wfile.write(b"held")
            written.set()
            checked.wait(TIMEOUT)
            self.wfile.write(b" back")  # finish() flushes it all

    server = fastsock.TCPServer((HOST, 0), Buffered)
    with serving(server):
        with connect(server) as client:
            assert written.wait(TIMEOUT)
            client.settimeout(0.2)
            with pytest.raises(TimeoutError):
                client.recv(100)
            checked.set()
            client.settimeout(TIMEOUT)
            assert recv_until_eof(client) == b"held back"


def test_finish_closes_both_files(engine, no_leaks):
    files = []

    class Keep(StreamEcho):
        def handle(self):
            files.extend([self.rfile, self.wfile])
            super().handle()

    assert _run_stream(Keep, b"x") == b"X"
    assert [f.closed for f in files] == [True, True]


@pytest.mark.parametrize("rbufsize", [-1, 1, 4096])
def test_reader_lines_and_exact_reads(engine, no_leaks, rbufsize):
    class Parse(fastsock.StreamRequestHandler):
        def handle(self):
            first = self.rfile.readline()
            limited = self.rfile.readline(3)
            rest_of_line = self.rfile.readline()
            exact = self.rfile.read(5)
            lines = list(self.rfile)
            self.wfile.write(b"|".join([first, limited, rest_of_line, exact]
                                       + lines))

    Parse.rbufsize = rbufsize
    reply = _run_stream(Parse, b"one\ntwo-three\n12345x\ny\nlast")
    assert reply == b"one\n|two|-three\n|12345|x\n|y\n|last"


def test_large_payload_round_trip(engine, no_leaks):
    payload = bytes(range(256)) * 4096  # 1 MiB

    class Blocks(fastsock.StreamRequestHandler):
        def handle(self):
            while True:
                block = self.rfile.read(65536)
                if not block:
                    return
                self.wfile.write(block)

    server = fastsock.TCPServer((HOST, 0), Blocks)
    with serving(server):
        with connect(server) as client:
            sender = threading.Thread(
                target=lambda: (client.sendall(payload),
                                client.shutdown(socket.SHUT_WR)))
            sender.start()
            reply = recv_until_eof(client)
            sender.join(TIMEOUT)
    assert reply == payload


def test_unbuffered_reader_leaves_the_rest_in_the_socket(engine, no_leaks):
    # rbufsize 0: rfile takes only what is asked for, so a handler may mix
    # rfile and recv() on the connection.
    class Mixed(fastsock.StreamRequestHandler):
        rbufsize = 0

        def handle(self):
            head = self.rfile.readline()
            body = recv_until_eof(self.request)
            self.wfile.write(head.upper() + body)

    assert _run_stream(Mixed, b"head\nbody") == b"HEAD\nbody"


def test_timeout_applies_to_the_connection(engine, no_leaks, capfd):
    seen = []

    class Impatient(fastsock.StreamRequestHandler):
        timeout = 0.1

        def handle(self):
            seen.append(self.request.gettimeout())
            self.rfile.read(1)  # the client never sends

    class Noting(fastsock.TCPServer):
        def handle_error(self, request, client_address):
            seen.append(type(sys.exc_info()[1]))

    server = Noting((HOST, 0), Impatient)
    with serving(server):
        with connect(server) as client:
            assert recv_until_eof(client) == b""
    assert seen == [0.1, TimeoutError]


def test_no_timeout_by_default(engine, no_leaks):
    seen = []

    class Probe(StreamEcho):
        def handle(self):
            seen.append(self.request.gettimeout())
            super().handle()

    assert _run_stream(Probe, b"x") == b"X"
    assert seen == [None]


@pytest.mark.parametrize("disable, avoid, expected", [
    (False, True, True),    # fastsock's default: no Nagle stalls
    (True, False, True),    # the standard library's switch
    (True, True, True),
    (False, False, False),  # exactly the standard library's default
])
def test_tcp_nodelay(engine, no_leaks, disable, avoid, expected):
    # disable: the handler's (stdlib) switch; avoid: the server's, which
    # sets TCP_NODELAY on the listener for accepted connections to inherit.
    seen = []

    class Probe(StreamEcho):
        disable_nagle_algorithm = disable

        def handle(self):
            seen.append(self.request.getsockopt(socket.IPPROTO_TCP,
                                                socket.TCP_NODELAY) != 0)
            super().handle()

    class Server(fastsock.TCPServer):
        avoid_nagle_stalls = avoid

    assert _run_stream(Probe, b"n", Server) == b"N"
    assert seen == [expected]


@requires_unix
def test_stream_handler_on_unix_sockets(engine, no_leaks, sock_dir):
    # avoid_nagle_stalls leaves non-TCP listeners alone
    reply = _run_stream(StreamEcho, b"unix", fastsock.UnixStreamServer,
                        os.path.join(sock_dir, "h.sock"))
    assert reply == b"UNIX"


# -- DatagramRequestHandler ----------------------------------------------------

def test_datagram_handler_files(engine, no_leaks):
    facts = {}

    class Probe(fastsock.DatagramRequestHandler):
        def handle(self):
            facts["packet"] = self.packet
            facts["socket"] = self.socket is self.server.socket
            facts["request"] = self.request == (self.packet, self.socket)
            facts["rfile"] = self.rfile.read()
            facts["address"] = self.client_address
            self.wfile.write(b"one ")
            self.wfile.write(b"datagram")

    server = fastsock.UDPServer((HOST, 0), Probe)
    with serving(server):
        with datagram_client(server) as client:
            client.sendto(b"hello", server.server_address)
            assert client.recv(100) == b"one datagram"
            address = client.getsockname()
    assert facts == {"packet": b"hello", "socket": True, "request": True,
                     "rfile": b"hello", "address": address}


def test_datagram_handler_replies_even_when_empty(engine, no_leaks):
    server = fastsock.UDPServer((HOST, 0), fastsock.DatagramRequestHandler)
    with serving(server):
        assert exchange(server, b"silence") == b""


def test_datagram_handler_replies_to_each_sender(engine, no_leaks):
    server = fastsock.ThreadingUDPServer((HOST, 0), DatagramEcho)
    with serving(server):
        clients = [datagram_client(server) for _ in range(3)]
        try:
            for number, client in enumerate(clients):
                client.sendto(b"c%d" % number, server.server_address)
            assert [c.recv(100) for c in clients] == [b"C0", b"C1", b"C2"]
        finally:
            for client in clients:
                client.close()
