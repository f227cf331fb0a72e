"""Server behaviour: every class, the loop, shutdown, timeouts and errors.

Every test that runs a loop or a handler runs once per engine (the
``engine`` fixture) and checks that nothing leaks (``no_leaks``).  Hook
order against the standard library is in test_server_hooks.py, what
applications do to servers in test_server_overrides.py, handlers in
test_handlers.py.
"""

import os
import select
import signal
import socket
import socketserver
import sys
import threading
import time

import pytest

import fastsock
from _server_helpers import (
    HAS_FORK, HAS_UNIX, HOST, HOST6, TIMEOUT, EventLog, ServerThread,
    StreamEcho, connect, datagram_client, echo_handler, exchange, is_stream,
    recv_until_eof, requires_fork, requires_ipv6, requires_unix,
    server_address, serving, wait_until)

# Forking servers here fork from a process whose serve_forever() runs in a
# thread; Python 3.12+ warns about that, and the children only serve one
# request and _exit().
pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning")

SERVER_NAMES = [name for name in fastsock.__all__ if name.endswith("Server")
                and name != "BaseServer"]


# -- every class serves ------------------------------------------------------

@pytest.mark.parametrize("name", SERVER_NAMES)
def test_every_server_class_serves_requests(engine, no_leaks, sock_dir, name):
    server_class = getattr(fastsock, name)
    server = server_class(server_address(server_class, sock_dir),
                          echo_handler(server_class))
    with serving(server):
        for payload in (b"first", b"second", b"x" * 5000):
            assert exchange(server, payload, sock_dir) == payload.upper()


def _ipv6(server_class):
    return type(server_class.__name__, (server_class,),
                {"address_family": socket.AF_INET6})


@requires_ipv6
@pytest.mark.parametrize("name", ["TCPServer", "UDPServer",
                                  "ThreadingTCPServer", "ThreadingUDPServer"])
def test_ipv6_servers(engine, no_leaks, name):
    server_class = _ipv6(getattr(fastsock, name))
    server = server_class((HOST6, 0), echo_handler(server_class))
    assert server.socket.family == socket.AF_INET6
    assert server.server_address[0] == HOST6
    with serving(server):
        assert exchange(server, b"over v6") == b"OVER V6"


@pytest.mark.parametrize("name", ["ThreadingTCPServer", "ThreadingUDPServer"])
def test_threading_servers_run_requests_concurrently(engine, no_leaks, name):
    # Each handler waits for the other: both must be running at once.
    both_in = threading.Barrier(2, timeout=TIMEOUT)

    class Meet(echo_handler(getattr(fastsock, name))):
        def handle(self):
            both_in.wait()
            super().handle()

    server = getattr(fastsock, name)((HOST, 0), Meet)
    replies = []
    with serving(server):
        clients = [threading.Thread(
            target=lambda p=p: replies.append(exchange(server, p)))
            for p in (b"a", b"b")]
        for client in clients:
            client.start()
        for client in clients:
            client.join(TIMEOUT)
    assert sorted(replies) == [b"A", b"B"]


@requires_fork
@pytest.mark.parametrize("name", ["ForkingTCPServer", "ForkingUDPServer"])
def test_forking_servers_run_requests_in_reaped_children(engine, no_leaks,
                                                         name):
    server_class = getattr(fastsock, name)

    class ReportPid(echo_handler(server_class)):
        def handle(self):
            self.rfile.read()
            self.wfile.write(str(os.getpid()).encode())

    server = server_class((HOST, 0), ReportPid)
    with serving(server):
        pids = {int(exchange(server, b"pid?")) for _ in range(3)}
    assert os.getpid() not in pids and len(pids) == 3
    # server_close() waited for every child: none is left to reap.
    assert not server.active_children
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_threading_server_close_waits_for_running_requests(engine, no_leaks):
    entered, finished = threading.Event(), []

    class Slow(StreamEcho):
        def handle(self):
            entered.set()
            time.sleep(0.1)
            finished.append(True)

    server = fastsock.ThreadingTCPServer((HOST, 0), Slow)
    with serving(server):
        with connect(server):
            assert entered.wait(TIMEOUT)
    # serving() ended with server_close(): block_on_close joined the worker.
    assert finished == [True]


