"""ForkingMixIn: reaping by pid at the cost of the exited children, and
``max_children`` enforced by pausing the accept loop.

Every test runs under each engine and with both ways of finding exited
children: pidfds (Linux) and the per-pid ``waitpid`` scan used elsewhere.
Waits are bounded by ``TIMEOUT``; nothing here measures speed.
"""

import os
import threading
import time

import pytest

import fastsock
from fastsock import _workers
from _server_helpers import (HOST, TIMEOUT, ServerThread, connect,
                             datagram_client, exchange, recv_until_eof,
                             requires_fork, serving, wait_until)

pytestmark = [
    requires_fork,
    # The server runs in a thread: forking from it is what is under test.
    pytest.mark.filterwarnings(
        "ignore:This process .* is multi-threaded:DeprecationWarning"),
]

REAPING = ["waitpid"]
if _workers._PIDFD_OPEN is not None:
    REAPING.insert(0, "pidfd")


@pytest.fixture(params=REAPING)
def reaping(request, monkeypatch):
    """Find exited children with pidfds, or by polling each pid."""
    if request.param == "waitpid":
        monkeypatch.setattr(_workers, "_PIDFD_OPEN", None)
    return request.param


def assert_reaped(pids):
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


class PidEcho(fastsock.StreamRequestHandler):
    """Answers with the pid of the process that handled the request."""

    def handle(self):
        self.rfile.readline()
        self.wfile.write(b"%d\n" % os.getpid())


def held_handler(release_path):
    """PidEcho whose children wait until ``release_path`` exists."""
    class Held(PidEcho):
        def handle(self):
            deadline = time.monotonic() + TIMEOUT
            while (not os.path.exists(release_path)
                   and time.monotonic() < deadline):
                time.sleep(0.005)
            super().handle()
    return Held


class Watched:
    """Mix-in recording the most children alive at once, and loop turns."""

    peak = 0
    turns = 0
    cpu = None

    def process_request(self, request, client_address):
        super().process_request(request, client_address)
        self.peak = max(self.peak, len(self.active_children))

    def service_actions(self):
        super().service_actions()
        self.turns += 1
        self.cpu = time.thread_time()  # of the serve_forever thread


class WatchedTCPServer(Watched, fastsock.ForkingTCPServer):
    request_queue_size = 16


def send_line(server):
    client = connect(server)
    client.sendall(b"x\n")
    return client


def test_children_are_reaped_while_serving(engine, no_leaks, reaping):
    server = fastsock.ForkingTCPServer((HOST, 0), PidEcho)
    with serving(server):
        pids = [int(exchange(server, b"x\n")) for _ in range(10)]
        assert len(set(pids)) == 10 and os.getpid() not in pids
        wait_until(lambda: not server.active_children)
    assert_reaped(pids)


def test_server_close_waits_for_running_children(engine, no_leaks, reaping,
                                                 tmp_path):
    release = tmp_path / "release"
    server = fastsock.ForkingTCPServer((HOST, 0), held_handler(release))
    runner = ServerThread(server).start()
    client = send_line(server)
    wait_until(lambda: server.active_children)
    runner.stop()
    (pid,) = server.active_children
    release.touch()
    server.server_close()
    assert not server.active_children
    assert_reaped([pid])
    with client:
        assert int(recv_until_eof(client)) == pid


def test_children_of_the_application_are_left_alone(engine, no_leaks,
                                                    reaping):
    own_child = os.fork()
    if own_child == 0:
        os._exit(72)
    try:
        # A zombie now, which reaping with waitpid(-1) would take.
        os.waitid(os.P_PID, own_child, os.WEXITED | os.WNOWAIT)
        server = fastsock.ForkingTCPServer((HOST, 0), PidEcho)
        with serving(server):
            for _ in range(3):
                exchange(server, b"x\n")
            wait_until(lambda: not server.active_children)
    finally:
        _, status = os.waitpid(own_child, 0)
    assert os.waitstatus_to_exitcode(status) == 72


