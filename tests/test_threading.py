"""ThreadingMixIn on reusable workers, and its ``max_threads`` bound.

Every test runs under each engine.  Waits are bounded by ``TIMEOUT``;
nothing here measures speed.
"""

import contextlib
import importlib
import os
import subprocess
import sys
import threading
import time

import pytest

import fastsock
from _server_helpers import (HOST, TIMEOUT, ServerThread, connect,
                             datagram_client, exchange, recv_until_eof,
                             serving, wait_until)


def idle_workers(server):
    return len(server._workers._idle)


class LineEcho(fastsock.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())


class IdentEcho(LineEcho):
    """A line echo noting on ``server.idents`` the thread that ran it."""

    def handle(self):
        self.server.idents.append(threading.get_ident())
        super().handle()


class Gate:
    """Counts the handlers running at once; holds them until released."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.peak_workers = 0
        self.started = []        # thread idents, in start order
        self.release = threading.Event()

    def enter(self, server):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.peak_workers = max(self.peak_workers, len(server._threads))
            self.started.append(threading.get_ident())

    def leave(self):
        with self.lock:
            self.running -= 1


def gated_handler(gate, block=False, hold=0.0):
    """A line echo that reports to ``gate``; ``block`` waits for release."""
    class Handler(fastsock.StreamRequestHandler):
        def handle(self):
            gate.enter(self.server)
            line = self.rfile.readline()
            if block:
                gate.release.wait(TIMEOUT)
            time.sleep(hold)
            gate.leave()
            self.wfile.write(line)
    return Handler


def send_line(server, line=b"x\n"):
    """A connected client that has sent ``line``."""
    client = connect(server)
    client.sendall(line)
    return client


def gated_server(gate, server_class=fastsock.ThreadingTCPServer, **attrs):
    """A server whose handlers wait for ``gate.release``."""
    server = server_class((HOST, 0), gated_handler(gate, block=True))
    for name, value in attrs.items():
        setattr(server, name, value)
    return server


def occupy_with_handle_request(server, gate):
    """A client whose request handle_request() left blocked in a worker."""
    client = send_line(server, b"1\n")
    server.handle_request()
    wait_until(lambda: gate.running == 1)
    return client


def test_consecutive_requests_reuse_one_worker(engine, no_leaks):
    server = fastsock.ThreadingTCPServer((HOST, 0), IdentEcho)
    idents = server.idents = []
    with serving(server) as runner:
        for _ in range(10):
            assert exchange(server, b"ping\n") == b"ping\n"
            wait_until(lambda: idle_workers(server) == 1)
        assert len(server._threads) == 1
    assert len(idents) == 10
    assert set(idents) == {idents[0]}
    assert idents[0] != runner.ident


def test_a_new_worker_starts_only_when_none_is_idle(engine, no_leaks):
    gate = Gate()
    server = gated_server(gate)
    with serving(server):
        clients = [send_line(server) for _ in range(3)]
        wait_until(lambda: len(gate.started) == 3)
        assert len(set(gate.started)) == 3 and len(server._threads) == 3
        gate.release.set()
        for client in clients:
            with client:
                assert client.recv(10) == b"x\n"
        wait_until(lambda: idle_workers(server) == 3)
        assert exchange(server, b"y\n") == b"y\n"
        assert len(server._threads) == 3
        assert gate.started[3] in gate.started[:3]


def test_process_request_thread_override_runs_each_request(engine, no_leaks):
    calls = []

    class Server(fastsock.ThreadingTCPServer):
        def process_request_thread(self, request, client_address):
            calls.append(client_address)
            super().process_request_thread(request, client_address)

    server = Server((HOST, 0), LineEcho)
    with serving(server):
        for n in range(3):
            assert exchange(server, b"%d\n" % n) == b"%d\n" % n
    assert len(calls) == 3


def test_server_close_waits_for_running_requests(engine, no_leaks):
    gate = Gate()
    server = gated_server(gate)
    runner = ServerThread(server).start()
    # One idle worker, and one busy with a request that has to wait.
    gate.release.set()
    assert exchange(server, b"a\n") == b"a\n"
    wait_until(lambda: idle_workers(server) == 1)
    gate.release.clear()
    client = send_line(server, b"b\n")
    wait_until(lambda: gate.running == 1)
    runner.stop()
    closer = threading.Thread(target=server.server_close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive(), "server_close() did not wait for the request"
    gate.release.set()
    closer.join(TIMEOUT)
    assert not closer.is_alive()
    assert gate.running == 0
    assert len(server._threads) == 0
    with client:
        assert recv_until_eof(client) == b"b\n"


@pytest.mark.parametrize("attrs", [{"daemon_threads": True},
                                   {"block_on_close": False}])
def test_server_close_does_not_wait_when_told_not_to(engine, no_leaks, attrs):
    gate = Gate()
    server = gated_server(gate, **attrs)
    with serving(server):
        client = send_line(server)
        wait_until(lambda: gate.running == 1)
    # serving() has closed the server while the request still runs.
    assert gate.running == 1
    worker = next(t for t in threading.enumerate()
                  if t.ident == gate.started[0])
    assert worker.daemon == attrs.get("daemon_threads", False)
    if not server.block_on_close:
        assert len(server._threads) == 0  # nothing to join, as in stdlib
    gate.release.set()
    with client:
        assert recv_until_eof(client) == b"x\n"
    worker.join(TIMEOUT)  # it leaves a closed pool instead of idling
    assert not worker.is_alive()


def test_idle_workers_retire_after_worker_idle_timeout(engine, no_leaks):
    server = fastsock.ThreadingTCPServer((HOST, 0), IdentEcho)
    idents = server.idents = []
    server.worker_idle_timeout = 0.05
    with serving(server):
        assert exchange(server, b"a\n") == b"a\n"
        wait_until(lambda: len(server._threads) == 0)
        wait_until(lambda: all(t.ident != idents[0]
                               for t in threading.enumerate()))
        assert exchange(server, b"b\n") == b"b\n"  # a fresh worker
        assert len(server._threads) == 1


def test_max_threads_bounds_500_concurrent_clients(engine, no_leaks):
    class Server(fastsock.ThreadingTCPServer):
        request_queue_size = 512  # every client waits in the backlog

    gate = Gate()
    server = Server((HOST, 0), gated_handler(gate, hold=0.001))
    server.max_threads = 8
    clients = []
    try:
        with serving(server):
            for n in range(500):
                clients.append(send_line(server, b"%d\n" % n))
            for n, client in enumerate(clients):
                assert recv_until_eof(client) == b"%d\n" % n
    finally:
        for client in clients:
            client.close()
    assert len(gate.started) == 500
    assert gate.peak == 8
    assert gate.peak_workers <= 8


def count_turns(server_class):
    """``server_class`` whose loop records its turns and CPU time."""
    class Server(server_class):
        turns = 0
        cpu = None

        def service_actions(self):
            super().service_actions()
            self.turns += 1
            self.cpu = time.thread_time()  # of the serve_forever thread
    return Server


def test_full_server_stops_accepting_without_spinning(engine, no_leaks):
    gate = Gate()
    server = gated_server(gate, count_turns(fastsock.ThreadingTCPServer),
                          max_threads=1)
    with serving(server, poll_interval=0.05):
        clients = [send_line(server, b"%d\n" % n) for n in range(4)]
        wait_until(lambda: gate.running == 1 and server.cpu is not None)
        turns, cpu = server.turns, server.cpu
        time.sleep(0.3)
        # Still one request running: the others wait in the backlog, and
        # the paused loop only turns once per poll interval.
        assert len(gate.started) == 1
        assert 2 <= server.turns - turns < 30  # turning, never blocked
        assert server.cpu - cpu < 0.1
        gate.release.set()
        for n, client in enumerate(clients):
            with client:
                assert recv_until_eof(client) == b"%d\n" % n
    assert gate.peak == 1


def test_handle_request_waits_for_a_free_thread(engine, no_leaks):
    gate = Gate()
    server = gated_server(gate, max_threads=1)
    with server:
        first = occupy_with_handle_request(server, gate)
        second = send_line(server, b"2\n")
        waiter = threading.Thread(target=server.handle_request)
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive() and len(gate.started) == 1
        gate.release.set()
        waiter.join(TIMEOUT)
        assert not waiter.is_alive()
        for line, client in ((b"1\n", first), (b"2\n", second)):
            with client:
                assert recv_until_eof(client) == line
    assert gate.peak == 1


def test_loop_started_while_full_still_honours_the_bound(engine, no_leaks):
    gate = Gate()
    server = gated_server(gate, max_threads=1)
    first = occupy_with_handle_request(server, gate)
    with serving(server):
        others = [send_line(server, b"%d\n" % n) for n in (2, 3)]
        time.sleep(0.2)
        assert len(gate.started) == 1
        gate.release.set()
        for n, client in enumerate([first] + others, 1):
            with client:
                assert recv_until_eof(client) == b"%d\n" % n
    assert gate.peak == 1 and len(gate.started) == 3


def test_system_exit_in_a_handler_reaches_excepthook(engine, no_leaks,
                                                     monkeypatch):
    seen = []
    monkeypatch.setattr(threading, "excepthook",
                        lambda args: seen.append(args.exc_type))

    class Handler(LineEcho):
        def handle(self):
            if self.rfile.readline() == b"exit\n":
                raise SystemExit
            self.wfile.write(b"ok\n")

    server = fastsock.ThreadingTCPServer((HOST, 0), Handler)
    server.max_threads = 1  # the dead worker's slot must come back
    with serving(server):
        assert exchange(server, b"exit\n") == b""
        wait_until(lambda: seen == [SystemExit])
        wait_until(lambda: len(server._threads) == 0)
        assert exchange(server, b"go on\n") == b"ok\n"


def test_a_thread_that_cannot_start_fails_only_its_request(engine, no_leaks,
                                                           monkeypatch):
    errors = []

    class Server(fastsock.ThreadingTCPServer):
        def handle_error(self, request, client_address):
            errors.append(sys.exc_info()[0])

    def cannot_start(thread):
        monkeypatch.undo()
        raise RuntimeError("can't start new thread")

    server = Server((HOST, 0), LineEcho)
    server.max_threads = 1
    with serving(server):
        monkeypatch.setattr(threading.Thread, "start", cannot_start)
        with send_line(server, b"lost\n") as client:
            # Shut down unread: the peer may see a reset rather than EOF.
            with contextlib.suppress(ConnectionResetError):
                assert recv_until_eof(client) == b""
        assert errors == [RuntimeError]
        assert len(server._threads) == 0
        assert exchange(server, b"next\n") == b"next\n"


def test_threading_udp_server_reuses_workers_within_the_bound(engine,
                                                               no_leaks):
    gate = Gate()

    class Handler(fastsock.DatagramRequestHandler):
        def handle(self):
            gate.enter(self.server)
            time.sleep(0.002)
            gate.leave()
            self.wfile.write(self.rfile.read())

    server = fastsock.ThreadingUDPServer((HOST, 0), Handler)
    server.max_threads = 2
    with serving(server), datagram_client(server) as client:
        for n in range(40):
            client.sendto(b"%d" % n, server.server_address)
        replies = {client.recv(100) for _ in range(40)}
        assert replies == {b"%d" % n for n in range(40)}
        assert len(set(gate.started)) <= 2
    assert gate.peak <= 2 and gate.peak_workers <= 2


EXIT_SCRIPT = """
import socket, fastsock