# -- construction, binding and closing ---------------------------------------

@pytest.mark.parametrize("name", ["TCPServer", "UDPServer"])
def test_constructed_server_state(name):
    server_class = getattr(fastsock, name)
    with server_class((HOST, 0), StreamEcho) as server:
        stream = is_stream(server)
        assert server.RequestHandlerClass is StreamEcho
        assert server.timeout is None
        assert server.socket.family == socket.AF_INET
        assert server.socket.type == server_class.socket_type
        host, port = server.server_address
        assert host == HOST and port != 0
        assert server.server_address == server.socket.getsockname()
        assert server.fileno() == server.socket.fileno()
        listening = server.socket.getsockopt(socket.SOL_SOCKET,
                                             socket.SO_ACCEPTCONN)
        assert bool(listening) == stream
        assert server.socket.getsockopt(socket.SOL_SOCKET,
                                        socket.SO_REUSEADDR) == 0


@requires_unix
@pytest.mark.parametrize("name", ["UnixStreamServer", "UnixDatagramServer"])
def test_unix_server_binds_its_path(sock_dir, name):
    path = os.path.join(sock_dir, "s.sock")
    with getattr(fastsock, name)(path, StreamEcho) as server:
        assert server.server_address == path
        assert server.socket.family == socket.AF_UNIX
        assert os.path.exists(path)


def test_request_queue_size_is_the_listen_backlog(no_leaks):
    class NotingSocket(socket.socket):
        backlog = None

        def listen(self, backlog):
            self.backlog = backlog
            super().listen(backlog)

    server = fastsock.TCPServer((HOST, 0), StreamEcho,
                                bind_and_activate=False)
    server.socket.close()
    server.socket = NotingSocket()
    server.request_queue_size = 17
    with server:
        server.server_bind()
        server.server_activate()
        assert server.socket.backlog == 17


@pytest.mark.parametrize("name", ["TCPServer", "UDPServer"])
def test_bind_failure_raises_and_closes_the_socket(no_leaks, name):
    server_class = getattr(fastsock, name)
    with server_class((HOST, 0), StreamEcho) as first:
        with pytest.raises(OSError):
            server_class(first.server_address, StreamEcho)


@pytest.mark.parametrize("name", ["TCPServer", "UDPServer"])
def test_allow_reuse_address_sets_so_reuseaddr(name):
    server_class = type(name, (getattr(fastsock, name),),
                        {"allow_reuse_address": True})
    with server_class((HOST, 0), StreamEcho) as server:
        assert server.socket.getsockopt(socket.SOL_SOCKET,
                                        socket.SO_REUSEADDR) != 0


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT")
                    or not hasattr(fastsock.TCPServer, "allow_reuse_port"),
                    reason="SO_REUSEPORT or allow_reuse_port (3.11+) missing")
@pytest.mark.parametrize("name", ["TCPServer", "UDPServer"])
def test_allow_reuse_port_lets_two_servers_share_a_port(no_leaks, name):
    base = getattr(fastsock, name)
    assert base.allow_reuse_port is False
    with base((HOST, 0), StreamEcho) as plain:
        assert plain.socket.getsockopt(socket.SOL_SOCKET,
                                       socket.SO_REUSEPORT) == 0
    server_class = type(name, (base,), {"allow_reuse_port": True})
    with server_class((HOST, 0), StreamEcho) as first:
        assert first.socket.getsockopt(socket.SOL_SOCKET,
                                       socket.SO_REUSEPORT) != 0
        with server_class(first.server_address, StreamEcho) as second:
            assert second.server_address == first.server_address


def test_bind_and_activate_false_leaves_the_socket_unbound(engine, no_leaks):
    address = (HOST, 0)
    server = fastsock.TCPServer(address, StreamEcho, bind_and_activate=False)
    try:
        assert server.server_address == address
        assert server.socket.getsockname() == ("0.0.0.0", 0)
        server.server_bind()
        assert server.server_address[1] != 0
        server.server_activate()
    except BaseException:
        server.server_close()
        raise
    with serving(server):
        assert exchange(server, b"late bind") == b"LATE BIND"


