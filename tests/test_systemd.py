"""fastsock.systemd: inherited sockets and readiness notifications, without
systemd itself (tests/test_real_programs.py runs the real programs)."""

import contextlib
import os
import socket
import subprocess
import sys
import threading

import pytest

import fastsock
from fastsock import _server, systemd

from _server_helpers import HOST, TIMEOUT, ServerThread, requires_unix, wait_until

pytestmark = requires_unix


class Hello(fastsock.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"hello\n")


def listener(family=socket.AF_INET, kind=socket.SOCK_STREAM):
    sock = socket.socket(family, kind)
    sock.bind(("::1" if family == socket.AF_INET6 else HOST, 0))
    if kind == socket.SOCK_STREAM:
        sock.listen(16)
    return sock


def fetch(address):
    with socket.create_connection(address[:2], timeout=TIMEOUT) as client:
        return client.makefile("rb").readline()


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A NOTIFY_SOCKET of the test's own; fastsock's READY=1 made due again."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(TIMEOUT)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setattr(systemd, "_ready_pid", None)
        yield sock


def test_listen_fds_reads_the_environment_and_unsets_it():
    code = r"""
import os, socket
tcp = socket.socket(); tcp.bind(("127.0.0.1", 0)); tcp.listen()
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); udp.bind(("::1", 0))
import fcntl
high = [fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD, 20) for sock in (tcp, udp)]
tcp.close(); udp.close()
for fd, moved in ((3, high[0]), (4, high[1])):
    os.dup2(moved, fd)  # inheritable, as systemd passes them
    os.close(moved)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="2",
                  LISTEN_FDNAMES="web:dns")
from fastsock import systemd
for name, sock in systemd.listen_fds_with_names():
    print(name, sock.fileno(), sock.family.name, sock.type.name,
          os.get_inheritable(sock.fileno()))
print(sorted(k for k in os.environ if k.startswith("LISTEN_")))
os.environ.update(LISTEN_PID=str(os.getpid() + 1), LISTEN_FDS="2")
print(systemd.listen_fds(), "LISTEN_FDS" in os.environ)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "web 3 AF_INET SOCK_STREAM False",
        "dns 4 AF_INET6 SOCK_DGRAM False",
        "[]",
        "[] False",
    ]


def test_adopt_builds_any_server_on_a_listening_socket(engine, no_leaks):
    from fastsock.http import HTTPServer
    sock = listener()
    keeper = sock.dup()  # systemd's copy
    try:
        server = systemd.adopt(fastsock.TCPServer, sock, Hello)
        with server:
            assert server.socket is sock
            assert server.server_address == sock.getsockname()
            runner = ServerThread(server).start()
            try:
                assert fetch(server.server_address) == b"hello\n"
            finally:
                runner.stop()
        # Closed, not shut down: the copy still accepts.
        with socket.create_connection(keeper.getsockname(), timeout=TIMEOUT):
            keeper.settimeout(TIMEOUT)
            keeper.accept()[0].close()
        # An override of server_bind that calls super() still runs.
        sock = keeper.dup()
        with systemd.adopt(HTTPServer, sock, Hello) as http_server:
            assert http_server.server_port == keeper.getsockname()[1]
    finally:
        keeper.close()
    assert not _server._offered_sockets


def test_listening_socket_is_not_listened_again(monkeypatch):
    calls = []
    sock = listener()

    class Spy(fastsock.TCPServer):
        def server_activate(self):
            monkeypatch.setattr(self, "socket", _ListenSpy(self.socket, calls))
            try:
                super().server_activate()
            finally:
                monkeypatch.setattr(self, "socket", sock)

    with systemd.adopt(Spy, sock, Hello):
        pass
    assert calls == []
    with Spy((HOST, 0), Hello):
        pass
    assert calls == [5]


class _ListenSpy:
    def __init__(self, sock, calls):
        self._sock, self._calls = sock, calls

    def listen(self, backlog):
        self._calls.append(backlog)
        self._sock.listen(backlog)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_ipv4_server_takes_an_ipv6_socket():
    sock = listener(socket.AF_INET6)
    with systemd.adopt(fastsock.TCPServer, sock, Hello) as server:
        assert server.address_family == socket.AF_INET6
        assert server.socket is sock


def test_offered_socket_of_another_kind_is_a_clear_error():
    sock = listener(kind=socket.SOCK_DGRAM)
    try:
        with pytest.raises(ValueError, match="TCPServer needs a AF_INET/"
                           "SOCK_STREAM socket.*AF_INET/SOCK_DGRAM"):
            systemd.adopt(fastsock.TCPServer, sock, Hello)
        with pytest.raises(ValueError, match="AF_UNIX"):
            systemd.adopt(fastsock.UnixStreamServer, listener(), Hello)
    finally:
        sock.close()
        del _server._offered_sockets[:]


def test_notify_path_and_abstract_names(notify_socket, monkeypatch):
    assert systemd.notify("STATUS=one") is True
    assert notify_socket.recv(1024) == b"STATUS=one"
    name = f"fastsock-test-{os.getpid()}-{threading.get_ident()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        abstract.bind("\0" + name)
        abstract.settimeout(TIMEOUT)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify_reloading() is True
        reloading, monotonic = abstract.recv(1024).decode().split("\n")
    assert reloading == "RELOADING=1" and monotonic.startswith("MONOTONIC_USEC=")
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert systemd.notify("READY=1") is False


def test_ready_once_when_serving_starts(engine, notify_socket):
    for _ in range(2):
        with fastsock.TCPServer((HOST, 0), Hello) as server:
            runner = ServerThread(server).start()
            runner.stop()
    assert notify_socket.recv(1024) == f"READY=1\nMAINPID={os.getpid()}".encode()
    notify_socket.settimeout(0.2)
    with pytest.raises(TimeoutError):
        notify_socket.recv(1024)  # once per process


def test_watchdog_is_fed_from_the_loop(engine, notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    turns = []

    class Busy(fastsock.TCPServer):
        def service_actions(self):
            turns.append(1)

    with Busy((HOST, 0), Hello) as server:
        runner = ServerThread(server, poll_interval=5.0).start()
        try:
            assert notify_socket.recv(1024).startswith(b"READY=1")
            for _ in range(3):
                assert notify_socket.recv(1024) == b"WATCHDOG=1"
            assert fetch(server.server_address) == b"hello\n"
        finally:
            runner.stop()
        assert turns  # the server's own hook still runs
        assert "service_actions" not in vars(server)


def test_no_notify_socket_costs_nothing(engine, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    with fastsock.TCPServer((HOST, 0), Hello) as server:
        runner = ServerThread(server).start()
        try:
            assert "service_actions" not in vars(server)
        finally:
            runner.stop()
