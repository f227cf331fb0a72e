"""What the compiled engine's request path must keep identical.

The compiled engine accepts (or receives) in C and takes several requests
per wake-up when the server keeps fastsock's default hooks.  These tests pin
down what that must not change, under every engine: the order requests are
served in, the client address, one handler per datagram, truncation, the
blocking mode of sockets, accept errors, pausing and stopping mid-batch, and
the fall-back to the hooks a server overrides.
"""

import errno
import gc
import json
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

import fastsock
import fastsock._server
from fastsock import _backend
from _server_helpers import (
    HOST, HOST6, TIMEOUT, StreamEcho, connect, datagram_client, exchange,
    recv_until_eof, requires_ipv6, requires_unix, serving, wait_until)

HERE = os.path.dirname(os.path.abspath(__file__))
PENDING = 40  # connections or datagrams queued before the loop starts


class Recorder:
    """A handler factory that records what each handler was given."""

    def __init__(self, base, reply=b""):
        self.seen = []
        recorder = self

        class Handler(base):
            def handle(self):
                recorder.seen.append((self, self.request, self.client_address))
                if reply and isinstance(self.request, socket.socket):
                    self.request.sendall(reply)

        self.handler = Handler


def _queued_clients(server, count):
    """``count`` connected clients, each having sent its number."""
    clients = []
    try:
        for i in range(count):
            sock = connect(server)
            clients.append(sock)
            sock.sendall(b"%d\n" % i)
    except BaseException:
        for sock in clients:
            sock.close()
        raise
    return clients


class NumberedLine(fastsock.StreamRequestHandler):
    """Records the number a client sent, in the order handled."""

    def handle(self):
        self.server.order.append(int(self.rfile.readline()))
        self.wfile.write(b"ok")


def test_queued_connections_are_all_served_in_arrival_order(engine, no_leaks):
    server = fastsock.TCPServer((HOST, 0), NumberedLine)
    server.request_queue_size = PENDING
    server.server_activate()  # listen again with the larger backlog
    server.order = []
    clients = _queued_clients(server, PENDING)
    try:
        with serving(server):
            for sock in clients:
                assert recv_until_eof(sock) == b"ok"
    finally:
        for sock in clients:
            sock.close()
    assert server.order == list(range(PENDING))


class PausingServer(fastsock.TCPServer):
    """Pauses accepting from inside the first request."""

    def __init__(self, *args):
        super().__init__(*args)
        self.order = []
        self.turns = 0

    def service_actions(self):
        self.turns += 1


class PauseInHandler(fastsock.StreamRequestHandler):
    def handle(self):
        self.server.order.append(int(self.rfile.readline()))
        if len(self.server.order) == 1:
            self.server._pause_accepting()
        self.wfile.write(b"ok")


@pytest.mark.parametrize("server_class", [fastsock.TCPServer, PausingServer])
def test_pause_from_a_handler_stops_the_batch(engine, no_leaks, server_class):
    # With queued connections the compiled loop takes several per wake-up;
    # a pause asked for by the first must hold back the rest.
    server = server_class((HOST, 0), PauseInHandler)
    server.order = []
    clients = _queued_clients(server, 4)
    try:
        with serving(server):
            assert recv_until_eof(clients[0]) == b"ok"
            time.sleep(0.2)
            assert server.order == [0]
            server._resume_accepting()
            for sock in clients[1:]:
                assert recv_until_eof(sock) == b"ok"
    finally:
        for sock in clients:
            sock.close()
    assert server.order == [0, 1, 2, 3]


def _served_once(server):
    """Serve client 0 and wait for it: the loop is then surely running."""
    (client,) = _queued_clients(server, 1)
    with client:
        assert recv_until_eof(client) == b"ok"


def test_pause_keeps_service_actions_and_shutdown_going(engine, no_leaks):
    server = PausingServer((HOST, 0), NumberedLine)
    with serving(server, poll_interval=0.01):
        _served_once(server)
        server._pause_accepting()
        turns = server.turns
        # A wait under way may still see the listener: let it end.
        wait_until(lambda: server.turns > turns + 1, "loop turns")
        (client,) = _queued_clients(server, 1)
        with client:
            turns = server.turns
            wait_until(lambda: server.turns > turns + 3, "loop turns")
            assert server.order == [0]
    # serving() shut the paused server down.


