"""Prefork serving: ``workers = N`` and the supervisor that runs them.

``BaseServer.serve_forever()`` hands over to ``Supervisor`` when the
server's worker count is above one.  The supervisor is then the server's
loop object (what ``shutdown()`` stops), in the process that called
serve_forever().  It forks N workers, watches them, replaces the ones that
die, and returns once they have all stopped.  It never touches a connection
and starts no thread: it is one loop, waiting on a self-pipe and on one
status pipe per worker, with a short timeout.

The listener
    It is bound once, in the calling process, by ``server_bind()`` and
    ``server_activate()`` as always, and every worker inherits it: one
    accept queue shared by all.  A worker that exits leaves the queued
    connections to the others, so none is refused or reset (per-worker
    ``SO_REUSEPORT`` listeners would reset the connections queued on the
    one that closes).  Each worker declares it shared
    (``server._listener_shared``, fastsock._backend), so that its engine
    waits on it in a way that wakes one idle worker per connection where
    the platform can (below).  While the workers run, the listener is
    non-blocking: a worker may still find nothing to accept (where every
    worker wakes, all but one; with exclusive wake-ups, a worker that was
    busy when the connection came sees it once free, taken by then), which
    must not block it.  Its timeout is restored when the supervisor ends.

Workers
    Each worker runs the ordinary single-process loop
    (``BaseServer.serve_forever``) on its copy of the server object, with
    the server's mix-in: threads per worker (``max_threads`` per worker),
    or children per worker.  Before serving it calls
    ``server.worker_init(index)``, then reports "ready" on its status pipe.
    When its loop ends it lets running requests finish for
    ``graceful_timeout`` seconds (fastsock._graceful's wait: threads, or
    children, which are killed at the deadline), and leaves with
    ``os._exit``: a worker never returns into the program's code, which
    goes on in the supervisor alone.  ``shutdown()`` called inside a worker
    (by a request) stops that worker only, and the supervisor replaces it;
    the supervisor's own ``service_actions()`` is not called (the workers'
    loops call theirs).

Cost
    Every worker waits on the shared listener.  On Linux (4.5 or later)
    both engines watch it with ``EPOLLEXCLUSIVE``: a new connection wakes
    one worker that is waiting, and a worker busy in a request does not
    count as woken (the kernel goes on to the next; tested with a
    sequential worker held in a request).  The kernel offers each
    wake-up to the workers in the order they added the listener, so a
    loop that the listener woke adds it again (last) before it next
    sleeps: idle workers take connections in turn (without that, one idle
    worker took every sequential request).  Elsewhere (kqueue, poll())
    each connection wakes every idle worker and all but one find nothing
    to accept.  A wake-up that a worker takes just as it stops or pauses
    reaches no other: the workers' loops look at the listener when a wait
    times out, so such a connection waits one poll interval at most.

    Measured here (2 cores shared with the load generator and with other
    work; ThreadingTCPServer, 2 workers, connection per request, 64
    connections unless said): with one connection at a time, the loop
    threads woke 1.5-2.0 times per connection before, 1.0 since, in both
    engines; at 64 connections 0.3-0.7 times per request either way (busy
    loops rarely wait, and the compiled one accepts up to 64 connections per
    wake-up).  ``python bench/run.py --multicore``, runs interleaved with
    the code before (the quietest two): compiled engine 14.1k -> 15.8k
    requests/s (0.59x -> 0.65x one process), 68 -> 57 us of CPU per request
    against 34 for one process; keep-alive level (about 1.0x).  Pure engine
    (``--server fastsock-pure --server fastsock-pure-workers``): 12.3k ->
    11.2k, 93 -> 101 us, the two epoll_ctl() calls that put the listener
    last, which its loop made per request (it takes one per wake-up).  Since
    a loop puts the listener last only before it sleeps, and until then
    looks without sleeping first, a busy loop makes none: pure engine 12.2k
    -> 13.6k requests/s (90 -> 84 us), the client closing first 10.6k ->
    12.3k (121 -> 104 us); compiled level (16.2k and 16.0k; 16.3k and
    16.9k); medians of 5 interleaved runs of ``bench/run.py --multicore
    --workload tcp-cpr --workload tcp-cpr-close --concurrency 64 --server
    fastsock-pure-workers --server fastsock-workers --reps 3``.  The rest of
    the workers' cost is placement, not the herd: one process left free on
    both cores costs 60 us per request (each request goes from the loop's
    thread to a pool thread, and the GIL between cores), 36 pinned to one; 2
    workers with ``worker_cpu_affinity`` about 40.  Each extra worker costs
    about 3-8 MiB of memory of its own: the rest is shared copy-on-write
    with the supervisor.

Signals
    =======  ==========================================  ===================
    signal   supervisor                                  worker
    =======  ==========================================  ===================
    SIGTERM  graceful stop: SIGTERM to every worker,     graceful stop of
             SIGKILL to those left after                 this worker
             ``graceful_timeout``; serve_forever()
             returns.  A second one: SIGKILL at once
    SIGINT   the same (Ctrl-C reaches the whole          ignored
             process group; the supervisor decides)
    SIGHUP   rolling restart: start a new worker, wait   ignored
             until it is ready, stop an old one
             gracefully; repeat for each
    SIGTTIN  one worker more                             the program's
    SIGTTOU  one worker fewer (never under one): the     the program's
             one with the highest index stops
             gracefully
    SIGIO    -                                           the supervisor may
                                                         be gone (below)
    SIGALRM  -                                           default action
                                                         once orphaned
    =======  ==========================================  ===================

    The supervisor installs its handlers only where the signal's handler
    is the default one (and only when it runs in the main thread), so that
    a program's own handlers -- ``fastsock.serve_until_signal()``'s, which
    call ``shutdown()`` -- keep working; they are restored when it ends.
    A signal ignored when the program started stays ignored, as Python
    leaves it: under ``nohup`` (SIGHUP ignored) there is no rolling
    restart, and a background job of a shell without job control (SIGINT
    ignored) stops on SIGTERM only.  SIGTTIN and SIGTTOU change the number
    of workers as gunicorn's do, except in a background job of the
    terminal that the supervisor has for stdin, stdout or stderr (checked
    as it starts): there the terminal sends them for job control (a read,
    or with ``stty tostop`` a write), and a handler would be called on
    every retry of the write instead of the job being stopped.  The count
    is the supervisor's: the server's ``workers`` attribute keeps the
    number it started with.  Past ``workers`` times 4, new workers serve
    without a slot on the board (below), so without the fairness rule or
    ``worker_timeout``.
    The handlers only set a flag and write to the self-pipe.

Dead workers
    Workers are reaped by pid (``waitpid(pid, WNOHANG)``, never
    ``waitpid(-1)``, which would take the program's own children) on every
    turn of the loop, which a worker's exit ends at once where its status
    pipe closes, and at the latest after ``_TICK``.  Each exit is logged on
    the ``fastsock`` logger with the pid and the exit status or signal
    (INFO for a worker told to stop that exited 0, WARNING otherwise).  A
    worker that died is replaced at once, unless workers keep dying right
    after they start: then each replacement waits twice as long as the
    one before, from 0.1 s up to 4 s.

Stuck workers
    With ``worker_timeout`` (seconds; default None), a worker whose loop has
    not turned for that long is killed (logged with the time it was silent)
    and replaced, as gunicorn's ``timeout`` does: a sequential worker held
    by one request, a deadlock, a C call that keeps the GIL.  Where
    faulthandler is enabled (``python -X faulthandler``,
    ``PYTHONFAULTHANDLER=1``), the worker gets SIGABRT, on which
    faulthandler prints every thread's traceback to stderr, where it is
    stuck, then SIGKILL if still there after ``_ABORT_GRACE`` (1 s);
    otherwise SIGKILL at once.  Each turn of a worker's loop marks the time
    on its slot of the board (the third part;
    fastsock._server._on_every_loop_turn, as the systemd watchdog is fed),
    its poll interval is cut to a quarter of the timeout so that an idle
    loop turns often enough, and the supervisor looks at the marks on every
    turn of its own.  A worker's requests in threads or children leave its
    loop free: they may take longer.  Starting (``worker_init``) and
    finishing after a stop are not watched (``graceful_timeout`` bounds the
    latter).  The compiled engine then takes one request per loop turn
    instead of a batch, at no cost measurable here: ``python bench/run.py
    --multicore --server fastsock-workers --server fastsock-workers-timeout
    --reps 5`` (2 workers, 64 connections unless said; without, then with a
    30 s timeout): connection per request 14.8k and 15.6k requests/s (67 and
    57 us of CPU per request), the client closing first 17.2k and 18.6k,
    keep-alive 113k and 110k, at 256 connections 89k and 94k.

Supervisor death
    Each worker holds the read end of a pipe of its own whose only write
    end is the supervisor's: when the supervisor dies, even by SIGKILL,
    the pipe reaches EOF, and the worker stops serving and is ended
    within ``_ORPHAN_GRACE`` seconds (SIGALRM, whose default action works
    even while the main thread is stuck in a request).  The pipe is
    O_ASYNC: the kernel sends the worker SIGIO when the writer goes, so
    this needs no thread (a forking worker forks a single-threaded
    process) and no Linux-only ``prctl``, and works in both engines
    whatever the program's hooks do.  Where O_ASYNC is not known to work
    on pipes, a thread of the worker waits on it instead.

max_requests
    A worker counts the requests it took by wrapping its server's
    ``process_request`` on the instance, in the worker only (so the
    compiled engine calls it as an override, without its direct hand-off
    to the pool; no wrapper is installed when neither max_requests nor a
    ForkingMixIn worker's fairness needs one).  After ``max_requests``
    plus a random ``0..max_requests_jitter``, it reports "retiring" (the
    supervisor starts its replacement at once), stops accepting and stops
    gracefully.

Fairness
    With a shared listener the kernel does not spread connections evenly:
    where every worker wakes, the one already running usually wins; with
    exclusive wake-ups, the first one waiting, and a worker's loop
    threads may all be busy while it takes a burst; and the compiled loop
    accepts up to 64 connections per wake-up.  Many keep-alive
    connections opened at once end up on a few workers (2 cores, 64
    opened one after the other over 4 ThreadingTCPServer workers, fair
    share 16: 8..34, 8 runs in 40 outside 8..24).  So the workers share a
    board: an anonymous shared ``mmap`` made before forking, with per
    worker a slot for its load (a ThreadingMixIn worker's pool writes its
    count of running requests there; a ForkingMixIn worker its number of
    children) and one for its state (not serving, accepting, or paused
    until a given ``time.monotonic_ns()``, a clock every process shares).

    The rule (``fastsock._workers.fair_pause``): after each request it
    takes, a worker whose load is ``FAIR_LEAD`` (2) or more above the least
    loaded serving worker, paused or not, stops accepting for
    ``FAIR_PAUSE_NS`` (1 ms), so that the next connections go to the
    others.  The least loaded worker never pauses by this rule (a rule
    against the mean of all paused every worker at once); if the others
    pause while it takes its own, every worker pauses for at most 1 ms.  An
    earlier rule counted only the workers accepting *now*: a worker whose
    pause ended while the others were paused saw itself as the least loaded
    and took a whole burst (64 connections opened at once into 4 workers
    whose pools held idle threads, fair share 16: 3..48, 16 runs in 30
    outside 8..24 compiled, 6 in 30 pure); counting the paused ones,
    15..17 for both, none outside.  A longer pause (5 ms) let one worker
    take a whole burst while the others were paused.  A worker one of whose
    requests ended within ``FAIR_QUIET_NS`` (1 ms) stands aside: connections
    that come and go (one request each) make loads swing by more than the
    lead all the time, the rule then kept one worker or another paused, and
    the kernel's in-turn wake-ups spread such connections anyway.  The
    others still apply the rule, so a burst of long connections in the
    middle of a flood of short ones is still spread (below).  A
    ThreadingMixIn worker's pool applies the rule as it takes the request
    (compiled with the pool in the compiled engine, which so keeps its
    direct hand-off to the pool); a ForkingMixIn worker's process_request is
    wrapped for it.  The supervisor makes no pool: one made before the fork
    published its load nowhere.

    ``python bench/fairness_burst.py --busy 2`` (the burst above with two
    busy loops of other processes on the cores, 30 runs per engine): 13..18
    (pure) and 13..19 (compiled), none outside 8..24; with four busy loops
    (20 runs), 14..18 and 12..19.  With connection-per-request clients
    beside the burst (``--churn``, 50 runs per engine): 2 clients, 13..19
    and 14..18; 8 clients, 13..21 and 11..22; 8 clients and 2 busy loops,
    12..21 and 10..21; none outside 8..24.  Without the rule (pure engine,
    50 runs), 8 to 10 runs fell outside: 7..37 alone, 8..29 and 3..34 with 2
    and 8 clients.  Connection per request over 2 workers (``bench/run.py
    --multicore``, 64 connections, runs interleaved, the medians): client
    closes first 18.5k requests/s against 18.8k without fairness and 14.0k
    with the rule before the quiet window; server closes first 16.1k, 18.0k
    and 11.8k (noisy: 14.3..19.0k); keep-alive (256 connections) 108k, 105k,
    102k.  Before that, the rule ran around process_request, which cost the
    compiled engine its direct hand-off (9 us of CPU per request more,
    measured with the rule's pause off).

    A sequential server holds one request at a time and needs nothing;
    nor does a datagram server.  The board has 4N slots: workers that are
    finishing their requests after a restart or ``max_requests`` keep
    theirs while their replacements run; should all be taken, a new
    worker serves without taking part (nor is it watched for
    ``worker_timeout``).
"""

