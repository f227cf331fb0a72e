"""fastsock: a faster, sturdier drop-in for the standard ``socketserver``.

``import fastsock as socketserver`` gives the same classes, hooks and
behaviour, run by a compiled engine when one was built (``fastsock.BACKEND``
is then ``"cython"``) or by the pure-Python one (``"python"``; forced with
the environment variable ``FASTSOCK_PURE=1``).

``fastsock.install()`` makes ``import socketserver`` itself give fastsock,
so that http.server, xmlrpc.server, logging.config and other modules
imported afterwards run on it; ``uninstall()`` and ``is_installed()`` go
with it.  ``fastsock.http`` offers http.server's servers on fastsock.

``fastsock.serve_until_signal(server, grace)`` serves until SIGTERM or
SIGINT, then lets running requests finish within ``grace`` seconds before
closing the server.
"""

from . import _backend
from ._server import *  # noqa: F401,F403
from ._server import __all__
from ._graceful import serve_until_signal
from ._install import install, is_installed, uninstall

__version__ = "0.1.0"


def __getattr__(name):
    if name == "BACKEND":
        return _backend.engine().NAME
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
