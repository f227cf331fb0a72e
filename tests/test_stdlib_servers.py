"""The standard library's servers, and werkzeug's, running on fastsock.

Each server runs in a fresh interpreter that calls ``fastsock.install()``
before importing it, under the engine of the test (FASTSOCK_PURE); the test
talks to it with the matching real client and stops it by PID.  Servers
write their output to files, never to a pipe that could fill up.
``fastsock.http`` (its classes, and ``python -m fastsock.http``) is tested
the same way, and in process.
"""

import concurrent.futures
import contextlib
import hashlib
import http.client
import http.server
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import xmlrpc.client

import pytest

from _server_helpers import (
    DEFAULT_SIGNAL_ACTIONS, HOST, TIMEOUT, requires_ipv6, serving)
from test_install import engine_env, run_python

import fastsock
import fastsock.http
from fastsock import _cli

START_TIMEOUT = 20.0
BIG_FILE_SIZE = 10 * 1024 * 1024
# Twenty responses on one keep-alive connection: milliseconds when every
# write goes out at once, about 0.8 s when Nagle's algorithm holds back each
# body for the client's delayed ACK (~40 ms).
KEEP_ALIVE_REQUESTS = 20
NO_STALL_LIMIT = 0.5


class Server:
    """A server subprocess and the files its stdout and stderr go to."""

    def __init__(self, proc, out_path, err_path):
        self.proc = proc
        self.pid = proc.pid
        self._out_path = out_path
        self._err_path = err_path
        self.match = None

    def stdout(self):
        return self._out_path.read_text(errors="replace")

    def stderr(self):
        return self._err_path.read_text(errors="replace")

    def wait_for(self, pattern):
        """Wait for a stdout line matching ``pattern``; return the match."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            found = re.search(pattern, self.stdout(), re.MULTILINE)
            if found:
                return found
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server never printed {pattern!r} "
                            f"(exit status {self.proc.poll()}):\n"
                            f"{self.stdout()}\n{self.stderr()[-4000:]}")
            time.sleep(0.02)

    def stop(self, sig=signal.SIGTERM):
        """Send ``sig`` if it still runs; return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
            raise


@contextlib.contextmanager
def server_process(engine, args, tmp_path, ready, cwd=None):
    """Run ``python args``; yield a Server once stdout matched ``ready``."""
    out_path, err_path = tmp_path / "server.out", tmp_path / "server.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, *args], env=engine_env(engine),
                                cwd=cwd, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL,
                                preexec_fn=DEFAULT_SIGNAL_ACTIONS)
    server = Server(proc, out_path, err_path)
    try:
        server.match = server.wait_for(ready)
        yield server
    finally:
        server.stop()


# Every server script starts so: fastsock installed before anything imports
# socketserver, and ready() to report the port and what the server runs on.
PROLOGUE = """
import hashlib, json, os, sys, threading, time
import fastsock
fastsock.install()

def ready(on_fastsock, port=None):
    print("READY", json.dumps({"port": port, "backend": fastsock.BACKEND,
                               "on_fastsock": on_fastsock}), flush=True)
"""


@contextlib.contextmanager
def stdlib_server(engine, script, tmp_path, *args):
    """Run PROLOGUE + ``script``; yield (Server, port) once it is ready.

    Checks that the server runs on fastsock, under ``engine``.
    """
    with server_process(engine, ["-c", PROLOGUE + script, *args], tmp_path,
                        r"^READY (.*)$") as server:
        report = json.loads(server.match.group(1))
        assert report["backend"] == engine
        assert report["on_fastsock"] is True, report
        yield server, report["port"]


