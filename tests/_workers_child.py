"""A server with workers, run in a subprocess by tests/test_workers.py.

``python _workers_child.py CONFIG`` where CONFIG is a JSON object: ``kind``
("threading", "plain", "forking", "udp", "unix"), ``workers``, and
optionally ``max_requests``, ``graceful_timeout``, ``worker_cpu_affinity``,
``worker_timeout``,
``fail_init`` (worker_init raises), ``path`` (Unix socket), ``stdin_stop``
(a thread calls shutdown() when a line arrives on stdin) and
``report_leaks`` (after serve_forever() returns, print what the process
holds that it did not hold before), ``serve_until_signal`` (serve with
fastsock.serve_until_signal() instead, and print ``{"finished": ...}``) and
``poll_interval`` (serve_forever's; default 0.05, null: none),
``ignore_sighup`` (SIGHUP ignored before serving, as ``nohup`` leaves it)
and ``no_core_dump``.

It prints one JSON line ``{"address": ..., "pid": ..., "fileno": ...}``
(the listening socket's descriptor) once listening,
and ``{"returned": ..., ...}`` when serve_forever() returns.  Each request
line (or datagram) is a command:

- ``pid``: answers ``PID INDEX INIT_INDEX``;
- ``slow SECONDS``: answers ``started PID``, sleeps, answers ``done PID``;
- ``gil SECONDS``: the same as ``slow``, but sleeps holding the GIL;
- ``hold``: answers ``started PID``, waits for the next line, answers
  ``done PID``;
- ``cpus``: answers ``PID [CPUS]``, the CPUs it may run on;
- ``load``: answers ``PID LOAD``, the load the worker publishes on the
  supervisor's fairness board (-1: none).
"""

import json
import logging
import os
import signal
import socket
import sys
import threading
import time

import fastsock

logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(levelname)s %(name)s %(message)s")


class StreamHandler(fastsock.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            name, _, argument = line.decode().strip().partition(" ")
            if name == "pid":
                server = self.server
                self.wfile.write(f"{server.pid()} {server.worker_index} "
                                 f"{server.init_index}\n".encode())
            elif name == "cpus":
                cpus = sorted(os.sched_getaffinity(0))
                self.wfile.write(f"{os.getpid()} {cpus}\n".encode())
            elif name == "load":
                board = getattr(self.server, "_fair_board", None)
                load = -1 if board is None else board[0][board[2]]
                self.wfile.write(f"{os.getpid()} {load}\n".encode())
            elif name == "slow":
                self.wfile.write(f"started {os.getpid()}\n".encode())
                time.sleep(float(argument))
                self.wfile.write(f"done {os.getpid()}\n".encode())
            elif name == "gil":  # sleep holding the GIL: nothing else runs
                import ctypes
                self.wfile.write(f"started {os.getpid()}\n".encode())
                ctypes.PyDLL(None).usleep(int(float(argument) * 1e6))
                self.wfile.write(f"done {os.getpid()}\n".encode())
            elif name == "hold":
                self.wfile.write(f"started {os.getpid()}\n".encode())
                self.rfile.readline()
                self.wfile.write(f"done {os.getpid()}\n".encode())


class DatagramHandler(fastsock.DatagramRequestHandler):
    def handle(self):
        server = self.server
        self.wfile.write(f"{os.getpid()} {server.worker_index} "
                         f"{server.init_index}".encode())


class Recording:
    init_index = None
    fail_init = False

    def pid(self):
        """The worker's pid (a forking server's request runs in a child)."""
        return os.getppid() if hasattr(self, "active_children") else os.getpid()

    def worker_init(self, index):
        if self.fail_init:
            raise RuntimeError(f"worker_init of worker {index} fails")
        self.init_index = index


def server_class(kind):
    base = {"threading": fastsock.ThreadingTCPServer,
            "plain": fastsock.TCPServer,
            "forking": getattr(fastsock, "ForkingTCPServer", None),
            "udp": fastsock.ThreadingUDPServer,
            "unix": getattr(fastsock, "ThreadingUnixStreamServer", None)}[kind]
    return type("Server", (Recording, base),
                {"daemon_threads": True, "request_queue_size": 256})


def open_fds():
    return sorted(int(name) for name in os.listdir("/proc/self/fd"))


def main():
    config = json.loads(sys.argv[1])
    cls = server_class(config["kind"])
    handler = DatagramHandler if config["kind"] == "udp" else StreamHandler
    address = config.get("path") or ("127.0.0.1", 0)
    server = cls(address, handler)
    server.workers = config["workers"]
    for name in ("max_requests", "max_requests_jitter", "graceful_timeout",
                 "worker_cpu_affinity", "worker_timeout", "fail_init"):
        if name in config:
            setattr(server, name, config[name])
    if config.get("stdin_stop"):
        def stop_on_input():
            sys.stdin.readline()
            server.shutdown()
        stopper = threading.Thread(target=stop_on_input, daemon=True)
        stopper.start()
    if config.get("no_core_dump"):  # a worker may be sent SIGABRT
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if config.get("ignore_sighup"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    fds_before = open_fds()
    print(json.dumps({"address": server.server_address, "pid": os.getpid(),
                      "fileno": server.fileno()}), flush=True)
    if config.get("serve_until_signal"):
        finished = fastsock.serve_until_signal(server, 10.0,
                                               poll_interval=0.05)
        print(json.dumps({"finished": finished}), flush=True)
        return
    server.serve_forever(config.get("poll_interval", 0.05))
    report = {"returned": True}
    if config.get("report_leaks"):
        if config.get("stdin_stop"):
            stopper.join()  # it returns from shutdown() and ends
        try:
            os.waitpid(-1, os.WNOHANG)
            children = True
        except ChildProcessError:
            children = False
        report.update(new_fds=sorted(set(open_fds()) - set(fds_before)),
                      threads=threading.active_count() - 1,
                      children=children)
    print(json.dumps(report), flush=True)
    server.server_close()


if __name__ == "__main__":
    main()