def test_pause_until_a_deadline_resumes_by_itself(engine, no_leaks):
    server = fastsock.TCPServer((HOST, 0), NumberedLine)
    server.order = []
    with serving(server, poll_interval=5.0):
        _served_once(server)
        server._pause_accepting(time.monotonic() + 0.2)
        (client,) = _queued_clients(server, 1)
        with client:
            assert recv_until_eof(client) == b"ok"
    assert server.order == [0, 0]


# -- client addresses ---------------------------------------------------------

def _accepted_address(server, client):
    recorder = Recorder(fastsock.BaseRequestHandler, reply=b"x")
    server.RequestHandlerClass = recorder.handler
    with serving(server):
        client.connect(server.server_address)
        assert client.recv(1) == b"x"
    return recorder.seen[0][2]


@requires_ipv6
def test_ipv6_client_address_is_the_four_tuple(engine, no_leaks):
    class V6(fastsock.TCPServer):
        address_family = socket.AF_INET6

    server = V6((HOST6, 0), fastsock.BaseRequestHandler)
    with socket.socket(socket.AF_INET6) as client:
        client.settimeout(TIMEOUT)
        address = _accepted_address(server, client)
        assert address == client.getsockname()
        assert len(address) == 4


@requires_unix
@pytest.mark.parametrize("client_name", [None, "path", "abstract"])
def test_unix_client_address_matches_accept(engine, no_leaks, sock_dir,
                                            client_name):
    if client_name == "abstract" and not sys.platform.startswith("linux"):
        pytest.skip("abstract Unix names are Linux's")
    server = fastsock.UnixStreamServer(os.path.join(sock_dir, "s"),
                                       fastsock.BaseRequestHandler)
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(TIMEOUT)
        if client_name == "path":
            client.bind(os.path.join(sock_dir, "c"))
        elif client_name == "abstract":
            client.bind(b"\0fastsock-%d" % os.getpid())
        address = _accepted_address(server, client)
        expected = {None: "", "path": os.path.join(sock_dir, "c"),
                    "abstract": b"\0fastsock-%d" % os.getpid()}[client_name]
        assert address == expected == client.getsockname()


# -- datagrams ----------------------------------------------------------------

@pytest.mark.parametrize("family", ["inet", "unix"])
def test_queued_datagrams_one_handler_each_in_arrival_order(
        engine, no_leaks, sock_dir, family):
    if family == "unix":
        if not hasattr(socket, "AF_UNIX"):
            pytest.skip("no Unix domain sockets on this platform")
        server = fastsock.UnixDatagramServer(os.path.join(sock_dir, "s"),
                                             fastsock.BaseRequestHandler)
    else:
        server = fastsock.UDPServer((HOST, 0), fastsock.BaseRequestHandler)
    recorder = Recorder(fastsock.BaseRequestHandler)
    server.RequestHandlerClass = recorder.handler
    # Linux queues only 10 datagrams on a Unix socket by default.
    count = 8 if family == "unix" else PENDING
    clients = [datagram_client(server, sock_dir) for _ in range(2)]
    try:
        sent = []
        for i in range(count):
            client = clients[i % 2]
            client.sendto(b"%d" % i, server.server_address)
            sent.append((b"%d" % i, client.getsockname()))
        with serving(server):
            wait_until(lambda: len(recorder.seen) == count, "datagrams")
    finally:
        for client in clients:
            client.close()
    assert [(data, address) for _, (data, _), address in recorder.seen] == sent
    assert all(sock is server.socket for _, (_, sock), _ in recorder.seen)
    assert len({id(handler) for handler, _, _ in recorder.seen}) == count


def test_truncation_follows_max_packet_size_changed_while_serving(
        engine, no_leaks):
    recorder = Recorder(fastsock.BaseRequestHandler)
    server = fastsock.UDPServer((HOST, 0), recorder.handler)
    payload = bytes(range(200))
    with serving(server), datagram_client(server) as client:
        for size in (100, 7, 0, 150):
            server.max_packet_size = size
            count = len(recorder.seen)
            client.sendto(payload, server.server_address)
            client.sendto(payload, server.server_address)
            wait_until(lambda: len(recorder.seen) == count + 2, "datagrams")
            assert [req[0] for _, req, _ in recorder.seen[-2:]] == \
                [payload[:size]] * 2


