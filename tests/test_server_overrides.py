"""What applications do to servers, honoured by every engine.

Real code configures instances before calling the base constructor, binds
and activates by itself, swaps the listening socket, drives its own select()
loop, and overrides single hooks on the class or on the instance.  The
standard library honours all of it because it looks everything up at the
moment it needs it; so must an engine.
"""

import select
import socket
import threading
import time

import pytest

import fastsock
from _server_helpers import (
    DatagramEcho, HOST, HOST6, TIMEOUT, StreamEcho, connect,
    echo_handler, exchange, recv_until_eof, requires_ipv6, serving, wait_until)


def test_attributes_set_on_the_instance_before_init(engine, no_leaks):
    class Configured(fastsock.TCPServer):
        def __init__(self, address, handler):
            self.allow_reuse_address = True
            self.request_queue_size = 1
            self.timeout = 0.05
            super().__init__(address, handler)

        def handle_timeout(self):
            self.timed_out = True

    server = Configured((HOST, 0), StreamEcho)
    with server:
        assert server.socket.getsockopt(socket.SOL_SOCKET,
                                        socket.SO_REUSEADDR) != 0
        server.handle_request()
        assert server.timed_out
    server = Configured((HOST, 0), StreamEcho)
    with serving(server):
        assert exchange(server, b"configured") == b"CONFIGURED"


@requires_ipv6
def test_address_family_set_on_the_instance_before_init(engine, no_leaks):
    class V6(fastsock.ThreadingTCPServer):
        def __init__(self, address, handler):
            self.address_family = socket.AF_INET6
            super().__init__(address, handler)

    server = V6((HOST6, 0), StreamEcho)
    assert server.socket.family == socket.AF_INET6
    with serving(server):
        assert exchange(server, b"six") == b"SIX"


def test_max_packet_size_set_on_the_instance(engine, no_leaks):
    class Small(fastsock.UDPServer):
        def __init__(self, address, handler):
            self.max_packet_size = 4
            super().__init__(address, handler)

    server = Small((HOST, 0), DatagramEcho)
    with serving(server):
        assert exchange(server, b"truncated") == b"TRUN"
        server.max_packet_size = 6  # read again for every datagram
        assert exchange(server, b"truncated") == b"TRUNCA"


def test_own_bind_and_activate(engine, no_leaks):
    server = fastsock.TCPServer((HOST, 0), StreamEcho,
                                bind_and_activate=False)
    try:
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.server_bind()
        server.server_activate()
    except BaseException:
        server.server_close()
        raise
    with serving(server):
        assert exchange(server, b"bound by hand") == b"BOUND BY HAND"


def test_listening_socket_made_elsewhere(engine, no_leaks):
    # Socket activation: the listening socket comes ready-made.
    server = fastsock.TCPServer((HOST, 0), StreamEcho,
                                bind_and_activate=False)
    server.socket.close()
    server.socket = socket.create_server((HOST, 0))
    server.server_address = server.socket.getsockname()
    with serving(server):
        assert exchange(server, b"inherited") == b"INHERITED"


def test_socket_replaced_by_a_duplicate_after_construction(engine, no_leaks):
    server = fastsock.TCPServer((HOST, 0), StreamEcho)
    original = server.socket
    server.socket = socket.fromfd(original.fileno(), original.family,
                                  original.type)
    original.close()
    assert server.fileno() == server.socket.fileno()
    with serving(server):
        assert exchange(server, b"dup") == b"DUP"
    with fastsock.UDPServer((HOST, 0), DatagramEcho) as server:
        original = server.socket
        server.socket = original.dup()
        original.close()
        with serving(server):
            assert exchange(server, b"dgram dup") == b"DGRAM DUP"


def test_socket_swapped_between_handle_request_calls(engine, no_leaks):
    with fastsock.TCPServer((HOST, 0), StreamEcho) as server:
        server.timeout = TIMEOUT
        replacement = socket.create_server((HOST, 0))
        server.socket.close()
        server.socket = replacement
        server.server_address = replacement.getsockname()
        with connect(server) as client:
            client.sendall(b"swapped")
            client.shutdown(socket.SHUT_WR)
            server.handle_request()
            assert recv_until_eof(client) == b"SWAPPED"


def test_own_select_loop_with_handle_request(engine, no_leaks):
    server = fastsock.TCPServer((HOST, 0), StreamEcho)
    server.timeout = 0.5
    replies = []

    def clients():
        for payload in (b"a", b"b", b"c"):
            replies.append(exchange(server, payload))

    client = threading.Thread(target=clients)
    with server:
        client.start()
        handled, deadline = 0, time.monotonic() + TIMEOUT
        while handled < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([server], [], [], 0.05)
            if ready:
                server.handle_request()
                handled += 1
        client.join(TIMEOUT)
    assert replies == [b"A", b"B", b"C"]


def test_request_handler_class_swapped_while_serving(engine, no_leaks):
    class Lower(StreamEcho):
        def handle(self):
            self.wfile.write(self.rfile.read().lower())

    server = fastsock.TCPServer((HOST, 0), StreamEcho)
    with serving(server):
        assert exchange(server, b"Mixed") == b"MIXED"
        server.RequestHandlerClass = Lower
        assert exchange(server, b"Mixed") == b"mixed"