import mmap
import os
import random
import select
import signal
import socket
import sys
import threading
from time import monotonic, monotonic_ns

from ._server import BaseServer, ThreadingMixIn, _log, _on_every_loop_turn
from ._workers import ACCEPTING, fair_pause

# The supervisor's longest wait between two looks at its workers (s).
_TICK = 0.1
# Replacement back-off for workers that keep dying right after start (s).
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 4.0
# A worker that dies before it is ready or this soon after start (s)
# counts as dying at start.
_QUICK_DEATH = 1.0
# How long a stuck worker has to print its threads' tracebacks (SIGABRT,
# where faulthandler is enabled) before it gets SIGKILL (s).
_ABORT_GRACE = 1.0
# How long an orphaned worker gives its running requests (s).
_ORPHAN_GRACE = 1.0
# Slots on the fairness board per worker: workers still finishing after a
# restart or max_requests keep theirs until they exit.
_BOARD_SLOTS_PER_WORKER = 4

# What a worker writes on its status pipe.
_READY = b"r"
_RETIRING = b"q"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
# Whether a pipe can signal its reader (SIGIO) when its writer goes.
_ASYNC_IO = (sys.platform.startswith(("linux", "freebsd", "darwin"))
             and fcntl is not None and hasattr(fcntl, "F_SETOWN")
             and hasattr(os, "O_ASYNC") and hasattr(signal, "SIGIO")
             and hasattr(signal, "setitimer"))

