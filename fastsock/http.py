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
that from http.server itself.)

Their requests are parsed faster, with the same results: a plain header
block (one ``Name: value`` per line, printable ASCII) becomes the very
HTTPMessage the email parser would have made, without it; anything else
goes through http.server's and http.client's own code.  The Date header is
formatted once a second.  Both sit inside the usual hooks
(``parse_request``, ``date_time_string``), so a subclass overriding them,
or any other hook, sees them called as http.server calls them.

``python -m fastsock.http`` -- or ``python -m fastsock http`` -- serves files
like ``python -m http.server``, with the running interpreter's arguments
(``port``, ``--bind``, ``--directory``, ``--protocol`` from 3.11, ``--cgi``
while http.server has CGI), its dual-stack binding and its messages, and
fastsock's serving options (``--workers N``: one worker process per core,
say; SIGTERM then stops them gracefully and the command exits 0).
"""

import argparse
import email.parser
import http.client
import http.server
import os
import re
import signal
import socket
import sys
import time
import types

from . import _cli
from ._graceful import serve_until_signal
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
    proxy_header = StreamRequestHandler.proxy_header
    proxy_address = StreamRequestHandler.proxy_address
    _proxied_connection = StreamRequestHandler._proxied_connection


# A header block the email parser reads as plain "Name: value" fields, and
# nothing else: field names of the characters its header pattern accepts,
# printable ASCII values (no byte that str.splitlines or the email parser's
# line splitting would break a line at), no continuation lines, no "From "
# envelope line, ended by a blank line.
_PLAIN_HEADER_BLOCK = re.compile(rb"(?:[!-9;-~]+:[\t -~]*\r?\n)*\r?\n")
# A field of such a block, as the compat32 policy splits it: the value loses
# its leading blanks and its line end.
_PLAIN_FIELD = re.compile(r"([^:\r\n]+):[ \t]*([^\r\n]*)")


def _parse_headers(fp, _class=http.client.HTTPMessage):
    """http.client.parse_headers, without the email parser where possible.

    The lines are read by http.client's own reader, with its limits and
    errors.  A plain block (see ``_PLAIN_HEADER_BLOCK``) for the default
    HTTPMessage becomes the message the email parser would have built: the
    fields in order, an empty payload, no defects.  A Content-Type that may
    name a multipart or message body makes the email parser look further
    (and note defects), so such a block, any other block and any other
    message class go through the email parser as http.client does.
    """
    lines = http.client._read_headers(fp)
    block = b"".join(lines)
    if (_class is http.client.HTTPMessage
            and _PLAIN_HEADER_BLOCK.fullmatch(block)):
        lowered = block.lower()
        if not (b"content-type" in lowered
                and (b"multipart" in lowered or b"message" in lowered)):
            message = _class()
            message._headers = _PLAIN_FIELD.findall(block.decode("ascii"))
            message._payload = ""
            return message
    return email.parser.Parser(_class=_class).parsestr(
        block.decode("iso-8859-1"))


class _Delegate:
    """An object answering as ``target`` does, but for ``overrides``."""

    def __init__(self, target, **overrides):
        self._target = target
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._target, name)


def _reading_fast_headers(function):
    """http.server's own ``function``, calling ``_parse_headers`` where it
    calls http.client.parse_headers.

    Running the interpreter's own code keeps every check and error response
    of the running Python version; only the name ``http`` is looked up in a
    copy of http.server's namespace where ``http.client.parse_headers`` is
    the fast parser.
    """
    namespace = dict(function.__globals__)
    namespace["http"] = _Delegate(
        http, client=_Delegate(http.client, parse_headers=_parse_headers))
    fast = types.FunctionType(function.__code__, namespace, function.__name__,
                              function.__defaults__, function.__closure__)
    fast.__qualname__ = function.__qualname__
    fast.__doc__ = function.__doc__
    return fast


# (second, Date header) of the latest response; one tuple, replaced whole,
# so request threads read a consistent pair without a lock.
_date_cache = (None, None)


class _FastRequest:
    """Mix-in: http.server's request parsing and Date header, faster.

    The methods are the same hooks as http.server's, called from the same
    places, so a subclass overriding one still has it called.
    """

    # http.client's line reader is private: where it is gone, parsing stays
    # http.server's own.
    if hasattr(http.client, "_read_headers"):
        parse_request = _reading_fast_headers(
            http.server.BaseHTTPRequestHandler.parse_request)

    def date_time_string(self, timestamp=None):
        """The current time (or ``timestamp``) formatted for a header.

        The current time's string is made once a second.  Within a
        microsecond of the next second it is made afresh, as the email
        formatter rounds to microseconds and may reach that second; so is
        a time before 1970, which int() rounds up.
        """
        global _date_cache
        if timestamp is not None:
            return super().date_time_string(timestamp)
        now = time.time()
        second = int(now)
        if not 0 <= now - second < 0.999999:
            return super().date_time_string(now)
        cached_second, text = _date_cache
        if cached_second != second:
            text = super().date_time_string(now)
            _date_cache = (second, text)
        return text


class BaseHTTPRequestHandler(_FastsockConnection, _FastRequest,
                             http.server.BaseHTTPRequestHandler):
    """http.server.BaseHTTPRequestHandler on fastsock's connection set-up,
    with the faster request parsing."""


class SimpleHTTPRequestHandler(_FastsockConnection, _FastRequest,
                               http.server.SimpleHTTPRequestHandler):
    """http.server.SimpleHTTPRequestHandler on fastsock's connection set-up,
    with the faster request parsing."""


if _HAS_CGI:
    class CGIHTTPRequestHandler(_FastsockConnection, _FastRequest,
                                http.server.CGIHTTPRequestHandler):
        """http.server.CGIHTTPRequestHandler on fastsock's connection
        set-up, with the faster request parsing."""

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


class _ServerDirectory:
    """Mix-in: the handler serves its server's ``directory``.  (The
    directory is not passed by overriding finish_request(), which would
    skip TCPServer's: the PROXY header and the TLS handshake.)"""

    def __init__(self, request, client_address, server):
        super().__init__(request, client_address, server,
                         directory=server.directory)


