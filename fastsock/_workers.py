"""Where the threading and forking mix-ins run requests.

``WorkerPool`` is the set of reusable worker threads of one ThreadingMixIn
server.  A request is handed to an idle worker when there is one; a new
worker starts only when none is idle.  Each worker runs one request at a time
through the server's ``process_request_thread`` and, once done, waits
``worker_idle_timeout`` seconds for the next before it exits.

The hand-off is a per-worker lock used as a baton: an idle worker blocks
acquiring its own baton; ``submit`` stores the request on the worker and,
once it has let go of the pool lock (the worker's first need when done),
releases the baton, which is the only thread switch a hand-off costs.  A
worker whose wait times out leaves the idle list under the pool lock, unless
a request was handed to it in the meantime, in which case it runs that one.

In a prefork worker (fastsock._supervisor) the pool also keeps the
workers' share fair: it publishes how many requests it is running on the
supervisor's shared board (``server._fair_board``) and applies the rule
(``fair_pause``) after each request it takes, here rather than around the
server's ``process_request``, so that the compiled engine keeps handing
requests straight to its pool.

With ``max_threads`` set, the pool counts running requests and asks the
server's loop to stop accepting when the limit is reached and to resume when
a request finishes.  Both happen under the pool lock, so a request that ends
while another is being handed off can never leave the server paused.

One source, two builds: the pure engine imports this module as it is;
setup.py also compiles it, unchanged, with Cython into
``fastsock._cworkers``, typed by ``_cworkers.pxd`` (the pool and its
workers become extension types; the hand-off and the worker's loop run as
C), and the compiled engine uses that build.  Each engine names its pool
class (``engine.WorkerPool``), so the pool semantics are written, and
tested, once.  What the compiled build assumes of the interpreter: a GIL
(setup.py builds nothing for a free-threaded one).  The pool's shared
fields change only under the pool lock; ``len()`` reads one without it,
and a worker reads the request it was handed after its baton's release,
which orders the two.  The compiled Baton lets go of the GIL only inside
its wait.

``ChildReaper`` finds the exited children of a ForkingMixIn server.
"""

import os
import select
import threading
import time
import weakref
from time import monotonic_ns

# Fairness between the prefork workers of one server (fastsock._supervisor
# explains the board and why): a worker serving FAIR_LEAD requests more
# than the least loaded serving worker, paused or not, stops accepting for
# FAIR_PAUSE_NS.  A worker's state on the board: 0 while it does not serve;
# while it serves, ACCEPTING or the time.monotonic_ns() at which its pause
# ends (or ended): that clock is the same in every process.
FAIR_LEAD = 2
FAIR_PAUSE_NS = 1_000_000
ACCEPTING = 1
# A worker one of whose requests ended less than FAIR_QUIET_NS ago stands
# aside from the rule (see fair_pause).
FAIR_QUIET_NS = 1_000_000


def fair_pause(loads, states, slot, load, bound, last_end=0):
    """Apply the fairness rule for the worker at ``slot`` of the board
    (``loads``, ``states``: its two halves), which has just taken a
    request and now serves ``load``; ``bound`` is the load at which it
    stops accepting by itself (None: none), a pause that this must not cut
    short.  Return the ``monotonic_ns()`` until which it must not accept,
    marked on the board, or 0.

    ``last_end`` is when one of the worker's requests last ended (0: not
    known).  The rule is for requests that pile up, keep-alive connections
    opened in a burst.  Where requests keep ending (a connection per
    request), loads rise and fall by more than FAIR_LEAD all the time, the
    rule would keep one worker or another paused, and the kernel's in-turn
    wake-ups spread such connections anyway: the worker stands aside.
    """
    if load < FAIR_LEAD or (bound is not None and load >= bound):
        return 0
    now = monotonic_ns()
    if now - last_end < FAIR_QUIET_NS:
        return 0
    # Paused workers count too: left out, a worker whose pause has just
    # ended, among others still paused, would see itself as the lowest and
    # take a whole burst.
    lowest = load
    for i in range(len(loads)):
        state = states[i]
        if state >= ACCEPTING and loads[i] < lowest:
            lowest = loads[i]
    if load - lowest < FAIR_LEAD:
        return 0
    until = now + FAIR_PAUSE_NS
    states[slot] = until
    return until


class _Stop:
    """What an idle worker is handed when its pool closes."""


_STOP = _Stop()


class _Worker:
    __slots__ = ("baton", "request", "client_address", "thread")

    def __init__(self, request, client_address, baton):
        self.baton = baton()
        self.baton.acquire()
        self.request = request
        self.client_address = client_address
        self.thread = None


