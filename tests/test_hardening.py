"""Production hardening: failed accepts, descriptor exhaustion, floods, slow
and vanishing clients, TLS, graceful stop, and (opt-in) a soak test.

Each test runs once per engine.  Tests that need process-wide state of
their own (signal handlers) run their server in a child process, driven
line by line over its stdin and stdout (``_server_helpers.Child``); real
shortages, in fresh child processes, are in test_shortage.py.
"""

import contextlib
import errno
import logging
import os
import selectors
import signal
import socket
import ssl
import struct
import sys
import threading
import time

import pytest

import fastsock
from _server_helpers import (HOST, TIMEOUT, Child, ServerThread, connect,
                             recv_until_eof, requires_fork, serving)

HERE = os.path.dirname(os.path.abspath(__file__))
# A self-signed certificate for localhost, 127.0.0.1 and ::1, valid from
# 2000 to 2100, with its key.
CERT = os.path.join(HERE, "tls_keycert.pem")

requires_signals = pytest.mark.skipif(
    sys.platform == "win32", reason="no SIGTERM delivery on Windows")


class Echo(fastsock.StreamRequestHandler):
    """Answers one line with the same line."""

    def handle(self):
        self.wfile.write(self.rfile.readline())


class RecordingErrors:
    """Server mix-in: remembers the type of every error handle_error() got."""

    def __init__(self, *args, **kwargs):
        self.errors = []
        super().__init__(*args, **kwargs)

    def handle_error(self, request, client_address):
        self.errors.append(sys.exc_info()[0])


def echo(address, line, family=socket.AF_INET):
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(address)
        sock.sendall(line)
        return sock.makefile("rb").readline()


def reply_or_eof(sock):
    """What the server sent before closing; b"" also for a reset."""
    try:
        return recv_until_eof(sock)
    except ConnectionResetError:
        return b""


def fastsock_records(caplog, level=logging.DEBUG):
    return [record for record in caplog.records
            if record.name == "fastsock" and record.levelno >= level]


# --- Failed accepts -------------------------------------------------------

class FailingAccepts(fastsock.TCPServer):
    """get_request() fails while ``failing`` holds an errno, one per call
    from ``failures`` first, without taking the waiting connection; pauses
    asked of the loop are recorded as their length in seconds."""

    def __init__(self, *args, **kwargs):
        self.failures = []
        self.failing = None
        self.calls = 0
        self.pauses = []
        super().__init__(*args, **kwargs)

    def get_request(self):
        self.calls += 1
        code = self.failures.pop(0) if self.failures else self.failing
        if code is not None:
            raise OSError(code, os.strerror(code))
        return super().get_request()

    def _pause_accepting(self, until=None):
        self.pauses.append(until - time.monotonic())
        super()._pause_accepting(until)


def test_out_of_descriptors_sheds_the_waiting_connection(engine, caplog,
                                                         no_leaks):
    server = FailingAccepts((HOST, 0), Echo)
    server.failures = [errno.EMFILE, errno.ENFILE, errno.EMFILE]
    with caplog.at_level(logging.WARNING, logger="fastsock"), \
            serving(server):
        for _ in range(3):
            with connect(server) as client:
                client.sendall(b"lost\n")
                # Closed at once, not left waiting in the backlog.
                assert reply_or_eof(client) == b""
        assert echo(server.server_address, b"served\n") == b"served\n"
    assert server.pauses == []  # shedding made backing off needless
    records = fastsock_records(caplog)
    assert len(records) == 1  # one episode, one warning
    assert records[0].levelno == logging.WARNING
    assert os.strerror(errno.EMFILE) in records[0].getMessage()


def test_out_of_memory_backs_off_without_spinning(engine, caplog, no_leaks):
    server = FailingAccepts((HOST, 0), Echo)
    server.failing = errno.ENOBUFS
    with caplog.at_level(logging.WARNING, logger="fastsock"), \
            serving(server):
        with connect(server) as client:
            client.sendall(b"waits\n")
            time.sleep(0.5)
            calls_while_failing = server.calls
            server.failing = None
            # Held back in the backlog, then served once memory is back.
            assert client.makefile("rb").readline() == b"waits\n"
    # A spinning loop would have retried thousands of times in 0.5 s;
    # backing off 10, 20, 40, 80, 160 ms... retries a handful.
    assert 2 <= calls_while_failing <= 10
    assert len(fastsock_records(caplog)) == 1


