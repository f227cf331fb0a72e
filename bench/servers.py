"""The servers under test, one per process: ``python bench/servers.py ...``.

    python bench/servers.py MODULE WORKLOAD ADDRESS [--cls CLASS] [--workers N]

MODULE is ``socketserver`` or ``fastsock`` for the servers being compared,
or ``asyncio`` / ``uvloop`` for the reference servers.  ADDRESS is
``HOST:PORT`` (port 0 picks a free one) or, for Unix workloads, a path.

The socketserver-style servers run the same code whatever MODULE is: the
module is imported *as* ``socketserver`` (and put in ``sys.modules`` under
that name before ``http.server`` is imported), exactly as a user switching
with ``import fastsock as socketserver`` would.  The HTTP servers and
handler base classes come from ``http.server`` for the stdlib and from
``fastsock.http`` for fastsock (the same handler code on either, as a user
switching ``http.server`` for ``fastsock.http`` would have it), so fastsock's
rows measure its own handlers, with their faster request parsing.
fastsock's engine is chosen by the environment (``FASTSOCK_PURE=1`` forces
the pure one), and the engine actually running is reported so the benchmark
can check it measured what it claims.

``--workers N`` (fastsock only) serves with N worker processes
(``workers = N``), as the multi-core section of the benchmark does;
``--worker-cpu-affinity`` adds ``worker_cpu_affinity = True`` (each worker
pinned to one of the CPUs this process may use), ``--worker-timeout S``
``worker_timeout = S``.  ``--copies N`` (asyncio,
uvloop; TCP) runs N copies of the reference server in child processes, each
with its own ``SO_REUSEPORT`` listener on the same port and pinned to one of
the CPUs this process may use: the usual way to give an event loop every
core, against which the workers are compared.

By default the checkout's fastsock is imported (bench/ measures the
checkout it is in); with ``FASTSOCK_BENCH_INSTALLED=1`` in the environment,
the one installed for this interpreter (``run.py --installed-fastsock``).

Once listening, the process prints ``READY ADDRESS ENGINE`` on stdout and
serves until it is killed.
"""

import argparse
import importlib
import os
import socket
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
# Benchmark the checkout this file is in, not some installed copy, unless
# asked to measure the installed one.
if os.environ.get("FASTSOCK_BENCH_INSTALLED", "") in ("", "0"):
    sys.path.insert(1, os.path.dirname(BENCH_DIR))

from workloads import BY_NAME

# Every server gets the same listen backlog: the default of 5 would make the
# kernel drop connection attempts at high concurrency, and the benchmark
# would measure SYN retransmission timers instead of the server.
LISTEN_BACKLOG = 1024


def http_body(size):
    """The HTTP body every server sends, as the load generator expects it."""
    return bytes(ord("a") + i % 26 for i in range(size))


def http_server_module(module_name):
    """http.server, or what replaces it for ``module_name``."""
    if module_name == "fastsock":
        import fastsock.http

        return fastsock.http
    import http.server

    return http.server


def socketserver_handler(socketserver, httpserver, workload):
    """The request handler class for ``workload``, built on ``socketserver``
    or, for HTTP, on ``httpserver`` (http.server or its replacement)."""
    if workload.handler == "one-line-echo":

        class OneLineEcho(socketserver.StreamRequestHandler):
            """Echo one line; the server then closes the connection."""

            def handle(self):
                self.wfile.write(self.rfile.readline())

        return OneLineEcho

    if workload.handler == "line-echo":

        class LineEcho(socketserver.StreamRequestHandler):
            """Echo every line until the client closes."""

            def handle(self):
                for line in self.rfile:
                    self.wfile.write(line)

        return LineEcho

    if workload.handler == "datagram-echo":

        class DatagramEcho(socketserver.DatagramRequestHandler):
            """Send the datagram back."""

            def handle(self):
                self.wfile.write(self.rfile.read())

        return DatagramEcho

    body = http_body(workload.size)

    class Page(httpserver.BaseHTTPRequestHandler):
        """Answer GET with a small fixed page, as a static page would be."""

        protocol_version = "HTTP/1.0" if workload.handler == "http10" else "HTTP/1.1"
        disable_nagle_algorithm = workload.handler == "http11-nodelay"

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            pass  # one log line per request would measure the terminal

    return Page


def parse_address(workload, address):
    if workload.transport == "unix":
        return address
    host, port = address.rsplit(":", 1)
    return host, int(port)


def format_address(address):
    return address if isinstance(address, str) else f"{address[0]}:{address[1]}"


