"""Every hook runs when and where the standard library runs it.

A recording subclass overrides every server hook and every handler hook
(each records its name, then calls the inherited one).  The same recording
classes are built on fastsock and on the standard library's socketserver,
run through the same requests in the same test, and the sequences of calls
must be equal, and equal to the sequence spelled out here.  Calls are sorted
by who makes them: the test's thread, the serve_forever() thread, worker
threads (threading) and children (forking).
"""

import os
import socket
import socketserver
import threading

import pytest

import fastsock
from _server_helpers import (
    HAS_FORK, HAS_UNIX, HANDLER_HOOKS, SERVER_HOOKS, EventLog, ServerThread,
    connect, datagram_client, hook_sequences, recording, recv_until_eof,
    server_address, wait_until)  # noqa: F401  (sock_dir: fixture)

# Forking servers here fork from a process whose serve_forever() runs in a
# thread; Python 3.12+ warns about that, and the children only serve one
# request and _exit().
pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning")

CLASS_NAMES = ["TCPServer", "UDPServer", "ThreadingTCPServer",
               "ThreadingUDPServer"]
if HAS_UNIX:
    CLASS_NAMES += ["UnixStreamServer", "UnixDatagramServer"]
if HAS_FORK:
    CLASS_NAMES += ["ForkingTCPServer", "ForkingUDPServer"]

SCENARIOS = {
    # payloads of the two requests; a request starting with b"fail" makes
    # the handler raise
    "served": [b"one", b"two"],
    "handler_error": [b"fail", b"two"],
    # a rejected connection is closed unread; sending nothing keeps that
    # close a FIN rather than a reset
    "rejected": [b"", b""],
}


def _echo_handler(module, stream):
    base = module.StreamRequestHandler if stream else \
        module.DatagramRequestHandler

    class UpperEcho(base):
        def handle(self):
            data = self.rfile.read()
            if data.startswith(b"fail"):
                raise ValueError("handler failure the test asked for")
            self.wfile.write(data.upper())

    return UpperEcho


def _reject_all(self, request, client_address):
    return False


def run_recorded(module, class_name, scenario, driver, log_path, sock_dir):
    """Serve the scenario's two requests; return (hook sequences, replies)."""
    base = getattr(module, class_name)
    if scenario == "rejected":
        base = type(class_name, (base,), {"verify_request": _reject_all})
    stream = base.socket_type == socket.SOCK_STREAM
    payloads = SCENARIOS[scenario]
    with EventLog(log_path) as log:
        handler = recording(_echo_handler(module, stream), log, HANDLER_HOOKS)
        server = recording(base, log, SERVER_HOOKS)(
            server_address(base, sock_dir), handler)
        clients = []
        runner = None
        try:
            # Both requests are queued before the server looks: no loop turn
            # runs idle before them, whatever the timing.
            for payload in payloads:
                if stream:
                    client = connect(server)
                    clients.append(client)
                    client.sendall(payload)
                    client.shutdown(socket.SHUT_WR)
                else:
                    client = datagram_client(server, sock_dir)
                    clients.append(client)
                    client.sendto(payload, server.server_address)
            if driver == "serve_forever":
                runner = ServerThread(server).start()
            else:
                for _ in payloads:
                    server.handle_request()
            if scenario == "rejected" and not stream:
                replies = None  # nothing comes back; wait for the server
                wait_until(lambda: log.names().count("verify_request") ==
                           len(payloads), "both requests")
            elif stream:
                replies = [recv_until_eof(client) for client in clients]
            else:
                replies = [client.recv(65536) for client in clients]
            if runner is not None:
                runner.stop()
        finally:
            for client in clients:
                client.close()
            server.server_close()
        assert runner is None or runner.error is None, runner.error
        return hook_sequences(log.events(), threading.get_ident(),
                              runner and runner.ident), replies