class LineEcho(fastsock.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())

# Never closed: its idle worker would wait 600 s for the next request.
server = fastsock.ThreadingTCPServer(("127.0.0.1", 0), LineEcho)
server.worker_idle_timeout = 600
client = socket.create_connection(server.server_address)
client.sendall(b"x\\n")
server.handle_request()
assert client.recv(10) == b"x\\n"
"""


def test_idle_workers_do_not_delay_interpreter_exit(engine):
    env = dict(os.environ, FASTSOCK_PURE="1" if engine == "python" else "0")
    proc = subprocess.run([sys.executable, "-c", EXIT_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# -- the engines' pools, and what a worker calls -------------------------------

def test_each_engine_runs_its_own_build_of_the_pool(engine, no_leaks):
    # One source (fastsock/_workers.py): imported as it is by the pure
    # engine, compiled into fastsock._cworkers for the compiled one.
    server = fastsock.ThreadingTCPServer((HOST, 0), LineEcho)
    with serving(server):
        assert exchange(server, b"x\n") == b"x\n"
        module = type(server._workers).__module__
        wait_until(lambda: idle_workers(server) == 1)
        baton = type(server._workers._idle[0].baton)
    if engine == "python":
        assert module == "fastsock._workers"
        assert baton is type(threading.Lock())
    else:
        assert baton.__module__ == "fastsock._cengine"
        try:
            importlib.import_module("fastsock._cworkers")
        except ImportError:  # built without it: the engine drives _workers
            assert module == "fastsock._workers"
        else:
            assert module == "fastsock._cworkers"


class UpperDatagram(fastsock.DatagramRequestHandler):
    def handle(self):
        self.server.seen.append((threading.get_ident(), sorted(vars(self))))
        self.wfile.write(self.rfile.read().upper())


WORKER_HOOKS = ["process_request_thread", "finish_request",
                "shutdown_request", "close_request"]


def recording_udp_server(calls, hooks, on_instance):
    """A ThreadingUDPServer whose ``hooks`` note their calls in ``calls``,
    overridden on its class or, ``on_instance``, on the instance."""
    def recorder(name):
        def hook(self, *args):
            calls.append((name, threading.get_ident()))
            return getattr(fastsock.ThreadingUDPServer, name)(self, *args)
        return hook

    if on_instance:
        server = fastsock.ThreadingUDPServer((HOST, 0), UpperDatagram)
        for name in hooks:
            setattr(server, name, recorder(name).__get__(server))
    else:
        cls = type("Recording", (fastsock.ThreadingUDPServer,),
                   {name: recorder(name) for name in hooks})
        server = cls((HOST, 0), UpperDatagram)
    server.seen = []
    return server


@pytest.mark.parametrize("on_instance", [False, True],
                         ids=["class", "instance"])
@pytest.mark.parametrize("hook", WORKER_HOOKS)
def test_a_worker_calls_each_overridden_hook(engine, no_leaks, hook,
                                             on_instance):
    # The compiled engine's workers do the default hooks' work in place;
    # an override, of any one of them, is called, in the worker.
    calls = []
    server = recording_udp_server(calls, [hook], on_instance)
    with serving(server) as runner, datagram_client(server) as client:
        for n in range(3):
            client.sendto(b"d%d" % n, server.server_address)
            assert client.recv(100) == b"D%d" % n
    assert [name for name, _ in calls] == [hook] * 3
    assert runner.ident not in {ident for _, ident in calls}
    assert {ident for ident, _ in server.seen} == {ident for _, ident in calls}


def test_a_hook_overridden_while_serving_is_called_from_then_on(engine,
                                                                no_leaks):
    calls = []
    server = recording_udp_server(calls, [], on_instance=False)
    cls = type(server)
    with serving(server), datagram_client(server) as client:
        client.sendto(b"a", server.server_address)
        assert client.recv(100) == b"A"
        # The reply leaves before shutdown_request() runs: wait for the
        # worker to be done.
        wait_until(lambda: idle_workers(server) == 1)
        for name in WORKER_HOOKS:
            def hook(self, *args, name=name):
                calls.append(name)
                return getattr(fastsock.ThreadingUDPServer, name)(self, *args)
            setattr(cls, name, hook)
        client.sendto(b"b", server.server_address)
        assert client.recv(100) == b"B"
        wait_until(lambda: idle_workers(server) == 1)
        for name in WORKER_HOOKS:
            delattr(cls, name)
        client.sendto(b"c", server.server_address)
        assert client.recv(100) == b"C"
    assert calls == WORKER_HOOKS


def test_a_worker_builds_datagram_handlers_as_the_stdlib_does(engine,
                                                              no_leaks):
    # Same attributes, whoever builds the handler; setup() and finish()
    # overrides run.
    import socketserver

    events = []

    def handler_class(module):
        class Handler(module.DatagramRequestHandler):
            def handle(self):
                events.append(list(vars(self)))
                self.wfile.write(self.packet[::-1])
        return Handler

    class Finishing(handler_class(fastsock)):
        def setup(self):
            events.append("setup")
            super().setup()

        def finish(self):
            events.append("finish")
            super().finish()

    for module, handler in [(socketserver, handler_class(socketserver)),
                            (fastsock, handler_class(fastsock)),
                            (fastsock, Finishing)]:
        server = module.ThreadingUDPServer((HOST, 0), handler)
        with contextlib.ExitStack() as stack:
            if module is fastsock:
                stack.enter_context(serving(server))
            else:
                stack.enter_context(server)
                runner = threading.Thread(target=server.serve_forever,
                                          args=(0.05,))
                runner.start()
                stack.callback(runner.join)
                stack.callback(server.shutdown)
            client = stack.enter_context(datagram_client(server))
            client.sendto(b"abc", server.server_address)
            assert client.recv(100) == b"cba"
    stdlib_attrs, ours, finishing = events[0], events[1], events[2:]
    assert ours == stdlib_attrs
    assert finishing == ["setup", stdlib_attrs, "finish"]


def test_a_failing_datagram_handler_goes_to_handle_error(engine, no_leaks):
    errors = []

    class Server(fastsock.ThreadingUDPServer):
        def handle_error(self, request, client_address):
            errors.append((request[0], client_address, sys.exc_info()[0],
                           threading.get_ident()))

    class Handler(fastsock.DatagramRequestHandler):
        def handle(self):
            if self.packet == b"fail":
                raise ValueError("asked for")
            self.wfile.write(self.packet)

    server = Server((HOST, 0), Handler)
    with serving(server) as runner, datagram_client(server) as client:
        client_address = client.getsockname()
        client.sendto(b"fail", server.server_address)
        # finish() ran anyway: an empty reply, as in the stdlib.
        assert client.recv(100) == b""
        client.sendto(b"ok", server.server_address)
        assert client.recv(100) == b"ok"
    [(packet, address, kind, ident)] = errors
    assert (packet, address, kind) == (b"fail", client_address, ValueError)
    assert ident != runner.ident


@pytest.mark.parametrize("on_instance", [False, True],
                         ids=["class", "instance"])
def test_process_request_overridden_on_a_threading_server_is_called(
        engine, no_leaks, on_instance):
    # The compiled loop hands a datagram to the pool itself only while
    # process_request is ThreadingMixIn's own.
    calls = []
    server = fastsock.ThreadingUDPServer((HOST, 0), UpperDatagram)
    server.seen = []

    def process_request(self, request, client_address):
        calls.append(request[0])
        fastsock.ThreadingUDPServer.process_request(self, request,
                                                    client_address)

    with serving(server), datagram_client(server) as client:
        client.sendto(b"before", server.server_address)
        assert client.recv(100) == b"BEFORE"
        if on_instance:
            server.process_request = process_request.__get__(server)
        else:
            server.__class__ = type("Overriding", (type(server),),
                                    {"process_request": process_request})
        client.sendto(b"after", server.server_address)
        assert client.recv(100) == b"AFTER"
    assert calls == [b"after"]


def _batons():
    """threading.Lock, and the compiled pool's Baton where built."""
    kinds = [pytest.param(threading.Lock, id="threading.Lock")]
    try:
        from fastsock._cengine import Baton
    except ImportError:
        pass
    else:
        kinds.append(pytest.param(Baton, id="Baton"))
    return kinds


