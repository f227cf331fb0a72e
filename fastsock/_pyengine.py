"""The pure-Python engine: the reference for what the compiled one does.

It waits with the platform's best selector (epoll, kqueue, ...) on the
listening socket and on a wake-up socket pair, so that ``shutdown()`` ends
the loop as soon as the current request is done.  Every request goes through
the server's own hooks, starting at ``_handle_request_noblock``.
"""

import io
import select
import selectors
import socket
from time import monotonic

NAME = "python"

_READ = selectors.EVENT_READ


class ServeLoop:
    """The loop of one ``serve_forever()`` call."""

    def __init__(self, server):
        self._server = server
        self._stopping = False
        # None: accepting; a monotonic deadline, or inf for "until resumed".
        self._paused_until = None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._selector.register(self._wake_r, _READ)
            self._listen_fd = server.fileno()
            self._selector.register(self._listen_fd, _READ)
        except BaseException:
            self.close()
            raise
        self._listening = True

    def run(self, poll_interval):
        server = self._server
        select_ = self._selector.select
        wake_fd = self._wake_r.fileno()
        while not self._stopping:
            timeout = self._apply_pause(poll_interval)
            events = select_(timeout)
            if self._stopping:
                break
            request_ready = False
            for key, _ in events:
                if key.fd == wake_fd:
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
                self._selector.unregister(self._listen_fd)
            else:
                self._selector.register(self._listen_fd, _READ)
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
        self._wake()

    def resume_accepting(self):
        self._paused_until = None
        self._wake()

    def close(self):
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


if hasattr(select, "poll"):
    def wait_readable(fd, timeout):
        """Wait up to ``timeout`` seconds (None: forever) for ``fd``."""
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        return bool(poller.poll(ms))
else:  # Windows
    def wait_readable(fd, timeout):
        """Wait up to ``timeout`` seconds (None: forever) for ``fd``."""
        return bool(select.select([fd], [], [], timeout)[0])


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
