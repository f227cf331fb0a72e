"""Real shortages, in fresh child processes that imported nothing but
fastsock: out of descriptors, out of memory, a worker thread that cannot
start, handle_error() and a failed TLS handshake while out of descriptors,
a graceful stop while no thread can start.  Two in-process tests cover
what no real shortage brings about reliably.

A failure path must need nothing that it does not already hold (see
``_server._prepare_failure_paths``): out of descriptors, even importing a
module fails.  pytest has imported logging and traceback long before any
test runs, so only a fresh process shows what a plain script meets.  Each
child reports which of them it had imported before its server started
(none), and takes commands that bring the shortage on and off.  Where the
shortage itself does not stop imports (memory, threads), the child fails
every import of a new module meanwhile and reports the attempts.

A thread cannot start in the child once ``threading.stack_size()`` asks
for a stack no address space can hold: ``pthread_create()`` fails, and
``Thread.start()`` raises "can't start new thread" as it would when out of
threads or memory.

Each test runs once per engine.
"""

import contextlib
import errno
import os
import signal
import socket
import ssl
import sys
import time

import pytest

from _server_helpers import (HOST, TIMEOUT, Child, recv_until_eof,
                             wait_until)

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="no RLIMIT_NOFILE on Windows")

HERE = os.path.dirname(os.path.abspath(__file__))
CERT = os.path.join(HERE, "tls_keycert.pem")

# How long a starved server is watched, the CPU time it may take meanwhile,
# and how soon it serves again once the shortage is over (issue 13).
STARVED_FOR = 2.0
STARVED_CPU = 0.3
RECOVERS_IN = 2.0
SHORTAGE_WARNING = "shedding or holding back new requests until it passes"

SHORTAGE_SERVER = """
    import errno, os, resource, sys, threading, time

    import fastsock

    print(sorted({"logging", "traceback"} & set(sys.modules)), flush=True)
    scenario = sys.argv[1]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(64, hard), hard))


    class LineEcho(fastsock.StreamRequestHandler):
        # Echoes each line; "fail N" divides by N.
        def handle(self):
            for line in self.rfile:
                if line.startswith(b"fail "):
                    line = b"%d\\n" % (1 // int(line[5:]))
                self.wfile.write(line)


    class Server(fastsock.ThreadingTCPServer):
        # All the clients of a test connect at once, without SYN retries.
        request_queue_size = 128


    class FailingAccepts(Server):
        # accept() fails with accept_error while it is set, leaving the
        # connection queued, as the kernel does out of memory.
        accept_error = None
        accepts = 0

        def get_request(self):
            self.accepts += 1
            if self.accept_error is not None:
                raise OSError(self.accept_error, os.strerror(self.accept_error))
            return super().get_request()


    class NoNewModules:
        # A meta path finder: while installed, importing a module not yet
        # loaded fails, as it would without memory or descriptors.
        def __init__(self):
            self.tried = []

        def find_spec(self, name, path=None, target=None):
            self.tried.append(name)
            raise MemoryError(f"no memory to import {name}")


    if scenario == "memory":
        server = FailingAccepts(("127.0.0.1", 0), LineEcho)
    else:
        server = Server(("127.0.0.1", 0), LineEcho)
    # Ready now, before any shortage.
    print(sorted({"logging", "traceback"} & set(sys.modules)), flush=True)
    if scenario == "threads":
        server.max_threads = 1  # a leaked count would stop the server
    if scenario == "tls":
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[2])
        server.tls_context = context
        import logging  # imported as the server started: at no cost
        logging.basicConfig(level=logging.INFO, format="LOG %(levelname)s %(message)s")
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    print(fastsock.BACKEND, server.server_address[1], flush=True)

    no_new_modules = NoNewModules()
    fillers = []
    for command in sys.stdin:
        command = command.split()
        if command == ["starve"]:
            while True:
                try:
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
                except OSError:
                    break
            print("starved", flush=True)
        elif command == ["free"]:
            for fd in fillers:
                os.close(fd)
            fillers.clear()
            print("freed", flush=True)
        elif command == ["mark"]:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            print("marked", flush=True)
        elif command == ["cpu"]:
            now = resource.getrusage(resource.RUSAGE_SELF)
            print(now.ru_utime - usage.ru_utime + now.ru_stime - usage.ru_stime,
                  flush=True)
        elif command == ["block", "imports"]:
            sys.meta_path.insert(0, no_new_modules)
            print("blocked", flush=True)
        elif command[:2] == ["fail", "accepts"]:
            server.accept_error = getattr(errno, command[2])
            print("failing", flush=True)
        elif command == ["heal", "accepts"]:
            server.accept_error = None
            print("healed", server.accepts, flush=True)
        elif command == ["no", "threads"]:
            try:
                # No thread can have a stack this big: pthread_create()
                # fails, and Thread.start() with "can't start new thread".
                threading.stack_size(1 << 62)
            except (ValueError, OverflowError):
                print("unsupported", flush=True)
            else:
                print("no threads", flush=True)
        elif command == ["threads"]:
            threading.stack_size(0)
            print("threads", flush=True)
        elif command == ["workers"]:
            print(len(server._threads), flush=True)
        elif command == ["imports"]:
            print(no_new_modules.tried, flush=True)
        else:
            print("unknown command", command, flush=True)
    server.shutdown()
    loop.join()
    server.server_close()
"""