def fetch(port, path, method="GET", body=None, host=HOST):
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def site(tmp_path):
    """A directory to serve: a small file and a 10 MB one."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "small.txt").write_bytes(b"hello from fastsock\n")
    (root / "big.bin").write_bytes(os.urandom(BIG_FILE_SIZE))
    return root


def assert_keep_alive_without_stalls(port, path, expected):
    """Many requests on one connection, quickly and on the same socket."""
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    try:
        started = time.monotonic()
        conn.connect()
        first_socket = conn.sock
        for _ in range(KEEP_ALIVE_REQUESTS):
            conn.request("GET", path)
            response = conn.getresponse()
            assert response.version == 11
            assert response.read() == expected
            assert conn.sock is first_socket  # not closed and reopened
        elapsed = time.monotonic() - started
    finally:
        conn.close()
    assert elapsed < NO_STALL_LIMIT, f"{elapsed:.3f} s: delayed-ACK stalls"


def abandon_requests(port):
    """Clients that vanish mid-request, in the ways clients do."""
    address = (HOST, port)
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /small.t")  # half a request line
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        # The headers, but only part of the promised body.
        sock.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b"x" * 1000)
    with socket.create_connection(address, timeout=TIMEOUT):
        pass  # nothing at all


def abandon_download(port):
    """A client that stops reading a big file and resets the connection."""
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    with sock:
        sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack("ii", 1, 0))  # close with a reset


# --- http.server ------------------------------------------------------------

HTTP_SERVER = """
import functools
import http.server

