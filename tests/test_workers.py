"""Prefork serving (``workers = N``, fastsock._supervisor), under both engines.

Every server runs in a subprocess (tests/_workers_child.py, or a program
under ``python -m fastsock run --workers N``) that the test drives through
its sockets and signals; every wait is bounded by a generous timeout.
"""

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import fastsock
from _server_helpers import (
    DEFAULT_SIGNAL_ACTIONS, HAS_UNIX, TIMEOUT, connect, requires_fork,
    requires_unix, serving)

pytestmark = [requires_fork,
              pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                 reason="needs /proc to watch processes")]

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "_workers_child.py")
# Bounds for what the supervisor promises within 1 s and 2 s, with room for
# a loaded 2-core machine.
REPLACED_WITHIN = 1.0 + TIMEOUT
ORPHANS_GONE_WITHIN = 2.0 + TIMEOUT


def child_env(engine):
    env = dict(os.environ)
    env["FASTSOCK_PURE"] = "1" if engine == "python" else "0"
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(HERE)] + sys.path)
    return env


class Child:
    """A server process that prints JSON lines on stdout."""

    def __init__(self, args, engine, tmp_path, stdin=False, env=None):
        self.stderr_path = tmp_path / "stderr.txt"
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                args, env=dict(child_env(engine), **(env or {})),
                stdout=subprocess.PIPE,
                stderr=stderr, cwd=tmp_path,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                preexec_fn=DEFAULT_SIGNAL_ACTIONS)
        self.pid = self.proc.pid

    def line(self, timeout=TIMEOUT):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"no output from the server; stderr: {self.stderr()}"
        line = self.proc.stdout.readline()
        assert line, f"the server ended early; stderr: {self.stderr()}"
        return line

    def stderr(self):
        return self.stderr_path.read_text()

    def wait(self, timeout=TIMEOUT):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not exit; stderr: {self.stderr()}")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        if self.proc.stdin:
            self.proc.stdin.close()


class ServerChild(Child):
    """tests/_workers_child.py with a configuration."""

    def __init__(self, engine, tmp_path, run_options=None, env=None,
                 **config):
        """``run_options``: run under ``python -m fastsock run`` with those;
        ``env``: environment variables to add."""
        config.setdefault("kind", "threading")
        runner = [] if run_options is None else [
            "-m", "fastsock", "run", *run_options]
        super().__init__([sys.executable, *runner, CHILD, json.dumps(config)],
                         engine, tmp_path,
                         stdin=config.get("stdin_stop", False), env=env)
        self.kind = config["kind"]
        started = json.loads(self.line())
        self.fileno = started["fileno"]  # the listener, in every worker too
        self.address = started["address"]
        if isinstance(self.address, list):
            self.address = tuple(self.address)

    def report(self):
        return json.loads(self.line())

    def connect(self):
        family = socket.AF_UNIX if self.kind == "unix" else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(self.address)
        return sock

    def ask_pid(self):
        """``(pid, worker_index, init_index)`` of a new connection's worker."""
        if self.kind == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(TIMEOUT)
                sock.sendto(b"pid", self.address)
                reply = sock.recv(100)
        else:
            with self.connect() as sock:
                reply = ask(sock, "pid")
        return tuple(int(part) for part in reply.split())


def ask(sock, command):
    sock.sendall(command.encode() + b"\n")
    return read_line(sock)


def read_line(sock):
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"EOF after {data!r}")
        data += chunk
    return data.decode()


def pid_of(sock):
    return int(ask(sock, "pid").split()[0])


def distinct_workers(child, count):
    """Ask new connections until ``count`` distinct workers answered."""
    seen = {}
    deadline = time.monotonic() + TIMEOUT
    while len(seen) < count:
        assert time.monotonic() < deadline, f"only workers {seen} answered"
        pid, index, init_index = child.ask_pid()
        seen[pid] = (index, init_index)
    return seen


def worker_pids(supervisor_pid):
    """The live children of ``supervisor_pid``."""
    pids = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = proc_stat(int(name))
            if stat and stat[1] == supervisor_pid and stat[0] != "Z":
                pids.add(int(name))
    return pids


