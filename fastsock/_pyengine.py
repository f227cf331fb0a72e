"""The pure-Python engine: the reference for what the compiled one does.

It waits on the listening socket and on a wake-up socket pair, so that
``shutdown()`` ends the loop as soon as the current request is done.  The
wait is poll() where there is one, else select(): with two descriptors,
poll() is one syscall and no extra descriptor, and measured here it costs
the connection-per-request loop about 4 us less per request than an epoll
selector does.  Every request goes through the server's own hooks, starting
at ``_handle_request_noblock``.

A turn of the loop builds as few objects as it can: under ForkingMixIn each
memory page the parent writes after a fork costs it a copy-on-write fault
(measured: about 2.5 us each), so the wait hands poll()'s own list back
rather than building another with a comprehension, which before Python 3.12
also creates a function object per call.

A listener that the server declares shared with sibling processes
(``_listener_shared``, set in prefork workers) is waited on with epoll
instead, registered with ``EPOLLEXCLUSIVE`` where the platform has it
(Linux >= 4.5), so that a new connection wakes one idle sibling rather than
all of them: the same as the compiled engine does (its includes/poller.h
says what the kernel does, and why a timed-out wait looks at the listener
itself).  Elsewhere, poll() as for any listener: every sibling wakes.
"""

import errno
import io
import select
import socket
import threading
from time import monotonic

from ._workers import WorkerPool  # the engine's pool: see _backend

NAME = "python"


if hasattr(select, "poll"):
    class _Waiter:
        """Waits until some of a few descriptors are readable."""

        def __init__(self):
            self._poll = select.poll()
            # wait(ms): ``(fd, events)`` of the ready descriptors, after up
            # to ``ms`` milliseconds (None: forever).  poll() itself, so that
            # a loop turn runs no Python frame for it.
            self.wait = self._poll.poll

        def add(self, fd):
            self._poll.register(fd, select.POLLIN)

        def remove(self, fd):
            self._poll.unregister(fd)

        def close(self):
            pass
else:  # Windows
    class _Waiter:
        """Waits until some of a few descriptors are readable."""

        def __init__(self):
            self._fds = []

        def add(self, fd):
            self._fds.append(fd)

        def remove(self, fd):
            self._fds.remove(fd)

        def wait(self, ms):
            """``(fd, events)`` of the ready descriptors, after up to ``ms``
            milliseconds (None: forever)."""
            timeout = None if ms is None else ms / 1000
            ready = select.select(self._fds, [], [], timeout)[0]
            return [(fd, None) for fd in ready]

        def close(self):
            pass


if hasattr(select, "EPOLLEXCLUSIVE"):
    _EXCLUSIVE_INPUT = select.EPOLLIN | select.EPOLLEXCLUSIVE

    class _SharedListenerWaiter:
        """A _Waiter for a loop whose listener (``listener_fd``) sibling
        processes wait on too: epoll, the listener watched with
        EPOLLEXCLUSIVE (added, never modified: pausing removes it and adds
        it back), and put last in the wake-up order before this loop
        sleeps after the listener woke it, as includes/poller.h does (and
        says why its waits look without sleeping first meanwhile)."""

        def __init__(self, listener_fd):
            self._epoll = select.epoll()
            self._listener_fd = listener_fd
            self._exclusive = False  # the listener is watched exclusively
            self._rotate = False  # it woke this loop: put it last
            self._listener_ready = (listener_fd, select.EPOLLIN)
            # Looks at the listener alone, after a timed-out wait.
            self._peek = select.poll()
            self._peek.register(listener_fd, select.POLLIN)

        def add(self, fd):
            if fd == self._listener_fd:
                try:
                    self._epoll.register(fd, _EXCLUSIVE_INPUT)
                    self._exclusive = True
                    return
                except OSError as exc:  # refused: watched as any other
                    if exc.errno != errno.EINVAL:
                        raise
            self._epoll.register(fd, select.EPOLLIN)

        def remove(self, fd):
            if fd == self._listener_fd:
                self._exclusive = False
            self._epoll.unregister(fd)

        def wait(self, ms):
            ready = self._epoll.poll(0) if self._rotate and ms != 0 else None
            if not ready:
                if self._rotate:
                    self._rotate = False
                    if self._exclusive:
                        self._epoll.unregister(self._listener_fd)
                        self._epoll.register(self._listener_fd,
                                             _EXCLUSIVE_INPUT)
                ready = self._epoll.poll(-1 if ms is None else ms / 1000)
            if not ready and self._exclusive and self._peek.poll(0):
                # A wake-up a sibling took and did not act on.
                ready = [self._listener_ready]
            if self._exclusive and self._listener_ready in ready:
                self._rotate = True
            return ready

        def close(self):
            self._epoll.close()