class WorkerPool:
    """The worker threads of one server.

    ``len()`` is the number of live workers, busy or idle; ``close()`` (what
    ``server_close()`` calls) releases the idle ones and optionally waits for
    the non-daemon ones to finish their requests.

    What the engines pass: a worker runs each request with
    ``run_request(request, client_address)``, by default
    ``server.process_request_thread`` looked up per request; the compiled
    engine passes its own runner, which calls that hook where the server
    overrides it and otherwise does its work with fewer Python calls.
    ``baton`` makes each worker's baton: a lock type with threading.Lock's
    ``acquire(blocking, timeout)`` and ``release()``; the compiled engine's
    lets go of the GIL before waking the worker.
    """

    def __init__(self, server, run_request=None, baton=threading.Lock):
        self._server = server
        self._run_request = run_request
        self._baton = baton
        self._lock = threading.Lock()
        self._idle = []          # parked workers, most recently parked last
        self._workers = set()    # live workers
        self._running = 0        # requests handed off and not yet finished
        self._limit = None       # server.max_threads at the last hand-off
        self._accept_paused = False
        self._blocked = 0        # submit() calls waiting for a free slot
        self._slot_freed = threading.Condition(self._lock)
        self._closing = False
        # A prefork worker's fairness board: (loads, states, its slot).
        board = getattr(server, "_fair_board", None)
        if board is None:
            self._loads = self._states = None
            self._slot = -1
        else:
            self._loads, self._states, self._slot = board
        self._last_end = 0     # monotonic_ns() as a request last ended
        _live_pools.add(self)

    def __len__(self):
        return len(self._workers)

    def submit(self, request, client_address):
        """Run ``server.process_request_thread(request, client_address)``.

        With ``server.max_threads`` set and reached, this blocks until a
        running request finishes (see ``_claim_slot``).
        """
        worker = None
        with self._lock:
            limit = self._limit = self._server.max_threads
            if limit is None:
                self._running += 1
            else:
                self._claim_slot(limit)
            running = self._running
            if self._slot >= 0:
                self._loads[self._slot] = running
            if self._idle:
                worker = self._idle.pop()
                worker.request = request
                worker.client_address = client_address
            else:
                self._start_worker(request, client_address)
        if worker is not None:
            # Out of its idle list, the worker waits for this release
            # alone, even where its wait ran out meanwhile (see _park).
            worker.baton.release()
        if self._slot >= 0 and running >= FAIR_LEAD:
            until = fair_pause(self._loads, self._states, self._slot,
                               running, limit, self._last_end)
            if until:
                self._server._pause_accepting(until / 1e9)

    def _start_worker(self, request, client_address):
        """A new worker for the request; lock held.

        A worker that cannot be made or started (RuntimeError: can't start
        new thread, MemoryError) leaves nothing behind: the request is
        counted no more, and the exception goes to the caller, where the
        server reports it with handle_error() and shuts the request down,
        as the standard library does when its thread will not start.
        """
        worker = None
        try:
            worker = _Worker(request, client_address, self._baton)
            worker.thread = threading.Thread(
                target=self._work, args=(worker,),
                daemon=self._server.daemon_threads)
            self._workers.add(worker)
            # Started under the lock, so that close() never joins a
            # thread that has not started.
            worker.thread.start()
        except BaseException:
            self._workers.discard(worker)
            self._end_request()
            raise

    def _claim_slot(self, limit):
        """Count one more running request, at most ``limit``; lock held.

        In serve_forever() the loop stopped accepting when the limit was
        reached, so the pool is normally not full here.  It can be when a
        new loop started while it was, or in handle_request(): then the
        pause is asserted again and the caller waits for a free slot.
        """
        if limit < 1:
            raise ValueError(f"max_threads must be None or at least 1, "
                             f"not {limit!r}")
        while self._running >= limit:
            self._pause_accepting()
            self._blocked += 1
            try:
                self._slot_freed.wait()
            finally:
                self._blocked -= 1
        self._running += 1
        if self._running >= limit:
            self._pause_accepting()

    def _pause_accepting(self):
        self._accept_paused = True
        self._server._pause_accepting()

    def _end_request(self):
        """Count one request less; resume accepting if it freed a slot."""
        self._running -= 1
        if self._slot >= 0:
            self._loads[self._slot] = self._running
            self._last_end = monotonic_ns()
        if self._accept_paused and (self._limit is None
                                    or self._running < self._limit):
            self._accept_paused = False
            self._server._resume_accepting()
        if self._blocked:
            self._slot_freed.notify()

    # A worker leaves ``_workers`` in the same critical section in which it
    # decides to exit, so that len() never counts a worker on its way out.

    def _work(self, worker):
        server = self._server
        run_request = self._run_request
        while True:
            request, client_address = worker.request, worker.client_address
            worker.request = worker.client_address = None
            try:
                if run_request is None:
                    server.process_request_thread(request, client_address)
                else:
                    run_request(request, client_address)
            except BaseException:
                # SystemExit and the like end this worker; the exception
                # goes on to threading.excepthook, as in the stdlib.
                with self._lock:
                    self._end_request()
                    self._workers.discard(worker)
                raise
            del request, client_address
            if not self._park(worker):
                return

    def _park(self, worker):
        """Wait for the next request; return False when the worker retires."""
        with self._lock:
            self._end_request()
            if self._closing:
                self._workers.discard(worker)
                return False
            self._idle.append(worker)
        idle_timeout = self._server.worker_idle_timeout
        if not worker.baton.acquire(
                True, -1 if idle_timeout is None else idle_timeout):
            with self._lock:
                if worker in self._idle:
                    self._idle.remove(worker)
                    self._workers.discard(worker)
                    return False
            worker.baton.acquire()  # handed a request as the wait ran out
        return worker.request is not _STOP

    def close(self, wait=True):
        """Stop reusing workers, release the idle ones, optionally wait.

        Requests still running finish; their workers then exit.  ``wait``
        joins every non-daemon worker but the calling thread.
        """
        with self._lock:
            self._closing = True
            idle, self._idle = self._idle, []
            threads = [worker.thread for worker in self._workers]
            self._workers.difference_update(idle)
        for worker in idle:
            worker.request = _STOP
            worker.baton.release()
        if wait:
            me = threading.current_thread()
            for thread in threads:
                if thread is not me and not thread.daemon:
                    thread.join()

    def join(self):
        """What the standard library's ``server._threads.join()`` does."""
        self.close(wait=True)


