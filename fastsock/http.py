"""http.server's servers on fastsock, and ``python -m fastsock.http``.

``HTTPServer`` and ``ThreadingHTTPServer`` behave as http.server's do --
reusable address, ``server_name`` and ``server_port`` recorded on binding,
daemon request threads -- but run on fastsock's TCPServer and ThreadingMixIn.

The servers set TCP_NODELAY on their listening socket (fastsock's
``avoid_nagle_stalls``), which every connection inherits:
BaseHTTPRequestHandler writes the headers and the body of a response
separately, and Nagle's algorithm would hold the second write back for the
client's delayed ACK.  The request handlers are http.server's own, with
fastsock's connection set-up: ``rfile``/``wfile`` from the engine.  (A
program that calls ``fastsock.install()`` before importing http.server gets
the same from http.server itself.)

``python -m fastsock.http`` -- or ``python -m fastsock http`` -- serves files
like ``python -m http.server``, with the running interpreter's arguments
(``port``, ``--bind``, ``--directory``, ``--protocol`` from 3.11, ``--cgi``
while http.server has CGI), its dual-stack binding and its messages.
"""

import argparse
import http.server
import os
import socket
import sys

from ._server import StreamRequestHandler, TCPServer, ThreadingMixIn

__all__ = ["HTTPServer", "ThreadingHTTPServer",
           "BaseHTTPRequestHandler", "SimpleHTTPRequestHandler"]

_HAS_PROTOCOL_OPTION = sys.version_info >= (3, 11)
_HAS_CGI = hasattr(http.server, "CGIHTTPRequestHandler")


class HTTPServer(TCPServer):
    """http.server.HTTPServer on fastsock.

    Binding records ``server_name`` (the host's fully qualified name) and
    ``server_port``, which handlers use to build URLs and CGI environments.
    """

    allow_reuse_address = True  # restart at once on the same port

    def server_bind(self):
        super().server_bind()
        host, self.server_port = self.server_address[:2]
        self.server_name = socket.getfqdn(host)


class ThreadingHTTPServer(ThreadingMixIn, HTTPServer):
    """HTTPServer with a thread per request; the threads never block exit."""

    daemon_threads = True


class _FastsockConnection:
    """Mix-in: fastsock's ``setup()`` and ``finish()`` for a handler built
    on the standard StreamRequestHandler.

    First among the bases, it gives the handler the engine's ``rfile`` and
    ``wfile``.
    """

    setup = StreamRequestHandler.setup
    finish = StreamRequestHandler.finish


class BaseHTTPRequestHandler(_FastsockConnection,
                             http.server.BaseHTTPRequestHandler):
    """http.server.BaseHTTPRequestHandler on fastsock's connection set-up."""


class SimpleHTTPRequestHandler(_FastsockConnection,
                               http.server.SimpleHTTPRequestHandler):
    """http.server.SimpleHTTPRequestHandler on fastsock's connection set-up."""


if _HAS_CGI:
    class CGIHTTPRequestHandler(_FastsockConnection,
                                http.server.CGIHTTPRequestHandler):
        """http.server.CGIHTTPRequestHandler on fastsock's connection set-up."""

    __all__.append("CGIHTTPRequestHandler")


class _FileServer(ThreadingHTTPServer):
    """The command line's server: any address family, one directory.

    An IPv6 socket is made dual-stack, so that binding ``::`` (the default
    where the system prefers IPv6) also accepts IPv4 clients.
    """

    def __init__(self, family, address, handler_class, directory):
        self.address_family = family  # read when the socket is made
        self.directory = directory
        super().__init__(address, handler_class)

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            try:
                self.socket.setsockopt(socket.IPPROTO_IPV6,
                                       socket.IPV6_V6ONLY, 0)
            except (OSError, AttributeError):
                pass  # no dual stack here: serve IPv6 alone
        super().server_bind()

    def finish_request(self, request, client_address):
        self.RequestHandlerClass(request, client_address, self,
                                 directory=self.directory)


def _passive_address(host, port):
    """``(family, address)`` to listen on ``host`` (None: everywhere)."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    return family, address


def serve(handler_class=SimpleHTTPRequestHandler, port=8000, bind=None,
          directory=None, protocol="HTTP/1.0"):
    """Serve ``directory`` (default: the current one) until Ctrl-C.

    ``bind`` is a host name or address (None: all interfaces) and
    ``protocol`` the HTTP version the handler speaks.  Returns the exit
    status.
    """
    family, address = _passive_address(bind, port)
    handler = type(handler_class.__name__, (handler_class,),
                   {"protocol_version": protocol})
    with _FileServer(family, address, handler,
                     directory or os.getcwd()) as server:
        host, port = server.socket.getsockname()[:2]
        url_host = f"[{host}]" if ":" in host else host
        print(f"Serving HTTP on {host} port {port} "
              f"(http://{url_host}:{port}/) ...", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("\nKeyboard interrupt received, exiting.")
    return 0


def _argument_parser(prog):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve files over HTTP on fastsock, "
                    "like python -m http.server.")
    if _HAS_CGI:
        parser.add_argument("--cgi", action="store_true",
                            help="run CGI scripts found under cgi-bin/ and htbin/")
    parser.add_argument("-b", "--bind", metavar="ADDRESS",
                        help="listen on this host name or address "
                             "(default: every interface)")
    parser.add_argument("-d", "--directory", default=os.getcwd(),
                        help="the directory to serve "
                             "(default: the current one)")
    if _HAS_PROTOCOL_OPTION:
        parser.add_argument("-p", "--protocol", metavar="VERSION",
                            default="HTTP/1.0",
                            help="the HTTP version to answer with "
                                 "(default: %(default)s)")
    parser.add_argument("port", default=8000, type=int, nargs="?",
                        help="the port to listen on (default: %(default)s)")
    return parser


def main(argv=None, prog="python -m fastsock.http"):
    """The command line: ``argv`` as for ``python -m http.server``."""
    args = _argument_parser(prog).parse_args(argv)
    if getattr(args, "cgi", False):
        handler_class = CGIHTTPRequestHandler
    else:
        handler_class = SimpleHTTPRequestHandler
    return serve(handler_class, port=args.port, bind=args.bind,
                 directory=args.directory,
                 protocol=getattr(args, "protocol", "HTTP/1.0"))


if __name__ == "__main__":
    sys.exit(main())