def proc_stat(pid):
    """``(state, ppid)`` of ``pid``, or None once gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def gone(pid):
    stat = proc_stat(pid)
    return stat is None or stat[0] in ("Z", "X")


def wait_until(predicate, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def server(engine, tmp_path):
    """Start ServerChild(**config) with ``server(**config)``."""
    children = []

    def start(**config):
        child = ServerChild(engine, tmp_path, **config)
        children.append(child)
        return child
    yield start
    for child in children:
        pids = worker_pids(child.pid)
        child.close()
        for pid in pids:  # none, unless a test failed half-way
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("kind", ["threading", "plain", "forking"])
def test_distinct_workers_answer_with_their_index(server, kind):
    child = server(kind=kind, workers=3)
    seen = distinct_workers(child, 3)
    assert sorted(index for index, _ in seen.values()) == [0, 1, 2]
    assert all(index == init for index, init in seen.values())
    assert set(seen) == worker_pids(child.pid)
    assert child.pid not in seen


def test_udp_server_with_workers(server):
    child = server(kind="udp", workers=2)
    assert len(distinct_workers(child, 2)) == 2


@requires_unix
def test_unix_stream_server_with_workers(server, sock_dir):
    child = server(kind="unix", workers=2,
                   path=os.path.join(sock_dir, "server.sock"))
    assert len(distinct_workers(child, 2)) == 2


def test_killed_worker_is_replaced_and_others_keep_serving(server):
    child = server(workers=2)
    distinct_workers(child, 2)
    # One open connection on each worker.
    connections = {}
    deadline = time.monotonic() + TIMEOUT
    while len(connections) < 2:
        assert time.monotonic() < deadline
        sock = child.connect()
        pid = pid_of(sock)
        if pid in connections:
            sock.close()
        else:
            connections[pid] = sock
    victim, survivor = sorted(connections)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(worker_pids(child.pid) - {victim}) == 2,
               "a replacement worker", REPLACED_WITHIN)
    # The survivor's connection is untouched; the victim's is gone.
    assert pid_of(connections[survivor]) == survivor
    with pytest.raises(OSError):
        pid_of(connections[victim])
    for sock in connections.values():
        sock.close()
    assert victim not in distinct_workers(child, 2)
    wait_until(lambda: f"(pid {victim}) was killed by signal 9"
               in child.stderr(), "the death logged")


def test_sigterm_lets_requests_in_flight_finish(server):
    child = server(workers=2)
    pids = set(distinct_workers(child, 2))
    slow = []
    for _ in range(4):
        sock = child.connect()
        assert ask(sock, "slow 0.5").startswith("started")
        slow.append(sock)
    os.kill(child.pid, signal.SIGTERM)
    for sock in slow:
        assert read_line(sock).startswith("done")
        sock.close()
    assert child.report()["returned"]
    assert child.wait() == 0
    assert all(gone(pid) for pid in pids)


def test_serve_until_signal_stops_the_workers_gracefully(server):
    child = server(workers=2, serve_until_signal=True)
    pids = set(distinct_workers(child, 2))
    sock = child.connect()
    assert ask(sock, "slow 0.5").startswith("started")
    os.kill(child.pid, signal.SIGTERM)
    assert read_line(sock).startswith("done")
    sock.close()
    assert child.report() == {"finished": True}
    assert child.wait() == 0
    assert all(gone(pid) for pid in pids)


def test_sigint_stops_the_supervisor_not_its_workers_one_by_one(server):
    child = server(workers=2)
    pids = set(distinct_workers(child, 2))
    sock = child.connect()
    assert ask(sock, "slow 0.5").startswith("started")
    for pid in pids:  # as Ctrl-C in a terminal: the whole process group
        os.kill(pid, signal.SIGINT)
    assert pid_of(child.connect()) in pids  # workers ignore it
    os.kill(child.pid, signal.SIGINT)
    assert read_line(sock).startswith("done")
    sock.close()
    assert child.report()["returned"]
    assert child.wait() == 0


def test_workers_failing_at_start_are_restarted_with_back_off(server):
    child = server(workers=2, fail_init=True)
    wait_until(lambda: child.stderr().count("fails") >= 4,
               "several failed starts")
    time.sleep(1.0)  # a window in which to count the restarts
    failures = child.stderr().count("RuntimeError: worker_init")
    # Without back-off two workers dying at once restart hundreds of times
    # a second; with it, each wait doubles from 0.1 s.
    assert failures < 30, failures
    os.kill(child.pid, signal.SIGTERM)
    assert child.report()["returned"]
    assert child.wait() == 0


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"),
                    reason="no CPU affinity on this platform")
def test_worker_cpu_affinity_pins_each_worker(server):
    cpus = sorted(os.sched_getaffinity(0))
    child = server(workers=2, worker_cpu_affinity=True)
    pinned = {}
    deadline = time.monotonic() + TIMEOUT
    while len(pinned) < 2:
        assert time.monotonic() < deadline
        with child.connect() as sock:
            pid, _, worker_cpus = ask(sock, "cpus").partition(" ")
            pinned[pid] = json.loads(worker_cpus)
    expected = sorted([[cpus[0]], [cpus[1 % len(cpus)]]])
    assert sorted(pinned.values()) == expected


def test_sighup_replaces_every_worker_without_refusing_one_connection(server):
    child = server(workers=2)
    old = set(distinct_workers(child, 2))
    errors, answered_by = [], []
    stop = threading.Event()

    def connect_loop():
        while not stop.is_set():
            try:
                answered_by.append(child.ask_pid()[0])
            except (OSError, ValueError) as exc:
                errors.append(exc)
    clients = [threading.Thread(target=connect_loop) for _ in range(2)]
    for client in clients:
        client.start()
    try:
        wait_until(lambda: len(answered_by) > 10, "requests before SIGHUP")
        os.kill(child.pid, signal.SIGHUP)
        wait_until(lambda: not old & worker_pids(child.pid)
                   and len(worker_pids(child.pid)) == 2,
                   "every worker replaced")
        mark = len(answered_by)
        wait_until(lambda: len(answered_by) > mark + 10,
                   "requests after the restart")
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert errors == []
    assert not old & set(answered_by[mark:])


def test_a_sighup_ignored_at_start_stays_ignored(server):
    """Under nohup (SIGHUP ignored) the supervisor takes no SIGHUP handler:
    the signal restarts nothing, and SIGTERM still stops everything."""
    child = server(workers=2, ignore_sighup=True)
    old = set(distinct_workers(child, 2))
    os.kill(child.pid, signal.SIGHUP)
    # A restart would have started a new worker within milliseconds.
    time.sleep(0.5)
    assert worker_pids(child.pid) == old
    assert child.ask_pid()[0] in old
    os.kill(child.pid, signal.SIGTERM)
    assert child.report()["returned"]
    assert child.wait() == 0


def held_by(child, pid):
    """A connection that worker ``pid`` serves (new ones until it takes
    one)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        assert time.monotonic() < deadline, f"worker {pid} took none"
        sock = child.connect()
        if pid_of(sock) == pid:
            return sock
        sock.close()