def test_context_manager_closes_the_server(no_leaks):
    with fastsock.TCPServer((HOST, 0), StreamEcho) as server:
        assert server.socket.fileno() >= 0
    assert server.socket.fileno() == -1
    with pytest.raises(RuntimeError, match="inside"):
        with fastsock.UDPServer((HOST, 0), StreamEcho) as server:
            raise RuntimeError("inside the block")
    assert server.socket.fileno() == -1


def test_server_close_twice_is_harmless(engine, no_leaks):
    server = fastsock.ThreadingTCPServer((HOST, 0), StreamEcho)
    with serving(server):
        assert exchange(server, b"x") == b"X"
    server.server_close()  # serving() closed it already
    assert server.socket.fileno() == -1


# -- UDP ----------------------------------------------------------------------

@pytest.mark.parametrize("size, sent, received", [
    (None, 9000, 8192),   # the default max_packet_size
    (16, 100, 16),
    (16, 16, 16),
    (16, 5, 5),
    (0, 5, 0),            # recvfrom(0): an empty request
])
def test_udp_datagrams_are_truncated_to_max_packet_size(engine, no_leaks,
                                                        size, sent, received):
    got = []

    class Measure(fastsock.DatagramRequestHandler):
        def handle(self):
            got.append(self.packet)
            self.wfile.write(b"%d" % len(self.packet))

    server = fastsock.UDPServer((HOST, 0), Measure)
    if size is not None:
        server.max_packet_size = size
    payload = (bytes(range(256)) * 64)[:sent]
    with serving(server):
        assert exchange(server, payload) == b"%d" % received
    assert got == [payload[:received]]


# -- handle_request() ---------------------------------------------------------

class CountingTimeouts(fastsock.TCPServer):
    timeouts = 0

    def handle_timeout(self):
        self.timeouts += 1
        return "timed out"

    def service_actions(self):
        raise AssertionError("handle_request() must not call service_actions")


@pytest.mark.parametrize("server_timeout, socket_timeout", [
    (0.1, None),    # the server's timeout
    (None, 0.1),    # the listening socket's timeout
    (5.0, 0.1),     # the smaller of the two
    (0.1, 5.0),
])
def test_handle_request_times_out(engine, no_leaks, server_timeout,
                                  socket_timeout):
    with CountingTimeouts((HOST, 0), StreamEcho) as server:
        server.timeout = server_timeout
        server.socket.settimeout(socket_timeout)
        started = time.monotonic()
        assert server.handle_request() == "timed out"
        waited = time.monotonic() - started
        assert server.timeouts == 1
        assert 0.09 <= waited < 2.5  # 0.1 s, never the 5 s


def test_handle_request_with_zero_timeout_polls_once(engine, no_leaks):
    with CountingTimeouts((HOST, 0), StreamEcho) as server:
        server.timeout = 0
        assert server.handle_request() == "timed out"
        with connect(server) as client:
            client.sendall(b"ready")
            client.shutdown(socket.SHUT_WR)
            wait_until(lambda: _readable(server), "the connection to queue")
            assert server.handle_request() is None
            assert recv_until_eof(client) == b"READY"
        assert server.timeouts == 1


def _readable(server):
    return bool(select.select([server], [], [], 0)[0])


def test_handle_request_without_timeout_waits_for_a_request(engine, no_leaks):
    with CountingTimeouts((HOST, 0), StreamEcho) as server:
        assert server.timeout is None
        replies = []
        client = threading.Thread(
            target=lambda: (time.sleep(0.1),
                            replies.append(exchange(server, b"late"))))
        client.start()
        try:
            assert server.handle_request() is None
        finally:
            client.join(TIMEOUT)
        assert replies == [b"LATE"] and server.timeouts == 0


# -- serve_forever() and shutdown() --------------------------------------------

def test_shutdown_of_an_idle_server_is_prompt_despite_long_poll(engine,
                                                                no_leaks):
    # With a 5 s poll interval, only the wake-up channel can make shutdown()
    # return this soon.
    server = fastsock.TCPServer((HOST, 0), StreamEcho)
    runner = ServerThread(server, poll_interval=5.0).start()
    try:
        assert exchange(server, b"up?") == b"UP?"  # the loop is running
        time.sleep(0.05)  # and back to waiting
        started = time.monotonic()
        server.shutdown()
        elapsed = time.monotonic() - started
        runner.thread.join(TIMEOUT)
    finally:
        server.server_close()
    print(f"[{engine}] idle shutdown() returned in {elapsed * 1e3:.3f} ms")
    assert not runner.thread.is_alive() and runner.error is None
    assert elapsed < 0.25


