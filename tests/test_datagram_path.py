"""The datagram path of the engines: bursts, ordering, DatagramRequestHandler.

The compiled engine receives datagrams in C and, for a handler class that
keeps DatagramRequestHandler's setup() and finish(), does their work in
place; everything here must hold the same under both engines.
"""

import io
import os
import socket
import subprocess
import sys
import threading

import pytest

import fastsock
from _server_helpers import (
    HOST, TIMEOUT, DatagramEcho, ServerThread, datagram_client, serving,
    wait_until)


def _readable(sock):
    import select
    return bool(select.select([sock], [], [], 0)[0])


def _burst(server, client, payloads):
    for payload in payloads:
        client.sendto(payload, server.server_address)


def test_a_burst_is_handled_in_arrival_order_one_handler_each(engine,
                                                              no_leaks):
    seen = []

    class Record(DatagramEcho):
        def handle(self):
            seen.append((self.packet, id(self)))
            super().handle()

    server = fastsock.UDPServer((HOST, 0), Record)
    payloads = [b"d%03d" % n for n in range(100)]
    with serving(server):
        with datagram_client(server) as client:
            _burst(server, client, payloads)
            replies = [client.recv(100) for _ in payloads]
    assert [packet for packet, _ in seen] == payloads
    assert replies == [payload.upper() for payload in payloads]


def test_interleaved_senders_each_get_their_own_replies(engine, no_leaks):
    server = fastsock.UDPServer((HOST, 0), DatagramEcho)
    with serving(server):
        clients = [datagram_client(server) for _ in range(4)]
        try:
            for round_ in range(5):
                for number, client in enumerate(clients):
                    client.sendto(b"c%dr%d" % (number, round_),
                                  server.server_address)
            for number, client in enumerate(clients):
                assert [client.recv(100) for _ in range(5)] == [
                    b"C%dR%d" % (number, round_) for round_ in range(5)]
        finally:
            for client in clients:
                client.close()


def test_client_address_is_the_senders_for_every_peer(engine, no_leaks):
    # Senders on other loopback addresses (1, 2 and 3 digit octets), each
    # twice: the address is formatted, then found again, per sender.
    hosts = ["127.0.0.1", "127.9.10.99", "127.100.255.0", "127.1.20.254"]
    seen = []

    class Record(DatagramEcho):
        def handle(self):
            seen.append(self.client_address)
            super().handle()

    server = fastsock.UDPServer((HOST, 0), Record)
    with serving(server):
        clients = []
        try:
            for host in hosts:
                for _ in range(10):
                    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    clients.append(client)
                    client.settimeout(TIMEOUT)
                    try:
                        client.bind((host, 0))
                    except OSError:
                        pytest.skip("no loopback address " + host)
            expected = []
            for _ in range(2):
                for client in clients:
                    client.sendto(b"x", server.server_address)
                    assert client.recv(100) == b"X"
                    expected.append(client.getsockname())
        finally:
            for client in clients:
                client.close()
    assert seen == expected


@pytest.mark.parametrize("also_counts", [False, True])
def test_hook_set_on_the_instance_mid_burst_applies_to_the_next(
        engine, no_leaks, also_counts):
    # The datagrams are queued together; the third one's handler makes the
    # server refuse the rest, with or without the instance's dict having
    # changed (a counter) at every request before.
    refused = []

    class Refusing(DatagramEcho):
        def handle(self):
            super().handle()
            server = self.server
            if also_counts:
                server.count = getattr(server, "count", 0) + 1
            if self.packet == b"d2":
                server.verify_request = (
                    lambda request, address: refused.append(request[0]))

    server = fastsock.UDPServer((HOST, 0), Refusing)
    payloads = [b"d%d" % n for n in range(6)]
    with datagram_client(server) as client:
        _burst(server, client, payloads)
        with serving(server):
            replies = [client.recv(100) for _ in range(3)]
            wait_until(lambda: len(refused) == 3, "the refusals")
        assert not _readable(client)
    assert replies == [b"D0", b"D1", b"D2"]
    assert refused == [b"d3", b"d4", b"d5"]


def test_handler_sees_what_the_stdlib_handler_sees(engine, no_leaks):
    facts = []

    class Probe(fastsock.DatagramRequestHandler):
        def handle(self):
            facts.append((
                list(vars(self)),
                type(self.rfile) is io.BytesIO,
                type(self.wfile) is io.BytesIO,
                self.wfile.getvalue(),
                self.request == (self.packet, self.server.socket),
                self.socket is self.server.socket,
                self.client_address))
            self.wfile.write(self.rfile.read())

    server = fastsock.UDPServer((HOST, 0), Probe)
    with serving(server):
        with datagram_client(server) as client:
            for payload in (b"one", b"two"):
                client.sendto(payload, server.server_address)
                assert client.recv(100) == payload
            address = client.getsockname()
    expected = (["request", "client_address", "server", "packet", "socket",
                 "rfile", "wfile"], True, True, b"", True, True, address)
    assert facts == [expected, expected]