@contextlib.contextmanager
def shortage_server(engine, scenario, tmp_path, *args):
    """A SHORTAGE_SERVER child for ``scenario``, and its address."""
    child = Child(SHORTAGE_SERVER, scenario, *args, engine=engine,
                  path=tmp_path / "shortage_server.py")
    try:
        # Neither module was imported before the server started: each
        # shortage below meets fastsock with what it prepared itself...
        assert child.read_line() == "[]"
        # ... when the server started.
        assert child.read_line() == "['logging', 'traceback']"
        backend, port = child.read_line().split()
        assert backend == engine
        yield child, (HOST, int(port))
    finally:
        child.close()


def end(child):
    """Stop the child's server; return what the child wrote on stderr."""
    child.proc.stdin.close()
    assert child.wait() == 0, child.stderr()
    return child.stderr()


def reported(child, text):
    """Whether the child wrote ``text`` on stderr; fails at a traceback
    (which is not what a failure path reports)."""
    stderr = child.stderr_so_far()
    if text in stderr:
        return True
    assert "Traceback" not in stderr, stderr
    return False


def reply_or_eof(sock):
    """What the server sent before closing; b"" also for a reset."""
    try:
        return recv_until_eof(sock)
    except ConnectionResetError:
        return b""


def line_exchange(sock, line):
    sock.sendall(line)
    return sock.makefile("rb").readline()


def served_within(address, seconds):
    """Whether a new client gets its echo within ``seconds``, retrying a
    client that was shed while the server still had no descriptor."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(address, TIMEOUT) as client:
                client.settimeout(max(0.01, deadline - time.monotonic()))
                if line_exchange(client, b"back\n") == b"back\n":
                    return True
        except (ConnectionResetError, TimeoutError):
            pass
        time.sleep(0.02)
    return False


def held_clients(address, count):
    """``count`` connections opened at once and left silent."""
    clients = []
    try:
        for _ in range(count):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            clients.append(client)
            client.setblocking(False)
            client.connect_ex(address)
    except BaseException:
        for client in clients:
            client.close()
        raise
    return clients


def test_out_of_descriptors_a_plain_script_serves_on(engine, tmp_path):
    # The bug of issue 13: the first shortage imported logging to report
    # itself, which failed for want of a descriptor and ended serve_forever.
    with shortage_server(engine, "descriptors", tmp_path) as (child, address):
        held = held_clients(address, 100)
        try:
            wait_until(lambda: reported(child, SHORTAGE_WARNING),
                       "the shortage")
            # Starved, with a new client knocking every 50 ms: each is shed,
            # and the server takes almost no CPU between them.
            assert child.command("mark") == "marked"
            ends = time.monotonic() + STARVED_FOR
            while time.monotonic() < ends:
                with socket.create_connection(address, TIMEOUT) as client:
                    assert reply_or_eof(client) == b""
                time.sleep(0.05)
            assert float(child.command("cpu")) < STARVED_CPU
        finally:
            for client in held:
                client.close()
        assert served_within(address, RECOVERS_IN)
        stderr = end(child)
    assert stderr.count(SHORTAGE_WARNING) == 1, stderr
    assert os.strerror(errno.EMFILE) in stderr
    assert "Traceback" not in stderr, stderr


def test_handle_error_out_of_descriptors(engine, tmp_path):
    # The handler fails while the server has no descriptor left:
    # handle_error() prints its report (traceback was imported when the
    # server started) without the source lines, which cannot be read; the
    # connection is shut down and the server serves on.  Then the same
    # with the source lines read before the shortage, which from 3.11 makes
    # traceback parse the failing line (with ast, imported in advance too).
    with shortage_server(engine, "descriptors", tmp_path) as (child, address):
        unread = error_report_while_starved(child, address)
        with connect_to(address) as client:
            client.sendall(b"fail 0\n")
            assert reply_or_eof(client) == b""
        wait_until(lambda: last_error_report(child, 2), "the error report")
        read = error_report_while_starved(child, address)
        end(child)
    failing_line = "1 // int(line[5:])"
    assert "ZeroDivisionError" in unread
    assert failing_line not in unread  # the shortage was real
    assert "ZeroDivisionError" in read
    assert failing_line in read


ERROR_REPORT = "Exception occurred during processing of request from"


def last_error_report(child, count):
    """The last of handle_error()'s reports on the child's stderr once it
    wrote ``count`` of them, the last one whole; else None."""
    stderr = child.stderr_so_far()
    if stderr.count(ERROR_REPORT) != count:
        return None
    report = stderr.rsplit(ERROR_REPORT, 1)[1]
    end_rule = "\n" + "-" * 40 + "\n"
    return report.split(end_rule)[0] if end_rule in report else None


def error_report_while_starved(child, address):
    """Make the handler fail while the child has no descriptor left;
    return handle_error()'s report once the child serves again."""
    count = child.stderr_so_far().count(ERROR_REPORT) + 1
    with connect_to(address) as client:
        # Once it has answered, a worker holds the connection.
        assert line_exchange(client, b"ping\n") == b"ping\n"
        assert child.command("starve") == "starved"
        client.sendall(b"fail 0\n")
        assert reply_or_eof(client) == b""
        wait_until(lambda: last_error_report(child, count), "the error report")
        assert child.command("free") == "freed"
    assert served_within(address, RECOVERS_IN)
    return last_error_report(child, count)