def test_shutdown_right_after_start_is_prompt(engine, no_leaks):
    server = fastsock.TCPServer((HOST, 0), StreamEcho)
    runner = ServerThread(server, poll_interval=5.0).start()
    try:
        started = time.monotonic()
        server.shutdown()
        elapsed = time.monotonic() - started
        runner.thread.join(TIMEOUT)
    finally:
        server.server_close()
    assert not runner.thread.is_alive() and elapsed < 0.25


def test_shutdown_before_serve_forever_makes_it_return_at_once(engine,
                                                               no_leaks):
    server = fastsock.TCPServer((HOST, 0), StreamEcho)
    stopper = threading.Thread(target=server.shutdown)
    stopper.start()
    try:
        time.sleep(0.05)  # shutdown() is now waiting for a loop to end
        started = time.monotonic()
        server.serve_forever(poll_interval=5.0)
        assert time.monotonic() - started < 0.25
        stopper.join(TIMEOUT)
        assert not stopper.is_alive()
    finally:
        server.server_close()


def test_shutdown_while_busy_lets_the_request_finish(engine, no_leaks):
    entered, release = threading.Event(), threading.Event()

    class Slow(StreamEcho):
        def handle(self):
            entered.set()
            release.wait(TIMEOUT)
            super().handle()

    server = fastsock.TCPServer((HOST, 0), Slow)
    runner = ServerThread(server, poll_interval=5.0).start()
    try:
        with connect(server) as client:
            client.sendall(b"busy")
            client.shutdown(socket.SHUT_WR)
            assert entered.wait(TIMEOUT)
            stopper = threading.Thread(target=server.shutdown)
            stopper.start()
            stopper.join(0.2)
            assert stopper.is_alive(), "shutdown() returned mid-request"
            release.set()
            stopper.join(TIMEOUT)
            assert not stopper.is_alive()
            assert recv_until_eof(client) == b"BUSY"
        runner.thread.join(TIMEOUT)
        assert not runner.thread.is_alive()
    finally:
        release.set()
        server.server_close()


def test_serve_forever_again_after_shutdown(engine, no_leaks):
    server = fastsock.TCPServer((HOST, 0), StreamEcho)
    try:
        for round_ in (b"one", b"two"):
            runner = ServerThread(server, poll_interval=5.0).start()
            assert exchange(server, round_) == round_.upper()
            runner.stop()
    finally:
        server.server_close()


def test_handler_may_shut_a_threading_server_down(engine, no_leaks):
    class Quit(StreamEcho):
        def handle(self):
            self.server.shutdown()
            super().handle()

    server = fastsock.ThreadingTCPServer((HOST, 0), Quit)
    runner = ServerThread(server, poll_interval=5.0).start()
    try:
        assert exchange(server, b"quit") == b"QUIT"
        runner.thread.join(TIMEOUT)
        assert not runner.thread.is_alive()
    finally:
        server.server_close()


# -- service_actions() ---------------------------------------------------------

class CountingTurns(fastsock.TCPServer):
    def __init__(self, *args):
        super().__init__(*args)
        self.turns = []

    def service_actions(self):
        self.turns.append(time.monotonic())


def test_service_actions_runs_every_poll_interval_when_idle(engine, no_leaks):
    server = CountingTurns((HOST, 0), StreamEcho)
    with serving(server, poll_interval=0.02):
        wait_until(lambda: len(server.turns) >= 5, "five idle turns")
        count, started = len(server.turns), time.monotonic()
        time.sleep(0.2)
        window = len(server.turns) - count
        elapsed = time.monotonic() - started
    # About elapsed / 0.02 turns; far more would mean the loop spins.
    assert window <= elapsed / 0.02 * 3 + 5