def test_overridden_setup_init_and_finish_are_called_in_order(engine,
                                                              no_leaks):
    calls = []

    class Hooks(fastsock.DatagramRequestHandler):
        def __init__(self, *args):
            calls.append("__init__")
            super().__init__(*args)

        def setup(self):
            calls.append("setup")
            super().setup()

        def handle(self):
            calls.append("handle")
            self.wfile.write(b"ok")

        def finish(self):
            calls.append("finish")
            super().finish()

    server = fastsock.UDPServer((HOST, 0), Hooks)
    with serving(server):
        with datagram_client(server) as client:
            client.sendto(b"x", server.server_address)
            assert client.recv(100) == b"ok"
    assert calls == ["__init__", "setup", "handle", "finish"]


def test_handler_class_patched_while_serving_is_honoured(engine, no_leaks):
    class Echo(DatagramEcho):
        pass

    def finish(self):
        self.socket.sendto(b"patched:" + self.wfile.getvalue(),
                           self.client_address)

    server = fastsock.UDPServer((HOST, 0), Echo)
    with serving(server):
        with datagram_client(server) as client:
            client.sendto(b"a", server.server_address)
            assert client.recv(100) == b"A"
            Echo.finish = finish
            client.sendto(b"b", server.server_address)
            assert client.recv(100) == b"patched:B"
            del Echo.finish
            server.RequestHandlerClass = fastsock.DatagramRequestHandler
            client.sendto(b"c", server.server_address)
            assert client.recv(100) == b""


def test_reply_follows_what_handle_changed(engine, no_leaks):
    # finish() sends self.wfile's bytes with self.socket to
    # self.client_address, whatever handle() made of them.
    with datagram_client_pair() as (other, other_address):
        class Redirect(fastsock.DatagramRequestHandler):
            def handle(self):
                command = self.rfile.read()
                if command == b"address":
                    self.client_address = other_address
                elif command == b"wfile":
                    self.wfile = io.BytesIO(b"replaced")
                elif command == b"socket":
                    self.socket = other
                self.wfile.write(b"!")

        server = fastsock.UDPServer((HOST, 0), Redirect)
        with serving(server):
            with datagram_client(server) as client:
                client.sendto(b"address", server.server_address)
                assert other.recv(100) == b"!"
                client.sendto(b"wfile", server.server_address)
                assert client.recv(100) == b"!eplaced"
                client.sendto(b"socket", server.server_address)
                data, sender = client.recvfrom(100)
                assert (data, sender) == (b"!", other.getsockname())


class datagram_client_pair:
    """A spare bound datagram socket and its address."""

    def __enter__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.bind((HOST, 0))
        return self.sock, self.sock.getsockname()

    def __exit__(self, *exc_info):
        self.sock.close()


def test_handle_error_still_replies_and_reports(engine, no_leaks):
    errors = []

    class Failing(fastsock.DatagramRequestHandler):
        def handle(self):
            self.wfile.write(b"partial")
            raise ValueError("boom")

    class Server(fastsock.UDPServer):
        def handle_error(self, request, client_address):
            import sys
            errors.append((type(sys.exc_info()[1]), request[0],
                           client_address))

    server = Server((HOST, 0), Failing)
    with serving(server):
        with datagram_client(server) as client:
            client.sendto(b"x", server.server_address)
            assert client.recv(100) == b"partial"
            address = client.getsockname()
    assert errors == [(ValueError, b"x", address)]


def test_failed_reply_goes_to_handle_error(engine, no_leaks):
    errors = []

    class TooBig(fastsock.DatagramRequestHandler):
        def handle(self):
            self.wfile.write(b"x" * 70000)  # over the UDP limit: EMSGSIZE

    class Server(fastsock.UDPServer):
        def handle_error(self, request, client_address):
            import sys
            errors.append(type(sys.exc_info()[1]))

    server = Server((HOST, 0), TooBig)
    with serving(server):
        with datagram_client(server) as client:
            client.sendto(b"x", server.server_address)
            wait_until(lambda: errors, "handle_error()")
    assert errors == [OSError]


