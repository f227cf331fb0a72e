# What a type checker sees of `import fastsock`: the socketserver classes
# (typed in _server.pyi), install() and friends, serve_until_signal(), and
# the name of the engine in use.  The runtime module serves BACKEND from a
# module __getattr__, which a checker would read as "any attribute exists";
# this stub names it instead.

from typing import Literal

from ._graceful import serve_until_signal as serve_until_signal
from ._install import install as install
from ._install import is_installed as is_installed
from ._install import uninstall as uninstall
from ._server import *
from ._server import __all__ as __all__

BACKEND: Literal["cython", "python"]
__version__: str