def test_back_off_doubles_up_to_a_second_and_restarts_per_episode():
    server = FailingAccepts((HOST, 0), Echo)
    with server:
        for code in [errno.ENOMEM, errno.ENOBUFS] * 4 + [errno.ENOMEM]:
            server._accept_failed(OSError(code, os.strerror(code)))
        expected = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0]
        assert server.pauses == pytest.approx(expected, abs=0.005)
        # Long after the last shortage, a new one starts from 10 ms again.
        server._last_shortage -= 10
        server.pauses.clear()
        server._accept_failed(OSError(errno.ENOBUFS, "again"))
        assert server.pauses == pytest.approx([0.01], abs=0.005)


def test_out_of_descriptors_without_reserve_backs_off(engine, monkeypatch,
                                                      no_leaks):
    server = FailingAccepts((HOST, 0), Echo)
    server._reserve.close()
    server._reserve = None
    # The reserve cannot be taken again: nothing can be shed.
    monkeypatch.setattr(fastsock._server, "_open_reserve", lambda: None)
    server.failures = [errno.EMFILE] * 3
    with serving(server):
        assert echo(server.server_address, b"late\n") == b"late\n"
    assert server.pauses == pytest.approx([0.01, 0.02, 0.04], abs=0.005)


def test_per_connection_accept_errors_are_retried_silently(engine, caplog,
                                                           no_leaks):
    server = FailingAccepts((HOST, 0), Echo)
    server.failures = [errno.ECONNABORTED, errno.EPROTO, errno.EINTR,
                       errno.EAGAIN, errno.EPERM]
    with caplog.at_level(logging.DEBUG, logger="fastsock"), serving(server):
        assert echo(server.server_address, b"fine\n") == b"fine\n"
    assert server.calls == 6
    assert server.pauses == []
    assert fastsock_records(caplog) == []


def test_a_server_socket_that_cannot_accept_ends_the_loop(engine, no_leaks):
    # Bound but never listening: readable for poll(), EINVAL for accept().
    server = fastsock.TCPServer((HOST, 0), Echo, bind_and_activate=False)
    with server:
        server.server_bind()
        runner = ServerThread(server).start()
        runner.thread.join(TIMEOUT)
        assert not runner.thread.is_alive(), "the loop spins on EINVAL"
        assert isinstance(runner.error, OSError)
        assert runner.error.errno == errno.EINVAL
        assert "not listening" in str(runner.error)
        with pytest.raises(OSError, match="not listening"):
            server.handle_request()


@pytest.mark.parametrize("exc", [OSError("no errno"),
                                 OSError(errno.EBADF, "not about the socket"),
                                 OSError(errno.EINVAL, "nor this")])
def test_handle_request_drops_a_failed_get_request(engine, exc, no_leaks):
    # As in the standard library: the server socket is fine, so the error
    # was the request's, and handle_request() returns None.
    class Server(fastsock.TCPServer):
        fail = True

        def get_request(self):
            if self.fail:
                self.fail = False
                raise exc
            return super().get_request()

    with Server((HOST, 0), Echo) as server, connect(server) as client:
        client.sendall(b"kept\n")
        assert server.handle_request() is None
        server.handle_request()  # the connection was left waiting
        assert client.makefile("rb").readline() == b"kept\n"


def test_a_listening_server_holds_one_reserve_descriptor(no_leaks):
    server = fastsock.TCPServer((HOST, 0), Echo)
    reserve = server._reserve
    os.fstat(reserve.fileno())  # open
    server.server_close()  # no_leaks: closed with the server
    assert reserve.closed and server._reserve is None
    # Nothing to accept, nothing to reserve.
    with fastsock.TCPServer((HOST, 0), Echo,
                            bind_and_activate=False) as server:
        assert server._reserve is None
    with fastsock.UDPServer((HOST, 0), Echo) as server:
        assert server._reserve is None