def expected_sequences(class_name, scenario, driver):
    """The hook calls of ``run_recorded``, spelled out."""
    forking = class_name.startswith("Forking")
    threading_ = class_name.startswith("Threading")
    turn = []
    if driver == "serve_forever":
        turn = ["service_actions"] + (["collect_children"] if forking else [])
    in_handler = ["finish_request", "setup", "handle", "finish"]
    end = ["shutdown_request", "close_request"]
    dispatched, elsewhere = [], []
    for number in range(2):
        taken = ["get_request", "verify_request"]
        if scenario == "rejected":
            dispatched += taken + end + turn
            continue
        failed = ["handle_error"] if scenario == "handler_error" and \
            number == 0 else []
        if threading_:
            dispatched += taken + ["process_request"] + turn
            elsewhere.append(["process_request_thread"] + in_handler +
                             failed + end)
        elif forking:
            dispatched += taken + ["process_request", "close_request"] + turn
            elsewhere.append(in_handler + failed + end)
        else:
            dispatched += taken + ["process_request"] + in_handler + \
                failed + end + turn
    closing = ["server_close"] + (["collect_children"] if forking else [])
    if driver == "serve_forever":
        caller = ["server_bind", "server_activate"] + closing
        loop = dispatched
    else:
        caller = ["server_bind", "server_activate"] + dispatched + closing
        loop = []
    return {
        "caller": caller,
        "loop": loop,
        "threads": sorted(elsewhere) if threading_ else [],
        "children": sorted(elsewhere) if forking else [],
    }


def expected_replies(class_name, scenario):
    if scenario == "rejected":
        return None if "UDP" in class_name or "Datagram" in class_name \
            else [b"", b""]
    return [b"" if payload.startswith(b"fail") else payload.upper()
            for payload in SCENARIOS[scenario]]


@pytest.mark.parametrize("driver", ["serve_forever", "handle_request"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("class_name", CLASS_NAMES)
def test_hook_order_matches_stdlib(engine, no_leaks, tmp_path, sock_dir,
                                   class_name, scenario, driver):
    # each run binds its Unix socket (if any) in a directory of its own
    runs = {}
    for name, module in (("fastsock", fastsock), ("stdlib", socketserver)):
        run_dir = os.path.join(sock_dir, name)
        os.mkdir(run_dir)
        runs[name] = run_recorded(module, class_name, scenario, driver,
                                  tmp_path / f"{name}.log", run_dir)
    (ours, our_replies), (theirs, their_replies) = runs.values()
    assert ours == theirs
    assert ours == expected_sequences(class_name, scenario, driver)
    assert our_replies == their_replies == expected_replies(class_name,
                                                            scenario)


@pytest.mark.parametrize("module", [fastsock, socketserver],
                         ids=["fastsock", "stdlib"])
def test_handle_request_timeout_hook_order(engine, no_leaks, tmp_path, module):
    # handle_request() that times out calls handle_timeout() and nothing else
    # of the request path, and never service_actions().
    with EventLog(tmp_path / "log") as log:
        server_class = recording(module.TCPServer, log, SERVER_HOOKS)
        server = server_class(("127.0.0.1", 0), module.BaseRequestHandler)
        server.timeout = 0.01
        with server:
            assert server.handle_request() is None
        assert log.names() == ["server_bind", "server_activate",
                               "handle_timeout", "server_close"]


@pytest.mark.skipif(not HAS_FORK, reason="no os.fork() on this platform")
@pytest.mark.parametrize("module", [fastsock, socketserver],
                         ids=["fastsock", "stdlib"])
def test_forking_handle_timeout_reaps_children(engine, no_leaks, tmp_path,
                                               module):
    with EventLog(tmp_path / "log") as log:
        server_class = recording(module.ForkingTCPServer, log, SERVER_HOOKS)
        server = server_class(("127.0.0.1", 0), module.BaseRequestHandler)
        server.timeout = 0.01
        with server:
            server.handle_request()
        assert log.names() == ["server_bind", "server_activate",
                               "handle_timeout", "collect_children",
                               "server_close", "collect_children"]
