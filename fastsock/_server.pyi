# Types of the server and handler classes.  They are the types a type checker
# knows for the standard library's socketserver, so that code checked against
# `socketserver` checks the same against `fastsock`; fastsock's own additions
# are marked as such.  tests/test_packaging.py holds the two side by side.

import ssl
import sys
from _socket import _Address, _RetAddress
from _typeshed import ReadableBuffer
from collections.abc import Callable, Iterable
from io import BufferedIOBase
from socket import socket as _Socket
from types import TracebackType
from typing import Any, ClassVar, type_check_only
from typing_extensions import Self, TypeAlias

from ._proxy import ProxyHeader
from ._workers import WorkerPool as _WorkerPool

__all__ = [
    "BaseServer",
    "TCPServer",
    "UDPServer",
    "ThreadingUDPServer",
    "ThreadingTCPServer",
    "BaseRequestHandler",
    "StreamRequestHandler",
    "DatagramRequestHandler",
    "ThreadingMixIn",
]
if sys.platform != "win32":
    __all__ += [
        "ForkingUDPServer",
        "ForkingTCPServer",
        "ForkingMixIn",
        "UnixStreamServer",
        "UnixDatagramServer",
        "ThreadingUnixStreamServer",
        "ThreadingUnixDatagramServer",
    ]
    if sys.version_info >= (3, 12):
        __all__ += ["ForkingUnixStreamServer", "ForkingUnixDatagramServer"]

# A stream server's request is the connection; a datagram server's is the
# datagram with the server's socket to answer on.
_Request: TypeAlias = _Socket | tuple[bytes, _Socket]
_IPv4Address: TypeAlias = tuple[str | bytes | bytearray, int]
_IPv6Address: TypeAlias = tuple[str | bytes | bytearray, int, int, int]
_UnixAddress: TypeAlias = str | ReadableBuffer

class BaseServer:
    server_address: _Address
    timeout: float | None
    # Called as RequestHandlerClass(request, client_address, server).
    RequestHandlerClass: Callable[[Any, _RetAddress, Self], BaseRequestHandler]
    def __init__(
        self,
        server_address: _Address,
        RequestHandlerClass: Callable[[Any, _RetAddress, Self], BaseRequestHandler],
    ) -> None: ...
    def server_activate(self) -> None: ...
    def serve_forever(self, poll_interval: float = 0.5) -> None: ...
    def shutdown(self) -> None: ...
    def service_actions(self) -> None: ...
    def handle_request(self) -> None: ...
    def handle_timeout(self) -> None: ...
    # Not defined here at run time: every concrete server supplies it.
    @type_check_only
    def get_request(self) -> tuple[Any, Any]: ...
    def verify_request(self, request: _Request, client_address: _RetAddress) -> bool: ...
    def process_request(self, request: _Request, client_address: _RetAddress) -> None: ...
    def finish_request(self, request: _Request, client_address: _RetAddress) -> None: ...
    def shutdown_request(self, request: _Request) -> None: ...
    def close_request(self, request: _Request) -> None: ...
    def handle_error(self, request: _Request, client_address: _RetAddress) -> None: ...
    def server_close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None: ...
    # fastsock's prefork serving (fastsock._supervisor).
    workers: int | None
    graceful_timeout: float
    max_requests: int | None
    max_requests_jitter: int
    worker_cpu_affinity: bool
    worker_timeout: float | None
    worker_index: int | None
    def worker_init(self, index: int) -> None: ...
    # fastsock's hooks, and what fastsock._backend's engines rely on.
    def _handle_request_noblock(self) -> None: ...
    def _prepare_to_serve(self) -> None: ...
    def _request_shutdown(self) -> None: ...
    def _serve_forever_ended(self) -> bool: ...
    def _accept_failed(self, exc: OSError) -> None: ...
    def _pause_accepting(self, until: float | None = None) -> None: ...
    def _resume_accepting(self) -> None: ...
    _listener_shared: bool