def test_max_children_pauses_accepting_without_spinning(engine, no_leaks,
                                                        reaping, tmp_path):
    release = tmp_path / "release"
    server = WatchedTCPServer((HOST, 0), held_handler(release))
    server.max_children = 2
    # Long enough that a loaded machine does not hold the loop up past a
    # pause, which would leave it waiting in process_request().
    server._full_recheck_interval = 0.05
    with serving(server, poll_interval=0.05):
        clients = [send_line(server) for _ in range(5)]
        wait_until(lambda: len(server.active_children or ()) == 2
                   and server.cpu is not None)
        turns, cpu = server.turns, server.cpu
        time.sleep(0.3)
        # Full: the other clients wait in the backlog, and the loop wakes
        # only to look for exited children every few milliseconds.
        assert len(server.active_children) == 2
        assert len(server._reaper._pid_of) == (2 if reaping == "pidfd" else 0)
        assert 2 <= server.turns - turns < 1000  # turning, never blocked
        assert server.cpu - cpu < 0.15
        release.touch()
        pids = []
        for client in clients:
            with client:
                pids.append(int(recv_until_eof(client)))
    assert len(set(pids)) == 5
    assert server.peak == 2
    assert_reaped(pids)


def test_handle_request_waits_for_a_child_to_exit(engine, no_leaks, reaping,
                                                  tmp_path):
    release = tmp_path / "release"
    server = WatchedTCPServer((HOST, 0), held_handler(release))
    server.max_children = 1
    with server:
        first, second = send_line(server), send_line(server)
        server.handle_request()
        waiter = threading.Thread(target=server.handle_request)
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive() and len(server.active_children) == 1
        release.touch()
        waiter.join(TIMEOUT)
        assert not waiter.is_alive()
        pids = [int(recv_until_eof(client)) for client in (first, second)]
        first.close()
        second.close()
    assert server.peak == 1
    assert_reaped(pids)


def test_no_waiting_on_close_still_closes_pidfds(engine, no_leaks, reaping,
                                                 tmp_path):
    release = tmp_path / "release"
    server = fastsock.ForkingTCPServer((HOST, 0), held_handler(release))
    server.block_on_close = False
    with serving(server):
        client = send_line(server)
        wait_until(lambda: server.active_children)
    # Closed, with the child still running: no_leaks checks that no pidfd
    # or epoll is left open.  The test reaps the child itself.
    (pid,) = server.active_children
    release.touch()
    with client:
        assert int(recv_until_eof(client)) == pid
    os.waitpid(pid, 0)


def test_children_forked_by_a_subclass_are_reaped(engine, no_leaks, reaping):
    class Server(fastsock.ForkingTCPServer):
        def process_request(self, request, client_address):
            # Forks itself, the way the standard library's code does.
            pid = os.fork()
            if pid == 0:
                try:
                    self.finish_request(request, client_address)
                    self.shutdown_request(request)
                finally:
                    os._exit(0)
            if self.active_children is None:
                self.active_children = set()
            self.active_children.add(pid)
            self.close_request(request)

    server = Server((HOST, 0), PidEcho)
    with serving(server):
        pids = [int(exchange(server, b"x\n")) for _ in range(3)]
        wait_until(lambda: not server.active_children)
    assert_reaped(pids)


def test_forking_udp_server_honours_max_children(engine, no_leaks, reaping):
    class Handler(fastsock.DatagramRequestHandler):
        def handle(self):
            time.sleep(0.02)
            self.wfile.write(b"%d" % os.getpid())

    class Server(Watched, fastsock.ForkingUDPServer):
        pass

    server = Server((HOST, 0), Handler)
    server.max_children = 2
    with serving(server), datagram_client(server) as client:
        for _ in range(6):
            client.sendto(b"x", server.server_address)
        pids = {int(client.recv(100)) for _ in range(6)}
    assert len(pids) == 6 and server.peak <= 2
    assert_reaped(pids)