def test_invalid_max_packet_size_raises_as_recvfrom_does(engine, no_leaks):
    server = fastsock.UDPServer((HOST, 0), fastsock.BaseRequestHandler)
    server.max_packet_size = -1
    with server, datagram_client(server) as client:
        client.sendto(b"x", server.server_address)
        with pytest.raises(ValueError):
            server.serve_forever(poll_interval=TIMEOUT)


@requires_unix
def test_datagram_from_an_unbound_unix_socket(engine, no_leaks, sock_dir):
    recorder = Recorder(fastsock.BaseRequestHandler)
    server = fastsock.UnixDatagramServer(os.path.join(sock_dir, "s"),
                                         recorder.handler)
    with serving(server), socket.socket(socket.AF_UNIX,
                                        socket.SOCK_DGRAM) as client:
        client.sendto(b"anon", server.server_address)
        wait_until(lambda: recorder.seen, "the datagram")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        receiver.bind(os.path.join(sock_dir, "r"))
        sender.sendto(b"anon", receiver.getsockname())
        _, stdlib_address = receiver.recvfrom(10)
    assert recorder.seen[0][2] == stdlib_address


# -- the accepted socket ------------------------------------------------------

def _socket_mode(sock):
    return (type(sock), sock.gettimeout(), sock.getblocking(), sock.family,
            sock.type, sock.proto, sock.get_inheritable())


class ModeRecorder(fastsock.BaseRequestHandler):
    def handle(self):
        self.server.modes.append(_socket_mode(self.request))
        self.request.sendall(b"x")


@pytest.mark.parametrize("listener_timeout", [None, 0.0, 3.0])
@pytest.mark.parametrize("default_timeout", [None, 2.0])
def test_accepted_socket_mode_matches_socket_accept(
        engine, no_leaks, listener_timeout, default_timeout):
    server = fastsock.TCPServer((HOST, 0), ModeRecorder)
    server.modes = []
    server.socket.settimeout(listener_timeout)
    previous = socket.getdefaulttimeout()
    with socket.create_server((HOST, 0)) as plain:
        plain.settimeout(listener_timeout)
        socket.setdefaulttimeout(default_timeout)
        try:
            with serving(server), connect(server) as client:
                assert client.recv(1) == b"x"
            with socket.create_connection(plain.getsockname()):
                wait_until(lambda: _readable(plain), "the connection")
                accepted, _ = plain.accept()
                with accepted:
                    expected = _socket_mode(accepted)
        finally:
            socket.setdefaulttimeout(previous)
    assert server.modes == [expected]
    assert server.socket.gettimeout() == listener_timeout


def _readable(sock):
    return _backend.engine().wait_readable(sock.fileno(), 0)