def test_service_actions_runs_after_every_request(engine, no_leaks):
    server = CountingTurns((HOST, 0), StreamEcho)
    with serving(server, poll_interval=5.0):
        for number in range(1, 4):
            assert exchange(server, b"r") == b"R"
            # well before the 5 s poll interval could explain it
            wait_until(lambda: len(server.turns) >= number, "a loop turn")


def test_exception_from_service_actions_ends_serve_forever(engine, no_leaks):
    class Failing(fastsock.TCPServer):
        def service_actions(self):
            raise RuntimeError("from service_actions")

    with Failing((HOST, 0), StreamEcho) as server:
        with pytest.raises(RuntimeError, match="from service_actions"):
            server.serve_forever(poll_interval=0.01)
        server.shutdown()  # the loop is over: returns at once


# -- errors --------------------------------------------------------------------

FAILING_NAMES = ["TCPServer", "UDPServer", "ThreadingTCPServer",
                 "ThreadingUDPServer"]
if HAS_FORK:
    FAILING_NAMES += ["ForkingTCPServer", "ForkingUDPServer"]


@pytest.mark.parametrize("name", FAILING_NAMES)
def test_handler_error_goes_to_handle_error_and_serving_goes_on(
        engine, no_leaks, tmp_path, name):
    server_class = getattr(fastsock, name)

    class FailOnce(echo_handler(server_class)):
        def handle(self):
            data = self.rfile.read()
            if data == b"fail":
                raise ValueError("the failure this test asked for")
            self.wfile.write(data.upper())

    with EventLog(tmp_path / "log") as log:
        class Reporting(server_class):
            def handle_error(self, request, client_address):
                # runs in the child under forking: the log crosses fork()
                kind = type(sys.exc_info()[1]).__name__
                log.record(f"{kind}:{client_address[1]}")

        server = Reporting((HOST, 0), FailOnce)
        with serving(server):
            client = socket.socket(socket.AF_INET, server.socket_type)
            with client:
                client.settimeout(TIMEOUT)
                client.bind((HOST, 0))
                client.connect(server.server_address)
                client.sendall(b"fail")
                if is_stream(server):
                    client.shutdown(socket.SHUT_WR)
                    assert recv_until_eof(client) == b""
                else:
                    assert client.recv(100) == b""  # finish() still sends
                port = client.getsockname()[1]
            assert exchange(server, b"next") == b"NEXT"
        assert log.names() == [f"ValueError:{port}"]


def test_handle_error_sees_the_open_request(engine, no_leaks):
    seen = []

    class Fail(StreamEcho):
        def handle(self):
            raise ValueError("boom")

    class Inspecting(fastsock.TCPServer):
        def handle_error(self, request, client_address):
            seen.append((request.fileno() != -1, client_address))

    server = Inspecting((HOST, 0), Fail)
    with serving(server):
        with connect(server) as client:
            assert recv_until_eof(client) == b""
            address = client.getsockname()
    assert seen == [(True, address)]


def test_default_handle_error_prints_the_traceback(engine, no_leaks, capfd):
    class Fail(StreamEcho):
        def handle(self):
            if self.rfile.read() == b"fail":
                raise ValueError("printed by handle_error")
            self.wfile.write(b"STILL")

    server = fastsock.TCPServer((HOST, 0), Fail)
    with serving(server):
        assert exchange(server, b"fail") == b""
        assert exchange(server, b"still") == b"STILL"
    err = capfd.readouterr().err
    assert "Exception occurred during processing of request from" in err
    assert "ValueError: printed by handle_error" in err


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_handler_propagates_from_handle_request(
        engine, no_leaks, exc_type):
    requests = []

    class Abort(StreamEcho):
        def handle(self):
            requests.append(self.request)
            self.rfile.read()
            raise exc_type

    with fastsock.TCPServer((HOST, 0), Abort) as server:
        with connect(server) as client:
            client.shutdown(socket.SHUT_WR)
            with pytest.raises(exc_type):
                server.handle_request()
            # shutdown_request() ran: FIN sent, socket closed
            assert recv_until_eof(client) == b""
        assert requests[0].fileno() == -1


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_handler_ends_serve_forever(engine, no_leaks,
                                                      exc_type):
    class Abort(StreamEcho):
        def handle(self):
            self.rfile.read()
            raise exc_type

    server = fastsock.TCPServer((HOST, 0), Abort)
    runner = ServerThread(server, poll_interval=5.0).start()
    try:
        assert exchange(server, b"") == b""
        runner.thread.join(TIMEOUT)
        assert not runner.thread.is_alive()
        assert type(runner.error) is exc_type
        server.shutdown()  # the loop is over: returns at once
    finally:
        server.server_close()


