"""``python -m fastsock``: run a program, or a file server, on fastsock.

    python -m fastsock run [--workers N] [--systemd] script.py [args...]
    python -m fastsock run [--workers N] [--systemd] -m module [args...]
    python -m fastsock http [port] [-b ADDRESS] [-d DIRECTORY] ...

``run`` calls ``fastsock.install()`` and then runs the script or module as
Python would have run it directly: as ``__main__``, with the same
``sys.argv``, the same ``sys.path[0]`` and the same exit status.  Every
``import socketserver`` in it -- or in http.server, xmlrpc.server and the
rest, which it imports afterwards -- gives fastsock.  The serving options
before the script (fastsock._cli) apply to its servers: ``--workers N``
serves every server that the program serves with ``serve_forever()`` from
its main thread with N worker processes, unless it sets ``workers`` itself;
``--systemd`` makes its servers take the sockets systemd passed instead of
binding; ``--proxy-protocol`` makes its stream servers expect a PROXY
header on every connection.

``http`` is ``python -m fastsock.http``: http.server's file server on
fastsock.
"""

import importlib.util
import os
import runpy
import sys
import zipfile

from . import _cli
from ._install import install

USAGE = """\
usage: python -m fastsock run [options] script.py [args...]
       python -m fastsock run [options] -m module [args...]
       python -m fastsock http [-h] [port] [options...]

  run    run a script or module with fastsock installed as socketserver
  http   serve files over HTTP, like python -m http.server

options of run, before the script (http takes them too):
""" + _cli.describe()


def _usage_error(message):
    print(f"{USAGE}\npython -m fastsock: error: {message}", file=sys.stderr)
    return 2


def run_script(path, args):
    """Run the file, directory or zip file at ``path`` as ``__main__``."""
    if not os.path.exists(path):
        print(f"python -m fastsock run: can't open file {path!r}: "
              f"no such file or directory", file=sys.stderr)
        return 2
    install()
    sys.argv = [path, *args]
    # Python puts a script's directory (symbolic links resolved) first on
    # the path, where `python -m fastsock` put the working directory; a
    # directory or zip file is put there by run_path() itself.
    if not getattr(sys.flags, "safe_path", False):
        if os.path.isfile(path) and not zipfile.is_zipfile(path):
            sys.path[0] = os.path.dirname(os.path.realpath(path))
        else:
            del sys.path[0]
    runpy.run_path(path, run_name="__main__")
    return 0


def run_module(name, args):
    """Run module ``name`` as ``__main__``, as ``python -m name`` does."""
    install()
    try:
        found = importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is missing
        found = False
    if not found:
        print(f"python -m fastsock run: no module named {name!r}",
              file=sys.stderr)
        return 1
    # sys.path[0] is already the working directory, as `python -m` sets it;
    # run_module() puts the module's file in sys.argv[0].
    sys.argv = [name, *args]
    runpy.run_module(name, run_name="__main__", alter_sys=True)
    return 0


def _run(args):
    if not args:
        return _usage_error("run needs a script or -m module")
    if args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    options, args = _cli.split_options(args, "python -m fastsock run")
    _cli.apply(options)
    if not args:
        return _usage_error("run needs a script or -m module")
    first, rest = args[0], args[1:]
    if first in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    if first == "-m":
        if not rest:
            return _usage_error("-m needs a module name")
        return run_module(rest[0], rest[1:])
    if first.startswith("-m"):  # -mmodule, as python accepts
        return run_module(first[2:], rest)
    if first.startswith("-"):
        return _usage_error(f"unknown option {first}")
    return run_script(first, rest)


def main(argv=None):
    """The command line; ``argv`` defaults to ``sys.argv[1:]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        return _usage_error("a command is required")
    command, args = argv[0], argv[1:]
    if command == "run":
        return _run(args)
    if command == "http":
        from . import http
        return http.main(args, prog="python -m fastsock http")
    if command in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    return _usage_error(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.exit(main())
