"""systemd socket activation and readiness, without libsystemd.

Socket activation (``sd_listen_fds(3)``): systemd, or
``systemd-socket-activate``, opens the listening sockets and starts the
service with them as descriptors 3, 4, ... and the environment variables
``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES``.  ``listen_fds()``
returns them as socket objects (family and type read from each
descriptor), and ``adopt(ServerClass, sock, RequestHandlerClass)`` builds
any fastsock server on one: the server's own ``server_bind()`` runs (so an
override that records the address, as http.server's does, still works),
but TCPServer's takes the socket instead of binding, ``server_activate()``
does not listen() again on a socket that listens already, and
``server_close()`` closes it without shutting it down, so systemd's copy
keeps accepting while the service restarts.

Readiness (``sd_notify(3)``): ``notify(*states)`` sends one datagram to
``NOTIFY_SOCKET`` (a path, or an abstract name written with a leading
``@``).  fastsock does it by itself wherever ``NOTIFY_SOCKET`` is set, as
gunicorn does:

- ``READY=1`` and ``MAINPID=`` once the process's first ``serve_forever()``
  starts (the socket listens already: connections queue from then on);
- ``STOPPING=1`` when ``serve_until_signal()`` (and so the command-line
  servers) begins a graceful stop;
- ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` while the loop turns: see
  ``_LoopNotifier``.

``notify_reloading()`` sends ``RELOADING=1`` with ``MONOTONIC_USEC``, for a
supervisor about to reload (``READY=1`` again when done).  Where
``NOTIFY_SOCKET`` is not set, ``serve_forever()`` pays one environment
look-up and nothing else.
"""

import os
import socket
import time

from . import _server

__all__ = ["listen_fds", "listen_fds_with_names", "adopt", "offer",
           "notify", "notify_reloading", "SD_LISTEN_FDS_START"]

SD_LISTEN_FDS_START = 3
_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def listen_fds_with_names(unset_environment=True):
    """The sockets passed by systemd, as ``[(name, socket), ...]``.

    Empty unless ``LISTEN_PID`` is this process.  The names come from
    ``LISTEN_FDNAMES`` ("unknown" where it gives none, as libsystemd
    says).  Each descriptor is made close-on-exec, so that programs this
    one starts do not inherit it, and with ``unset_environment`` the
    three variables are removed, so that children do not take them for
    theirs.  A descriptor that is not a socket raises OSError.
    """
    environ = os.environ
    try:
        pid, count = environ.get("LISTEN_PID"), environ.get("LISTEN_FDS")
        names = environ.get("LISTEN_FDNAMES")
    finally:
        if unset_environment:
            for name in _LISTEN_VARIABLES:
                environ.pop(name, None)
    try:
        if pid is None or count is None or int(pid) != os.getpid():
            return []
        count = int(count)
    except ValueError:
        return []
    names = names.split(":") if names else []
    if len(names) != count:
        names = ["unknown"] * count
    sockets = []
    for offset, name in enumerate(names):
        fd = SD_LISTEN_FDS_START + offset
        os.set_inheritable(fd, False)
        # The family, type and protocol are read from the descriptor.
        sockets.append((name, socket.socket(fileno=fd)))
    return sockets


def listen_fds(unset_environment=True):
    """The sockets passed by systemd, in order: see listen_fds_with_names."""
    return [sock for _, sock in listen_fds_with_names(unset_environment)]


def offer(sockets):
    """Make the next servers built in this process take ``sockets``
    instead of binding: each TCPServer (UDPServer, UnixStreamServer, ...)
    takes, in its ``server_bind()``, the first offered socket of its kind
    (the same type; IP for IP, whatever the version: the server takes the
    socket's family; Unix for Unix).  While sockets are offered, a server
    of another kind raises ValueError.  ``python -m fastsock run
    --systemd`` offers ``listen_fds()``."""
    _server._offered_sockets.extend(sockets)