def _passive_address(host, port):
    """``(family, address)`` to listen on ``host`` (None: everywhere)."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    return family, address


def serve(handler_class=SimpleHTTPRequestHandler, port=8000, bind=None,
          directory=None, protocol="HTTP/1.0"):
    """Serve ``directory`` (default: the current one) until Ctrl-C or
    SIGTERM (a graceful stop: running requests get 30 s).

    ``bind`` is a host name or address (None: all interfaces) and
    ``protocol`` the HTTP version the handler speaks.  The command line's
    serving options (``--workers``, ``--systemd``, ``--proxy-protocol``:
    fastsock._cli) are applied before, as class defaults.  Returns the
    exit status.
    """
    family, address = _passive_address(bind, port)
    handler = type(handler_class.__name__, (_ServerDirectory, handler_class),
                   {"protocol_version": protocol})
    with _FileServer(family, address, handler,
                     directory or os.getcwd()) as server:
        host, port = server.socket.getsockname()[:2]
        url_host = f"[{host}]" if ":" in host else host
        print(f"Serving HTTP on {host} port {port} "
              f"(http://{url_host}:{port}/) ...", flush=True)
        try:
            serve_until_signal(server, signals=_STOP_SIGNALS)
        except KeyboardInterrupt:
            print("\nKeyboard interrupt received, exiting.")
    return 0


# A graceful stop on SIGTERM; Ctrl-C stays http.server's KeyboardInterrupt.
_STOP_SIGNALS = (signal.SIGTERM,) if hasattr(signal, "SIGTERM") else ()


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
    _cli.add_options(parser)
    return parser


def main(argv=None, prog="python -m fastsock.http"):
    """The command line: ``argv`` as for ``python -m http.server``."""
    args = _argument_parser(prog).parse_args(argv)
    _cli.apply(args)
    if getattr(args, "cgi", False):
        handler_class = CGIHTTPRequestHandler
    else:
        handler_class = SimpleHTTPRequestHandler
    return serve(handler_class, port=args.port, bind=args.bind,
                 directory=args.directory,
                 protocol=getattr(args, "protocol", "HTTP/1.0"))


if __name__ == "__main__":
    sys.exit(main())
