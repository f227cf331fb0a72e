"""Graceful stop: serve until a signal, then let running requests finish.

``serve_until_signal(server, grace)`` runs ``server.serve_forever()`` in the
main thread with handlers for SIGTERM and SIGINT installed.  The first such
signal stops the loop: the handler asks it to stop as shutdown() does,
without waiting (it runs in the thread that serves), and a helper thread
watches the deadline.  Requests already running then get until ``grace``
seconds after the signal to finish: a threading server's workers, a forking
server's children, or, for a plain server, the request the loop was in.
Then the server is closed.  Where the helper thread cannot start (no
threads left), the loop stops all the same; only a plain server's request
then runs past the deadline.

At the deadline, or at a second signal: a forking server's remaining
children are killed (SIGKILL, as gunicorn does once its graceful timeout is
over), a plain server's request is interrupted with KeyboardInterrupt
(which shuts its connection down), and the server is closed without waiting
for worker threads, which nothing can stop from outside: they go on with
their requests.  Non-daemon workers still hold up the interpreter's exit
until they end, so a process that must leave at the deadline sets
``daemon_threads`` or exits with ``os._exit()`` when this returns False.

Connections that arrive once the loop has stopped wait in the listen
backlog and are reset when the server closes.

Under systemd (``NOTIFY_SOCKET`` set), ``STOPPING=1`` is sent when the
first signal arrives (see fastsock.systemd).

A forked child runs with the parent's handlers, which do nothing there: a
child goes on with its request, and the parent decides its fate.
"""

import _thread
import os
import signal
import threading
from time import monotonic, sleep

from . import systemd

__all__ = ["serve_until_signal"]

_DEFAULT_SIGNALS = tuple(getattr(signal, name)
                         for name in ("SIGTERM", "SIGINT")
                         if hasattr(signal, name))
# How often running requests are looked at while waiting for them.
_CHECK_INTERVAL = 0.01


def serve_until_signal(server, grace=30.0, *, signals=_DEFAULT_SIGNALS,
                       poll_interval=0.5):
    """Serve until one of ``signals`` arrives, then stop gracefully.

    Call it from the main thread (signal handlers can only be installed
    there).  The previous handlers are restored on return.  ``grace`` is how
    many seconds after the first signal running requests may take; a second
    signal ends the wait at once.  Returns True when every request finished
    in time, False when some were cut short or left running.  The server is
    closed in every case, also when serve_forever() raises.
    """
    stop = _GracefulStop(server, grace)
    previous = {}
    try:
        for signum in signals:
            previous[signum] = signal.signal(signum, stop.on_signal)
        try:
            server.serve_forever(poll_interval)
        except KeyboardInterrupt:
            if not stop.cut_short:
                raise  # not this function's doing
        finally:
            stop.loop_ended()
        finished = stop.wait_for_requests()
        if not finished:
            server.block_on_close = False  # nothing left worth waiting for
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        server.server_close()
    return finished


class _GracefulStop:
    """One serve_until_signal() call: what its signal handler, its helper
    thread and the main thread share.

    The signal handler runs in the main thread between any two bytecodes,
    also while that thread holds a lock (the pool's, threading's own, one of
    an Event it is setting), so it takes no lock: it sets plain attributes
    and starts the helper thread with _thread, which takes none either.  No
    thread is started before the first signal: a forking server would fork
    a multi-threaded process.
    """

    def __init__(self, server, grace):
        self._server = server
        self._grace = grace
        self._pid = os.getpid()
        self._main_thread = threading.get_ident()
        # Held by the helper while it interrupts the loop, and by the main
        # thread when the loop has ended, so that no signal is sent to the
        # main thread once its handlers may have been restored.
        self._lock = threading.Lock()
        self._serving = True  # the main thread is in serve_forever()
        self._loop_done = threading.Event()  # set once it has returned
        self._first_signal = None
        self._deadline = None
        self._interrupted = False  # a request in the loop was cut short
        # Set at the deadline or at a second signal: stop waiting.
        self.cut_short = False

    def on_signal(self, signum, frame):
        """The handler of the signals; runs in the main thread."""
        if os.getpid() != self._pid:
            return  # a forked child: see the module docstring
        if self._first_signal is None:
            self._first_signal = signum
            self._deadline = monotonic() + self._grace
            self._server._request_shutdown()
            if "NOTIFY_SOCKET" in os.environ:
                systemd._notify_stopping()
            try:
                _thread.start_new_thread(self._watch_deadline, ())
            except RuntimeError:  # can't start new thread
                pass  # the loop stops all the same
            return
        self.cut_short = True
        # serve_forever() may have returned before loop_ended() ran: its
        # shut-down event tells, and then there is nothing to interrupt.
        if (self._serving
                and not self._server._serve_forever_ended()):
            self._interrupted = True
            raise KeyboardInterrupt  # ends the request the loop is in

    def _watch_deadline(self):
        """After the first signal, interrupt the loop if it is still busy
        at the deadline."""
        if self._loop_done.wait(max(0.0, self._deadline - monotonic())):
            return  # the loop ended in time
        with self._lock:
            if self._serving and not self.cut_short:
                self._interrupt_main()

    def _interrupt_main(self):
        """Make the main thread run on_signal() again, which raises."""
        if hasattr(signal, "pthread_kill"):
            # A real signal, which also ends a blocking system call.
            signal.pthread_kill(self._main_thread, self._first_signal)
        else:
            _thread.interrupt_main(self._first_signal)

    def loop_ended(self):
        with self._lock:
            self._serving = False
        self._loop_done.set()
        if self._deadline is None:  # stopped by someone else's shutdown()
            self._deadline = monotonic() + self._grace

    def wait_for_requests(self):
        """Wait until the deadline for the server's running workers or
        children; return whether they all finished.  Children still running
        then are killed and reaped."""
        server = self._server
        pool = getattr(server, "_workers", None)
        if pool is not None:
            pool.close(wait=False)  # idle workers leave now, busy ones later
        while self._requests_running(pool):
            if self.cut_short or monotonic() >= self._deadline:
                self._kill_children()
                return False
            sleep(_CHECK_INTERVAL)
        return not self._interrupted

    def _requests_running(self, pool):
        server = self._server
        if getattr(server, "active_children", None):
            server.collect_children()
        return bool((pool is not None and len(pool))
                    or getattr(server, "active_children", None))

    def _kill_children(self):
        children = getattr(self._server, "active_children", None)
        if not children:
            return
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it has just exited
        self._server.collect_children(blocking=True)