else:
    _SharedListenerWaiter = None


class ServeLoop:
    """The loop of one ``serve_forever()`` call."""

    def __init__(self, server):
        self._server = server
        self._stopping = False
        # The loop's thread while it is between two waits; None while it
        # waits, where a signal handler may run inside the wait (PEP 475).
        self._loop_thread = None
        # None: accepting; a monotonic deadline, or inf for "until resumed".
        self._paused_until = None
        self._listen_fd = server.fileno()
        if server._listener_shared and _SharedListenerWaiter is not None:
            self._waiter = _SharedListenerWaiter(self._listen_fd)
        else:
            self._waiter = _Waiter()
        try:
            self._wake_r, self._wake_w = socket.socketpair()
        except BaseException:
            self._waiter.close()
            raise
        try:
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._waiter.add(self._wake_r.fileno())
            self._waiter.add(self._listen_fd)
        except BaseException:
            self.close()
            raise
        self._listening = True

    def run(self, poll_interval):
        server = self._server
        me = threading.get_ident()
        wait = self._waiter.wait
        wake_fd = self._wake_r.fileno()
        poll_ms = _ms(poll_interval)
        while not self._stopping:
            self._loop_thread = None  # before the pause is looked at
            if self._paused_until is None and self._listening:
                ready = wait(poll_ms)
            else:
                ready = wait(_ms(self._apply_pause(poll_interval)))
            self._loop_thread = me
            if self._stopping:
                break
            request_ready = False
            for fd, _ in ready:
                if fd == wake_fd:
                    self._drain_wakeups()
                else:
                    request_ready = True
            # A pause that arrived with the readiness still holds.
            if request_ready and self._paused_until is None:
                server._handle_request_noblock()
            server.service_actions()

    def _apply_pause(self, poll_interval):
        """(Un)register the listening socket; return the select timeout."""
        until = self._paused_until
        if until is not None and monotonic() >= until:
            self._paused_until = until = None
        if (until is None) != self._listening:
            if self._listening:
                self._waiter.remove(self._listen_fd)
            else:
                self._waiter.add(self._listen_fd)
            self._listening = not self._listening
        if until is None or until == float("inf"):
            return poll_interval
        left = max(0.0, until - monotonic())
        return left if poll_interval is None else min(left, poll_interval)

    def _drain_wakeups(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:  # BlockingIOError: drained
            pass

    def _wake(self):
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (a wake-up is pending anyway) or closed
            pass

    def stop(self):
        self._stopping = True
        self._wake()

    def pause_accepting(self, until=None):
        self._paused_until = float("inf") if until is None else until
        self._wake_unless_looping()

    def resume_accepting(self):
        self._paused_until = None
        self._wake_unless_looping()

    def _wake_unless_looping(self):
        # The loop's own thread between two waits needs no wake-up: it
        # looks at the pause before its next wait.
        if threading.get_ident() != self._loop_thread:
            self._wake()

    def close(self):
        self._wake_r.close()
        self._wake_w.close()
        self._waiter.close()


def _ms(timeout):
    """A timeout in seconds (None: forever) as _Waiter.wait() takes it."""
    return None if timeout is None else max(timeout * 1000, 0)


def wait_readable(fd, timeout):
    """Wait up to ``timeout`` seconds (None: forever) for ``fd``."""
    waiter = _Waiter()
    waiter.add(fd)
    return bool(waiter.wait(_ms(timeout)))


class SocketWriter(io.BufferedIOBase):
    """An unbuffered writer: every write() is a sendall() on the socket.

    ``wfile`` of a StreamRequestHandler with ``wbufsize == 0``.  It never
    closes the socket, and write() returns the number of bytes written.
    """

    def __init__(self, sock):
        self._sock = sock

    def writable(self):
        return True

    def write(self, b):
        self._sock.sendall(b)
        with memoryview(b) as view:
            return view.nbytes

    def fileno(self):
        return self._sock.fileno()


def stream_reader(sock, bufsize):
    return sock.makefile("rb", bufsize)


def stream_writer(sock, bufsize):
    if bufsize == 0:
        return SocketWriter(sock)
    return sock.makefile("wb", bufsize)