@pytest.mark.parametrize("baton", _batons())
def test_a_baton_is_a_lock(baton):
    lock = baton()
    assert not lock.locked()
    assert lock.acquire()
    assert lock.locked()
    assert lock.acquire(False) is False
    assert lock.acquire(True, 0.001) is False
    assert lock.acquire(timeout=0) is False
    with pytest.raises(ValueError):
        lock.acquire(False, 1)
    with pytest.raises(ValueError):
        lock.acquire(True, -2)
    with pytest.raises(OverflowError):
        lock.acquire(True, 1e300)
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()
    assert lock.acquire(blocking=False)
    lock.release()


@pytest.mark.parametrize("baton", _batons())
def test_a_baton_released_in_one_thread_wakes_its_waiter(baton):
    lock = baton()
    lock.acquire()
    woken = []

    def wait():
        woken.append(lock.acquire(True, TIMEOUT))
        lock.release()

    waiter = threading.Thread(target=wait)
    waiter.start()
    lock.release()
    waiter.join(TIMEOUT)
    assert woken == [True]
    assert not lock.locked()


# -- fairness between prefork workers (the pool's part) --------------------

def _pool_builds():
    """fastsock/_workers.py as the pure engine imports it, and compiled."""
    builds = [pytest.param("fastsock._workers", id="python")]
    try:
        importlib.import_module("fastsock._cworkers")
    except ImportError:
        pass
    else:
        builds.append(pytest.param("fastsock._cworkers", id="cython"))
    return builds