def connect_to(address):
    return socket.create_connection(address, TIMEOUT)


def test_a_failed_tls_handshake_out_of_descriptors(engine, tmp_path):
    with shortage_server(engine, "tls", tmp_path, CERT) as (child, address):
        with connect_to(address) as client:
            # Taken by a worker, which waits for the client's hello.
            wait_until(lambda: child.command("workers") == "1",
                       "the connection to be taken")
            assert child.command("starve") == "starved"
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS
            assert reply_or_eof(client) == b""
            wait_until(lambda: reported(child, "LOG INFO TLS handshake with"),
                       "the failed handshake's report")
            assert child.command("free") == "freed"
        context = ssl.create_default_context(cafile=CERT)
        with connect_to(address) as plain, \
                context.wrap_socket(plain, server_hostname=HOST) as client:
            assert line_exchange(client, b"secret\n") == b"secret\n"
        stderr = end(child)
    assert stderr.count("TLS handshake with") == 1, stderr
    assert "Traceback" not in stderr, stderr


def test_out_of_memory_the_server_backs_off(engine, tmp_path):
    # accept() fails with ENOMEM, leaving the connection queued: the server
    # backs off (10 ms doubling up to 1 s) instead of spinning, logs once,
    # and takes the connection once memory is back.  No module may be
    # imported meanwhile.
    with shortage_server(engine, "memory", tmp_path) as (child, address):
        assert child.command("block imports") == "blocked"
        assert child.command("fail accepts ENOMEM") == "failing"
        with connect_to(address) as client:
            client.sendall(b"waits\n")
            wait_until(lambda: reported(child, SHORTAGE_WARNING),
                       "the shortage")
            assert child.command("mark") == "marked"
            time.sleep(STARVED_FOR)  # what is measured, not a wait
            assert float(child.command("cpu")) < STARVED_CPU
            healed, accepts = child.command("heal accepts").split()
            # Backing off, a few retries in 2 s, not thousands.
            assert int(accepts) <= 12
            client.settimeout(RECOVERS_IN)
            assert client.makefile("rb").readline() == b"waits\n"
        assert child.command("imports") == "[]"
        stderr = end(child)
    assert stderr.count(SHORTAGE_WARNING) == 1, stderr
    assert os.strerror(errno.ENOMEM) in stderr


def test_a_worker_thread_that_cannot_start(engine, tmp_path):
    # Thread.start() raises RuntimeError: the request goes to handle_error()
    # and is shut down (the client reads EOF), the pool counts nothing for
    # it (with max_threads = 1, a leaked count would keep the next client
    # waiting forever), and the server serves on once threads can start.
    with shortage_server(engine, "threads", tmp_path) as (child, address):
        if child.command("no threads") == "unsupported":
            pytest.skip("this platform refuses the stack size that makes "
                        "thread starts fail")
        assert child.command("block imports") == "blocked"
        with connect_to(address) as client:
            assert reply_or_eof(client) == b""
        wait_until(lambda: last_error_report(child, 1), "the error report")
        assert child.command("workers") == "0"
        assert child.command("threads") == "threads"
        with connect_to(address) as client:
            assert line_exchange(client, b"next\n") == b"next\n"
        assert child.command("workers") == "1"
        assert child.command("imports") == "[]"
        stderr = end(child)
    assert stderr.count(ERROR_REPORT) == 1, stderr
    assert "RuntimeError: can't start new thread" in stderr, stderr


