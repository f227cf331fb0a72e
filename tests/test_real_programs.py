"""fastsock behind the real programs: HAProxy (Debian's ``haproxy``) sending
PROXY headers with examples/haproxy.cfg, and ``systemd-socket-activate``
(Debian's ``systemd``) handing over a socket and listening for readiness.

Without the programs these tests skip, saying which is missing (.ci/run
installs both).  Everything listens on loopback only.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

import fastsock

from _server_helpers import HOST, TIMEOUT, ServerThread, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAPROXY_CONFIG = os.path.join(ROOT, "examples", "haproxy.cfg")
HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")

requires_haproxy = pytest.mark.skipif(
    HAPROXY is None, reason="HAProxy is not installed (Debian package "
                            "haproxy; .ci/run installs it)")
requires_socket_activate = pytest.mark.skipif(
    SOCKET_ACTIVATE is None,
    reason="systemd-socket-activate is not installed (Debian package "
           "systemd; .ci/run installs it)")


def free_port():
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for_listener(port, process):
    def up():
        assert process.poll() is None, process.communicate()
        try:
            socket.create_connection((HOST, port), timeout=TIMEOUT).close()
        except ConnectionRefusedError:
            return False
        return True
    wait_until(up, f"a listener on port {port}")


def child_env(**extra):
    env = dict(os.environ, **extra)
    if fastsock.BACKEND == "python":
        env["FASTSOCK_PURE"] = "1"
    return env


class HAProxy:
    """examples/haproxy.cfg, run in the foreground, both servers of its
    backend pointed at ``backend_port``."""

    def __init__(self, backend_port, send_proxy):
        self.port = free_port()
        backend = f"{HOST}:{backend_port}"
        self.process = subprocess.Popen(
            [HAPROXY, "-db", "-f", HAPROXY_CONFIG],
            env=child_env(HAPROXY_BIND=f"{HOST}:{self.port}",
                          FASTSOCK_HOST1=backend, FASTSOCK_HOST2=backend,
                          HAPROXY_SEND_PROXY=send_proxy),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def __enter__(self):
        try:
            wait_for_listener(self.port, self.process)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info):
        self.process.terminate()
        try:
            self.process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()


def client_from(host, port):
    """A connection to (HOST, port) from ``host`` (another loopback address)."""
    client = socket.socket()
    client.settimeout(TIMEOUT)
    client.bind((host, 0))
    client.connect((HOST, port))
    return client


class Report(fastsock.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        version = self.proxy_header.version
        host, port = self.client_address[:2]
        self.wfile.write(f"{host} {port} v{version} ".encode() + line)


@requires_haproxy
@pytest.mark.parametrize("send_proxy,version", [("send-proxy", 1),
                                                ("send-proxy-v2", 2)])
def test_haproxy_passes_the_real_client(engine, send_proxy, version):
    with fastsock.ThreadingTCPServer((HOST, 0), Report) as server:
        server.proxy_protocol = True
        runner = ServerThread(server).start()
        try:
            with HAProxy(server.server_address[1], send_proxy) as haproxy:
                for n in (23, 24):
                    with client_from(f"127.0.0.{n}", haproxy.port) as client:
                        own = client.getsockname()
                        client.sendall(b"ping\n")
                        reply = client.makefile("rb").readline()
                    assert reply == (f"{own[0]} {own[1]} v{version} "
                                     f"ping\n").encode()
        finally:
            runner.stop()


@requires_haproxy
def test_http_server_logs_the_real_client(engine, tmp_path):
    (tmp_path / "index.txt").write_text("served\n")
    port = free_port()
    http = subprocess.Popen(
        [sys.executable, "-m", "fastsock.http", "--proxy-protocol",
         "-b", HOST, "-d", str(tmp_path), str(port)],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        wait_until(lambda: _port_open(port, http), "python -m fastsock.http")
        with HAProxy(port, "send-proxy-v2") as haproxy:
            with client_from("127.0.0.42", haproxy.port) as client:
                client.sendall(b"GET /index.txt HTTP/1.0\r\n\r\n")
                reply = client.makefile("rb").read()
        assert reply.endswith(b"\r\n\r\nserved\n"), stop(http)
        http.send_signal(signal.SIGTERM)
        out, err = http.communicate(timeout=TIMEOUT * 2)
    finally:
        if http.poll() is None:
            http.kill()
            http.communicate()
    assert http.returncode == 0, err
    assert '127.0.0.42 - - [' in err and '"GET /index.txt HTTP/1.0" 200' in err


def _port_open(port, process):
    """Whether ``port`` is bound, without connecting (a connection without
    a PROXY header would be refused with a warning)."""
    assert process.poll() is None, process.communicate()
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return True
    return False


class Notifications:
    """A NOTIFY_SOCKET of the test's own."""

    def __init__(self, tmp_path):
        self.path = str(tmp_path / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(TIMEOUT * 2)

    def next(self):
        return self.sock.recv(4096).decode().split("\n")

    def close(self):
        self.sock.close()


def socket_activate(port, notifications, *command):
    return subprocess.Popen(
        [SOCKET_ACTIVATE, "-l", f"{HOST}:{port}",
         "-E", "PATH", "-E", "PYTHONPATH", "-E", "FASTSOCK_PURE",
         "-E", f"NOTIFY_SOCKET={notifications.path}", *command],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def activated_exchange(process, port, request):
    """Connect (which starts the program) and return the whole reply."""
    wait_until(lambda: _port_open(port, process), "systemd-socket-activate")
    with socket.create_connection((HOST, port), timeout=TIMEOUT * 2) as client:
        client.sendall(request)
        return client.makefile("rb").read()


def stop(process):
    process.send_signal(signal.SIGTERM)
    try:
        return process.communicate(timeout=TIMEOUT * 2)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def serve_once_and_stop(process, notifications, port, request, reply_ok):
    """One exchange with the activated program, READY=1 (its pid), then
    SIGTERM: STOPPING=1 and exit status 0.  Returns its standard output."""
    try:
        reply = activated_exchange(process, port, request)
        assert reply_ok(reply), reply
        assert notifications.next() == ["READY=1", f"MAINPID={process.pid}"]
        out, err = stop(process)
        assert notifications.next() == ["STOPPING=1"]
    finally:
        notifications.close()
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    return out


@requires_socket_activate
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]],
                         ids=["one-process", "workers"])