def _board(loads, states):
    """A fairness board as the supervisor lays it out: int64 loads, then
    int64 states, in one buffer."""
    import array
    view = memoryview(array.array("q", loads + states))
    return view[:len(loads)], view[len(loads):]


@pytest.mark.parametrize("build", _pool_builds())
def test_the_fairness_rule(build):
    rule = importlib.import_module(build)
    accepting, lead = rule.ACCEPTING, rule.FAIR_LEAD
    loads, states = _board([lead, 0, 0], [accepting] * 3)
    # Ahead of the least loaded accepting worker by FAIR_LEAD: paused.
    before = time.monotonic_ns()
    until = rule.fair_pause(loads, states, 0, lead, None)
    assert before + rule.FAIR_PAUSE_NS <= until <= (
        time.monotonic_ns() + rule.FAIR_PAUSE_NS)
    assert states[0] == until and list(states[1:]) == [accepting] * 2
    # Not that far ahead; at its own bound; a request just ended: no pause.
    loads, states = _board([lead + 1, 2, 3], [accepting] * 3)
    assert rule.fair_pause(loads, states, 0, lead + 1, None) == 0
    loads, states = _board([lead, 0], [accepting] * 2)
    assert rule.fair_pause(loads, states, 0, lead, lead) == 0
    assert rule.fair_pause(loads, states, 0, lead, None,
                           time.monotonic_ns()) == 0
    assert list(states) == [accepting] * 2
    # A worker that does not serve does not count.
    loads, states = _board([lead, 0, 0], [accepting, 0, 0])
    assert rule.fair_pause(loads, states, 0, lead, None) == 0
    # A paused worker counts, still paused or not: a worker whose pause
    # has just ended must not see itself as the least loaded one while
    # the others are paused.
    far = time.monotonic_ns() + 10**10
    loads, states = _board([lead, 0, lead], [accepting, far, far])
    assert rule.fair_pause(loads, states, 0, lead, None) > 0
    loads, states = _board([lead, 0], [accepting, 2])
    assert rule.fair_pause(loads, states, 0, lead, None) > 0
    # The least loaded worker never pauses by the rule, however many of
    # the others are paused.
    loads, states = _board([lead, 2 * lead, 3 * lead],
                           [accepting, far, far])
    assert rule.fair_pause(loads, states, 0, lead, None) == 0


