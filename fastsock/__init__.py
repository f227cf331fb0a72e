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
from ._server import __all__  # noqa: F401

__version__ = "0.1.0"

# Imported on first use, to keep ``import fastsock`` as cheap as the
# standard library's ``import socketserver``.
_LAZY = {
    "install": "._install",
    "uninstall": "._install",
    "is_installed": "._install",
    "serve_until_signal": "._graceful",
}


def __getattr__(name):
    if name == "BACKEND":
        return _backend.engine().NAME
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | {"BACKEND"})