def test_tls_listener_hands_tls_connections_to_the_handler(engine, no_leaks):
    # A wrapped listener is not a plain socket: its accept() does the
    # handshake, so the compiled engine must go through get_request().
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(HERE, "tls_keycert.pem"))
    recorder = Recorder(fastsock.BaseRequestHandler, reply=b"secret")
    server = fastsock.TCPServer((HOST, 0), recorder.handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    with serving(server), connect(server) as raw:
        with client_context.wrap_socket(raw) as client:
            assert client.recv(6) == b"secret"
    assert isinstance(recorder.seen[0][1], ssl.SSLSocket)


# -- hooks --------------------------------------------------------------------

class HookLog(fastsock.TCPServer):
    """Overrides every per-request hook, each calling the default."""

    def __init__(self, *args):
        super().__init__(*args)
        self.calls = []

    def _log(self, name):
        self.calls.append(name)


def _logged(name):
    def hook(self, *args):
        self._log(name)
        return getattr(fastsock.TCPServer, name)(self, *args)
    return hook


@pytest.mark.parametrize("hook", ["get_request", "verify_request",
                                  "process_request", "finish_request",
                                  "shutdown_request", "close_request"])
def test_each_overridden_hook_is_called_per_request(engine, no_leaks, hook):
    server_class = type("One", (HookLog,), {hook: _logged(hook)})
    server = server_class((HOST, 0), StreamEcho)
    with serving(server):
        for payload in (b"a", b"b", b"c"):
            assert exchange(server, payload) == payload.upper()
    assert server.calls == [hook] * 3


@pytest.mark.parametrize("where", ["instance", "class"])
def test_hook_changed_by_a_request_applies_to_the_next_queued_one(
        engine, no_leaks, where):
    # The compiled loop takes queued connections in one go: a change made
    # while serving one must still reach the next.
    class Switching(fastsock.TCPServer):
        pass

    class Refuser(NumberedLine):
        def handle(self):
            super().handle()
            refuse = lambda *args: False  # noqa: E731
            if where == "instance":
                self.server.verify_request = refuse
            else:
                Switching.verify_request = lambda self, *args: False

    server = Switching((HOST, 0), Refuser)
    server.request_queue_size = 3
    server.server_activate()
    server.order = []
    clients = _queued_clients(server, 3)
    try:
        with serving(server):
            assert [recv_until_eof(sock) for sock in clients] == \
                [b"ok", b"", b""]
    finally:
        for sock in clients:
            sock.close()
    assert server.order == [0]


def test_own_service_actions_runs_between_queued_requests(engine, no_leaks):
    class Turns(NumberedLine):
        def handle(self):
            super().handle()
            self.server.turns_seen.append(self.server.turns)

    server = PausingServer((HOST, 0), Turns)
    server.request_queue_size = 5
    server.server_activate()
    server.turns_seen = []
    clients = _queued_clients(server, 5)
    try:
        with serving(server, poll_interval=TIMEOUT):
            for sock in clients:
                assert recv_until_eof(sock) == b"ok"
    finally:
        for sock in clients:
            sock.close()
    seen = server.turns_seen
    assert server.order == list(range(5))
    assert all(later > earlier for earlier, later in zip(seen, seen[1:]))


def test_verify_request_refusal_closes_without_a_handler(engine, no_leaks):
    class Refusing(fastsock.TCPServer):
        def verify_request(self, request, client_address):
            return client_address[0] != HOST

    recorder = Recorder(fastsock.BaseRequestHandler, reply=b"x")
    server = Refusing((HOST, 0), recorder.handler)
    with serving(server), connect(server) as client:
        assert client.recv(1) == b""
    assert recorder.seen == []


def test_exception_and_base_exception_on_the_compiled_path(engine, no_leaks):
    class Boom(fastsock.BaseRequestHandler):
        def handle(self):
            raise {b"e": ValueError, b"k": KeyboardInterrupt}[
                self.request.recv(1)]

    class Reporting(fastsock.TCPServer):
        def handle_error(self, request, client_address):
            self.reported = (sys.exc_info()[0], request.fileno() >= 0,
                             client_address)

    server = Reporting((HOST, 0), Boom)
    with server, connect(server) as first, connect(server) as second:
        first.sendall(b"e")
        second.sendall(b"k")
        with pytest.raises(KeyboardInterrupt):
            server.serve_forever(poll_interval=TIMEOUT)
        # Both requests were shut down, the first after handle_error().
        assert recv_until_eof(first) == recv_until_eof(second) == b""
        assert server.reported == (ValueError, True, first.getsockname())


# -- accept errors ------------------------------------------------------------

_EMFILE_SCRIPT = textwrap.dedent("""
    import json, os, resource, socket, sys
    import fastsock

    class Hoarding(fastsock.TCPServer):
        # After the first request, take every descriptor left, so that
        # accepting the second fails.
        def shutdown_request(self, request):
            super().shutdown_request(request)
            try:
                while True:
                    os.open(os.devnull, os.O_RDONLY)
            except OSError:
                pass

        def _accept_failed(self, exc):
            print(json.dumps([type(exc).__name__, exc.errno,
                              fastsock.BACKEND]))
            sys.exit(0)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    server = Hoarding(("127.0.0.1", 0), fastsock.BaseRequestHandler)
    clients = [socket.create_connection(server.server_address)
               for _ in range(2)]
    server.serve_forever(poll_interval=5)
""")


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32",
                    reason="needs RLIMIT_NOFILE")