class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        reply = json.dumps({"sha256": hashlib.sha256(body).hexdigest(),
                            "length": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(
    ("127.0.0.1", 0), functools.partial(Handler, directory=sys.argv[1]))
ready(isinstance(server, fastsock.ThreadingMixIn)
      and isinstance(server, fastsock.TCPServer)
      and issubclass(Handler, fastsock.StreamRequestHandler),
      server.server_port)
server.serve_forever()
"""


def test_http_server(engine, site, tmp_path):
    with stdlib_server(engine, HTTP_SERVER, tmp_path, str(site)) as (
            server, port):
        assert fetch(port, "/small.txt") == (200, b"hello from fastsock\n")
        status, data = fetch(port, "/big.bin")
        assert status == 200
        assert sha256(data) == sha256((site / "big.bin").read_bytes())

        body = os.urandom(1024 * 1024)
        status, reply = fetch(port, "/upload", "POST", body)
        assert status == 200
        assert json.loads(reply) == {"sha256": sha256(body),
                                     "length": len(body)}

        assert_keep_alive_without_stalls(port, "/small.txt",
                                         b"hello from fastsock\n")
        abandon_requests(port)
        abandon_download(port)
        assert fetch(port, "/small.txt") == (200, b"hello from fastsock\n")
        assert_keep_alive_without_stalls(port, "/small.txt",
                                         b"hello from fastsock\n")
        assert server.proc.poll() is None


# --- xmlrpc.server -----------------------------------------------------------

XMLRPC_SERVER = """
from xmlrpc.server import SimpleXMLRPCServer

def digest(blob):
    return hashlib.sha256(blob.data).hexdigest()

def fail():
    raise ValueError("refused on purpose")

server = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False)
server.register_function(lambda a, b: a + b, "add")
server.register_function(digest)
server.register_function(fail)
server.register_introspection_functions()
ready(isinstance(server, fastsock.TCPServer), server.server_address[1])
server.serve_forever()
"""


class TimedTransport(xmlrpc.client.Transport):
    """xmlrpc.client's transport, with a timeout on its connections."""

    def make_connection(self, host):
        conn = super().make_connection(host)
        conn.timeout = TIMEOUT
        return conn


def test_xmlrpc_server(engine, tmp_path):
    with stdlib_server(engine, XMLRPC_SERVER, tmp_path) as (_, port):
        url = f"http://{HOST}:{port}/RPC2"
        with xmlrpc.client.ServerProxy(url, TimedTransport()) as proxy:
            assert proxy.add(2, 40) == 42
            assert proxy.add("fast", "sock") == "fastsock"
            blob = os.urandom(256 * 1024)
            assert proxy.digest(xmlrpc.client.Binary(blob)) == sha256(blob)
            with pytest.raises(xmlrpc.client.Fault, match="on purpose"):
                proxy.fail()
            assert {"add", "digest", "fail"} <= set(proxy.system.listMethods())
        abandon_requests(port)
        with xmlrpc.client.ServerProxy(url, TimedTransport()) as proxy:
            assert [proxy.add(n, 1) for n in range(5)] == [1, 2, 3, 4, 5]


# --- wsgiref.simple_server ---------------------------------------------------

WSGIREF_SERVER = """
from wsgiref.simple_server import WSGIRequestHandler, make_server

def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    reply = json.dumps({"method": environ["REQUEST_METHOD"],
                        "query": environ["QUERY_STRING"],
                        "sha256": hashlib.sha256(body).hexdigest()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(reply)))])
    return [reply]

class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass

server = make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
ready(isinstance(server, fastsock.TCPServer)
      and issubclass(QuietHandler, fastsock.StreamRequestHandler),
      server.server_port)
server.serve_forever()
"""


def test_wsgiref_server(engine, tmp_path):
    with stdlib_server(engine, WSGIREF_SERVER, tmp_path) as (_, port):
        url = f"http://{HOST}:{port}/app"

        def call(query, body=None):
            with urllib.request.urlopen(f"{url}?{query}", data=body,
                                        timeout=TIMEOUT) as response:
                assert response.status == 200
                return json.loads(response.read())

        assert call("q=1") == {"method": "GET", "query": "q=1",
                               "sha256": sha256(b"")}
        body = os.urandom(512 * 1024)
        assert call("post", body) == {"method": "POST", "query": "post",
                                      "sha256": sha256(body)}
        abandon_requests(port)
        assert call("after")["query"] == "after"


# --- logging.config.listen() -------------------------------------------------

LOGGING_LISTENER = """
import logging.config

listener = logging.config.listen(0)
listener.start()
listener.ready.wait(10)
ready(logging.config.ThreadingTCPServer is fastsock.ThreadingTCPServer,
      listener.port)
listener.join()
"""


def _send_logging_config(port, log_path):
    config = {
        "version": 1,
        "handlers": {"file": {"class": "logging.FileHandler",
                              "filename": str(log_path)}},
        "root": {"handlers": ["file"], "level": "INFO"},
    }
    payload = json.dumps(config).encode()
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
        sock.sendall(struct.pack(">L", len(payload)) + payload)


def _wait_for_file(path):
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def test_logging_config_listener(engine, tmp_path):
    with stdlib_server(engine, LOGGING_LISTENER, tmp_path) as (_, port):
        # A configuration with a FileHandler creates the file when applied.
        _send_logging_config(port, tmp_path / "first.log")
        _wait_for_file(tmp_path / "first.log")
        with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
            sock.sendall(b"\0\0")  # half of the length prefix, then gone
        with socket.create_connection((HOST, port), timeout=TIMEOUT):
            pass
        _send_logging_config(port, tmp_path / "second.log")
        _wait_for_file(tmp_path / "second.log")


# --- werkzeug ------------------------------------------------------------------

WERKZEUG_SERVER = """
import logging
import werkzeug.serving
from werkzeug.serving import run_simple

logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")

def rendezvous(directory):
    # Wait (5 s at most) until another request has joined this one.
    me = f"{os.getpid()}-{threading.get_ident()}"
    open(os.path.join(directory, me), "w").close()
    deadline = time.monotonic() + 5
    while len(os.listdir(directory)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(os.listdir(directory)) >= 2

def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    met = environ["PATH_INFO"] == "/rendezvous" and rendezvous(
        environ["QUERY_STRING"])
    reply = json.dumps({"pid": os.getpid(),
                        "thread": threading.current_thread().name,
                        "met": met,
                        "sha256": hashlib.sha256(body).hexdigest()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(reply)))])
    return [reply]

ready(issubclass(werkzeug.serving.ThreadedWSGIServer, fastsock.ThreadingMixIn)
      and issubclass(werkzeug.serving.ForkingWSGIServer, fastsock.ForkingMixIn)
      and issubclass(werkzeug.serving.WSGIRequestHandler,
                     fastsock.StreamRequestHandler))
mode = sys.argv[1]
run_simple("127.0.0.1", 0, app, threaded=mode == "threaded",
           processes=2 if mode == "processes" else 1)
"""

WERKZEUG_RUNNING = r"Running on http://127\.0\.0\.1:(\d+)"


def _call_app(port, body=b"", path="/"):
    # werkzeug's server closes every connection after one response.
    status, reply = fetch(port, path, "POST", body)
    assert status == 200
    return json.loads(reply)


def _meet(port, tmp_path):
    """Two requests at once, each waiting for the other in the app."""
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(
            lambda _: _call_app(port, path=f"/rendezvous?{meeting}"),
            range(2)))
    assert all(a["met"] for a in answers), answers
    return answers