def test_sigttin_adds_a_worker_and_sigttou_retires_one_gracefully(server):
    child = server(workers=2)
    first = distinct_workers(child, 2)
    os.kill(child.pid, signal.SIGTTIN)
    wait_until(lambda: len(worker_pids(child.pid)) == 3, "a third worker")
    seen = distinct_workers(child, 3)
    assert sorted(index for index, _ in seen.values()) == [0, 1, 2]
    [added] = set(seen) - set(first)
    assert seen[added] == (2, 2)  # worker_init ran with its index
    # One fewer: the highest index stops, finishing its request first.
    sock = held_by(child, added)
    assert ask(sock, "slow 0.5").startswith("started")
    os.kill(child.pid, signal.SIGTTOU)
    assert read_line(sock).startswith("done")
    sock.close()
    wait_until(lambda: gone(added), "the retired worker's exit")
    assert worker_pids(child.pid) == set(first)
    # Never fewer than one: two more SIGTTOU leave worker 0 alone.
    os.kill(child.pid, signal.SIGTTOU)
    wait_until(lambda: len(worker_pids(child.pid)) == 1, "one worker")
    os.kill(child.pid, signal.SIGTTOU)
    time.sleep(0.3)  # a retirement would have begun within milliseconds
    [last] = worker_pids(child.pid)
    assert first[last][0] == 0 and child.ask_pid()[:2] == (last, 0)
    os.kill(child.pid, signal.SIGTERM)
    assert child.report()["returned"]
    assert child.wait() == 0
    log = child.stderr()
    assert re.findall(r"workers: (\d+ -> \d+)", log) == [
        "2 -> 3", "3 -> 2", "2 -> 1"]
    assert f"worker 2 (pid {added}) exited" in log
    assert "exited with status" not in log  # every worker exited 0