_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT")
                      if hasattr(signal, name))
_SIGHUP = getattr(signal, "SIGHUP", None)
# SIGTTIN: one worker more; SIGTTOU: one fewer (as gunicorn).
_RESIZE_SIGNALS = {getattr(signal, name): step
                   for name, step in (("SIGTTIN", 1), ("SIGTTOU", -1))
                   if hasattr(signal, name)}


class _Worker:
    """One worker process, as the supervisor sees it."""

    __slots__ = ("pid", "index", "slot", "status_fd", "life_fd", "started",
                 "ready", "stopping", "deadline", "replaces", "timed_out")

    def __init__(self, pid, index, slot, status_fd, life_fd, replaces):
        self.pid = pid
        self.index = index
        self.slot = slot            # its place on the fairness board
        self.status_fd = status_fd  # read end of its status pipe, or None
        self.life_fd = life_fd      # write end of its life pipe, or None
        self.started = monotonic()
        self.ready = False
        self.stopping = False       # told to stop, or retiring by itself
        self.deadline = None        # when a stopping worker gets SIGKILL
        self.replaces = replaces    # pid it takes over from (SIGHUP)
        self.timed_out = False      # killed for its silence (worker_timeout)


class Supervisor:
    """The loop of a ``serve_forever()`` with workers: see the module
    docstring.  The same interface as an engine's ServeLoop."""

    def __init__(self, server, notifier=None):
        if not hasattr(os, "fork"):
            raise RuntimeError(
                f"workers={server.workers!r}: serving with several worker "
                f"processes needs os.fork(), which this platform lacks")
        self._server = server
        # Tells systemd (fastsock.systemd) when all workers are ready,
        # around a rolling restart and at the stop; feeds its watchdog.
        self._notifier = notifier
        self._announced = False    # READY=1 sent
        self._reloading = False    # RELOADING=1 sent, READY=1 not yet
        self._count = server._worker_count()
        self._timeout_ns = _timeout_ns(server.worker_timeout)
        # Enabled here, faulthandler is in every worker: SIGABRT makes a
        # stuck one print where its threads are.
        self._abort_stuck = (self._timeout_ns is not None
                             and _faulthandler_enabled())
        self._pid = os.getpid()
        _log()  # logging imported now, not when a fork fails for memory
        self._stopping = False
        self._cut_short = False    # a second stop signal: no more grace
        self._reload = False       # SIGHUP received
        self._resizes = []         # +1/-1 per SIGTTIN/SIGTTOU, not yet done
        self._to_replace = []      # pids of a rolling restart, in order
        self._workers = {}         # pid -> _Worker
        self._quick_deaths = 0
        self._next_spawn = 0.0
        self._handlers = {}        # signal -> the handler it had
        self._listener_timeout = None
        self._fds = []
        self._board = None
        try:
            self._wake_r, self._wake_w = self._pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            slots = _BOARD_SLOTS_PER_WORKER * self._count
            # Per slot, in three parts: the worker's load and its accepting
            # state (fastsock._workers.fair_pause), and when its loop last
            # turned (monotonic_ns; 0: not watched) for worker_timeout.
            self._board = mmap.mmap(-1, 3 * 8 * slots)
            self._free_slots = list(range(slots - 1, -1, -1))
            self._view = memoryview(self._board).cast("q")
            self._loads = self._view[:slots]
            self._states = self._view[slots:2 * slots]
            self._beats = self._view[2 * slots:]
            self._cpus = None
            if server.worker_cpu_affinity and hasattr(os, "sched_getaffinity"):
                self._cpus = sorted(os.sched_getaffinity(0))
        except BaseException:
            self.close()
            raise

    def _pipe(self):
        r, w = os.pipe()
        self._fds += (r, w)
        return r, w

    # The engine-loop interface.

    def run(self, poll_interval):
        """Start the workers, supervise them until stop(), stop them."""
        self._poll_interval = poll_interval
        self._install_signal_handlers()
        try:
            self._share_listener()
            while not self._stopping:
                self._maintain()
                self._wait(self._next_wait())
                self._reap()
                self._kill_silent_workers()
                if self._notifier is not None:
                    self._tell_service_manager()
            if self._notifier is not None:
                _systemd()._notify_stopping()
            self._stop_workers()
        finally:
            self._kill_workers()
            self._restore_signal_handlers()

    def stop(self):
        """End run() after a graceful stop of the workers; thread-safe."""
        self._stopping = True
        self._wake()

    def pause_accepting(self, until=None):
        """Nothing to pause: the supervisor accepts nothing."""

    def resume_accepting(self):
        """Nothing to resume: the supervisor accepts nothing."""

    def close(self):
        """Release the pipes and the board; restore the listener."""
        if self._listener_timeout is not None:
            timeout, self._listener_timeout = self._listener_timeout, None
            try:
                self._server.socket.settimeout(timeout[0])
            except OSError:
                pass  # closed meanwhile
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        for worker in self._workers.values():
            self._close_status(worker)
            self._close_life(worker)
        if self._board is not None:
            for view in (self._loads, self._states, self._beats, self._view):
                view.release()
            self._board.close()
            self._board = None

    # Signals.

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return  # handlers can only be installed there
        wanted = {signum: self._on_stop_signal for signum in _STOP_SIGNALS}
        if _SIGHUP is not None:
            wanted[_SIGHUP] = self._on_reload_signal
        if not _in_background_of_a_terminal():
            # (A background job's terminal sends them for job control.)
            for signum in _RESIZE_SIGNALS:
                wanted[signum] = self._on_resize_signal
        for signum, handler in wanted.items():
            current = signal.getsignal(signum)
            if current in (signal.SIG_DFL, signal.default_int_handler):
                self._handlers[signum] = signal.signal(signum, handler)

    def _restore_signal_handlers(self):
        handlers, self._handlers = self._handlers, {}
        for signum, handler in handlers.items():
            signal.signal(signum, handler)

    def _on_stop_signal(self, signum, frame):
        if self._stopping:
            self._cut_short = True
        self._stopping = True
        self._wake()

    def _on_reload_signal(self, signum, frame):
        self._reload = True
        self._wake()

    def _on_resize_signal(self, signum, frame):
        self._resizes.append(_RESIZE_SIGNALS[signum])  # atomic
        self._wake()

    def _wake(self):
        try:
            os.write(self._wake_w, b"\0")
        except OSError:  # full (a wake-up is pending anyway) or closed
            pass

    # The loop.

    def _share_listener(self):
        """Make the listener non-blocking while the workers share it."""
        listener = getattr(self._server, "socket", None)
        if listener is not None and hasattr(listener, "settimeout"):
            self._listener_timeout = (listener.gettimeout(),)
            listener.settimeout(0.0)

    def _active(self):
        return [w for w in self._workers.values() if not w.stopping]

    def _maintain(self):
        """Start the workers that are missing; advance a rolling restart."""
        now = monotonic()
        if self._resizes:
            self._resize()
        if self._reload:
            self._reload = False
            if self._notifier is not None and not self._reloading:
                self._reloading = True
                _systemd().notify_reloading_quietly()
            for worker in self._active():
                if worker.replaces is None and worker.pid not in self._to_replace:
                    self._to_replace.append(worker.pid)
        while self._to_replace:
            old = self._workers.get(self._to_replace[0])
            if old is None or old.stopping:
                del self._to_replace[0]
                continue
            new = [w for w in self._active() if w.replaces == old.pid]
            if not new:
                if now >= self._next_spawn:
                    self._spawn(old.index, replaces=old.pid)
            elif new[0].ready:
                new[0].replaces = None
                self._retire(old)
                del self._to_replace[0]
                continue
            break
        missing = set(range(self._count)) - {w.index for w in self._active()}
        for index in sorted(missing):
            if now < self._next_spawn:
                break
            self._spawn(index)

    def _resize(self):
        """Apply SIGTTIN/SIGTTOU: a worker more is started as a missing
        one; one fewer retires the worker with the highest index (and
        its replacement, in a rolling restart) gracefully.  Never fewer
        than one worker."""
        count = self._count
        while self._resizes:
            count = max(1, count + self._resizes.pop(0))
        if count != self._count:
            _log().info("workers: %d -> %d", self._count, count)
            self._count = count
        for worker in self._active():
            if worker.index >= count:
                self._retire(worker)

    def _tell_service_manager(self):
        """READY=1 once every worker is ready, and again after a rolling
        restart; the watchdog's beat on every turn of a healthy loop."""
        notifier = self._notifier
        if not self._announced:
            active = self._active()
            if len(active) == self._count and all(w.ready for w in active):
                self._announced = True
                notifier.start(self._poll_interval, feed=False)
        elif self._reloading and not self._to_replace:
            self._reloading = False
            _systemd()._notify_quietly("READY=1")
        notifier.beat()

    def _next_wait(self):
        if self._next_spawn > monotonic():
            return min(_TICK, self._next_spawn - monotonic())
        return _TICK

    def _wait(self, timeout):
        """Wait for a wake-up, a worker's message or its end."""
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        by_fd = {}
        for worker in self._workers.values():
            if worker.status_fd is not None:
                by_fd[worker.status_fd] = worker
                poller.register(worker.status_fd, select.POLLIN)
        for fd, _ in poller.poll(max(0, timeout) * 1000):
            if fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except OSError:  # BlockingIOError: drained
                    pass
            else:
                self._read_status(by_fd[fd])

    def _read_status(self, worker):
        try:
            messages = os.read(worker.status_fd, 64)
        except OSError:
            messages = b""
        if not messages:  # the worker and what it forked have gone
            self._close_status(worker)
            return
        if _READY in messages:
            worker.ready = True
        if _RETIRING in messages and not worker.stopping:
            worker.stopping = True
            worker.deadline = monotonic() + self._server.graceful_timeout

    def _close_status(self, worker):
        if worker.status_fd is not None:
            os.close(worker.status_fd)
            worker.status_fd = None

    def _close_life(self, worker):
        if worker.life_fd is not None:
            os.close(worker.life_fd)
            worker.life_fd = None

    def _kill_silent_workers(self):
        """Kill the serving workers whose loops stopped turning for longer
        than ``worker_timeout``; they are replaced as any that dies."""
        if self._timeout_ns is None:
            return
        now = monotonic_ns()
        for worker in self._workers.values():
            if (not worker.ready or worker.stopping or worker.timed_out
                    or worker.slot is None):
                continue
            beat = self._beats[worker.slot]
            if beat and now - beat > self._timeout_ns:
                worker.timed_out = True
                _log().warning(
                    "worker %d (pid %d): its loop has not turned for %.1f s "
                    "(worker_timeout %g s); killing it", worker.index,
                    worker.pid, (now - beat) / 1e9, self._timeout_ns / 1e9)
                if self._abort_stuck:
                    worker.deadline = monotonic() + _ABORT_GRACE
                    self._signal(worker, signal.SIGABRT)
                else:
                    self._signal(worker, signal.SIGKILL)

    def _retire(self, worker):
        """Tell a worker to stop gracefully."""
        worker.stopping = True
        worker.deadline = monotonic() + self._server.graceful_timeout
        self._signal(worker, signal.SIGTERM)

    def _signal(self, worker, signum):
        try:
            os.kill(worker.pid, signum)
        except ProcessLookupError:
            pass  # exited; reaped next

    def _reap(self, block=False):
        """Reap the workers that exited; SIGKILL stopping ones past their
        deadline."""
        now = monotonic()
        for worker in list(self._workers.values()):
            try:
                pid, status = os.waitpid(worker.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:  # reaped by someone else
                pid, status = worker.pid, None
            if not pid:
                if worker.deadline is not None and now >= worker.deadline:
                    worker.deadline = None
                    self._signal(worker, signal.SIGKILL)
                continue
            self._forget(worker, status, now)

    def _forget(self, worker, status, now):
        del self._workers[worker.pid]
        self._close_status(worker)
        self._close_life(worker)
        if worker.slot is not None:
            self._loads[worker.slot] = self._states[worker.slot] = 0
            self._beats[worker.slot] = 0
            self._free_slots.append(worker.slot)
        expected = worker.stopping or self._stopping
        self._log_exit(worker, status, expected)
        if expected:
            return
        if not worker.ready or now - worker.started < _QUICK_DEATH:
            self._quick_deaths += 1
            delay = min(_BACKOFF_FIRST * 2 ** (self._quick_deaths - 1),
                        _BACKOFF_MAX)
            self._next_spawn = now + delay
        else:
            self._quick_deaths = 0

    def _log_exit(self, worker, status, expected):
        what = f"worker {worker.index} (pid {worker.pid})"
        if status is None:
            _log().warning("%s is gone; its exit status was taken by "
                           "another waitpid()", what)
        elif os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
            try:
                name = signal.Signals(signum).name
            except ValueError:
                name = str(signum)
            _log().warning("%s was killed by signal %d (%s)", what, signum,
                           name)
        else:
            code = os.waitstatus_to_exitcode(status)
            if code == 0 and expected:
                _log().info("%s exited", what)
            else:
                _log().warning("%s exited with status %d", what, code)

    def _stop_workers(self):
        """Graceful stop: SIGTERM, wait, SIGKILL what is left, reap."""
        for worker in self._active():
            self._retire(worker)
        while self._workers and not self._cut_short:
            self._wait(_TICK)
            self._reap()

    def _kill_workers(self):
        """SIGKILL and reap every worker left (the end of any run())."""
        for worker in self._workers.values():
            self._signal(worker, signal.SIGKILL)
        self._reap(block=True)

    # Starting a worker.

    def _spawn(self, index, replaces=None):
        # None: every slot is held by workers still finishing (rare).
        slot = self._free_slots.pop() if self._free_slots else None
        if slot is not None:
            self._loads[slot] = self._states[slot] = self._beats[slot] = 0
        status_r = status_w = life_r = life_w = None
        try:
            status_r, status_w = os.pipe()
            # Only the supervisor holds the write end: the worker sees EOF
            # on the read end when the supervisor dies.
            life_r, life_w = os.pipe()
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    try:
                        stream.flush()  # else both processes write it
                    except (OSError, ValueError):
                        pass
            # Signals wait until each process has its own handlers.
            blocked = _block_signals()
            try:
                pid = os.fork()
            except BaseException:
                _unblock_signals(blocked)
                raise
        except OSError as exc:  # EAGAIN, ENOMEM: try again later
            for fd in (status_r, status_w, life_r, life_w):
                if fd is not None:
                    os.close(fd)
            if slot is not None:
                self._free_slots.append(slot)
            self._quick_deaths += 1
            self._next_spawn = monotonic() + min(
                _BACKOFF_FIRST * 2 ** (self._quick_deaths - 1), _BACKOFF_MAX)
            _log().warning("cannot start worker %d: %s", index, exc)
            return
        if pid == 0:
            os.close(status_r)
            os.close(life_w)
            self._run_worker(index, slot, status_w, life_r,
                             blocked)  # never returns
        _unblock_signals(blocked)
        os.close(status_w)
        os.close(life_r)
        self._workers[pid] = _Worker(pid, index, slot, status_r, life_w,
                                     replaces)

    # In a worker process.

    def _run_worker(self, index, slot, status_fd, life_fd, blocked):
        """The worker's life after the fork; ends with os._exit()."""
        code = 1
        try:
            server = self._server
            self._worker_signals(server)
            _unblock_signals(blocked)
            for fd in [self._wake_r, self._wake_w] + [
                    fd for w in self._workers.values()
                    for fd in (w.status_fd, w.life_fd) if fd is not None]:
                os.close(fd)
            self._workers = {}
            # The supervisor speaks to systemd for all (MAINPID is its).
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)
            server.worker_index = index
            server._listener_shared = True  # for the engine (_backend)
            if self._cpus:
                os.sched_setaffinity(0, {self._cpus[index % len(self._cpus)]})
            _watch_supervisor(server, life_fd)
            server.worker_init(index)
            self._count_requests(server, slot, status_fd)
            poll_interval = self._beat_while_serving(server, slot)
            os.write(status_fd, _READY)
            if slot is not None:
                self._states[slot] = ACCEPTING
            BaseServer.serve_forever(server, poll_interval)
            if slot is not None:
                # Finishing now: graceful_timeout bounds it, not the beat.
                self._states[slot] = self._beats[slot] = 0
            from ._graceful import _GracefulStop
            finishing = _GracefulStop(server, server.graceful_timeout)
            finishing.loop_ended()
            finishing.wait_for_requests()
            code = 0
        except BaseException:
            try:
                _log().exception("worker %d (pid %d) failed", index,
                                 os.getpid())
            except BaseException:
                pass
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except BaseException:
                    pass
            os._exit(code)

    def _worker_signals(self, server):
        def stop(signum, frame):
            _stop_serving(server)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if _SIGHUP is not None:
            signal.signal(_SIGHUP, signal.SIG_IGN)
        for signum in _RESIZE_SIGNALS:
            if signum in self._handlers:  # the supervisor's, not the program's
                signal.signal(signum, self._handlers[signum])
        if threading.current_thread() is threading.main_thread():
            try:
                signal.set_wakeup_fd(-1)
            except ValueError:
                pass

    def _beat_while_serving(self, server, slot):
        """With a worker_timeout, mark on the board every turn of this
        worker's loop (fastsock._server._on_every_loop_turn) and cut its
        poll interval so that an idle loop turns several times within the
        timeout; return the poll interval."""
        poll_interval = self._poll_interval
        if self._timeout_ns is None or slot is None:
            return poll_interval
        beats = self._beats

        def beat():
            beats[slot] = monotonic_ns()

        beat()
        _on_every_loop_turn(server, beat)
        often = self._timeout_ns / 4e9
        return often if poll_interval is None else min(poll_interval, often)

    def _count_requests(self, server, slot, status_fd):
        """Take part in fairness and count requests for max_requests, where
        either applies.

        A ThreadingMixIn worker's pool applies the fairness rule itself
        (fastsock._workers), given the board; a ForkingMixIn worker's
        process_request is wrapped for it, as for max_requests (wrapping
        costs a compiled engine its direct hand-off to the pool).
        """
        limit = server.max_requests
        if limit is not None:
            limit += random.randint(0, server.max_requests_jitter or 0)
        fair = slot is not None and _is_stream(server)
        if fair and isinstance(server, ThreadingMixIn):
            server._fair_board = (self._loads, self._states, slot)
        forking_fair = fair and hasattr(server, "active_children")
        if limit is None and not forking_fair:
            return
        original = server.process_request
        taken = 0
        loads, states = self._loads, self._states

        def process_request(request, client_address):
            nonlocal taken
            original(request, client_address)
            taken += 1
            if limit is not None and taken >= limit:
                try:
                    os.write(status_fd, _RETIRING)
                except OSError:
                    pass
                _stop_serving(server)
            elif forking_fair:
                load = loads[slot] = len(server.active_children or ())
                until = fair_pause(loads, states, slot, load,
                                   server.max_children)
                if until:
                    server._pause_accepting(until / 1e9)

        server.process_request = process_request