def test_http_server_on_an_activated_socket(engine, tmp_path, workers):
    (tmp_path / "index.txt").write_text("activated\n")
    notifications = Notifications(tmp_path)
    port = free_port()
    process = socket_activate(port, notifications, sys.executable, "-m",
                              "fastsock.http", *workers, "--systemd", "-d",
                              str(tmp_path))
    out = serve_once_and_stop(process, notifications, port,
                              b"GET /index.txt HTTP/1.0\r\n\r\n",
                              lambda reply: reply.endswith(
                                  b"\r\n\r\nactivated\n"))
    assert f"port {port}" in out


APP = """\
import socketserver, sys

class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"app: " + self.rfile.readline())

# The address is ignored: --systemd hands the server systemd's socket.
server = socketserver.ThreadingTCPServer(("127.0.0.1", 1), Echo)
print("listening on", server.server_address[1], flush=True)
import fastsock
fastsock.serve_until_signal(server, grace=5)
"""


@requires_socket_activate
def test_app_under_fastsock_run_on_an_activated_socket(engine, tmp_path):
    app = tmp_path / "app.py"
    app.write_text(APP)
    notifications = Notifications(tmp_path)
    port = free_port()
    process = socket_activate(port, notifications, sys.executable, "-m",
                              "fastsock", "run", "--systemd", str(app))
    out = serve_once_and_stop(process, notifications, port, b"hi\n",
                              lambda reply: reply == b"app: hi\n")
    assert out == f"listening on {port}\n"