# Run in a fresh process: a session of its own whose controlling terminal
# is a pseudo-terminal, and in it a foreground and a background job.
_JOB_CONTROL = r"""
import json, os, pty, signal, socketserver, sys
import fastsock
from fastsock._supervisor import Supervisor

def takes_resize_signals():
    server = fastsock.TCPServer(("127.0.0.1", 0),
                                socketserver.BaseRequestHandler)
    server.workers = 2
    supervisor = Supervisor(server)
    try:
        supervisor._install_signal_handlers()
        return [signal.getsignal(signal.SIGTTIN) != signal.SIG_DFL,
                signal.getsignal(signal.SIGTTOU) != signal.SIG_DFL]
    finally:
        supervisor._restore_signal_handlers()
        supervisor.close()
        server.server_close()

master, slave = pty.openpty()
os.setsid()
terminal = os.open(os.ttyname(slave), os.O_RDWR)  # the controlling one
os.dup2(terminal, 0)
report = os.pipe()
job = os.fork()
if job == 0:
    os.setpgid(0, 0)  # a job of its own: not the terminal's foreground
    os.write(report[1], json.dumps(takes_resize_signals()).encode())
    os._exit(0)
os.waitpid(job, 0)
print(json.dumps({"foreground": takes_resize_signals(),
                  "background": json.loads(os.read(report[0], 100))}))
"""


def test_a_background_job_of_its_terminal_leaves_sigttin_and_sigttou(
        engine):
    """There the terminal sends them for job control: the supervisor takes
    them over only where it is not such a job."""
    env = child_env(engine)
    proc = subprocess.run([sys.executable, "-c", _JOB_CONTROL], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=TIMEOUT * 4,
                          preexec_fn=DEFAULT_SIGNAL_ACTIONS)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout) == {"foreground": [True, True],
                                       "background": [False, False]}


def test_workers_exit_when_the_supervisor_is_killed(server):
    child = server(workers=2)
    pids = set(distinct_workers(child, 2))
    sock = child.connect()
    ask(sock, "slow 30")  # a request that would hold a worker for long
    os.kill(child.pid, signal.SIGKILL)
    wait_until(lambda: all(gone(pid) for pid in pids),
               "the orphaned workers to exit", ORPHANS_GONE_WITHIN)
    sock.close()


def test_shutdown_from_another_thread_leaves_nothing_behind(server):
    child = server(workers=2, stdin_stop=True, report_leaks=True)
    pids = set(distinct_workers(child, 2))
    child.proc.stdin.write(b"stop\n")
    child.proc.stdin.flush()
    report = child.report()
    assert report == {"returned": True, "new_fds": [], "threads": 0,
                      "children": False}
    assert all(gone(pid) for pid in pids)
    assert child.wait() == 0


def test_max_requests_recycles_workers(server):
    child = server(workers=2, max_requests=3)
    first = set(distinct_workers(child, 2))
    answered = set()
    for _ in range(12):
        answered.add(child.ask_pid()[0])
    assert len(answered | first) > 2
    wait_until(lambda: len(worker_pids(child.pid)) == 2, "two workers")
    assert "exited with status" not in child.stderr()  # all exited 0


@pytest.mark.parametrize("setting", [
    {"worker_timeout": 0.5},
    {"run_options": ["--worker-timeout", "0.5"]}], ids=["attribute", "option"])
def test_a_worker_whose_loop_is_stuck_is_killed_and_replaced(server, setting):
    # A sequential worker's loop waits for its request: stuck, for the
    # supervisor, once that outlasts worker_timeout.
    child = server(kind="plain", workers=2, **setting)
    first = set(distinct_workers(child, 2))
    with child.connect() as stuck:
        stuck.sendall(b"slow 60\n")
        victim = int(read_line(stuck).split()[1])
        # Killed, not left to finish: the connection ends long before 60 s.
        try:
            assert stuck.recv(100) == b""
        except ConnectionResetError:
            pass
    wait_until(lambda: len(worker_pids(child.pid) - {victim}) == 2,
               "a replacement worker", REPLACED_WITHIN)
    assert victim not in distinct_workers(child, 2)
    wait_until(lambda: f"(pid {victim}): its loop has not turned"
               in child.stderr(), "the reason logged")
    wait_until(lambda: f"(pid {victim}) was killed by signal 9"
               in child.stderr(), "the kill logged")
    # The other worker, idle all along, was not killed.
    assert (first - {victim}) <= worker_pids(child.pid)


