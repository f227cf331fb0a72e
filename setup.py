"""Build the compiled engine from src/fastsock/*.pyx.

Every ``src/fastsock/NAME.pyx`` becomes the extension ``fastsock.NAME``.
``fastsock/_workers.py`` is also compiled as it is (Cython's pure-Python
mode, typed by ``fastsock/_cworkers.pxd``) into ``fastsock._cworkers``,
the compiled engine's worker pool: one source for both engines' pools.
The build never fails for want of the compiled engine: with
``FASTSOCK_NO_EXTENSIONS=1``, on Windows or free-threaded CPython, without
Cython, or when compiling fails, the package installs with the pure-Python
engine alone and says so.
"""

import glob
import os
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join("src", "fastsock")
# Pure-Python modules also compiled, each as a module of its own.
PURE_MODE = {"_cworkers": os.path.join("fastsock", "_workers.py")}


def _warn(message):
    bar = "*" * 72
    print(f"\n{bar}\nfastsock: {message}\n"
          "fastsock: installing the pure-Python engine only.\n"
          f"{bar}\n", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """build_ext that degrades to the pure engine instead of failing."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers, ...
            _warn(f"the compiled engine could not be built ({exc})")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            _warn(f"{ext.name} could not be built ({exc})")


def extensions():
    if os.environ.get("FASTSOCK_NO_EXTENSIONS", "") not in ("", "0"):
        _warn("FASTSOCK_NO_EXTENSIONS is set")
        return []
    if sys.platform == "win32":
        # The engine waits with epoll/kqueue/poll() on POSIX descriptors.
        _warn("the compiled engine is not built on Windows")
        return []
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        # The compiled modules share state between threads that the GIL
        # keeps safe; without it, it has not been reviewed (README).
        _warn("the compiled engine is not built for free-threaded CPython")
        return []
    modules = {os.path.splitext(os.path.basename(path))[0]:
               os.path.relpath(path, HERE)
               for path in glob.glob(os.path.join(HERE, SRC, "*.pyx"))}
    modules.update(PURE_MODE)
    only = os.environ.get("FASTSOCK_BUILD_ONLY")  # e.g. "_cio": one module
    if only:
        modules = {name: source for name, source in modules.items()
                   if name == only}
    if not modules:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _warn("Cython is not installed")
        return []
    from setuptools import Extension

    exts = [
        Extension(
            "fastsock." + name,
            [source],
            include_dirs=[os.path.join(SRC, "includes")],
        )
        for name, source in sorted(modules.items())
    ]
    try:
        return cythonize(
            exts,
            include_path=[SRC],
            # The C of a .py file goes here, not beside it in the package.
            build_dir=os.path.join("build", "cython"),
            compiler_directives={
                "language_level": 3,
                "boundscheck": False,
                "wraparound": False,
                "cdivision": True,
                "embedsignature": True,
            },
            quiet=True,
        )
    except Exception as exc:  # e.g. a Cython too old for this code
        _warn(f"Cython could not translate the sources ({exc})")
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