def test_serve_forever_override_wraps_the_loop(engine, no_leaks):
    class Wrapped(fastsock.TCPServer):
        events = []

        def serve_forever(self, poll_interval=0.5):
            self.events.append(("start", poll_interval))
            try:
                super().serve_forever(poll_interval=poll_interval)
            finally:
                self.events.append(("stop",))

    server = Wrapped((HOST, 0), StreamEcho)
    with serving(server, poll_interval=5.0):
        assert exchange(server, b"wrapped") == b"WRAPPED"
    assert server.events == [("start", 5.0), ("stop",)]


def test_server_bind_override(engine, no_leaks):
    class LargeBuffers(fastsock.TCPServer):
        def server_bind(self):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 17)
            super().server_bind()
            self.bound_to = self.server_address

    server = LargeBuffers((HOST, 0), StreamEcho)
    assert server.bound_to == server.server_address
    # Linux doubles the figure; any platform reports at least what was set
    assert server.socket.getsockopt(socket.SOL_SOCKET,
                                    socket.SO_RCVBUF) >= 1 << 17
    with serving(server):
        assert exchange(server, b"bound") == b"BOUND"


def test_get_request_override_shapes_what_the_handler_gets(engine, no_leaks):
    seen = []

    class Tagging(fastsock.TCPServer):
        def get_request(self):
            connection, _ = super().get_request()
            return connection, ("proxied", 1)

    class Note(StreamEcho):
        def handle(self):
            seen.append(self.client_address)
            super().handle()

    server = Tagging((HOST, 0), Note)
    with serving(server):
        assert exchange(server, b"tag") == b"TAG"
    assert seen == [("proxied", 1)]


def test_udp_get_request_override_rewrites_the_datagram(engine, no_leaks):
    class Rot(fastsock.UDPServer):
        def get_request(self):
            (data, sock), address = super().get_request()
            return (data[::-1], sock), address

    server = Rot((HOST, 0), DatagramEcho)
    with serving(server):
        assert exchange(server, b"abc") == b"CBA"


def test_shutdown_request_override_may_keep_the_connection(engine, no_leaks):
    kept = []

    class Keeping(fastsock.TCPServer):
        def shutdown_request(self, request):
            kept.append(request)

    server = Keeping((HOST, 0), StreamEcho)
    try:
        with serving(server):
            with connect(server) as client:
                client.sendall(b"keep")
                client.shutdown(socket.SHUT_WR)
                assert client.recv(100) == b"KEEP"
                wait_until(lambda: kept, "shutdown_request()")
                client.settimeout(0.2)
                with pytest.raises(TimeoutError):
                    client.recv(100)  # nothing closed it
                kept[0].close()
                client.settimeout(TIMEOUT)
                assert client.recv(100) == b""
    finally:
        for request in kept:
            request.close()


# -- one hook overridden, on the class or on the instance ----------------------

HOOKS = ["get_request", "verify_request", "process_request",
         "finish_request", "shutdown_request", "close_request",
         "service_actions", "handle_error"]


def _failing(handler):
    class Fail(handler):
        def handle(self):
            self.rfile.read()
            raise ValueError("for handle_error")
    return Fail


@pytest.mark.parametrize("where", ["class", "instance"])
@pytest.mark.parametrize("name", ["TCPServer", "UDPServer",
                                  "ThreadingTCPServer"])
@pytest.mark.parametrize("hook", HOOKS)
def test_single_hook_override_is_called(engine, no_leaks, hook, name, where):
    base = getattr(fastsock, name)
    handler = echo_handler(base)
    if hook == "handle_error":
        handler = _failing(handler)
    calls = []

    def wrap(original):
        # as a class attribute it becomes a method: args start with self
        def hook_override(*args):
            calls.append(hook)
            return original(*args)
        return hook_override

    if where == "class":
        server_class = type(name, (base,), {hook: wrap(getattr(base, hook))})
        server = server_class((HOST, 0), handler)
    else:
        server = base((HOST, 0), handler)
        setattr(server, hook, wrap(getattr(server, hook)))
    expected = b"" if hook == "handle_error" else b"HOOKED"
    with serving(server):
        assert exchange(server, b"hooked") == expected
        # the call may come just after the reply (close_request and
        # service_actions follow it)
        wait_until(lambda: calls, f"a call of the {hook} override")
    if hook != "service_actions":  # once per loop turn, the rest once
        assert len(calls) == 1, calls


class Greeter(StreamEcho):
    """Always answers, so that an empty reply means it never ran."""

    def handle(self):
        self.wfile.write(b"hi " + self.rfile.read())


def test_hook_replaced_on_the_instance_while_serving(engine, no_leaks):
    # Maintenance mode switched on at run time: the next request sees it.
    server = fastsock.TCPServer((HOST, 0), Greeter)
    with serving(server):
        assert exchange(server, b"") == b"hi "
        server.verify_request = lambda request, client_address: False
        assert exchange(server, b"") == b""
        del server.verify_request
        assert exchange(server, b"") == b"hi "


@pytest.mark.parametrize("name", ["TCPServer", "ThreadingTCPServer"])
def test_hook_replaced_on_the_class_while_serving(engine, no_leaks, name):
    switchable = type(name, (getattr(fastsock, name),), {})
    server = switchable((HOST, 0), Greeter)
    with serving(server):
        assert exchange(server, b"") == b"hi "
        switchable.finish_request = lambda self, request, address: None
        assert exchange(server, b"") == b""
        del switchable.finish_request
        assert exchange(server, b"") == b"hi "