@contextlib.contextmanager
def werkzeug_server(engine, tmp_path, mode):
    pytest.importorskip("werkzeug")  # the [test] extra installs it
    with stdlib_server(engine, WERKZEUG_SERVER, tmp_path, mode) as (
            server, _):
        port = int(server.wait_for(WERKZEUG_RUNNING).group(1))
        yield server, port


def test_werkzeug_threaded(engine, tmp_path):
    with werkzeug_server(engine, tmp_path, "threaded") as (server, port):
        body = os.urandom(256 * 1024)
        answers = [_call_app(port, b"%d" % n) for n in range(5)]
        answers.append(_call_app(port, body))
        assert answers[-1]["sha256"] == sha256(body)
        assert {a["pid"] for a in answers} == {server.pid}
        assert all(a["thread"] != "MainThread" for a in answers)
        # Served side by side, by two threads of the server process.
        met = _meet(port, tmp_path)
        assert {a["pid"] for a in met} == {server.pid}
        assert met[0]["thread"] != met[1]["thread"]
        abandon_requests(port)
        assert _call_app(port, b"after")["sha256"] == sha256(b"after")


def test_werkzeug_processes(engine, tmp_path):
    with werkzeug_server(engine, tmp_path, "processes") as (server, port):
        body = os.urandom(256 * 1024)
        answer = _call_app(port, body)
        assert answer["sha256"] == sha256(body)
        assert answer["pid"] != server.pid  # served by a forked child
        # Served side by side, by two children.
        met = _meet(port, tmp_path)
        assert len({a["pid"] for a in met} | {server.pid}) == 3
        abandon_requests(port)
        assert _call_app(port, b"after")["sha256"] == sha256(b"after")


# --- fastsock.http, in process -------------------------------------------------

