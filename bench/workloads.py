"""What the load benchmark measures: workloads and the server classes each fits.

A workload fixes the transport, the request handler every server runs
(``servers.py``), the load generator's mode and the payload size.  Each
socketserver class it applies to comes with the concurrencies (connections,
or datagrams in flight) it makes sense at: a server that handles one
connection at a time is only measured with one keep-alive connection, since
a second one would wait for the first to close.
"""

from dataclasses import dataclass, field

CONCURRENCIES = (1, 16, 64, 256)
SERIAL = (1,)
# Forking servers run at most ``max_children`` (40) children: more
# keep-alive connections than that would starve.
FORKING_KEEPALIVE = (1, 16)


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    transport: str  # "tcp", "udp" or "unix"
    handler: str  # request handler in servers.py
    loadgen_mode: str  # mode of loadgen.c
    ceiling_mode: str  # mode of echo_server.c
    size: int  # bytes per request (HTTP: body bytes per answer)
    classes: dict = field(default_factory=dict)  # class name -> concurrencies
    # Whether the asyncio/uvloop reference servers speak this workload.
    asyncio_reference: bool = True

    @property
    def is_http(self):
        return self.loadgen_mode.startswith("http")

    @property
    def measures_memory(self):
        """Whether this workload measures memory, not throughput: the
        runner holds idle connections open (``Bench.hold_idle``)."""
        return self.loadgen_mode == "idle"

    def concurrencies(self):
        """Every concurrency some class of this workload runs at, ascending."""
        return sorted({c for concs in self.classes.values() for c in concs})


# Idle connections held open for the memory workload.
IDLE_CONNECTIONS = (256,)

WORKLOADS = [
    Workload(
        "tcp-cpr",
        "TCP, connection per request, 64 B line echo",
        "tcp",
        "one-line-echo",
        "echo-cpr",
        "line",
        64,
        {
            "TCPServer": CONCURRENCIES,
            "ThreadingTCPServer": CONCURRENCIES,
            "ForkingTCPServer": CONCURRENCIES,
        },
    ),
    Workload(
        "tcp-cpr-close",
        "TCP, connection per request, client closes first, 64 B line echo",
        "tcp",
        "line-echo",  # the handler reads lines until EOF
        "echo-cpr",  # one line, its echo, close
        "stream",
        64,
        {
            "TCPServer": CONCURRENCIES,
            "ThreadingTCPServer": CONCURRENCIES,
        },
    ),
    Workload(
        "tcp-keepalive",
        "TCP keep-alive ping-pong, 64 B line echo",
        "tcp",
        "line-echo",
        "echo",
        "stream",
        64,
        {
            "TCPServer": SERIAL,
            "ThreadingTCPServer": CONCURRENCIES,
            "ForkingTCPServer": FORKING_KEEPALIVE,
        },
    ),
    Workload(
        "tcp-keepalive-4k",
        "TCP keep-alive ping-pong, 4 KiB line echo",
        "tcp",
        "line-echo",
        "echo",
        "stream",
        4096,
        {"TCPServer": SERIAL, "ThreadingTCPServer": CONCURRENCIES},
    ),
    Workload(
        "udp",
        "UDP echo, 64 B datagrams",
        "udp",
        "datagram-echo",
        "udp",
        "udp",
        64,
        {"UDPServer": CONCURRENCIES, "ThreadingUDPServer": CONCURRENCIES},
    ),
    Workload(
        "unix-keepalive",
        "Unix stream keep-alive ping-pong, 64 B line echo",
        "unix",
        "line-echo",
        "echo",
        "stream",
        64,
        {"UnixStreamServer": SERIAL, "ThreadingUnixStreamServer": CONCURRENCIES},
    ),
    Workload(
        "http11",
        "http.server GET, HTTP/1.1 keep-alive, default settings",
        "tcp",
        "http11",
        "http11",
        "http",
        64,
        {"HTTPServer": SERIAL, "ThreadingHTTPServer": CONCURRENCIES},
        asyncio_reference=False,
    ),
    Workload(
        "http11-nodelay",
        "http.server GET, HTTP/1.1 keep-alive, disable_nagle_algorithm = True",
        "tcp",
        "http11-nodelay",
        "http11",
        "http",
        64,
        {"HTTPServer": SERIAL, "ThreadingHTTPServer": CONCURRENCIES},
        asyncio_reference=False,
    ),
    Workload(
        "http10",
        "http.server GET, HTTP/1.0 (connection per request)",
        "tcp",
        "http10",
        "http10",
        "http",
        64,
        {"HTTPServer": CONCURRENCIES, "ThreadingHTTPServer": CONCURRENCIES},
        asyncio_reference=False,
    ),
    Workload(
        "tcp-idle",
        "TCP, idle keep-alive connections (one 64 B echo each): server memory",
        "tcp",
        "line-echo",
        "idle",
        "stream",
        64,
        {"ThreadingTCPServer": IDLE_CONNECTIONS},
    ),
]

BY_NAME = {w.name: w for w in WORKLOADS}

# The multi-core section (``run.py --multicore``): fastsock with workers
# against one process, on these workloads, server class and concurrencies.
MULTICORE_CLASS = "ThreadingTCPServer"
MULTICORE = {
    "tcp-keepalive": (64, 256),
    "tcp-cpr": (64,),
    "tcp-cpr-close": (64,),
}