def test_requests_queued_behind_an_interrupted_one_stay_queued(engine,
                                                               no_leaks):
    # KeyboardInterrupt ends serve_forever() after the request it hit; the
    # datagrams behind it are still in the socket for the next call.
    served = []

    class Abort(fastsock.DatagramRequestHandler):
        def handle(self):
            served.append(self.packet)
            if self.packet == b"stop":
                raise KeyboardInterrupt

    with fastsock.UDPServer((HOST, 0), Abort) as server:
        with datagram_client(server) as client:
            for payload in (b"stop", b"two", b"three"):
                client.sendto(payload, server.server_address)
            wait_until(lambda: _readable(server), "the datagrams")
            with pytest.raises(KeyboardInterrupt):
                server.serve_forever(poll_interval=5.0)
            server.timeout = 1.0
            server.handle_request()
            server.handle_request()
    assert served == [b"stop", b"two", b"three"]


def test_verify_request_false_shuts_the_request_down(engine, no_leaks):
    handled, shut = [], []

    class Refusing(fastsock.TCPServer):
        def verify_request(self, request, client_address):
            return False

        def shutdown_request(self, request):
            shut.append(request)
            super().shutdown_request(request)

    class Never(StreamEcho):
        def handle(self):
            handled.append(True)

    server = Refusing((HOST, 0), Never)
    with serving(server):
        assert exchange(server, b"") == b""
        wait_until(lambda: shut and shut[0].fileno() == -1, "a closed request")
    assert handled == []


@pytest.mark.parametrize("name", ["TCPServer", "ThreadingTCPServer"])
def test_request_end_sends_fin_even_while_the_socket_lives_on(engine,
                                                              no_leaks, name):
    # shutdown_request() shuts the connection down before closing it, so the
    # client learns the reply is complete even if a duplicate of the socket
    # (a subprocess, a leaked reference) keeps the descriptor open.
    copies = []

    class KeepCopy(StreamEcho):
        def handle(self):
            copies.append(self.request.dup())
            super().handle()

    server = getattr(fastsock, name)((HOST, 0), KeepCopy)
    try:
        with serving(server):
            assert exchange(server, b"fin") == b"FIN"
    finally:
        for copy in copies:
            copy.close()


@pytest.mark.parametrize("how", ["close", "detach"])
def test_handler_may_close_or_take_its_connection(engine, no_leaks, how):
    # Ending the request then finds no descriptor to shut down: not an error.
    done, detached, errors = [], [], []

    class Own(fastsock.BaseRequestHandler):
        def handle(self):
            self.request.sendall(b"mine")
            if how == "close":
                self.request.close()
            else:
                detached.append(self.request.detach())
            done.append(True)

    class Strict(fastsock.TCPServer):
        def handle_error(self, request, client_address):
            errors.append(sys.exc_info()[1])

    server = Strict((HOST, 0), Own)
    try:
        with serving(server):
            for number in (1, 2):  # and the server goes on serving
                with connect(server) as client:
                    assert client.recv(10) == b"mine"
                    wait_until(lambda: len(done) == number, "the handler")
                    while detached:
                        os.close(detached.pop())  # the descriptor is ours
                    assert recv_until_eof(client) == b""
    finally:
        for fd in detached:
            os.close(fd)
    assert errors == []


# -- signals (serve_forever in the main thread, as an application runs it) ----

needs_signals = pytest.mark.skipif(
    not hasattr(signal, "SIGUSR1")
    or threading.current_thread() is not threading.main_thread(),
    reason="needs SIGUSR1 and the main thread")


class Interrupted(Exception):
    pass


def _interrupt(signum, frame):
    raise Interrupted


def _signal_soon(delay=0.1):
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGUSR1))
    timer.start()
    return timer


