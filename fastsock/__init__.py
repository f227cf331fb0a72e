"""fastsock: a faster, sturdier drop-in for the standard ``socketserver``.

``import fastsock as socketserver`` gives the same classes, hooks and
behaviour, run by a compiled engine when one was built (``fastsock.BACKEND``
is then ``"cython"``) or by the pure-Python one (``"python"``; forced with
the environment variable ``FASTSOCK_PURE=1``).
"""

from . import _backend
from ._server import *  # noqa: F401,F403
from ._server import __all__

__version__ = "0.1.0"


def __getattr__(name):
    if name == "BACKEND":
        return _backend.engine().NAME
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