def test_emfile_reaches_accept_failed_as_plain_oserror(engine):
    env = dict(os.environ, FASTSOCK_PURE="1" if engine == "python" else "0")
    proc = subprocess.run([sys.executable, "-c", _EMFILE_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == ["OSError", errno.EMFILE, engine]


def test_wait_readable(engine, no_leaks):
    wait_readable = _backend.engine().wait_readable
    a, b = socket.socketpair()
    with a, b:
        assert wait_readable(a.fileno(), 0) is False
        assert wait_readable(a.fileno(), 0.01) is False
        b.send(b"x")
        assert wait_readable(a.fileno(), None) is True
        assert wait_readable(a, 0) is True  # anything with fileno(), too
    with pytest.raises(ValueError):
        wait_readable(-1, 0)


def test_engine_interface():
    engine = _backend.engine()
    assert fastsock.BACKEND == engine.NAME
    for name in ("ServeLoop", "wait_readable", "stream_reader",
                 "stream_writer"):
        assert callable(getattr(engine, name))


# -- the declared plan (fastsock._server.SHORTCUTS) ---------------------------

def _default_hook_calls(hook, serve):
    """How often ``hook`` (a function of fastsock's classes) ran in the
    threads that ``serve()`` starts."""
    calls = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code is hook.__code__:
            calls.append(frame.f_code.co_name)

    threading.setprofile(profile)
    try:
        serve()
    finally:
        threading.setprofile(None)
    return len(calls)


def _serve_three(server_class):
    server = server_class((HOST, 0), StreamEcho)
    with serving(server):
        for payload in (b"a", b"b", b"c"):
            assert exchange(server, payload) == payload.upper()


@pytest.mark.parametrize("declared", [True, False])
def test_the_declared_shortcuts_alone_decide_which_hooks_are_skipped(
        engine, no_leaks, monkeypatch, declared):
    # The compiled engine skips BaseServer.verify_request (it would say
    # yes) because SHORTCUTS declares it may; taken out of the table, the
    # hook is called by every engine.
    if not declared:
        monkeypatch.delitem(fastsock._server.SHORTCUTS, "skip_verify")
    calls = _default_hook_calls(fastsock.BaseServer.verify_request,
                                lambda: _serve_three(fastsock.TCPServer))
    assert calls == (0 if engine == "cython" and declared else 3)


@pytest.mark.parametrize("preamble_set", [False, True])
def test_a_connection_preamble_attribute_makes_finish_request_called(
        engine, no_leaks, monkeypatch, preamble_set):
    # Declaring one more preamble attribute (as PROXY protocol support
    # does) is all the compiled engine needs: while it is set, the
    # "build_handler" shortcut does not apply and finish_request() runs.
    table = fastsock._server.SHORTCUTS
    declared = table["build_handler"]
    monkeypatch.setitem(table, "build_handler", fastsock._server._Shortcut(
        declared.replaces, unset=declared.unset + ("preamble_for_test",)))

    class Server(fastsock.TCPServer):
        preamble_for_test = preamble_set

    calls = _default_hook_calls(fastsock.TCPServer.finish_request,
                                lambda: _serve_three(Server))
    assert calls == (0 if engine == "cython" and not preamble_set else 3)


def test_a_preamble_attribute_set_on_the_instance_while_serving_is_honoured(
        engine, no_leaks):
    # tls_context is already in the instance dict (None) when the loop
    # starts: setting it later changes a value, not the dict's keys, and
    # must still take the server off the shortcuts that skip TLS.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(HERE, "tls_keycert.pem"))
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    recorder = Recorder(fastsock.BaseRequestHandler, reply=b"hello")
    server = fastsock.TCPServer((HOST, 0), recorder.handler)
    server.tls_context = None
    with serving(server):
        with connect(server) as client:
            assert client.recv(5) == b"hello"
        server.tls_context = context
        with connect(server) as raw:
            with client_context.wrap_socket(raw) as client:
                assert client.recv(5) == b"hello"
    assert [isinstance(request, ssl.SSLSocket)
            for _, request, _ in recorder.seen] == [False, True]


class PlainListener(socket.socket):
    """A socket.socket subclass that changes none of its I/O."""


def test_a_listening_socket_patched_while_serving_does_its_own_io(
        engine, no_leaks, monkeypatch):
    # A plain subclass may be served in C; patched while serving, its
    # method must be called again (here the datagram reply's sendto).
    sent = []

    def sendto(self, data, address):
        sent.append(data)
        return socket.socket.sendto(self, data, address)

    class Echo(fastsock.DatagramRequestHandler):
        def handle(self):
            self.wfile.write(self.packet.upper())

    server = fastsock.UDPServer((HOST, 0), Echo, bind_and_activate=False)
    server.socket.close()
    server.socket = PlainListener(socket.AF_INET, socket.SOCK_DGRAM)
    server.server_bind()
    with serving(server), datagram_client(server) as client:
        client.sendto(b"a", server.server_address)
        assert client.recv(10) == b"A"
        monkeypatch.setattr(PlainListener, "sendto", sendto, raising=False)
        client.sendto(b"b", server.server_address)
        assert client.recv(10) == b"B"
    assert sent == [b"B"]


def test_shortcut_table_names_real_hooks():
    # Every (class, hook) a shortcut replaces exists, and what the engines
    # compare with is that class's function.
    tables = [fastsock._server.SHORTCUTS, fastsock._server.HANDLER_SHORTCUTS]
    for table in tables:
        for name, shortcut in table.items():
            assert shortcut.replaces, name
            for (cls, hook), (default_name, default) in zip(
                    shortcut.replaces, shortcut.defaults):
                assert default_name == hook
                assert getattr(cls, hook) is default, (name, cls, hook)
    preamble = fastsock._server.CONNECTION_PREAMBLE
    assert set(preamble) <= set(
        fastsock._server.SHORTCUTS["build_handler"].unset)


# -- the plain-socket rule (fastsock._cio.is_plain_socket) --------------------

try:
    from fastsock._cio import is_plain_socket
except ImportError:
    is_plain_socket = None

needs_cio = pytest.mark.skipif(is_plain_socket is None,
                               reason="fastsock._cio is not built")


@needs_cio
def test_plain_socket_rule_follows_the_class_as_it_is_now():
    class Counting(socket.socket):
        pass

    a, b = socket.socketpair()
    with a, b, Counting(fileno=a.detach()) as counting:
        assert is_plain_socket(b)
        assert is_plain_socket(counting)
        Counting.recv = lambda self, n, flags=0: socket.socket.recv(
            self, n, flags)
        assert not is_plain_socket(counting)
        del Counting.recv
        assert is_plain_socket(counting)
        Counting.accept = lambda self: socket.socket.accept(self)
        assert not is_plain_socket(counting)
    assert not is_plain_socket(object())


@needs_cio
def test_plain_socket_rule_keeps_no_class_alive():
    class Temporary(socket.socket):
        pass

    ref = weakref.ref(Temporary)
    with Temporary() as sock:
        assert is_plain_socket(sock)
    del sock, Temporary
    gc.collect()
    assert ref() is None


@needs_cio
def test_a_reader_that_fails_to_open_holds_no_makefile_reference():
    # A class whose attribute look-up fails: the reader cannot tell whether
    # its I/O is plain, and must not have taken one of its _io_refs.
    from fastsock._cio import SocketReader

    class Meta(type):
        @property
        def recv(cls):
            raise RuntimeError("no recv to be seen")

    class Odd(socket.socket, metaclass=Meta):
        pass

    a, b = socket.socketpair()
    with b, Odd(fileno=a.detach()) as odd:
        with pytest.raises(RuntimeError):
            SocketReader(odd, 64)
        assert odd._io_refs == 0
        odd.close()
        assert odd.fileno() == -1


# -- engine binding and switching (fastsock._backend) -------------------------

class EngineOfRfile(fastsock.StreamRequestHandler):
    def handle(self):
        self.server.rfile_modules.append(type(self.rfile).__module__)
        self.wfile.write(b"ok")


@pytest.mark.skipif("cython" not in _backend.available(),
                    reason="compiled engine not built")
def test_a_server_keeps_the_engine_it_bound_when_its_loop_started():
    server = fastsock.TCPServer((HOST, 0), EngineOfRfile)
    server.rfile_modules = []
    with _backend.use("cython"), serving(server):
        wait_until(lambda: server._fastsock_engine is not None, "the loop")
        with _backend.use("python"):
            with connect(server) as client:
                assert recv_until_eof(client) == b"ok"
    assert server._fastsock_engine.NAME == "cython"
    assert server.rfile_modules == ["fastsock._cio"]


def test_a_handler_served_by_the_stdlib_server_uses_the_engine_in_use(
        engine, no_leaks):
    import socketserver

    server = socketserver.TCPServer((HOST, 0), EngineOfRfile)
    server.rfile_modules = []
    with server, connect(server) as client:
        server.handle_request()
        assert recv_until_eof(client) == b"ok"
    in_use = _backend.engine().stream_reader
    assert server.rfile_modules == [in_use.__module__ if engine == "cython"
                                    else "_io"]


def test_use_switches_within_its_block_only():
    before = _backend.engine()
    for name in _backend.available():
        with pytest.raises(KeyError):
            with _backend.use(name) as chosen:
                assert _backend.engine() is chosen
                assert chosen.NAME == name
                raise KeyError("leaving the block")
        assert _backend.engine() is before
    with pytest.raises(ValueError):
        _backend.use("no such engine")