@needs_signals
@pytest.mark.parametrize("how", ["serve_forever", "handle_request"])
def test_signal_handler_exception_ends_the_wait_promptly(engine, no_leaks,
                                                         how):
    # What Ctrl-C does to an idle server: the exception surfaces at once,
    # not at the end of the poll interval.
    previous = signal.signal(signal.SIGUSR1, _interrupt)
    server = fastsock.TCPServer((HOST, 0), StreamEcho)
    timer = _signal_soon()
    try:
        started = time.monotonic()
        with pytest.raises(Interrupted):
            if how == "serve_forever":
                server.serve_forever(poll_interval=5.0)
            else:
                server.handle_request()
        assert time.monotonic() - started < 2.5
    finally:
        timer.join(TIMEOUT)
        signal.signal(signal.SIGUSR1, previous)
        server.server_close()


@needs_signals
def test_signal_that_returns_does_not_disturb_serving(engine, no_leaks):
    caught = threading.Event()
    previous = signal.signal(signal.SIGUSR1, lambda *args: caught.set())
    server = fastsock.TCPServer((HOST, 0), StreamEcho)
    replies = []

    def client():
        try:
            time.sleep(0.1)  # let serve_forever() settle into its wait
            os.kill(os.getpid(), signal.SIGUSR1)
            if caught.wait(TIMEOUT):
                replies.append(exchange(server, b"after signal"))
        finally:
            server.shutdown()

    helper = threading.Thread(target=client)
    try:
        helper.start()
        server.serve_forever(poll_interval=5.0)
    finally:
        helper.join(TIMEOUT)
        signal.signal(signal.SIGUSR1, previous)
        server.server_close()
    assert replies == [b"AFTER SIGNAL"]


# -- what the handler is given -------------------------------------------------

def _accepted_timeout(module, listener_timeout, default_timeout):
    seen = []

    class Probe(module.StreamRequestHandler):
        def handle(self):
            seen.append((type(self.request), self.request.gettimeout()))
            self.wfile.write(self.rfile.read().upper())

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(default_timeout)
    try:
        with module.TCPServer((HOST, 0), Probe) as server:
            server.socket.settimeout(listener_timeout)
            with connect(server) as client:
                client.sendall(b"t")
                client.shutdown(socket.SHUT_WR)
                # a listener timeout of 0 makes handle_request() only poll
                wait_until(lambda: _readable(server), "the connection")
                server.handle_request()
                assert recv_until_eof(client) == b"T"
    finally:
        socket.setdefaulttimeout(previous)
    return seen


@pytest.mark.parametrize("listener_timeout", [None, 5.0, 0.0])
@pytest.mark.parametrize("default_timeout", [None, 3.0])
def test_accepted_connection_is_a_plain_socket_as_in_stdlib(
        engine, no_leaks, listener_timeout, default_timeout):
    ours = _accepted_timeout(fastsock, listener_timeout, default_timeout)
    theirs = _accepted_timeout(socketserver, listener_timeout,
                               default_timeout)
    assert ours == theirs
    assert ours[0][0] is socket.socket


CLIENT_ADDRESS_CASES = [
    ("TCPServer", False), ("UDPServer", False),
    pytest.param("TCPServer", True, marks=requires_ipv6),
    pytest.param("UDPServer", True, marks=requires_ipv6),
]
if HAS_UNIX:
    CLIENT_ADDRESS_CASES += [("UnixStreamServer", False),
                             ("UnixDatagramServer", False)]


def _client_address(module, name, sock_dir, ipv6):
    """Return (handler's client_address, the client's own address)."""
    seen = []
    server_class = getattr(module, name)
    if ipv6:
        server_class = _ipv6(server_class)
    stream = server_class.socket_type == socket.SOCK_STREAM
    handler_base = module.StreamRequestHandler if stream else \
        module.DatagramRequestHandler

    class Note(handler_base):
        def handle(self):
            seen.append(self.client_address)

    server = server_class(server_address(server_class, sock_dir), Note)
    with serving(server):
        if stream:
            with connect(server) as client:
                assert recv_until_eof(client) == b""
                own = client.getsockname()
        else:
            with datagram_client(server, sock_dir) as client:
                client.sendto(b"", server.server_address)
                assert client.recv(10) == b""
                own = client.getsockname()
    return seen[0], own