def test_handle_error_reports_even_when_traceback_cannot_print(
        monkeypatch, capfd):
    # What the subprocess tests cannot force: traceback failing for want of
    # something it imports lazily (a module of another version, memory).
    # The interpreter's own display, in C, prints the exception instead.
    import traceback

    import fastsock

    def print_exc(*args, **kwargs):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), "unicodedata")

    monkeypatch.setattr(traceback, "print_exc", print_exc)
    server = fastsock.BaseServer((HOST, 0), fastsock.BaseRequestHandler)
    try:
        raise ValueError("the request's own error")
    except ValueError:
        server.handle_error(None, (HOST, 4242))
    err = capfd.readouterr().err
    assert ERROR_REPORT in err
    assert "Traceback (most recent call last)" in err
    assert "ValueError: the request's own error" in err
    assert err.endswith("-" * 40 + "\n")


def test_a_worker_that_cannot_be_made_is_not_counted(engine, monkeypatch,
                                                     no_leaks):
    # The other way a worker fails, which no limit brings about reliably:
    # no memory for its Thread.  As when it cannot start, the request goes
    # to handle_error() and is shut down, and the pool counts nothing for
    # it: with max_threads = 1, a leaked count would stop the server.
    import threading

    import fastsock
    from _server_helpers import serving

    class Server(fastsock.ThreadingTCPServer):
        max_threads = 1

        def handle_error(self, request, client_address):
            errors.append(sys.exc_info()[0])

    class Echo(fastsock.StreamRequestHandler):
        def handle(self):
            self.wfile.write(self.rfile.readline())

    errors = []
    real_thread = threading.Thread

    def no_memory(*args, **kwargs):
        raise MemoryError

    server = Server((HOST, 0), Echo)
    with serving(server):
        monkeypatch.setattr(threading, "Thread", no_memory)
        with connect_to(server.server_address) as client:
            assert reply_or_eof(client) == b""
        assert errors == [MemoryError]
        monkeypatch.setattr(threading, "Thread", real_thread)
        with connect_to(server.server_address) as client:
            assert line_exchange(client, b"next\n") == b"next\n"
    assert errors == [MemoryError]


GRACEFUL_WITHOUT_THREADS = """
    import signal, threading, time
    import fastsock

    try:
        threading.stack_size(1 << 62)  # see SHORTAGE_SERVER
        threading.stack_size(0)
    except (ValueError, OverflowError):
        print("unsupported", flush=True)
        raise SystemExit

    class Slow(fastsock.StreamRequestHandler):
        def handle(self):
            self.rfile.readline()
            # From now on no thread can start.
            threading.stack_size(1 << 62)
            self.wfile.write(b"started\\n")
            time.sleep(0.5)
            self.wfile.write(b"done\\n")

    server = fastsock.ThreadingTCPServer(("127.0.0.1", 0), Slow)
    print(fastsock.BACKEND, server.server_address[1], flush=True)
    finished = fastsock.serve_until_signal(server, 10, poll_interval=0.05)
    print("finished", finished, flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32",
                    reason="needs SIGTERM delivery")
def test_a_graceful_stop_needs_no_new_thread(engine):
    # SIGTERM while no thread can start: serve_until_signal() stops the
    # loop from the signal handler itself, lets the running request finish
    # and closes the server; the thread that would watch the deadline is
    # done without.
    child = Child(GRACEFUL_WITHOUT_THREADS, engine=engine)
    try:
        first = child.read_line()
        if first == "unsupported":
            pytest.skip("this platform refuses the stack size that makes "
                        "thread starts fail")
        backend, port = first.split()
        assert backend == engine
        with connect_to((HOST, int(port))) as client, \
                client.makefile("rb") as reader:
            client.sendall(b"go\n")
            assert reader.readline() == b"started\n"
            child.proc.send_signal(signal.SIGTERM)
            assert reader.readline() == b"done\n"
            assert reader.read() == b""
        assert child.read_line() == "finished True"
        assert child.wait() == 0
    finally:
        child.close()