# Real shortages (descriptors, memory, threads), in fresh child processes:
# test_shortage.py.


# --- Floods ---------------------------------------------------------------

FLOOD = 2000


@pytest.fixture
def descriptors_for_flood():
    """Room for both ends of every flood connection in this process."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * FLOOD + 256
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def flood(address, count):
    """Open ``count`` connections at once, send each its number as a line,
    and return what came back on each, by number."""
    selector = selectors.DefaultSelector()
    replies = {}
    try:
        for number in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex(address)
            selector.register(sock, selectors.EVENT_WRITE, [number, b""])
        deadline = time.monotonic() + 60
        while selector.get_map() and time.monotonic() < deadline:
            for key, events in selector.select(1.0):
                sock, state = key.fileobj, key.data
                if events & selectors.EVENT_WRITE:
                    sock.send(b"%d\n" % state[0])
                    selector.modify(sock, selectors.EVENT_READ, state)
                    continue
                try:
                    chunk = sock.recv(64)
                except ConnectionResetError:
                    chunk = b""
                state[1] += chunk
                if not chunk:
                    replies[state[0]] = state[1]
                    selector.unregister(sock)
                    sock.close()
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()
        selector.close()
    return replies


def test_a_flood_of_connections_loses_none(engine, descriptors_for_flood,
                                           no_leaks):
    class Server(fastsock.ThreadingTCPServer):
        max_threads = 8
        request_queue_size = FLOOD

    server = Server((HOST, 0), Echo)
    with serving(server):
        replies = flood(server.server_address, FLOOD)
    assert replies == {number: b"%d\n" % number for number in range(FLOOD)}


# --- Slow and vanishing clients --------------------------------------------

class Watched(RecordingErrors, fastsock.ThreadingTCPServer):
    """Records handler errors; counts the connections it closed."""

    def __init__(self, *args, **kwargs):
        self.closed = threading.Semaphore(0)
        super().__init__(*args, **kwargs)

    def close_request(self, request):
        super().close_request(request)
        self.closed.release()


def test_slow_clients_are_dropped_at_the_timeout(engine, no_leaks):
    class Patient(Echo):
        timeout = 0.3

    server = Watched((HOST, 0), Patient)
    with serving(server):
        started = time.monotonic()
        slow = [connect(server) for _ in range(4)]
        try:
            for client in slow:
                client.sendall(b"never ending")  # no newline, ever
            # Others are served meanwhile...
            assert echo(server.server_address, b"quick\n") == b"quick\n"
            # ... and the slow ones dropped at the timeout, not before.
            for client in slow:
                assert reply_or_eof(client) == b""
            assert time.monotonic() - started >= 0.29
        finally:
            for client in slow:
                client.close()
    assert server.errors == [TimeoutError] * 4


def test_a_client_that_resets_mid_request_frees_its_connection(engine,
                                                               no_leaks):
    started = threading.Event()

    class Reading(Echo):
        def handle(self):
            started.set()
            super().handle()

    server = Watched((HOST, 0), Reading)
    with serving(server):
        client = connect(server)
        client.sendall(b"half a li")
        assert started.wait(TIMEOUT)
        # Abortive close: RST, no FIN.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                          struct.pack("ii", 1, 0))
        client.close()
        # Its connection closed (no_leaks: every descriptor), its worker
        # free for the next client.
        assert server.closed.acquire(timeout=TIMEOUT)
        assert echo(server.server_address, b"next\n") == b"next\n"
    assert server.errors in ([ConnectionResetError], [BrokenPipeError])


def test_a_half_closed_client_gets_its_answer(engine, no_leaks):
    server = Watched((HOST, 0), Echo)
    with serving(server):
        with connect(server) as client:
            client.sendall(b"no newline")
            client.shutdown(socket.SHUT_WR)
            assert recv_until_eof(client) == b"no newline"
        assert server.closed.acquire(timeout=TIMEOUT)
    assert server.errors == []


def test_a_handler_exception_is_reported_and_isolated(engine, no_leaks):
    class Fragile(Echo):
        def handle(self):
            if self.rfile.readline() == b"boom\n":
                raise ValueError("boom")
            self.wfile.write(b"ok\n")

    server = Watched((HOST, 0), Fragile)
    with serving(server):
        assert echo(server.server_address, b"boom\n") == b""
        assert echo(server.server_address, b"fine\n") == b"ok\n"
        for _ in range(2):
            assert server.closed.acquire(timeout=TIMEOUT)
    assert server.errors == [ValueError]


# --- TLS --------------------------------------------------------------------

@pytest.fixture
def tls_context():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERT)
    return context


def tls_server(server_class, context, handler=Echo, **attributes):
    """A server of ``server_class`` with ``tls_context`` and ``attributes``."""
    server = server_class((HOST, 0), handler)
    server.tls_context = context
    vars(server).update(attributes)
    return server


def tls_echo(address, line):
    context = ssl.create_default_context(cafile=CERT)
    with socket.create_connection(address, TIMEOUT) as plain, \
            context.wrap_socket(plain, server_hostname=HOST) as sock:
        sock.sendall(line)
        return sock.makefile("rb").readline()


def test_tls_connections_are_served_by_stream_handlers(engine, tls_context,
                                                       no_leaks):
    seen = []

    class Looking(Echo):
        def handle(self):
            seen.append((type(self.request), self.request.version()))
            super().handle()

    server = tls_server(fastsock.ThreadingTCPServer, tls_context, Looking)
    with serving(server):
        assert tls_echo(server.server_address, b"secret\n") == b"secret\n"
    [(kind, version)] = seen
    assert issubclass(kind, ssl.SSLSocket) and version.startswith("TLS")


def test_a_silent_tls_client_delays_nobody(engine, tls_context, no_leaks):
    server = tls_server(fastsock.ThreadingTCPServer, tls_context,
                        tls_handshake_timeout=60)  # far beyond this test
    with serving(server), connect(server) as silent:
        assert tls_echo(server.server_address, b"next\n") == b"next\n"
        # The silent client is still waited for, not dropped.
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):
            silent.recv(1)


def test_a_failed_handshake_is_logged_and_closed(engine, tls_context, caplog,
                                                 no_leaks):
    server = tls_server(fastsock.ThreadingTCPServer, tls_context)
    with caplog.at_level(logging.INFO, logger="fastsock"), serving(server):
        with connect(server) as client:
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS
            assert reply_or_eof(client) == b""
        assert tls_echo(server.server_address, b"still\n") == b"still\n"
    [record] = fastsock_records(caplog)
    assert record.levelno == logging.INFO
    assert "TLS handshake with" in record.getMessage()


def test_a_silent_tls_client_is_dropped_at_the_handshake_timeout(
        engine, tls_context, caplog, no_leaks):
    server = tls_server(fastsock.ThreadingTCPServer, tls_context,
                        tls_handshake_timeout=0.2)
    with caplog.at_level(logging.INFO, logger="fastsock"), \
            serving(server), connect(server) as silent:
        assert reply_or_eof(silent) == b""
    [record] = fastsock_records(caplog)
    assert "timed out" in record.getMessage()


def test_a_plain_server_waits_for_a_handshake_at_most_the_timeout(
        engine, tls_context, caplog, no_leaks):
    server = tls_server(fastsock.TCPServer, tls_context,
                        tls_handshake_timeout=0.2)
    replies = []
    client = threading.Thread(
        target=lambda: replies.append(tls_echo(server.server_address,
                                               b"served\n")))
    with server, caplog.at_level(logging.INFO, logger="fastsock"):
        with connect(server) as silent:
            server.handle_request()  # returns: the handshake timed out
            assert reply_or_eof(silent) == b""
        client.start()
        server.handle_request()
        client.join(TIMEOUT)
    assert replies == [b"served\n"]
    assert len(fastsock_records(caplog)) == 1


def test_an_already_wrapped_listener_is_not_wrapped_again(engine,
                                                          tls_context,
                                                          no_leaks):
    # What werkzeug's dev server does: its accept() returns SSLSockets.
    server = tls_server(fastsock.ThreadingTCPServer, tls_context)
    server.socket = tls_context.wrap_socket(server.socket, server_side=True)
    with serving(server):
        assert tls_echo(server.server_address, b"once\n") == b"once\n"


def test_an_unwrapped_connection_is_refused_not_served_in_clear(
        engine, tls_context, caplog, no_leaks):
    class OwnAccept(fastsock.ThreadingTCPServer):
        def get_request(self):
            return self.socket.accept()

    server = tls_server(OwnAccept, tls_context)
    with caplog.at_level(logging.ERROR, logger="fastsock"), serving(server):
        assert echo(server.server_address, b"clear?\n") == b""
    [record] = fastsock_records(caplog)
    assert "refused" in record.getMessage()


@requires_fork
@pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forking_server_handshakes_in_the_child(engine, tls_context):
    server = tls_server(fastsock.ForkingTCPServer, tls_context)
    with serving(server):
        assert tls_echo(server.server_address, b"forked\n") == b"forked\n"
    assert not server.active_children


# --- Graceful stop, in a child process -----------------------------------

GRACEFUL_SERVER = """
    import os, sys, time
    import fastsock

    class Slow(fastsock.StreamRequestHandler):
        def handle(self):
            seconds = float(self.rfile.readline())
            self.wfile.write(b"started\\n")
            time.sleep(seconds)
            self.wfile.write(b"done\\n")

    kind, grace = sys.argv[1], float(sys.argv[2])
    server_class = {"plain": fastsock.TCPServer,
                    "threading": fastsock.ThreadingTCPServer,
                    "forking": getattr(fastsock, "ForkingTCPServer", None)}
    server = server_class[kind](("127.0.0.1", 0), Slow)
    print(fastsock.BACKEND, server.server_address[1], flush=True)
    finished = fastsock.serve_until_signal(server, grace, poll_interval=0.05)
    print("finished", finished, flush=True)
    if not finished:
        os._exit(3)  # a worker thread may still be sleeping