def adopt(server_class, sock, RequestHandlerClass, *args, **kwargs):
    """``server_class(address, RequestHandlerClass, *args, **kwargs)`` on
    the listening socket ``sock`` rather than a new one.

    The address passed is the socket's; binding takes ``sock`` (see
    ``offer``).  Call it from one thread at a time.
    """
    offered = _server._offered_sockets
    offered.insert(0, sock)
    try:
        return server_class(sock.getsockname(), RequestHandlerClass,
                            *args, **kwargs)
    finally:
        if sock in offered:  # the server did not bind (bind_and_activate)
            offered.remove(sock)


def notify(*states):
    """Send ``states`` ("READY=1", "STATUS=...") to the service manager.

    Returns False when ``NOTIFY_SOCKET`` is not set (or names a socket
    kind other than a Unix one), True once sent; OSError if sending fails.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto("\n".join(states).encode(), address)
    return True


def notify_reloading():
    """Tell the service manager that a reload begins (systemd 253 and
    later); send ``READY=1`` when it is over."""
    return notify("RELOADING=1",
                  f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def notify_reloading_quietly():
    """notify_reloading() for fastsock's own use: never raises."""
    try:
        return notify_reloading()
    except OSError:
        return False


def _notify_quietly(*states):
    """notify(), for what fastsock sends by itself: a service manager that
    went away must not break the server."""
    try:
        return notify(*states)
    except OSError:
        return False


# The process that sent READY=1 (a forked child has not).
_ready_pid = None
# The process that sent STOPPING=1: a graceful stop says it once, whether
# serve_until_signal() or a workers supervisor (or both) see it first.
_stopping_pid = None


def _notify_stopping():
    """STOPPING=1, once per process; never raises."""
    global _stopping_pid
    if _stopping_pid != os.getpid():
        _stopping_pid = os.getpid()
        _notify_quietly("STOPPING=1")


def _watchdog_interval():
    """Half of WATCHDOG_USEC in seconds, or None when the watchdog is off
    (or meant for another process, WATCHDOG_PID)."""
    environ = os.environ
    try:
        usec = int(environ.get("WATCHDOG_USEC", "0"))
        pid = environ.get("WATCHDOG_PID")
        if pid is not None and int(pid) != os.getpid():
            return None
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


class _LoopNotifier:
    """What one ``serve_forever()`` tells the service manager; made only
    when ``NOTIFY_SOCKET`` is set.

    READY=1 goes out once per process, when its first loop starts.  The
    watchdog is fed from the loop itself, so that a loop stuck in a
    request (or dead) stops feeding it: for the loop's lifetime, every
    turn sends WATCHDOG=1 once half the interval has passed
    (fastsock._server._on_every_loop_turn), and the poll interval is cut
    to the watchdog's so that an idle loop turns often enough.
    """

    def __init__(self, server):
        self._server = server
        self._interval = None
        self._next = None
        self._stop_feeding = None

    def ready(self):
        """Send READY=1 (and MAINPID), once per process."""
        global _ready_pid
        if _ready_pid != os.getpid():
            _ready_pid = os.getpid()
            _notify_quietly("READY=1", f"MAINPID={os.getpid()}")

    def beat(self):
        """Send WATCHDOG=1 when half the watchdog's interval has passed;
        a loop calls it on every turn."""
        now = time.monotonic()
        if self._interval is not None and now >= self._next:
            self._next = now + self._interval
            _notify_quietly("WATCHDOG=1")

    def start(self, poll_interval, feed=True):
        """Send READY=1 if due and, with ``feed``, install the watchdog
        feeder on the server (a supervisor calls beat() itself); return
        the poll interval to use."""
        self.ready()
        self._interval = interval = _watchdog_interval()
        if interval is None:
            return poll_interval
        self._next = time.monotonic()
        if feed:
            self._stop_feeding = _server._on_every_loop_turn(self._server,
                                                             self.beat)
        if poll_interval is None or poll_interval > interval:
            poll_interval = interval
        return poll_interval

    def stop(self):
        """Take the feeder off the server."""
        stop_feeding, self._stop_feeding = self._stop_feeding, None
        if stop_feeding is not None:
            stop_feeding()