def test_a_worker_whose_request_keeps_the_gil_is_killed(server):
    # A threading worker's loop runs beside its requests, unless one of
    # them keeps the GIL (a C call that does not release it).
    child = server(kind="threading", workers=2, worker_timeout=0.5)
    distinct_workers(child, 2)
    with child.connect() as stuck:
        stuck.sendall(b"gil 30\n")
        victim = int(read_line(stuck).split()[1])
        try:
            assert stuck.recv(100) == b""
        except ConnectionResetError:
            pass
    wait_until(lambda: f"(pid {victim}): its loop has not turned"
               in child.stderr(), "the reason logged")
    wait_until(lambda: len(worker_pids(child.pid) - {victim}) == 2,
               "a replacement worker", REPLACED_WITHIN)


def test_a_stuck_worker_shows_where_it_is_stuck_with_faulthandler(server):
    child = server(kind="plain", workers=2, worker_timeout=0.5,
                   no_core_dump=True, env={"PYTHONFAULTHANDLER": "1"})
    distinct_workers(child, 2)
    with child.connect() as stuck:
        stuck.sendall(b"slow 60\n")
        victim = int(read_line(stuck).split()[1])
        try:
            assert stuck.recv(100) == b""
        except ConnectionResetError:
            pass
    wait_until(lambda: f"(pid {victim}) was killed by signal 6 (SIGABRT)"
               in child.stderr(), "the abort logged")
    # faulthandler's traceback of the stuck thread: the handler's sleep.
    traceback = child.stderr().partition("Fatal Python error: Aborted")[2]
    assert re.search(r'_workers_child\.py", line \d+ in handle', traceback)


@pytest.mark.parametrize("kind", ["threading", "forking"])
def test_a_worker_whose_loop_turns_outlives_worker_timeout(server, kind):
    # Requests in threads or children leave the loop free: however long
    # they take, an idle or busy worker keeps beating.
    child = server(kind=kind, workers=2, worker_timeout=0.5,
                   poll_interval=None)
    pids = set(distinct_workers(child, 2))
    with child.connect() as slow:
        slow.sendall(b"slow 2\n")
        started = read_line(slow)
        assert read_line(slow) == started.replace("started", "done")
    assert worker_pids(child.pid) == pids
    assert "has not turned" not in child.stderr()


@pytest.mark.parametrize("timeout", [0, -1, "5", True, float("nan")])
def test_worker_timeout_must_be_a_positive_number(timeout):
    with fastsock.TCPServer(("127.0.0.1", 0),
                            fastsock.StreamRequestHandler) as server:
        server.workers = 2
        server.worker_timeout = timeout
        with pytest.raises(ValueError, match="worker_timeout"):
            server.serve_forever()


# A shared listener is watched with EPOLLEXCLUSIVE where the kernel has it.
EPOLLEXCLUSIVE = 1 << 28
requires_exclusive_wake = pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or not hasattr(select, "EPOLLEXCLUSIVE")
    or tuple(map(int, re.findall(r"\d+", os.uname().release)[:2])) < (4, 5),
    reason="needs EPOLLEXCLUSIVE (Linux 4.5 or later)")


def epoll_watches(pid, fd):
    """The event masks with which the epoll instances of process ``pid``
    watch its descriptor ``fd`` (/proc/PID/fdinfo)."""
    masks = []
    for name in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{name}") as info:
                lines = info.read().splitlines()
        except OSError:  # closed meanwhile
            continue
        for fields in map(str.split, lines):
            if fields[:1] == ["tfd:"] and int(fields[1]) == fd:
                masks.append(int(fields[3], 16))
    return masks


