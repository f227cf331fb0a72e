"""The serving options shared by ``python -m fastsock run`` and
``python -m fastsock.http`` (``python -m fastsock http``), in one table.

Each option is one row of ``OPTIONS``: its flag, what argparse needs to
read it, and the function that applies its value before the program runs.
``add_options(parser)`` puts them on an argparse parser (the file server's);
``split_options(args)`` takes them from the front of ``run``'s arguments,
which end at the script or ``-m module`` (what follows is the program's);
``apply(namespace)`` applies those that were given.

Each applies to the program's servers through a class default of fastsock's
(or, for ``--systemd``, the sockets offered to ``TCPServer.server_bind``), so
a server that sets the attribute itself keeps its own value.
"""

import argparse

# A listen backlog fit for several workers draining one queue: the class
# default, 5, drops the connections of a burst (the kernel caps it at
# net.core.somaxconn).
WORKERS_BACKLOG = 1024


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {text!r}")
    return value


def _apply_workers(count):
    """Every server served from the main thread gets ``count`` workers
    unless it sets ``workers`` itself, and a deeper listen backlog."""
    from . import _server
    _server._command_line_workers = count
    if count > 1 and _server.TCPServer.request_queue_size < WORKERS_BACKLOG:
        _server.TCPServer.request_queue_size = WORKERS_BACKLOG


def _positive_seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive number of seconds, got {text!r}")
    return value


def _apply_worker_timeout(seconds):
    from . import _server
    _server.BaseServer.worker_timeout = seconds


def _apply_systemd(_):
    """Offer the sockets systemd passed to the program's servers: each
    server takes the first of its kind instead of binding."""
    from . import systemd
    sockets = systemd.listen_fds()
    if not sockets:
        raise SystemExit("--systemd: no socket was passed "
                         "(LISTEN_FDS, LISTEN_PID)")
    systemd.offer(sockets)


def _apply_proxy_protocol(_):
    from . import _server
    _server.TCPServer.proxy_protocol = True


def _apply_proxy_protocol_trusted(addresses):
    from . import _server
    _server.TCPServer.proxy_protocol_trusted = addresses


def _address_list(text):
    return [entry for entry in text.split(",") if entry.strip()]


# flag, argparse keywords, what applies a given value
OPTIONS = [
    ("--workers", dict(type=_positive_int, metavar="N",
                       help="serve with N worker processes (prefork), "
                            "supervised by this one"),
     _apply_workers),
    ("--worker-timeout", dict(type=_positive_seconds, metavar="SECONDS",
                              help="kill and replace a worker whose loop "
                                   "has not turned for SECONDS (stuck in a "
                                   "request)"),
     _apply_worker_timeout),
    ("--systemd", dict(action="store_true",
                       help="serve on the sockets systemd passed (socket "
                            "activation) instead of binding"),
     _apply_systemd),
    ("--proxy-protocol", dict(action="store_true",
                              help="expect a PROXY protocol header (v1 or "
                                   "v2) on every connection, from a "
                                   "trusted proxy"),
     _apply_proxy_protocol),
    ("--proxy-protocol-trusted", dict(
        metavar="ADDRESSES", type=_address_list,
        help="the proxies trusted to send it: addresses or networks, "
             "comma-separated (default: loopback and Unix peers)"),
     _apply_proxy_protocol_trusted),
]


def _takes_value(keywords):
    return keywords.get("action") != "store_true"


def describe():
    """The options as a usage text lists them, one per line."""
    lines = []
    for flag, keywords, _ in OPTIONS:
        name = flag
        if _takes_value(keywords):
            name += " " + keywords["metavar"]
        lines.append(f"  {name}\n      {keywords['help']}\n")
    return "".join(lines)


def add_options(parser):
    """Add the shared options to an argparse ``parser``."""
    for flag, keywords, _ in OPTIONS:
        parser.add_argument(flag, **keywords)


def split_options(args, prog):
    """Parse the shared options at the front of ``args``; return
    ``(namespace, rest)``.  Raises SystemExit (status 2) on a bad value."""
    takes_value = {flag: _takes_value(keywords)
                   for flag, keywords, _ in OPTIONS}
    taken = 0
    while taken < len(args):
        flag = args[taken].partition("=")[0]
        if flag not in takes_value:
            break
        with_value = takes_value[flag] and "=" not in args[taken]
        taken += 2 if with_value else 1
    parser = argparse.ArgumentParser(prog=prog, add_help=False)
    add_options(parser)
    return parser.parse_args(args[:taken]), args[taken:]


def apply(namespace):
    """Apply every shared option given in ``namespace``."""
    for flag, _, apply_value in OPTIONS:
        value = getattr(namespace, flag.lstrip("-").replace("-", "_"), None)
        if value is not None and value is not False:
            apply_value(value)