class _FairServer:
    """What WorkerPool reads of a prefork worker's server."""

    max_threads = None
    daemon_threads = True
    worker_idle_timeout = None

    def __init__(self, board, release):
        self._fair_board = board
        self._release = release
        self.pauses = []

    def process_request_thread(self, request, client_address):
        self._release.wait(TIMEOUT)

    def _pause_accepting(self, until=None):
        self.pauses.append(until)

    def _resume_accepting(self):
        pass


@pytest.mark.parametrize("build", _pool_builds())
def test_a_pool_publishes_its_load_and_pauses_when_ahead(build, monkeypatch):
    module = importlib.import_module(build)
    loads, states = _board([0, 0], [module.ACCEPTING] * 2)
    release = threading.Event()
    server = _FairServer((loads, states, 0), release)
    pool = module.WorkerPool(server)
    try:
        for n in range(1, module.FAIR_LEAD + 1):
            pool.submit(None, None)
            assert loads[0] == n
        # FAIR_LEAD more than the other worker, and no request ended yet.
        assert len(server.pauses) == 1
        assert server.pauses[0] == states[0] / 1e9
        release.set()  # every request ends
        wait_until(lambda: loads[0] == 0)
        release.clear()
        states[0] = module.ACCEPTING
        # Within FAIR_QUIET_NS of a request's end (made an hour, so that
        # the test does not depend on the clock), no pause however far
        # ahead: requests that keep ending do not pile up.
        monkeypatch.setattr(module, "FAIR_QUIET_NS", 3600 * 10**9)
        for n in range(module.FAIR_LEAD + 2):
            pool.submit(None, None)
        assert loads[0] == module.FAIR_LEAD + 2
        assert len(server.pauses) == 1
    finally:
        release.set()
        pool.close(wait=False)
