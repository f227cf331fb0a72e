"""Shared tools of the server and handler behaviour tests (no tests here).

Every blocking step of a test is bounded by ``TIMEOUT``, which a working
server never gets near: a test that hangs fails instead of stalling the run.
"""

import contextlib
import itertools
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import fastsock

HOST = "127.0.0.1"
HOST6 = "::1"
TIMEOUT = 5.0
POLL = 0.05  # serve_forever()'s poll interval where a test does not care

HAS_UNIX = hasattr(socket, "AF_UNIX")
HAS_FORK = hasattr(os, "fork")


def _default_signal_actions():
    """In a test's child before exec: the default action for the signals
    the tests send, as a program started from an interactive shell has.  A
    shell without job control starts background commands (pytest among
    them) with SIGINT ignored, ``nohup`` leaves SIGHUP ignored, and Python
    and fastsock's supervisor leave an ignored signal ignored."""
    for name in ("SIGINT", "SIGHUP", "SIGTTIN", "SIGTTOU"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)


# Popen(preexec_fn=DEFAULT_SIGNAL_ACTIONS) for every server a test signals.
DEFAULT_SIGNAL_ACTIONS = _default_signal_actions if os.name == "posix" else None


def _ipv6_loopback_works():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind((HOST6, 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _ipv6_loopback_works()

requires_ipv6 = pytest.mark.skipif(
    not HAS_IPV6, reason="::1 cannot be bound on this host")
requires_unix = pytest.mark.skipif(
    not HAS_UNIX, reason="no Unix domain sockets on this platform")
requires_fork = pytest.mark.skipif(
    not HAS_FORK, reason="no os.fork() on this platform")


_client_names = itertools.count()


def server_address(server_class, sock_dir=None):
    """A loopback address that ``server_class`` can bind."""
    family = server_class.address_family
    if HAS_UNIX and family == socket.AF_UNIX:
        return os.path.join(sock_dir, "server.sock")
    if family == socket.AF_INET6:
        return (HOST6, 0)
    return (HOST, 0)


def is_stream(server):
    return server.socket_type == socket.SOCK_STREAM


class ServerThread:
    """``serve_forever()`` in a thread of its own, remembering how it ended."""

    def __init__(self, server, poll_interval=POLL):
        self.server = server
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(poll_interval,),
                                       name="serve_forever", daemon=True)

    def _run(self, poll_interval):
        try:
            self.server.serve_forever(poll_interval)
        except BaseException as exc:  # the test inspects it
            self.error = exc

    def start(self):
        self.thread.start()
        return self

    @property
    def ident(self):
        return self.thread.ident

    def stop(self):
        """shutdown() and wait for serve_forever() to return."""
        self.server.shutdown()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "serve_forever() did not return"


@contextlib.contextmanager
def serving(server, poll_interval=POLL):
    """Serve in a thread during the block, then shut down and close.

    An exception that ended serve_forever() early is raised at the end.
    """
    runner = ServerThread(server, poll_interval).start()
    try:
        yield runner
    finally:
        try:
            runner.stop()
        finally:
            server.server_close()
    if runner.error is not None:
        raise runner.error


def connect(server):
    """A client connected to a stream server."""
    sock = socket.socket(server.address_family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(server.server_address)
    except BaseException:
        sock.close()
        raise
    return sock


def recv_until_eof(sock):
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def datagram_client(server, sock_dir=None):
    """A client of a datagram server, bound so that it can get replies."""
    family = server.address_family
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(TIMEOUT)
    try:
        if HAS_UNIX and family == socket.AF_UNIX:
            sock.bind(os.path.join(sock_dir, f"c{next(_client_names)}.sock"))
        else:
            sock.bind((HOST6 if family == socket.AF_INET6 else HOST, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def exchange(server, payload, sock_dir=None):
    """Send ``payload`` as one request; return the whole reply.

    Stream: the client half-closes and reads until EOF.  Datagram: one
    datagram each way.
    """
    if is_stream(server):
        with connect(server) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            return recv_until_eof(sock)
    with datagram_client(server, sock_dir) as sock:
        sock.sendto(payload, server.server_address)
        return sock.recv(65536)


class EventLog:
    """Hook calls recorded as ``(pid, thread id, name)``.

    Lines go to a file opened for appending, so that threads and forked
    children record into the same log, in order per thread.
    """

    def __init__(self, path):
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def record(self, name):
        line = f"{os.getpid()} {threading.get_ident()} {name}\n"
        os.write(self._fd, line.encode())

    def close(self):
        os.close(self._fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def events(self):
        with open(self.path) as log:
            return [(int(pid), int(tid), name)
                    for pid, tid, name in (line.split() for line in log)]

    def names(self):
        return [name for _, _, name in self.events()]


SERVER_HOOKS = (
    "server_bind", "server_activate", "get_request", "verify_request",
    "process_request", "process_request_thread", "finish_request",
    "shutdown_request", "close_request", "handle_error", "handle_timeout",
    "service_actions", "collect_children", "server_close",
)
HANDLER_HOOKS = ("setup", "handle", "finish")


def _recorded(base, name):
    method = getattr(base, name)

    def hook(self, *args, **kwargs):
        self.event_log.record(name)
        return method(self, *args, **kwargs)

    hook.__name__ = name
    return hook


def recording(base, log, hooks):
    """A subclass of ``base`` whose ``hooks`` record their call, then run."""
    namespace = {name: _recorded(base, name)
                 for name in hooks if hasattr(base, name)}
    namespace["event_log"] = log
    return type(base.__name__, (base,), namespace)


_IDLE = ("service_actions", "collect_children")


def collapse_idle_turns(names):
    """Keep one of each run of loop turns that served nothing.

    How many idle turns a loop makes depends on timing; what matters is
    that a turn follows each request and what a turn calls.
    """
    collapsed, run = [], []
    for name in names + [None]:
        if name in _IDLE:
            run.append(name)
            continue
        if run:
            turns = [i for i, hook in enumerate(run) if hook == _IDLE[0]]
            collapsed.extend(run[:turns[1]] if len(turns) > 1 else run)
            run = []
        if name is not None:
            collapsed.append(name)
    return collapsed


def split_requests(names, first_hook):
    """Cut one thread's or process's log into one list per request."""
    requests = []
    for name in names:
        if name == first_hook or not requests:
            requests.append([])
        requests[-1].append(name)
    return requests


def hook_sequences(events, caller_tid, loop_tid=None):
    """Sort a log by who made each call.

    Returns ``{"caller": [...], "loop": [...], "threads": [...],
    "children": [...]}``: the calls of the test's thread, of the thread
    running serve_forever(), of each request run in another thread, and of
    each request run in a forked child (both sorted, as their order varies).
    """
    parent = os.getpid()
    caller, loop, threads, children = [], [], {}, {}
    for pid, tid, name in events:
        if pid != parent:
            children.setdefault(pid, []).append(name)
        elif tid == caller_tid:
            caller.append(name)
        elif tid == loop_tid:
            loop.append(name)
        else:
            threads.setdefault(tid, []).append(name)
    per_thread = [request for names in threads.values()
                  for request in split_requests(names, "process_request_thread")]
    return {
        "caller": collapse_idle_turns(caller),
        "loop": collapse_idle_turns(loop),
        "threads": sorted(per_thread),
        "children": sorted(children.values()),
    }



class StreamEcho(fastsock.StreamRequestHandler):
    """Replies, once the client half-closes, with what it sent upper-cased."""

    def handle(self):
        self.wfile.write(self.rfile.read().upper())


class DatagramEcho(fastsock.DatagramRequestHandler):
    """Replies to a datagram with its upper-cased content."""

    def handle(self):
        self.wfile.write(self.rfile.read().upper())


def echo_handler(server_class):
    """The echo handler that fits ``server_class``'s socket type."""
    if server_class.socket_type == socket.SOCK_STREAM:
        return StreamEcho
    return DatagramEcho


def wait_until(predicate, what="the condition"):
    """Poll ``predicate`` until true; fail after TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


class Child:
    """A Python child process running ``script``, driven over stdin and
    stdout one line at a time; stderr is collected.

    ``engine`` names the engine the child's fastsock uses.  With ``path``,
    the script is written there and run from it, so that tracebacks can
    show its source lines; else it runs with ``-c``.
    """

    def __init__(self, script, *args, engine=None, path=None):
        env = dict(os.environ)
        if engine is not None:
            env["FASTSOCK_PURE"] = "1" if engine == "python" else "0"
        script = textwrap.dedent(script)
        if path is None:
            command = ["-c", script]
        else:
            with open(path, "w") as file:
                file.write(script)
            command = [os.fspath(path)]
            # Run from its file, the script's directory comes first on
            # sys.path, not the current one: the child imports the same
            # fastsock as this process all the same.
            paths = [os.path.dirname(os.path.dirname(fastsock.__file__))]
            if env.get("PYTHONPATH"):
                paths.append(env["PYTHONPATH"])
            env["PYTHONPATH"] = os.pathsep.join(paths)
        self.proc = subprocess.Popen(
            [sys.executable, *command, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env,
            preexec_fn=DEFAULT_SIGNAL_ACTIONS)
        self._lines = queue.Queue()
        self._stderr = []
        threading.Thread(target=self._pump, args=(self.proc.stdout,
                                                  self._lines.put),
                         daemon=True).start()
        self._stderr_reader = threading.Thread(
            target=self._pump, args=(self.proc.stderr, self._stderr.append),
            daemon=True)
        self._stderr_reader.start()

    @staticmethod
    def _pump(stream, put):
        for line in stream:
            put(line)
        put(None)

    def read_line(self, timeout=TIMEOUT):
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no answer from the child in {timeout} s")
        assert line is not None, "the child ended: " + self.stderr()
        return line.rstrip("\n")

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.read_line()

    def wait(self, timeout=TIMEOUT):
        """Wait for the exit status; kill the child if it is late."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("the child did not exit: " + self.stderr())

    def stderr(self):
        """All the child wrote on stderr, once it has closed it."""
        self._stderr_reader.join(TIMEOUT)
        return self.stderr_so_far()

    def stderr_so_far(self):
        return "".join(line for line in list(self._stderr) if line is not None)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()