def serve_socketserver(
    module_name,
    workload,
    class_name,
    address,
    workers=None,
    worker_cpu_affinity=False,
    worker_timeout=None,
):
    socketserver = importlib.import_module(module_name)
    sys.modules["socketserver"] = socketserver
    httpserver = http_server_module(module_name)
    handler = socketserver_handler(socketserver, httpserver, workload)
    if workload.is_http:
        base = getattr(httpserver, class_name)
    else:
        base = getattr(socketserver, class_name)
    if not issubclass(base, socketserver.BaseServer):
        # http.server was imported before the swap: it would measure the stdlib.
        raise RuntimeError(f"{class_name} is not built on {module_name}")
    attributes = {"request_queue_size": LISTEN_BACKLOG}
    if workers:
        attributes["workers"] = workers
    if worker_cpu_affinity:
        if not hasattr(base, "worker_cpu_affinity"):
            raise RuntimeError(f"{module_name} has no worker_cpu_affinity")
        attributes["worker_cpu_affinity"] = True
    if worker_timeout is not None:
        attributes["worker_timeout"] = worker_timeout
    server_class = type(class_name, (base,), attributes)
    server = server_class(parse_address(workload, address), handler)
    engine = getattr(socketserver, "BACKEND", "stdlib")
    print("READY", format_address(server.server_address), engine, flush=True)
    server.serve_forever()


def serve_asyncio(module_name, workload, address, reuse_port=False, ready=None):
    """Serve with asyncio or uvloop; ``ready(address)`` is called once
    listening (default: print the READY line)."""
    import asyncio

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    class OneLineEcho(Echo):
        buffer = b""

        def data_received(self, data):
            self.buffer += data
            line, newline, _ = self.buffer.partition(b"\n")
            if newline:
                self.transport.write(line + newline)
                self.transport.close()

    class DatagramEcho(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data, addr)

    if module_name == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    target = parse_address(workload, address)
    if workload.transport == "udp":
        transport, _ = loop.run_until_complete(
            loop.create_datagram_endpoint(DatagramEcho, local_addr=target)
        )
        bound = transport.get_extra_info("sockname")
    else:
        protocol = OneLineEcho if workload.handler == "one-line-echo" else Echo
        if workload.transport == "unix":
            start = loop.create_unix_server(protocol, target, backlog=LISTEN_BACKLOG)
        else:
            start = loop.create_server(
                protocol,
                *target,
                backlog=LISTEN_BACKLOG,
                reuse_port=reuse_port or None,
            )
        server = loop.run_until_complete(start)
        bound = server.sockets[0].getsockname()
    if ready is None:
        print("READY", format_address(bound), module_name, flush=True)
    else:
        ready(bound)
    loop.run_forever()


def serve_asyncio_copies(module_name, workload, address, copies):
    """``copies`` reference servers in child processes sharing one port
    with SO_REUSEPORT, child i pinned to the i-th CPU this process may use
    (modulo their number).  This process prints READY once every child
    listens, then waits; it exits when any child does."""
    if workload.transport != "tcp":
        raise RuntimeError("--copies serves TCP workloads only")
    host, port = parse_address(workload, address)
    # Bound, never listening: it only reserves the port for the children.
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, port))
    port = holder.getsockname()[1]
    cpus = sorted(os.sched_getaffinity(0))
    ready_r, ready_w = os.pipe()
    for index in range(copies):
        if os.fork() == 0:
            try:
                os.close(ready_r)
                holder.close()
                os.sched_setaffinity(0, {cpus[index % len(cpus)]})
                serve_asyncio(
                    module_name,
                    workload,
                    f"{host}:{port}",
                    reuse_port=True,
                    ready=lambda _: os.write(ready_w, b"+"),
                )
            finally:
                os._exit(1)
    os.close(ready_w)
    listening = 0
    while listening < copies:
        got = os.read(ready_r, copies)
        if not got:
            raise RuntimeError("a copy exited before listening")
        listening += len(got)
    print("READY", f"{host}:{port}", module_name, flush=True)
    pid, status = os.wait()
    raise SystemExit(f"copy {pid} exited (wait status {status})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "module", choices=["socketserver", "fastsock", "asyncio", "uvloop"]
    )
    parser.add_argument("workload", choices=sorted(BY_NAME))
    parser.add_argument("address")
    parser.add_argument("--cls", help="server class (socketserver-style modules)")
    parser.add_argument("--workers", type=int, help="worker processes (fastsock)")
    parser.add_argument(
        "--worker-cpu-affinity",
        action="store_true",
        help="pin each worker to a CPU (fastsock, with --workers)",
    )
    parser.add_argument(
        "--worker-timeout",
        type=float,
        help="kill a worker whose loop is stuck this long (fastsock, with --workers)",
    )
    parser.add_argument(
        "--copies",
        type=int,
        help="processes with SO_REUSEPORT listeners (asyncio, uvloop)",
    )
    args = parser.parse_args(argv)
    workload = BY_NAME[args.workload]
    if args.module in ("asyncio", "uvloop"):
        if args.copies and args.copies > 1:
            serve_asyncio_copies(args.module, workload, args.address, args.copies)
        else:
            serve_asyncio(args.module, workload, args.address)
    else:
        if args.cls not in workload.classes:
            parser.error(f"--cls must be one of {', '.join(workload.classes)}")
        if args.workers and args.module != "fastsock":
            parser.error("--workers needs the fastsock module")
        serve_socketserver(
            args.module,
            workload,
            args.cls,
            args.address,
            args.workers,
            args.worker_cpu_affinity,
            args.worker_timeout,
        )


if __name__ == "__main__":
    main()