"""

SERVER_KINDS = ["plain", "threading",
                pytest.param("forking", marks=requires_fork)]


@contextlib.contextmanager
def graceful_request(engine, kind, grace, seconds):
    """A GRACEFUL_SERVER child, its address, and the reply stream of a
    request of ``seconds`` that it has started."""
    child = Child(GRACEFUL_SERVER, kind, str(grace), engine=engine)
    try:
        backend, port = child.read_line().split()
        assert backend == engine
        address = (HOST, int(port))
        with socket.create_connection(address, TIMEOUT) as client, \
                client.makefile("rb") as reader:
            client.sendall(b"%g\n" % seconds)
            assert reader.readline() == b"started\n"
            yield child, address, reader
    finally:
        child.close()


@requires_signals
@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_sigterm_lets_the_running_request_finish(engine, kind):
    with graceful_request(engine, kind, grace=10, seconds=0.5) as (
            child, address, reader):
        child.proc.send_signal(signal.SIGTERM)
        assert reader.readline() == b"done\n"
        assert reader.read() == b""
        assert child.read_line() == "finished True"
        assert child.wait() == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, TIMEOUT)


@requires_signals
@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_the_grace_deadline_cuts_off_what_is_still_running(engine, kind):
    with graceful_request(engine, kind, grace=0.3, seconds=60) as (
            child, _, reader):
        child.proc.send_signal(signal.SIGTERM)
        assert child.read_line() == "finished False"
        assert child.wait() == 3
        assert reader.read() == b""  # closed, never done


@requires_signals
def test_a_second_signal_stops_waiting_at_once(engine):
    with graceful_request(engine, "threading", grace=60, seconds=60) as (
            child, _, _):
        child.proc.send_signal(signal.SIGTERM)
        child.proc.send_signal(signal.SIGINT)
        assert child.read_line() == "finished False"
        assert child.wait() == 3


@requires_signals
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"),
                    reason="counts threads in /proc")
def test_no_thread_is_started_before_the_first_signal(engine):
    # A forking server under serve_until_signal() must fork a process with
    # one thread (Python 3.12 warns at each fork of a multi-threaded one).
    def threads():
        # Threads of earlier tests may still be ending: compare identities.
        return set(os.listdir("/proc/self/task"))

    seen = []

    class CountThenStop(fastsock.BaseRequestHandler):
        def handle(self):
            seen.append(threads())
            signal.raise_signal(signal.SIGTERM)

    server = fastsock.TCPServer((HOST, 0), CountThenStop)

    def client():
        with connect(server) as sock:
            sock.sendall(b"x")
            sock.recv(1)

    asking = threading.Thread(target=client)
    asking.start()
    before = threads()
    try:
        assert fastsock.serve_until_signal(server, grace=TIMEOUT) is True
    finally:
        asking.join(TIMEOUT)
    assert len(seen) == 1 and seen[0] <= before


class SignalHandled(BaseException):
    """Raised by the test's signal handler, in the main thread; not an
    Exception, so that it ends serve_forever() wherever it is raised."""


@requires_signals
@pytest.mark.skipif(not hasattr(signal, "pthread_kill"),
                    reason="needs pthread_kill")
def test_a_signal_taken_by_a_worker_thread_reaches_the_idle_loop(engine):
    # The kernel may hand a process's signal to any thread.  Taken by a
    # worker, it does not interrupt the loop's wait, yet its Python handler
    # must still run in the main thread within a poll interval, as it would
    # with the stdlib.
    class SignalFromWorker(fastsock.BaseRequestHandler):
        def handle(self):
            time.sleep(0.2)  # until the loop is back in its wait
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
            self.request.sendall(b"sent\n")

    def on_signal(signum, frame):
        raise SignalHandled

    server = fastsock.ThreadingTCPServer((HOST, 0), SignalFromWorker)
    previous = signal.signal(signal.SIGUSR1, on_signal)
    # Ends the test if the handler never runs.
    guard = threading.Timer(3 * TIMEOUT, server.shutdown)
    try:
        def client():
            with connect(server) as sock:
                sock.recv(16)
        threading.Thread(target=client, daemon=True).start()
        guard.start()
        started = time.monotonic()
        with pytest.raises(SignalHandled):
            server.serve_forever(poll_interval=0.05)
        assert time.monotonic() - started < TIMEOUT
    finally:
        guard.cancel()
        signal.signal(signal.SIGUSR1, previous)
        server.server_close()


def test_serve_until_signal_is_exported_but_not_in_all():
    assert fastsock.serve_until_signal.__module__ == "fastsock._graceful"
    assert "serve_until_signal" not in fastsock.__all__


# --- Soak (opt-in: pytest -m soak) -----------------------------------------

SOAK_SERVER = """
    import threading, sys
    import fastsock

    class Echo(fastsock.StreamRequestHandler):
        def handle(self):
            self.wfile.write(self.rfile.readline())

    server = fastsock.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.request_queue_size = 1024
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    print(fastsock.BACKEND, server.server_address[1], flush=True)
    sys.stdin.read()
    server.shutdown()
    loop.join()
    server.server_close()
"""


def _process_usage(pid):
    """(open descriptors, resident KiB) of process ``pid``."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return fds, int(line.split()[1])
    raise AssertionError("no VmRSS")


def _connections(address, count, clients=4):
    def run(share):
        for _ in range(share):
            assert echo(address, b"soak\n") == b"soak\n"
    threads = [threading.Thread(target=run, args=(count // clients,))
               for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.soak
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_soak_descriptors_and_memory_end_where_they_started(engine):
    count = int(os.environ.get("FASTSOCK_SOAK_CONNECTIONS", "200000"))
    child = Child(SOAK_SERVER, engine=engine)
    try:
        backend, port = child.read_line().split()
        assert backend == engine
        address = (HOST, int(port))
        _connections(address, 5000)  # warm up: workers, allocator arenas
        fds_before, rss_before = _process_usage(child.proc.pid)
        _connections(address, count)
        time.sleep(0.5)  # let the last workers park
        fds_after, rss_after = _process_usage(child.proc.pid)
        assert fds_after == fds_before
        assert rss_after - rss_before < 4096  # KiB
        child.proc.stdin.close()
        assert child.wait(30) == 0
    finally:
        child.close()