class TwoPieceHandler(fastsock.http.BaseHTTPRequestHandler):
    """Headers and body written separately, as http.server's handlers do."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_fastsock_http_classes_mirror_http_server(engine):
    pairs = [(fastsock.http.HTTPServer, http.server.HTTPServer),
             (fastsock.http.ThreadingHTTPServer,
              http.server.ThreadingHTTPServer)]
    for ours, theirs in pairs:
        assert [k.__name__ for k in ours.__mro__] == \
            [k.__name__ for k in theirs.__mro__]
        for attr in ("allow_reuse_address", "allow_reuse_port",
                     "daemon_threads", "block_on_close",
                     "request_queue_size", "address_family"):
            assert getattr(ours, attr, None) == getattr(theirs, attr, None)
    for name in ("BaseHTTPRequestHandler", "SimpleHTTPRequestHandler",
                 "CGIHTTPRequestHandler"):
        if hasattr(http.server, name):
            ours = getattr(fastsock.http, name)
            assert issubclass(ours, getattr(http.server, name))
            assert ours.setup is fastsock.StreamRequestHandler.setup


@pytest.mark.parametrize("server_class", ["HTTPServer", "ThreadingHTTPServer"])
def test_fastsock_http_servers(engine, server_class, no_leaks):
    server = getattr(fastsock.http, server_class)((HOST, 0), TwoPieceHandler)
    with serving(server):
        assert server.server_port == server.server_address[1]
        assert server.server_name == socket.getfqdn(HOST)
        assert_keep_alive_without_stalls(server.server_port, "/path",
                                         b"/path")
        assert fetch(server.server_port, "/other") == (200, b"/other")


class ClosingHandler(TwoPieceHandler):
    protocol_version = "HTTP/1.0"  # the server closes first: TIME_WAIT


def test_fastsock_http_rebinds_a_port_in_time_wait(engine, no_leaks):
    server = fastsock.http.HTTPServer((HOST, 0), ClosingHandler)
    with serving(server):
        port = server.server_port
        assert fetch(port, "/x") == (200, b"/x")
    fastsock.http.HTTPServer((HOST, port), ClosingHandler).server_close()


# --- python -m fastsock.http ---------------------------------------------------

HAS_PROTOCOL_OPTION = sys.version_info >= (3, 11)
HAS_CGI = hasattr(http.server, "CGIHTTPRequestHandler")


def serving_line(host):
    """The line ``python -m http.server`` prints once listening."""
    url_host = f"[{host}]" if ":" in host else host
    return (rf"^Serving HTTP on {re.escape(host)} port (\d+) "
            rf"\(http://{re.escape(url_host)}:(\d+)/\) \.\.\.$")


def test_http_command_serves_a_directory(engine, site, tmp_path):
    args = ["-m", "fastsock.http", "0", "--bind", HOST, "-d", str(site)]
    if HAS_PROTOCOL_OPTION:
        args += ["-p", "HTTP/1.1"]
    with server_process(engine, args, tmp_path, serving_line(HOST)) as server:
        port, url_port = server.match.groups()
        assert port == url_port
        port = int(port)
        assert fetch(port, "/small.txt") == (200, b"hello from fastsock\n")
        status, data = fetch(port, "/big.bin")
        assert status == 200 and len(data) == BIG_FILE_SIZE
        assert sha256(data) == sha256((site / "big.bin").read_bytes())
        status, listing = fetch(port, "/")
        assert status == 200
        assert b"small.txt" in listing and b"big.bin" in listing
        assert fetch(port, "/missing")[0] == 404
        if HAS_PROTOCOL_OPTION:
            assert_keep_alive_without_stalls(port, "/small.txt",
                                             b"hello from fastsock\n")
        abandon_requests(port)
        abandon_download(port)
        assert fetch(port, "/small.txt") == (200, b"hello from fastsock\n")


def test_http_subcommand_default_directory_and_ctrl_c(engine, site, tmp_path):
    args = ["-m", "fastsock", "http", "--bind", HOST, "0"]
    with server_process(engine, args, tmp_path, serving_line(HOST),
                        cwd=site) as server:
        port = int(server.match.group(1))
        assert fetch(port, "/small.txt") == (200, b"hello from fastsock\n")
        assert server.stop(signal.SIGINT) == 0
        assert "Keyboard interrupt received, exiting." in server.stdout()
        assert "Traceback" not in server.stderr()


@requires_ipv6
def test_http_command_binds_dual_stack(engine, site, tmp_path):
    args = ["-m", "fastsock.http", "-b", "::", "-d", str(site), "0"]
    with server_process(engine, args, tmp_path, serving_line("::")) as server:
        port = int(server.match.group(1))
        for host in ("::1", HOST):
            assert fetch(port, "/small.txt", host=host) == \
                (200, b"hello from fastsock\n"), host


def _options(help_text):
    """The option strings a --help text lists, one per indented line."""
    described = re.findall(r"^ +(-.*?)(?: {2,}|$)", help_text, re.MULTILINE)
    return sorted(re.findall(r"--?\w[\w-]*", " ".join(described)))


def test_http_command_takes_the_interpreters_options(engine):
    theirs = run_python(engine, ["-m", "http.server", "--help"])
    ours = run_python(engine, ["-m", "fastsock.http", "--help"])
    assert theirs.returncode == ours.returncode == 0
    # Plus fastsock's serving options, shared with `python -m fastsock run`.
    extra = [flag for flag, _, _ in _cli.OPTIONS]
    assert _options(ours.stdout) == sorted(_options(theirs.stdout) + extra)
    assert ("--protocol" in ours.stdout) == HAS_PROTOCOL_OPTION
    assert ("--cgi" in ours.stdout) == HAS_CGI


@pytest.mark.skipif(not HAS_CGI, reason="this http.server has no CGI handler")
def test_http_command_cgi_flag_picks_the_cgi_handler(engine, site, tmp_path):
    args = ["-m", "fastsock.http", "--cgi", "-b", HOST, "-d", str(site), "0"]
    with server_process(engine, args, tmp_path, serving_line(HOST)) as server:
        port = int(server.match.group(1))
        assert fetch(port, "/small.txt") == (200, b"hello from fastsock\n")
        # Only the CGI handler answers POST, and only for scripts.
        status, page = fetch(port, "/small.txt", "POST", b"data")
        assert status == 501
        assert b"CGI" in page