def wait_until_waiting_in_epoll(thread):
    """Return once ``thread`` (of this process) sleeps in an epoll wait;
    skip the test where /proc/self/task/TID/wchan never says so."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            with open(f"/proc/self/task/{thread.native_id}/wchan") as wchan:
                if "epoll" in wchan.read():
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.skip("cannot see a thread wait in epoll (wchan)")
        time.sleep(0.01)


@requires_exclusive_wake
@pytest.mark.parametrize("kind", ["threading", "plain"])
def test_workers_watch_the_shared_listener_exclusively(server, kind):
    child = server(kind=kind, workers=2)
    for pid in distinct_workers(child, 2):
        wait_until(lambda: epoll_watches(pid, child.fileno),
                   "the worker's loop watching the listener")
        masks = epoll_watches(pid, child.fileno)
        assert all(mask & EPOLLEXCLUSIVE for mask in masks), masks


class _Echo(fastsock.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())


@requires_exclusive_wake
def test_a_listener_of_its_own_is_not_watched_exclusively(engine):
    server = fastsock.TCPServer(("127.0.0.1", 0), _Echo)
    with serving(server):
        with connect(server) as sock:  # the loop runs
            sock.sendall(b"ping\n")
            assert sock.recv(100) == b"ping\n"
        masks = epoll_watches(os.getpid(), server.fileno())
        assert not any(mask & EPOLLEXCLUSIVE for mask in masks), masks


@requires_exclusive_wake
def test_a_wake_up_a_sibling_took_without_accepting_is_not_lost(engine):
    """A sibling that takes the exclusive wake-up for a connection and
    accepts nothing (it was stopping or pausing) leaves it to the others:
    a loop whose wait times out looks at the shared listener itself."""
    server = fastsock.TCPServer(("127.0.0.1", 0), _Echo)
    server._listener_shared = True
    # The sibling, first in the listener's wake-up order: registered first.
    sibling = select.epoll()
    woken = []
    waiter = threading.Thread(target=lambda: woken.append(
        sibling.poll(TIMEOUT)))
    try:
        sibling.register(server.fileno(),
                         select.EPOLLIN | select.EPOLLEXCLUSIVE)
        with serving(server, poll_interval=0.05):
            wait_until(lambda: len(epoll_watches(os.getpid(),
                                                 server.fileno())) == 2,
                       "the server's loop watching its listener")
            waiter.start()
            wait_until_waiting_in_epoll(waiter)
            with connect(server) as sock:
                sock.sendall(b"ping\n")
                assert sock.recv(100) == b"ping\n"
            waiter.join(TIMEOUT)
            assert woken and woken[0], "the sibling was not woken"
    finally:
        if waiter.is_alive():
            waiter.join(TIMEOUT)
        sibling.close()


def test_a_sequential_worker_busy_in_a_request_leaves_connections_to_others(
        server):
    """A worker stuck in a request takes no wake-up meant for new
    connections: another worker answers them.  With no poll interval, only
    a wake-up can make it answer (no timed-out wait looks at the listener)."""
    child = server(kind="plain", workers=2, poll_interval=None)
    workers = set(distinct_workers(child, 2))
    with child.connect() as held:
        held.sendall(b"hold\n")
        busy = int(read_line(held).split()[1])
        assert busy in workers
        for _ in range(6):
            assert child.ask_pid()[0] == (workers - {busy}).pop()
        held.sendall(b"\n")
        assert read_line(held) == f"done {busy}\n"


def test_a_threading_worker_publishes_the_requests_it_serves(server):
    """Fairness reads each worker's load on the board: what its pool is
    running.  (A pool made in the supervisor before the fork once
    published nowhere, and bursts piled up on one worker.)"""
    child = server(workers=2)
    socks = [child.connect() for _ in range(5)]
    try:
        pids = [pid_of(sock) for sock in socks]  # every one held
        for sock, pid in zip(socks, pids):
            answer_pid, load = map(int, ask(sock, "load").split())
            assert (answer_pid, load) == (pid, pids.count(pid))
    finally:
        for sock in socks:
            sock.close()


def open_at_once(child, count):
    """``count`` connections whose connects all start before any request:
    the burst waits in the listen queue as the workers wake."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            socks.append(sock)
            sock.setblocking(False)
            sock.connect_ex(child.address)
        for sock in socks:
            sock.settimeout(TIMEOUT)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


@pytest.mark.parametrize("burst", ["one after the other",
                                   "at once into warm pools"])
def test_fair_spread_of_keep_alive_connections(server, burst):
    """64 keep-alive connections over 4 workers: each holds 0.5 to 1.5
    times its share.  Warm pools hand a burst to idle threads at once (a
    rule that let a worker accept while every other was paused gave one
    worker up to 48 of these)."""
    workers, connections = 4, 64
    child = server(workers=workers)
    distinct_workers(child, workers)
    socks = []
    try:
        if burst == "one after the other":
            for _ in range(connections):
                sock = child.connect()
                sock.sendall(b"pid\n")
                socks.append(sock)
        else:
            warming = [child.connect() for _ in range(256)]
            try:
                for _ in range(20):
                    for sock in warming:
                        sock.sendall(b"pid\n")
                    for sock in warming:
                        read_line(sock)
            finally:
                for sock in warming:
                    sock.close()
            time.sleep(0.2)  # every one of those requests over
            socks = open_at_once(child, connections)
            for sock in socks:
                sock.sendall(b"pid\n")
        counts = {}
        for sock in socks:
            pid = int(read_line(sock).split()[0])
            counts[pid] = counts.get(pid, 0) + 1
    finally:
        for sock in socks:
            sock.close()
    fair = connections / workers
    assert len(counts) == workers, counts
    assert all(0.5 * fair <= n <= 1.5 * fair for n in counts.values()), counts


