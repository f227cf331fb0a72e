"""The serving options shared by ``python -m fastsock run`` and
``python -m fastsock.http`` (``python -m fastsock http``), in one table.

Each option is one row of ``OPTIONS``: its flag, what argparse needs to
read it, and the function that applies its value before the program runs.
``add_options(parser)`` puts them on an argparse parser (the file server's);
``split_options(args)`` takes them from the front of ``run``'s arguments,
which end at the script or ``-m module`` (what follows is the program's);
``apply(namespace)`` applies those that were given.
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


# flag, argparse keywords, what applies a given value
OPTIONS = [
    ("--workers", dict(type=_positive_int, metavar="N",
                       help="serve with N worker processes (prefork), "
                            "supervised by this one"),
     _apply_workers),
]


def add_options(parser):
    """Add the shared options to an argparse ``parser``."""
    for flag, keywords, _ in OPTIONS:
        parser.add_argument(flag, **keywords)


def split_options(args, prog):
    """Parse the shared options at the front of ``args``; return
    ``(namespace, rest)``.  Raises SystemExit (status 2) on a bad value."""
    flags = {flag for flag, _, _ in OPTIONS}
    taken = 0
    while taken < len(args):
        flag = args[taken].partition("=")[0]
        if flag not in flags:
            break
        taken += 1 if "=" in args[taken] else 2
    parser = argparse.ArgumentParser(prog=prog, add_help=False)
    add_options(parser)
    return parser.parse_args(args[:taken]), args[taken:]


def apply(namespace):
    """Apply every shared option given in ``namespace``."""
    for flag, _, apply_value in OPTIONS:
        value = getattr(namespace, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            apply_value(value)