# Idle non-daemon workers would hold up interpreter exit until they time out;
# they are released when the interpreter starts joining threads (before, not
# after, as the atexit module would).
_live_pools = weakref.WeakSet()


def _release_idle_workers():
    for pool in list(_live_pools):
        pool.close(wait=False)


# A private hook of the threading module (3.9 and later), which
# concurrent.futures uses for the same purpose.
_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(_release_idle_workers)


_PIDFD_OPEN = getattr(os, "pidfd_open", None) if hasattr(select, "epoll") \
    else None
# How often a forking server without pidfds looks for exited children while
# it must wait for one.
_CHILD_SCAN_INTERVAL = 0.005


class ChildReaper:
    """Reaps a forking server's exited children, paying per exited child.

    On Linux each child gets a pidfd, which becomes readable when the child
    exits, registered in one epoll: a single ``epoll_wait`` with a zero
    timeout names the children that exited, and only those are waited for.
    Where pidfds are missing, or one could not be opened, children are
    polled one by one with ``waitpid(pid, WNOHANG)``, as the standard
    library does.  Children are always waited for by pid: ``waitpid(-1)``
    would take the exit status of processes that the application started
    itself.

    ``reap`` runs in the parent between forks, where every page written
    costs a copy-on-write fault: it allocates as little as it can.

    The set of pids is the server's ``active_children``, passed to each call;
    pids found there that the reaper did not track (a subclass forked them
    itself) are adopted.  pidfds and the epoll are close-on-exec.
    """

    def __init__(self):
        self._pidfds = {}     # pid -> its pidfd, or None when polled
        self._pid_of = {}     # pidfd -> pid
        self._polled = set()  # tracked pids without a pidfd
        self._epoll = None

    def track(self, pid):
        """Watch the child ``pid``, just forked."""
        pidfd = None
        if _PIDFD_OPEN is not None:
            try:
                pidfd = _PIDFD_OPEN(pid)
                if self._epoll is None:
                    self._epoll = select.epoll()
                self._epoll.register(pidfd, select.EPOLLIN)
            except OSError:  # ENOSYS on old kernels, EMFILE, ...
                if pidfd is not None:
                    os.close(pidfd)
                pidfd = None
        self._pidfds[pid] = pidfd
        if pidfd is None:
            self._polled.add(pid)
        else:
            self._pid_of[pidfd] = pid

    def reap(self, children):
        """Reap the children in ``children`` that have exited."""
        if len(children) != len(self._pidfds):
            self._adopt(children)
        if self._polled:
            for pid in list(self._polled):
                self._reap(pid, children, os.WNOHANG)
        if self._pid_of:
            # maxevents bounded by the pidfds: the default (FD_SETSIZE)
            # makes poll() allocate, and the parent touch, a 12 KiB buffer.
            for fd, _ in self._epoll.poll(0, len(self._pid_of)):
                self._reap(self._pid_of[fd], children, os.WNOHANG)

    def reap_all(self, children):
        """Wait for every child in ``children`` to exit."""
        for pid in list(children):
            self._reap(pid, children, 0)

    def wait(self):
        """Sleep until some tracked child may have exited."""
        if self._polled or not self._pid_of:
            time.sleep(_CHILD_SCAN_INTERVAL)
        else:
            self._epoll.poll()

    def close(self):
        """Stop tracking: close every pidfd and the epoll."""
        for pidfd in self._pid_of:
            os.close(pidfd)
        self._pidfds.clear()
        self._pid_of.clear()
        self._polled.clear()
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None

    def _reap(self, pid, children, flags):
        try:
            reaped, _ = os.waitpid(pid, flags)
        except ChildProcessError:
            reaped = pid  # not our child, or someone else reaped it
        except OSError:
            return
        if reaped:
            children.discard(pid)
            self._forget(pid)

    def _forget(self, pid):
        pidfd = self._pidfds.pop(pid, None)
        self._polled.discard(pid)
        if pidfd is not None:
            del self._pid_of[pidfd]
            self._epoll.unregister(pidfd)
            os.close(pidfd)

    def _adopt(self, children):
        """Make the tracked pids those of ``children``."""
        for pid in [pid for pid in self._pidfds if pid not in children]:
            self._forget(pid)
        for pid in children:
            if pid not in self._pidfds:
                self.track(pid)