@pytest.mark.parametrize("name, ipv6", CLIENT_ADDRESS_CASES)
def test_client_address_as_in_stdlib(engine, no_leaks, sock_dir, name, ipv6):
    # The peer's address as the socket module gives it: a 2-tuple (IPv4),
    # 4-tuple (IPv6), path, or '' for an unbound Unix stream client.
    for module in (fastsock, socketserver):
        run_dir = os.path.join(sock_dir, module.__name__)
        os.mkdir(run_dir)
        client_address, own = _client_address(module, name, run_dir, ipv6)
        assert client_address == own, module.__name__


def _dual_stack(base):
    """``base`` on IPv6 that takes IPv4 clients too (v4-mapped)."""
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        base.server_bind(self)

    return type(base.__name__, (base,), {"address_family": socket.AF_INET6,
                                         "server_bind": server_bind})


_abstract_names = pytest.mark.skipif(
    not (HAS_UNIX and sys.platform.startswith("linux")),
    reason="abstract Unix socket names are Linux's")


@pytest.mark.parametrize("case", [
    pytest.param("v4-mapped-stream", marks=requires_ipv6),
    pytest.param("v4-mapped-datagram", marks=requires_ipv6),
    pytest.param("unbound-unix-datagram", marks=requires_unix),
    pytest.param("abstract-unix-stream", marks=_abstract_names),
    pytest.param("abstract-unix-datagram", marks=_abstract_names),
])
def test_unusual_client_addresses_as_in_stdlib(engine, no_leaks, case):
    # An IPv4 client of a dual-stack server (a v4-mapped IPv6 address), a
    # Unix datagram from an unbound socket (None), an unbound Unix stream
    # client (''), an abstract Unix name (bytes).
    for module in (fastsock, socketserver):
        seen = []

        class Note(module.BaseRequestHandler):
            def handle(self):
                seen.append(self.client_address)

        stream = "datagram" not in case
        if case.startswith("v4-mapped"):
            base = module.TCPServer if stream else module.UDPServer
            server = _dual_stack(base)(("::ffff:127.0.0.1", 0), Note)
            client = socket.socket(socket.AF_INET, server.socket_type)
            target = (HOST, server.server_address[1])
        else:
            base = module.UnixStreamServer if stream else \
                module.UnixDatagramServer
            name = f"\0fastsock-{os.getpid()}-{module.__name__}"
            server = base(name, Note)
            client = socket.socket(socket.AF_UNIX, server.socket_type)
            if case == "abstract-unix-datagram":
                client.bind(name + "-client")
            target = server.server_address
        with client, serving(server):
            client.settimeout(TIMEOUT)
            client.connect(target)
            if stream:
                assert recv_until_eof(client) == b""
            else:
                client.send(b"")
            wait_until(lambda: seen, "the request")
            own = client.getsockname()
        if case.startswith("v4-mapped"):
            expected = ("::ffff:" + own[0], own[1], 0, 0)
        else:  # unbound: None for a datagram, '' for a stream
            expected = own if own else (None if not stream else "")
        assert seen == [expected], module.__name__


def test_serve_forever_ignores_the_timeout_attribute(engine, no_leaks):
    class Watch(fastsock.TCPServer):
        timeout = 0.01
        timeouts = 0

        def handle_timeout(self):
            self.timeouts += 1

    server = Watch((HOST, 0), StreamEcho)
    with serving(server, poll_interval=0.02):
        time.sleep(0.1)
        assert exchange(server, b"t") == b"T"
    assert server.timeouts == 0


def test_base_server_subclass_with_its_own_transport(engine, no_leaks):
    # BaseServer needs only fileno() and get_request() to serve_forever().
    class Minimal(fastsock.BaseServer):
        address_family = socket.AF_INET
        socket_type = socket.SOCK_STREAM

        def __init__(self, handler):
            self.listener = socket.create_server((HOST, 0))
            super().__init__(self.listener.getsockname(), handler)

        def fileno(self):
            return self.listener.fileno()

        def get_request(self):
            return self.listener.accept()

        def close_request(self, request):
            request.close()

        def server_close(self):
            self.listener.close()

    server = Minimal(StreamEcho)
    with serving(server):
        assert exchange(server, b"minimal") == b"MINIMAL"