class TCPServer(BaseServer):
    address_family: int
    socket_type: int
    request_queue_size: int
    allow_reuse_address: bool
    avoid_nagle_stalls: bool
    if sys.version_info >= (3, 11):
        allow_reuse_port: bool
    socket: _Socket
    server_address: _IPv4Address | _IPv6Address
    # fastsock's addition: TLS, the handshake done where the request is
    # served, within the timeout (None: no limit).
    tls_context: ssl.SSLContext | None
    tls_handshake_timeout: float | None
    # fastsock's addition: the PROXY protocol (see the class).
    proxy_protocol: bool
    proxy_protocol_trusted: str | Iterable[str] | None
    proxy_protocol_timeout: float | None
    def __init__(
        self,
        server_address: _IPv4Address | _IPv6Address,
        RequestHandlerClass: Callable[[Any, _RetAddress, Self], BaseRequestHandler],
        bind_and_activate: bool = True,
    ) -> None: ...
    def server_bind(self) -> None: ...
    def fileno(self) -> int: ...
    def get_request(self) -> tuple[_Socket, _RetAddress]: ...

class UDPServer(TCPServer):
    max_packet_size: ClassVar[int]
    # The request is (datagram, server socket), not a connection.
    def get_request(self) -> tuple[tuple[bytes, _Socket], _RetAddress]: ...  # type: ignore[override]

class ThreadingMixIn:
    daemon_threads: bool
    block_on_close: bool
    # fastsock's additions: the bound on concurrent requests (None: none),
    # and how long an idle worker thread waits for work before exiting.
    max_threads: int | None
    worker_idle_timeout: float
    # The server's worker pool, made at the first request.
    _workers: _WorkerPool | None
    def process_request_thread(self, request: _Request, client_address: _RetAddress) -> None: ...
    def process_request(self, request: _Request, client_address: _RetAddress) -> None: ...
    def server_close(self) -> None: ...

class ThreadingTCPServer(ThreadingMixIn, TCPServer): ...
class ThreadingUDPServer(ThreadingMixIn, UDPServer): ...

if sys.platform != "win32":
    class ForkingMixIn:
        timeout: float | None
        active_children: set[int] | None
        max_children: int
        block_on_close: bool
        def collect_children(self, *, blocking: bool = False) -> None: ...
        def handle_timeout(self) -> None: ...
        def service_actions(self) -> None: ...
        def process_request(self, request: _Request, client_address: _RetAddress) -> None: ...
        def server_close(self) -> None: ...

    class ForkingTCPServer(ForkingMixIn, TCPServer): ...
    class ForkingUDPServer(ForkingMixIn, UDPServer): ...

    class UnixStreamServer(TCPServer):
        server_address: _UnixAddress  # type: ignore[assignment]
        def __init__(
            self,
            server_address: _UnixAddress,
            RequestHandlerClass: Callable[[Any, _RetAddress, Self], BaseRequestHandler],
            bind_and_activate: bool = True,
        ) -> None: ...

    class UnixDatagramServer(UDPServer):
        server_address: _UnixAddress  # type: ignore[assignment]
        def __init__(
            self,
            server_address: _UnixAddress,
            RequestHandlerClass: Callable[[Any, _RetAddress, Self], BaseRequestHandler],
            bind_and_activate: bool = True,
        ) -> None: ...

    class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer): ...
    class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer): ...

    if sys.version_info >= (3, 12):
        class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer): ...
        class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer): ...

class BaseRequestHandler:
    # Any rather than _Request: a handler knows which kind its server gives.
    request: Any
    client_address: _RetAddress
    server: BaseServer
    def __init__(self, request: _Request, client_address: _RetAddress, server: BaseServer) -> None: ...
    def setup(self) -> None: ...
    def handle(self) -> None: ...
    def finish(self) -> None: ...
    # fastsock's addition: the PROXY header and the proxy's address.
    @property
    def proxy_header(self) -> ProxyHeader | None: ...
    @property
    def proxy_address(self) -> _RetAddress | None: ...

class StreamRequestHandler(BaseRequestHandler):
    rbufsize: ClassVar[int]
    wbufsize: ClassVar[int]
    timeout: ClassVar[float | None]
    disable_nagle_algorithm: ClassVar[bool]
    # fastsock's addition: TCP_NODELAY on TCP connections (see the class).
    connection: Any
    rfile: BufferedIOBase
    wfile: BufferedIOBase

class DatagramRequestHandler(BaseRequestHandler):
    packet: bytes
    socket: _Socket
    rfile: BufferedIOBase
    wfile: BufferedIOBase