def test_no_fork_is_a_clear_error(monkeypatch):
    server = fastsock.TCPServer(("127.0.0.1", 0), fastsock.StreamRequestHandler)
    with server:
        server.workers = 2
        monkeypatch.delattr(os, "fork")
        with pytest.raises(RuntimeError, match="os.fork"):
            server.serve_forever()


def test_workers_must_be_a_positive_integer():
    with fastsock.TCPServer(("127.0.0.1", 0),
                            fastsock.StreamRequestHandler) as server:
        server.workers = 0
        with pytest.raises(ValueError, match="workers"):
            server.serve_forever()


# The command line.

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(port):
    with socket.create_connection(("127.0.0.1", port), TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return sock.recv(100)


def wait_for_workers(child, count):
    wait_until(lambda: len(worker_pids(child.pid)) == count, f"{count} workers")


@pytest.mark.parametrize("command", [
    ["-m", "fastsock", "run", "--workers", "2", "-m", "http.server"],
    ["-m", "fastsock.http", "--workers", "2"],
])
def test_command_line_file_server_with_workers(engine, tmp_path, command):
    port = free_port()
    child = Child([sys.executable, *command, "--bind", "127.0.0.1",
                   str(port)], engine, tmp_path)
    try:
        assert b"Serving HTTP" in child.line()
        wait_for_workers(child, 2)
        assert http_get(port).startswith(b"HTTP/1.0 200")
        child.proc.send_signal(signal.SIGTERM)
        assert child.wait() == 0
    finally:
        child.close()


XMLRPC_PROGRAM = """\
import os, sys
from xmlrpc.server import SimpleXMLRPCServer
with SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False) as server:
    server.register_function(os.getpid, "getpid")
    print(server.server_address[1], server.request_queue_size, flush=True)
    server.serve_forever()
print("returned", flush=True)
"""


def test_unmodified_xmlrpc_program_runs_with_workers(engine, tmp_path):
    import xmlrpc.client
    script = tmp_path / "app.py"
    script.write_text(XMLRPC_PROGRAM)
    child = Child([sys.executable, "-m", "fastsock", "run", "--workers", "3",
                   str(script)], engine, tmp_path)
    try:
        port, backlog = map(int, child.line().split())
        assert backlog >= 1024
        wait_for_workers(child, 3)
        proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}")
        pids = set()
        deadline = time.monotonic() + TIMEOUT
        while len(pids) < 3:
            assert time.monotonic() < deadline, pids
            pids.add(proxy.getpid())
        assert pids == worker_pids(child.pid)
        child.proc.send_signal(signal.SIGTERM)
        assert child.line() == b"returned\n"
        assert child.wait() == 0
    finally:
        child.close()


def test_the_supervisor_speaks_to_systemd_for_its_workers(engine, tmp_path,
                                                         monkeypatch):
    """NOTIFY_SOCKET set: READY=1 with the supervisor's pid once every
    worker is ready, RELOADING=1 then READY=1 around a SIGHUP restart,
    STOPPING=1 on SIGTERM; nothing from the workers themselves."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(path)
        notify.settimeout(TIMEOUT)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        child = ServerChild(engine, tmp_path, workers=2)
        try:
            ready = notify.recv(1024).decode().split("\n")
            assert ready == ["READY=1", f"MAINPID={child.pid}"]
            old = set(distinct_workers(child, 2))  # both ready before it
            os.kill(child.pid, signal.SIGHUP)
            assert notify.recv(1024).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
            assert notify.recv(1024) == b"READY=1"
            wait_until(lambda: not old & worker_pids(child.pid),
                       "the old workers gone")
            os.kill(child.pid, signal.SIGTERM)
            assert notify.recv(1024) == b"STOPPING=1"
            assert child.wait() == 0
            notify.settimeout(0.2)
            with pytest.raises(socket.timeout):
                notify.recv(1024)  # no worker sent its own READY=1
        finally:
            child.close()