def _systemd():
    from . import systemd  # only under a service manager
    return systemd


def _timeout_ns(timeout):
    """``worker_timeout`` in nanoseconds (None: never, as is infinity);
    ValueError if it is no positive number."""
    if (timeout is not None and (isinstance(timeout, bool)
                                 or not isinstance(timeout, (int, float))
                                 or not timeout > 0)):
        raise ValueError(f"worker_timeout must be None or a positive number "
                         f"of seconds, not {timeout!r}")
    if timeout is None or timeout == float("inf"):
        return None
    return int(timeout * 1e9)


def _faulthandler_enabled():
    try:
        import faulthandler
    except ImportError:
        return False
    return faulthandler.is_enabled()


def _is_stream(server):
    return getattr(server, "socket_type", None) == socket.SOCK_STREAM


def _watch_supervisor(server, life_fd):
    """Make this worker leave within _ORPHAN_GRACE once the supervisor is
    gone: its life pipe (``life_fd``, the read end) then reaches EOF.

    Where the system signals it (O_ASYNC: SIGIO to this process, Linux and
    the BSDs), without a thread, so that a forking worker forks a
    single-threaded process; else a thread waits on the pipe.
    """
    def supervisor_gone():
        try:
            return not os.read(life_fd, 1)  # nothing is ever written
        except BlockingIOError:
            return False
        except OSError:
            return True

    def leave():
        _stop_serving(server)
        # The default action of SIGALRM ends the process even where the
        # main thread is stuck in a request.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, _ORPHAN_GRACE)

    if _ASYNC_IO:
        def on_sigio(signum, frame):
            if supervisor_gone():
                leave()
        os.set_blocking(life_fd, False)
        signal.signal(signal.SIGIO, on_sigio)
        fcntl.fcntl(life_fd, fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(life_fd, fcntl.F_SETFL,
                    fcntl.fcntl(life_fd, fcntl.F_GETFL) | os.O_ASYNC)
        if supervisor_gone():  # before SIGIO was asked for
            leave()
        return

    def wait():
        while not supervisor_gone():
            pass  # a blocking read: returns at EOF only
        _stop_serving(server)
        threading.Event().wait(_ORPHAN_GRACE)
        os._exit(1)
    threading.Thread(target=wait, name="fastsock supervisor watch",
                     daemon=True).start()


def _stop_serving(server):
    """Make the worker's serve_forever() return; safe in a signal handler
    and from any thread."""
    server._request_shutdown()


_BLOCKED_AT_FORK = (set(_STOP_SIGNALS) | ({_SIGHUP} if _SIGHUP else set())
                    | set(_RESIZE_SIGNALS))


def _in_background_of_a_terminal():
    """Whether this process is a background job of a terminal that it
    has for stdin, stdout or stderr (whose SIGTTIN/SIGTTOU then stop it
    for job control, as they should)."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return os.tcgetpgrp(fd) != os.getpgrp()
        except OSError:
            continue
    return False


def _block_signals():
    """Block the signals the supervisor and workers handle differently;
    return what to pass to _unblock_signals()."""
    if not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED_AT_FORK)


def _unblock_signals(previous):
    if previous is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