def test_truncation_then_the_next_datagram_whole(engine, no_leaks):
    # A datagram longer than max_packet_size is cut, and the rest of it
    # dropped: the next request is the next datagram.
    got = []

    class Measure(fastsock.DatagramRequestHandler):
        def handle(self):
            got.append(self.packet)

    server = fastsock.UDPServer((HOST, 0), Measure)
    server.max_packet_size = 4
    with serving(server):
        with datagram_client(server) as client:
            _burst(server, client, [b"abcdefgh", b"ij", b"klmnop"])
            for _ in range(3):
                client.recv(100)
    assert got == [b"abcd", b"ij", b"klmn"]


def test_shutdown_during_a_burst_leaves_the_rest_queued(engine, no_leaks):
    # shutdown() is answered after the request in progress; what was not
    # taken stays in the socket, as with the standard library.
    handled = []
    asked = threading.Event()

    class Server(fastsock.UDPServer):
        pass

    class Slow(fastsock.DatagramRequestHandler):
        def handle(self):
            handled.append(self.packet)
            if len(handled) == 1:
                stopper = threading.Thread(target=self.server.shutdown)
                stopper.start()
                # Wait until the request to stop is registered.
                wait_until(lambda: self.server._BaseServer__shutdown_request,
                           "shutdown()")
                asked.set()

    server = Server((HOST, 0), Slow)
    try:
        with datagram_client(server) as client:
            payloads = [b"p%02d" % n for n in range(20)]
            _burst(server, client, payloads)
            wait_until(lambda: _readable(server.socket), "the burst")
            runner = ServerThread(server).start()
            runner.thread.join(TIMEOUT)
            assert not runner.thread.is_alive()
            assert runner.error is None
            assert asked.is_set()
            assert handled == payloads[:1]
            server.socket.settimeout(TIMEOUT)
            rest = [server.socket.recv(100) for _ in payloads[1:]]
            assert rest == payloads[1:]
    finally:
        server.server_close()


def test_threading_server_answers_every_datagram_of_a_burst(engine,
                                                            no_leaks):
    # The compiled loop hands each datagram to a worker before taking the
    # next (one per loop turn).
    server = fastsock.ThreadingUDPServer((HOST, 0), DatagramEcho)
    payloads = [b"t%03d" % n for n in range(200)]
    with serving(server):
        with datagram_client(server) as client:
            _burst(server, client, payloads)
            replies = sorted(client.recv(100) for _ in payloads)
    assert replies == sorted(payload.upper() for payload in payloads)


def test_what_setup_reads_back_goes_through_the_handlers_attributes(
        engine, no_leaks):
    # DatagramRequestHandler.setup() stores the packet, then reads it back
    # to make rfile: a property on the handler sees both.
    class Shouting(fastsock.DatagramRequestHandler):
        @property
        def packet(self):
            return self._packet.upper()

        @packet.setter
        def packet(self, value):
            self._packet = value

        def handle(self):
            self.wfile.write(self.rfile.read())

    server = fastsock.UDPServer((HOST, 0), Shouting)
    with serving(server), datagram_client(server) as client:
        client.sendto(b"abc", server.server_address)
        assert client.recv(100) == b"ABC"


PATCHED_BASES = """
import socket, sys, threading
import fastsock

calls = []
for cls, name in [(fastsock.DatagramRequestHandler, "setup"),
                  (fastsock.ThreadingMixIn, "process_request_thread")]:
    def patched(self, *args, _original=getattr(cls, name), _name=name):
        calls.append(_name)
        return _original(self, *args)
    setattr(cls, name, patched)

class Echo(fastsock.DatagramRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.read())

for server_class in (fastsock.UDPServer, fastsock.ThreadingUDPServer):
    server = server_class(("127.0.0.1", 0), Echo)
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        for _ in range(2):
            client.sendto(b"x", server.server_address)
            assert client.recv(10) == b"x"
    server.shutdown()
    loop.join()
    server.server_close()
print(fastsock.BACKEND, sorted(calls))
"""


def test_base_class_hooks_patched_before_any_server_are_called(engine):
    # Patched before the first server ran, a base class's hook still counts
    # as an override: the compiled engine must not do its work in C.
    env = dict(os.environ, FASTSOCK_PURE="1" if engine == "python" else "0",
               # The fastsock under test, installed or in a checkout.
               PYTHONPATH=os.path.dirname(os.path.dirname(fastsock.__file__)))
    out = subprocess.run([sys.executable, "-c", PATCHED_BASES], env=env,
                         capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert out.split(" ", 1) == [
        engine, str(["process_request_thread"] * 2 + ["setup"] * 4) + "\n"]
