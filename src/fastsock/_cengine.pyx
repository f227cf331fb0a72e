"""The compiled engine: the serve_forever() loop in C.

What it assumes of the interpreter: a GIL; it must not be built for a
free-threaded one.  Flags that other threads set (``stop()``,
``pause_accepting()``) are plain C fields written and read with the GIL
held; the cached plans that a pool's workers share are replaced whole by
C assignments between which no Python code runs, so that a reader never
sees half of one.  The GIL is released only around waits and system calls,
which touch no Python object.

It waits in C (epoll, kqueue or poll(), see includes/poller.h) with the GIL
released, on the listening socket and on a wake-up descriptor that stop(),
pause_accepting() and resume_accepting() write to from any thread.  A
listener that the server declares shared with sibling processes
(``_listener_shared``, set in prefork workers) is watched so that a new
connection wakes one idle sibling where the platform can (EPOLLEXCLUSIVE).

Which default hooks it may do the work of itself is declared in one place,
``fastsock._server.SHORTCUTS`` (and ``HANDLER_SHORTCUTS`` for handler
classes).  A _ServerPlan holds the shortcuts of that table that apply to
one server now, and builds them again whenever the server's class (or a
base) is modified or a watched name is set, replaced or deleted on the
instance: the class's version tag (includes/type_version.h) and a look at
the instance's dict tell, per request (the dict's entries are looked at
again only when its own version tag, where the interpreter keeps one that
can be relied on, has changed).  The loop, the workers of the pool and the
datagram handlers built in place all take their shortcuts from such plans.

The loop takes each request one of two ways:

- the generic way, unless the server takes the "accept" or "receive"
  shortcut and its listening socket is a plain socket of the socket module
  (``fastsock._cio.is_plain_socket``, an ``ssl.SSLSocket`` is not): the
  loop calls ``server._handle_request_noblock()``, exactly as the pure
  engine does;
- the compiled way otherwise: the connection is accepted (or the datagram
  received) in C and the request goes through the same steps as
  ``BaseServer._handle_request_noblock``, each hook called unless a
  shortcut of the plan does its work: no verify_request call, the request
  handed to the worker pool, the handler built directly for
  finish_request, shutdown(SHUT_WR) and close() for shutdown_request.

On the compiled way one wake-up takes up to a batch of requests, one after
the other, each only once the one before is done, and only while nothing
asked the loop to stop or pause; what is not taken stays queued in the
socket, as with the standard library.  A server with its own
``service_actions`` takes one request per loop turn, since that hook may
need to run between requests (ForkingMixIn caps its children there); so
does a datagram server with its own ``process_request``, which hands the
datagram to a thread (ThreadingMixIn) that needs the GIL to serve it.

A handler class that takes the "datagram_in_place" shortcut (it keeps
DatagramRequestHandler's ``setup`` and ``finish``, BaseRequestHandler's
``__init__`` and object's plain attribute access) is not called: the
handler is made and given the same attributes, set in the same order, and
only ``handle`` is called; the reply goes to the sockaddr the datagram came
from when ``handle`` left the socket and client address as they were.
Datagrams are received one at a time (no recvmmsg): one received ahead
would be lost to a KeyboardInterrupt or shutdown() that the standard
library leaves queued in the socket.

ThreadingMixIn's pool (``WorkerPool`` here) is fastsock._workers' pool as
setup.py compiles it into fastsock._cworkers.  While the server takes the
"submit_to_pool" shortcut, the loop hands each request to that pool itself,
as the hook would.  Its workers run each request through a _RequestRunner,
which does ``process_request_thread``'s work itself for a datagram server
that takes the shortcuts for all of it, and calls the hook otherwise.
"""

from cpython.bytes cimport (
    PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE)
from cpython.dict cimport PyDict_GetItem
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject_AsFileDescriptor
from cpython.pythread cimport (
    PY_LOCK_ACQUIRED, PyLockStatus, PyThread_allocate_lock,
    PyThread_free_lock, PyThread_get_thread_ident, PyThread_release_lock,
    PyThread_type_lock)
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from libc.errno cimport EAGAIN, EINTR
from libc.limits cimport INT_MAX
from libc.math cimport ceil
from libc.string cimport memcmp, memcpy, memset, strerror
from posix.unistd cimport close

from includes.posix_net cimport (
    AF_INET, AF_INET6, AF_UNIX, EWOULDBLOCK, INET6_ADDRSTRLEN, SHUT_WR,
    inet_ntop, ntohl, ntohs, shutdown, sockaddr, sockaddr_in, sockaddr_in6,
    sockaddr_storage, sockaddr_un, socklen_t)
from includes.poller cimport *
from includes.cio_sys cimport fs_socket_fd
from includes.type_version cimport fs_dict_version, fs_type_version

import _socket
import socket
from io import BytesIO
from time import monotonic

# The declared shortcuts (SHORTCUTS), read when a plan is built: by then the
# module has run, whichever of the two was imported first.
from fastsock import _server

NAME = "cython"

try:
    from fastsock._cio import is_plain_socket, stream_reader, stream_writer
except ImportError:  # built without it: the pure engine's file objects,
    # and no listening socket whose I/O can be known to be plain.
    from fastsock._pyengine import stream_reader, stream_writer

    def is_plain_socket(sock):
        return False


cdef bint _fd_in_object():
    try:
        from fastsock._cio import FD_LAYOUT_KNOWN
    except ImportError:
        return False
    return FD_LAYOUT_KNOWN


# Whether fs_socket_fd() reads a socket.socket's fileno() (see fastsock._cio).
cdef bint FD_IN_OBJECT = _fd_in_object()


cdef extern from "Python.h":
    object PyUnicode_DecodeFSDefaultAndSize(const char *s, Py_ssize_t size)
    int PySys_Audit(const char *event, const char *format, ...) except -1


cdef extern from *:
    """
    /* object.__new__(cls) for a class whose instances object's tp_new
       makes, without the call through the builtin: the same checks as
       that builtin's (no C base between cls and object with another
       tp_new), or NULL with nothing raised where they fail, for the
       caller to make the call. */
    static PyObject *fs_object_new(PyObject *cls, PyObject *noargs)
    {
        PyTypeObject *tp = (PyTypeObject *)cls, *base = tp;
        newfunc object_new = PyBaseObject_Type.tp_new;
        while (base != NULL && (base->tp_flags & Py_TPFLAGS_HEAPTYPE))
            base = base->tp_base;
        if (tp->tp_new != object_new || base == NULL
                || base->tp_new != object_new)
            return NULL;
        return object_new(tp, noargs, NULL);
    }
    """
    PyObject *fs_object_new(object cls, object noargs) except? NULL


cdef extern from "<string.h>" nogil:
    size_t strnlen(const char *s, size_t maxlen)


cdef extern from "pythread.h" nogil:
    ctypedef long long PY_TIMEOUT_T
    PY_TIMEOUT_T PY_TIMEOUT_MAX  # microseconds
    PyLockStatus PyThread_acquire_lock_timed(
        PyThread_type_lock lock, PY_TIMEOUT_T microseconds, int intr_flag)


cdef enum RequestPath:
    GENERIC     # server._handle_request_noblock()
    STREAM      # accept in C
    DATAGRAM    # recvfrom in C

# Requests taken per wake-up on the compiled way, at most.
cdef int BATCH = 64

# Client addresses of recent datagrams, by their sockaddr: a peer that sends
# again gets the same (immutable) tuple without formatting it anew.  Sized
# for a few hundred peers taking turns (a power of two).
cdef enum:
    ADDRESS_CACHE_SIZE = 512
    CACHED_SOCKADDR_MAX = 28  # sizeof(struct sockaddr_in6)

cdef struct CachedAddress:
    socklen_t addrlen
    unsigned char sockaddr[CACHED_SOCKADDR_MAX]
    PyObject *address  # a strong reference, or NULL

# The shortcuts of fastsock._server's tables that this engine takes, as the
# bits of a plan.  A shortcut the tables do not declare is never taken.
cdef enum:
    ACCEPT = 1 << 0
    RECEIVE = 1 << 1
    SKIP_SERVICE_ACTIONS = 1 << 2
    SKIP_VERIFY = 1 << 3
    PROCESS_IN_LOOP = 1 << 4
    SUBMIT_TO_POOL = 1 << 5
    PROCESS_IN_THREAD = 1 << 6
    BUILD_HANDLER = 1 << 7
    SHUTDOWN_STREAM = 1 << 8
    SHUTDOWN_DATAGRAM = 1 << 9
    DATAGRAM_IN_PLACE = 1 << 10

cdef dict SHORTCUT_BITS = {
    "accept": ACCEPT,
    "receive": RECEIVE,
    "skip_service_actions": SKIP_SERVICE_ACTIONS,
    "skip_verify": SKIP_VERIFY,
    "process_in_loop": PROCESS_IN_LOOP,
    "submit_to_pool": SUBMIT_TO_POOL,
    "process_in_thread": PROCESS_IN_THREAD,
    "build_handler": BUILD_HANDLER,
    "shutdown_stream": SHUTDOWN_STREAM,
    "shutdown_datagram": SHUTDOWN_DATAGRAM,
    "datagram_in_place": DATAGRAM_IN_PLACE,
}

# What the loop reads of a server's plan.
cdef int LOOP_SHORTCUTS = (
    ACCEPT | RECEIVE | SKIP_SERVICE_ACTIONS | SKIP_VERIFY | PROCESS_IN_LOOP
    | SUBMIT_TO_POOL | BUILD_HANDLER | SHUTDOWN_STREAM | SHUTDOWN_DATAGRAM)
# What a worker reads: it does process_request_thread's work itself only
# for a datagram server that takes all three.
cdef int WORKER_SHORTCUTS = (
    PROCESS_IN_THREAD | BUILD_HANDLER | SHUTDOWN_DATAGRAM)

cdef double INF = float("inf")
# The class of the connections accept() makes: the socket module's, as long
# as it is the C socket type's subclass (a library may have rebound
# socket.socket before fastsock was imported).
cdef object SocketType = (
    socket.socket if issubclass(socket.socket, _socket.socket)
    else _socket.socket)
cdef object getdefaulttimeout = socket.getdefaulttimeout
cdef object object_new = object.__new__
# What a datagram handler built in place is given, in this order.
cdef tuple HANDLER_ATTRIBUTES = (
    "request", "client_address", "server", "packet", "socket", "rfile",
    "wfile")
# An instance dict's entry that is not there, as a _ServerPlan records it.
cdef object ABSENT = object()


cdef object _os_error(int err):
    # OSError() picks the subclass for err, as PyErr_SetFromErrno does.
    return OSError(err, strerror(err).decode("utf-8", "replace"))


cdef int _timeout_ms(double seconds):
    """A wait of ``seconds``, in whole milliseconds rounded up."""
    if seconds <= 0:
        return 0
    if seconds >= INT_MAX / 1000.0:
        return INT_MAX
    return <int>ceil(seconds * 1000.0)


cdef object _address(const sockaddr *addr, socklen_t addrlen):
    """The client address socket.accept() or recvfrom() would return."""
    cdef char host[INET6_ADDRSTRLEN]
    cdef const sockaddr_in *sin
    cdef const sockaddr_in6 *sin6
    cdef const char *path
    cdef size_t path_offset
    if addrlen == 0:
        return None  # e.g. a datagram from an unbound Unix socket
    if addr.sa_family == AF_INET:
        sin = <const sockaddr_in *>addr
        return (_dotted_quad(<const unsigned char *>&sin.sin_addr),
                ntohs(sin.sin_port))
    if addr.sa_family == AF_INET6:
        sin6 = <const sockaddr_in6 *>addr
        inet_ntop(AF_INET6, &sin6.sin6_addr, host, sizeof(host))
        return (host.decode("ascii"), ntohs(sin6.sin6_port),
                ntohl(sin6.sin6_flowinfo), sin6.sin6_scope_id)
    # AF_UNIX: the caller takes the compiled way for no other family.
    path_offset = <size_t>((<const sockaddr_un *>addr).sun_path
                           - <const char *>addr)
    path = <const char *>addr + path_offset
    if FS_ABSTRACT_UNIX_NAMES and addrlen > path_offset and path[0] == 0:
        return PyBytes_FromStringAndSize(path, addrlen - path_offset)
    # A NUL-terminated path, in a zeroed sockaddr_storage.
    return PyUnicode_DecodeFSDefaultAndSize(
        path, strnlen(path, sizeof(sockaddr_storage) - path_offset))


cdef str _dotted_quad(const unsigned char *octets):
    """inet_ntop(AF_INET, ...) of 4 octets, without its printf."""
    cdef char host[16]
    cdef int i, n = 0
    cdef unsigned char b
    for i in range(4):
        b = octets[i]
        if b >= 100:
            host[n] = c'0' + b // 100
            n += 1
        if b >= 10:
            host[n] = c'0' + b // 10 % 10
            n += 1
        host[n] = c'0' + b % 10
        host[n + 1] = c'.'
        n += 2
    return host[:n - 1].decode("ascii")


cdef bint _applies(object shortcut, object cls, object owner,
                   object instance_dict) except -1:
    """Whether ``shortcut`` (an entry of fastsock._server's tables) applies
    to ``owner``, of class ``cls`` and with the instance dict
    ``instance_dict`` (None for none, or for a class): the class has each
    hook it replaces as fastsock defined it, the instance none of them,
    and none of the attributes it needs unset is set."""
    for hook, default in shortcut.defaults:
        if getattr(cls, hook, None) is not default:
            return False
        if instance_dict is not None and hook in instance_dict:
            return False
    for attribute in shortcut.unset:
        if getattr(owner, attribute, None):
            return False
    return True


cdef class _ServerPlan:
    """Which of the shortcuts of fastsock._server.SHORTCUTS that its reader
    takes (``wanted``, as bits) apply to one server now.

    ``current()`` answers from the plan as built, after checking per call
    that the server's class keeps its version tag and that the watched
    entries of the instance's dict (the hooks the shortcuts replace and the
    attributes they need unset) are the objects they were; it builds the
    plan again otherwise.  Workers share one: see the module docstring."""

    cdef object _server
    cdef int _wanted
    cdef int _shortcuts
    cdef unsigned int _type_version  # 0: build before reading
    cdef object _instance_dict  # None where the server has none
    cdef unsigned long long _dict_version  # 0: not known
    # The watched names with what the instance's dict held for each when
    # the plan was built: (name, value or ABSENT, name, value, ...).
    cdef tuple _watched

    def __cinit__(self, server, int wanted):
        self._server = server
        self._wanted = wanted
        self._watched = ()

    cdef int current(self) except -1:
        """The shortcuts that apply to the server now, as bits."""
        cdef unsigned int version = fs_type_version(type(self._server))
        cdef unsigned long long dict_version
        if version == 0 or version != self._type_version:
            return self._build()
        if self._instance_dict is None:
            return self._shortcuts
        dict_version = _instance_dict_version(self._instance_dict)
        if dict_version != 0 and dict_version == self._dict_version:
            return self._shortcuts  # the same entries as at the last look
        if not self._instance_unchanged():
            return self._build()
        self._dict_version = dict_version
        return self._shortcuts

    cdef bint _instance_unchanged(self) except -1:
        cdef tuple watched = self._watched
        cdef Py_ssize_t i
        for i in range(0, len(watched), 2):
            if (_entry(self._instance_dict, watched[i])
                    != <PyObject *>watched[i + 1]):
                return False
        return True

    cdef int _build(self) except -1:
        """Work the plan out from fastsock._server.SHORTCUTS."""
        cdef int shortcuts = 0, bit
        server = self._server
        cls = type(server)
        table = _server.SHORTCUTS
        names = []
        for name, shortcut in table.items():
            if SHORTCUT_BITS.get(name, 0) & self._wanted:
                for hook, _ in shortcut.defaults:
                    names.append(hook)
                names.extend(shortcut.unset)
        instance_dict = getattr(server, "__dict__", None)
        # Read first: a change from here on makes the next look build again.
        cdef unsigned long long dict_version = _instance_dict_version(
            instance_dict)
        watched = []
        if instance_dict is not None:
            for name in dict.fromkeys(names):
                watched += [name, <object>_entry(instance_dict, name)]
        for name, shortcut in table.items():
            bit = SHORTCUT_BITS.get(name, 0)
            if bit & self._wanted and _applies(shortcut, cls, server,
                                               instance_dict):
                shortcuts |= bit
        watched_entries = tuple(watched)
        previous = (self._instance_dict, self._watched)  # freed on return
        # From here on no Python code runs until the plan is replaced whole:
        # see the module docstring.
        self._instance_dict = instance_dict
        self._dict_version = dict_version
        self._watched = watched_entries
        self._shortcuts = shortcuts
        # Read last: the look-ups above gave the class a valid tag.
        self._type_version = fs_type_version(cls)
        return shortcuts


cdef inline PyObject *_entry(object instance_dict, object name):
    """The object the dict holds for ``name``, or ABSENT; borrowed."""
    cdef PyObject *value = PyDict_GetItem(instance_dict, name)
    return <PyObject *>ABSENT if value == NULL else value


cdef unsigned long long _instance_dict_version(object instance_dict):
    """The dict's version tag where it can be relied on, else 0."""
    if type(instance_dict) is not dict:
        return 0
    return fs_dict_version(<dict>instance_dict)


cdef class _HandlerPlan:
    """Whether a handler class takes HANDLER_SHORTCUTS' "datagram_in_place":
    its instances are plain objects that keep BaseRequestHandler's
    ``__init__`` and DatagramRequestHandler's ``setup`` and ``finish``, and
    the class defines none of the attributes those set (so that setup()
    reads back what it stored).  The answer for the last class asked about
    is kept until that class (or a base) changes; the class is known by its
    address and version tag (tags are never reused), so no reference to it
    is kept."""

    cdef PyObject *_cls
    cdef unsigned int _version
    cdef bint _in_place

    cdef bint in_place(self, cls) except -1:
        if type(cls) is not type:
            return False  # a metaclass could make calling it do anything
        cdef unsigned int version = fs_type_version(cls)
        if (<PyObject *>cls == self._cls and version != 0
                and version == self._version):
            return self._in_place
        cdef bint in_place = (
            _applies(_server.HANDLER_SHORTCUTS["datagram_in_place"], cls, cls,
                     None)
            and not any(hasattr(cls, name) for name in HANDLER_ATTRIBUTES))
        # Workers share one: the fields set together, after every look-up.
        self._cls = <PyObject *>cls
        self._in_place = in_place
        # Read last: the look-ups above gave the class a valid tag.
        self._version = fs_type_version(cls)
        return in_place


cdef int _build_handler(server, request, client_address,
                        _HandlerPlan handlers, ServeLoop loop) except -1:
    """What BaseServer.finish_request() does: build the server's
    RequestHandlerClass for the request; in place (_serve_in_place) for a
    datagram handler class that ``handlers`` accepts (None for a stream)."""
    cls = server.RequestHandlerClass
    if handlers is not None and handlers.in_place(cls):
        _serve_in_place(cls, request, client_address, server, loop)
    else:
        cls(request, client_address, server)
    return 0


cdef int _serve_in_place(cls, request, client_address, server,
                         ServeLoop loop) except -1:
    """``cls(request, client_address, server)`` for a handler class that
    _HandlerPlan accepts: what BaseRequestHandler.__init__ and
    DatagramRequestHandler.setup() do, the same attributes set in the same
    order; handle(); then DatagramRequestHandler.finish()'s reply, sent by
    ``loop`` where the loop that received the datagram is the caller."""
    cdef PyObject *made = fs_object_new(cls, ())
    if made == NULL:
        handler = object_new(cls)
    else:
        handler = <object>made
        Py_XDECREF(made)  # <object> took a reference of its own
    handler.request = request
    handler.client_address = client_address
    handler.server = server
    packet, sock = request
    handler.packet = packet
    handler.socket = sock
    handler.rfile = BytesIO(packet)
    handler.wfile = BytesIO()
    try:
        handler.handle()
    finally:
        if loop is None or not loop._sent_reply(handler, client_address):
            # finish()'s own call, in its order.
            sendto = handler.socket.sendto
            sendto(handler.wfile.getvalue(), handler.client_address)
    return 0


def WorkerPool(server):
    """The worker pool of a ThreadingMixIn server: fastsock._workers'
    WorkerPool as compiled into fastsock._cworkers, its workers waiting on
    Batons and running each request through a _RequestRunner.  Imported on
    the first pool: servers without threads never need it."""
    try:
        from fastsock._cworkers import WorkerPool as pool_class
    except ImportError:  # built without it: the pure pool, driven the same way
        from fastsock._workers import WorkerPool as pool_class
    return pool_class(server, _RequestRunner(server), Baton)


cdef class Baton:
    """What a worker of the compiled pool waits on: a lock with
    threading.Lock's ``acquire(blocking=True, timeout=-1)`` and
    ``release()``, except that release() lets go of the GIL first.

    The loop hands a request over while it holds the GIL.  Woken by
    threading.Lock.release(), the worker would at once wait for the GIL, and
    the two threads would take turns on the CPU until the loop next let go
    of it; woken here, it finds the GIL free and runs its request.  On a
    busy datagram server that is about one thread switch per hand-off
    instead of three or more."""

    cdef PyThread_type_lock _lock
    cdef bint _locked

    def __cinit__(self):
        self._lock = PyThread_allocate_lock()
        if self._lock == NULL:
            raise MemoryError

    def __dealloc__(self):
        if self._lock != NULL:
            if self._locked:
                PyThread_release_lock(self._lock)
            PyThread_free_lock(self._lock)

    def acquire(self, bint blocking=True, double timeout=-1):
        """As threading.Lock.acquire; the GIL is released while waiting."""
        cdef PY_TIMEOUT_T microseconds = -1
        cdef PyLockStatus status
        if not blocking:
            if timeout != -1:
                raise ValueError("can't specify a timeout for a "
                                 "non-blocking call")
            microseconds = 0
        elif timeout != -1:
            if timeout < 0:
                raise ValueError("timeout value must be a non-negative "
                                 "number")
            if timeout * 1e6 > PY_TIMEOUT_MAX:
                raise OverflowError("timeout value is too large")
            microseconds = <PY_TIMEOUT_T>ceil(timeout * 1e6)
        with nogil:
            # Retried where a signal interrupts it: signal handlers run in
            # the main thread, never in a worker.
            status = PyThread_acquire_lock_timed(self._lock, microseconds, 0)
        if status != PY_LOCK_ACQUIRED:
            return False
        self._locked = True
        return True

    def release(self):
        """As threading.Lock.release, the waiter woken without the GIL."""
        if not self._locked:
            raise RuntimeError("release unlocked lock")
        self._locked = False
        with nogil:
            PyThread_release_lock(self._lock)

    def locked(self):
        return self._locked


cdef class _RequestRunner:
    """``server.process_request_thread(request, client_address)`` for a
    worker of the compiled pool.

    A datagram server whose plan has the "process_in_thread",
    "build_handler" and "shutdown_datagram" shortcuts has that hook's work
    done here: the handler built as finish_request() builds it (in place
    for a class that _HandlerPlan accepts), an Exception reported by
    handle_error(), and nothing for shutdown_request() to do.  Any other
    server has the hook called."""

    cdef object _server
    cdef _ServerPlan _plan
    cdef _HandlerPlan _handlers

    def __cinit__(self, server):
        self._server = server
        self._plan = _ServerPlan(server, WORKER_SHORTCUTS)
        self._handlers = _HandlerPlan()

    def __call__(self, request, client_address):
        server = self._server
        if self._plan.current() != WORKER_SHORTCUTS:
            server.process_request_thread(request, client_address)
            return
        try:
            _build_handler(server, request, client_address, self._handlers,
                           None)
        except Exception:
            server.handle_error(request, client_address)



cdef class ServeLoop:
    """The loop of one ``serve_forever()`` call: see the module docstring."""

    cdef object _server
    cdef fs_poller _poller
    cdef bint _stopping
    cdef bint _paused
    cdef double _paused_until  # a monotonic() deadline; INF: until resumed
    cdef unsigned long _loop_thread  # the thread in run(), 0 before

    # The server's plan, and the path chosen from it: the shortcuts it
    # had, and the listening socket's class's version tag then.
    cdef _ServerPlan _plan
    cdef int _shortcuts
    cdef unsigned int _listener_version
    cdef RequestPath _path
    cdef int _batch
    cdef object _listener
    cdef int _family, _type, _proto
    cdef bint _call_service_actions
    cdef bint _call_verify, _call_process, _call_finish, _call_shutdown
    cdef bint _submit_to_pool

    # Receive buffer for datagrams, grown to max_packet_size.
    cdef char *_dgram_buf
    cdef size_t _dgram_buf_size
    # The sender of the datagram being handled, as recvfrom() gave it.
    cdef sockaddr_storage _peer
    cdef socklen_t _peer_len
    cdef CachedAddress _addresses[ADDRESS_CACHE_SIZE]

    # Whether RequestHandlerClass runs in place, for a datagram.
    cdef _HandlerPlan _handlers

    def __cinit__(self, server):
        fs_poller_init(&self._poller)
        self._server = server
        self._plan = _ServerPlan(server, LOOP_SHORTCUTS)
        self._handlers = _HandlerPlan()
        cdef int err = fs_poller_open(
            &self._poller, PyObject_AsFileDescriptor(server.fileno()),
            bool(server._listener_shared))
        if err < 0:
            raise _os_error(-err)

    def __dealloc__(self):
        self._release()

    cdef void _release(self):
        cdef int i
        fs_poller_close(&self._poller)
        PyMem_Free(self._dgram_buf)
        self._dgram_buf = NULL
        self._dgram_buf_size = 0
        for i in range(ADDRESS_CACHE_SIZE):
            Py_XDECREF(self._addresses[i].address)
            self._addresses[i].address = NULL

    def run(self, poll_interval):
        """Serve until stop(); see BaseServer.serve_forever."""
        cdef int ready, timeout_ms
        cdef int interval_ms = (-1 if poll_interval is None
                                else _timeout_ms(poll_interval))
        server = self._server
        self._loop_thread = PyThread_get_thread_ident()
        self._choose_path(self._plan.current())
        while not self._stopping:
            timeout_ms = self._prepare_wait(interval_ms)
            with nogil:
                ready = fs_poller_wait(&self._poller, timeout_ms)
            # A signal may have been taken by another thread, leaving this
            # wait uninterrupted: look for pending handlers after every wait,
            # as the interpreter would between bytecodes.  A handler's
            # exception ends the loop.
            PyErr_CheckSignals()
            if ready < 0:
                if ready != -EINTR:
                    raise _os_error(-ready)
                continue
            if self._stopping:
                break
            if ready & FS_WOKEN:
                fs_poller_drain(&self._poller)
            self._refresh_path()
            if ready & FS_LISTENER_READY and not self._paused:
                if self._path == STREAM:
                    self._accept_requests()
                elif self._path == DATAGRAM:
                    self._receive_requests()
                else:
                    server._handle_request_noblock()
            if self._call_service_actions:
                server.service_actions()

    cdef int _choose_path(self, int shortcuts) except -1:
        """Pick the way requests are taken, from the server's plan (its
        ``shortcuts``); see the module docstring."""
        server = self._server
        self._shortcuts = shortcuts
        self._call_service_actions = not shortcuts & SKIP_SERVICE_ACTIONS
        self._path = GENERIC
        listener = self._listener = getattr(server, "socket", None)
        if (shortcuts & (ACCEPT | RECEIVE)
                and is_plain_socket(listener)
                and listener.fileno() == self._poller.listen_fd
                and listener.family in (AF_INET, AF_INET6, AF_UNIX)):
            self._path = STREAM if shortcuts & ACCEPT else DATAGRAM
            self._family, self._type, self._proto = (
                listener.family, listener.type, listener.proto)
        self._call_verify = not shortcuts & SKIP_VERIFY
        self._call_process = not shortcuts & PROCESS_IN_LOOP
        # ThreadingMixIn's own process_request only hands the request to
        # the server's pool, once it has made one.
        self._submit_to_pool = (self._call_process
                                and shortcuts & SUBMIT_TO_POOL)
        # A datagram handed to another thread (ThreadingMixIn) needs the GIL
        # there: a batch taken meanwhile would keep its worker waiting and
        # the idle ones busy, making more threads start.
        self._batch = (1 if self._call_service_actions
                       or (self._path == DATAGRAM and self._call_process)
                       else BATCH)
        self._call_finish = not shortcuts & BUILD_HANDLER
        self._call_shutdown = not shortcuts & (
            SHUTDOWN_STREAM if self._path == STREAM else SHUTDOWN_DATAGRAM)
        # Read last: is_plain_socket() gave the class a valid tag.
        self._listener_version = fs_type_version(type(listener))
        return 0

    cdef int _refresh_path(self) except -1:
        """Choose again if the server's plan changed, or the class of its
        listening socket (a patched method could make it no longer
        plain)."""
        cdef int shortcuts = self._plan.current()
        if (shortcuts != self._shortcuts or fs_type_version(
                type(self._listener)) != self._listener_version):
            self._choose_path(shortcuts)
        return 0

    cdef int _listener_fd(self) except? -2:
        """``self._listener.fileno()``, read from the socket object where
        its layout is known (the listener is a plain socket.socket)."""
        if FD_IN_OBJECT:
            return fs_socket_fd(self._listener)
        return self._listener.fileno()

    cdef int _prepare_wait(self, int interval_ms) except? -2:
        """Watch the listener unless paused; return the wait's timeout."""
        cdef double left = INF
        cdef int left_ms
        if self._paused and self._paused_until != INF:
            left = self._paused_until - monotonic()
            if left <= 0:
                self._paused = False
        cdef int err = fs_poller_set_listening(&self._poller, not self._paused)
        if err < 0:
            raise _os_error(-err)
        if not self._paused or left == INF:
            return interval_ms
        left_ms = _timeout_ms(left)
        return left_ms if interval_ms < 0 or left_ms < interval_ms else interval_ms

    cdef bint _next_request(self, int taken, RequestPath path) except -1:
        """Whether to try another request in this wake-up, by ``path``."""
        if taken >= self._batch or self._stopping or self._paused:
            return False
        self._refresh_path()
        return (self._path == path
                and self._server.socket is self._listener
                # Not closed by the request (its number could be reused).
                and self._listener_fd() == self._poller.listen_fd)

    cdef int _accept_requests(self) except -1:
        """Accept and handle connections while they come, up to a batch."""
        cdef sockaddr_storage addr
        cdef socklen_t addrlen
        cdef int fd, taken = 0
        cdef int listen_fd = self._poller.listen_fd
        while True:
            memset(&addr, 0, sizeof(addr))
            addrlen = sizeof(addr)
            # The listener may be blocking: accept only once the wait (or,
            # for the ones after the first, a zero-timeout poll) saw a
            # connection waiting.
            with nogil:
                fd = fs_accept(listen_fd, <sockaddr *>&addr, &addrlen)
            if fd == -EINTR:
                PyErr_CheckSignals()
                continue
            if fd < 0:
                if fd != -EAGAIN and fd != -EWOULDBLOCK:
                    self._server._accept_failed(_os_error(-fd))
                return 0
            try:
                client_address = _address(<sockaddr *>&addr, addrlen)
                request = SocketType(self._family, self._type, self._proto, fd)
            except BaseException:
                close(fd)
                raise
            if (FS_ACCEPT_INHERITS_NONBLOCK and getdefaulttimeout() is None
                    and self._listener.gettimeout()):
                # The new socket took the listener's O_NONBLOCK: as
                # socket.accept() does, make it blocking.
                request.setblocking(True)
            self._handle(request, client_address)
            taken += 1
            # The wait's word on the listener held for the first only.
            if (not self._next_request(taken, STREAM)
                    or not fs_input_pending(listen_fd)):
                return 0

    cdef int _receive_requests(self) except -1:
        """Receive datagrams and handle each, up to a batch."""
        cdef socklen_t addrlen
        cdef ssize_t got
        cdef Py_ssize_t size
        cdef int taken = 0
        server = self._server
        while True:
            max_packet_size = server.max_packet_size
            if type(max_packet_size) is not int or max_packet_size < 0:
                # recvfrom() raises its own error: let get_request() meet it.
                server._handle_request_noblock()
                return 0
            size = max_packet_size
            self._reserve_dgram_buf(size)
            memset(&self._peer, 0, sizeof(self._peer))
            addrlen = sizeof(self._peer)
            got = fs_recvfrom(self._poller.listen_fd, self._dgram_buf, size,
                              <sockaddr *>&self._peer, &addrlen)
            if got == -EINTR:
                PyErr_CheckSignals()
                continue
            if got < 0:
                if got != -EAGAIN and got != -EWOULDBLOCK:
                    server._accept_failed(_os_error(<int>-got))
                return 0
            self._peer_len = addrlen
            data = PyBytes_FromStringAndSize(self._dgram_buf, got)
            client_address = self._client_address()
            self._handle((data, server.socket), client_address)
            taken += 1
            if not self._next_request(taken, DATAGRAM):
                return 0

    cdef object _client_address(self):
        """_address() of the datagram's sender, from the cache if there."""
        cdef const unsigned char *key = <const unsigned char *>&self._peer
        cdef socklen_t i, addrlen = self._peer_len
        cdef unsigned int h = addrlen
        cdef CachedAddress *entry
        if (addrlen == 0 or addrlen > CACHED_SOCKADDR_MAX
                or self._peer.ss_family == AF_UNIX):
            return _address(<sockaddr *>&self._peer, addrlen)
        for i in range(addrlen):
            h = h * 31 + key[i]
        # Mixed so that the low bits, which pick the entry, take in all.
        h ^= h >> 16
        h *= 0x45d9f3b
        h ^= h >> 16
        entry = &self._addresses[h % ADDRESS_CACHE_SIZE]
        if (entry.address != NULL and entry.addrlen == addrlen
                and memcmp(entry.sockaddr, key, addrlen) == 0):
            return <object>entry.address
        address = _address(<sockaddr *>&self._peer, addrlen)
        Py_INCREF(address)
        Py_XDECREF(entry.address)
        entry.address = <PyObject *>address
        entry.addrlen = addrlen
        memcpy(entry.sockaddr, key, addrlen)
        return address

    cdef int _reserve_dgram_buf(self, size_t size) except -1:
        cdef void *grown
        if size > self._dgram_buf_size:
            grown = PyMem_Realloc(self._dgram_buf, size)
            if grown == NULL:
                raise MemoryError
            self._dgram_buf = <char *>grown
            self._dgram_buf_size = size
        return 0

    cdef int _handle(self, request, client_address) except -1:
        """BaseServer._handle_request_noblock after get_request()."""
        server = self._server
        if self._call_verify and not server.verify_request(request,
                                                           client_address):
            self._shutdown_request(request)
            return 0
        try:
            if self._call_process:
                pool = server._workers if self._submit_to_pool else None
                if pool is None:
                    server.process_request(request, client_address)
                else:
                    pool.submit(request, client_address)
            else:
                if self._call_finish:
                    server.finish_request(request, client_address)
                else:
                    _build_handler(server, request, client_address,
                                   self._handlers if self._path == DATAGRAM
                                   else None, self)
                self._shutdown_request(request)
        except Exception:
            server.handle_error(request, client_address)
            self._shutdown_request(request)
        except BaseException:
            self._shutdown_request(request)
            raise
        return 0

    cdef bint _sent_reply(self, handler, client_address) except -1:
        """DatagramRequestHandler.finish()'s ``self.socket.sendto(
        self.wfile.getvalue(), self.client_address)`` for a handler built
        in place (_serve_in_place), when the socket is the listening one:
        the datagram goes out in C to the sockaddr it came from, no address
        to parse, when the address is the request's own and the reply
        bytes.  False, having done nothing, for any other socket."""
        cdef ssize_t sent
        sock = handler.socket
        if (sock is not self._listener
                # Its class still as plain as when the path was chosen.
                or fs_type_version(type(sock)) != self._listener_version):
            return False
        data = handler.wfile.getvalue()
        address = handler.client_address
        if (address is not client_address or self._peer_len == 0
                or type(data) is not bytes
                or self._listener_fd() != self._poller.listen_fd):
            sock.sendto(data, address)
            return True
        PySys_Audit("socket.sendto", "OO", <PyObject *>sock,
                    <PyObject *>address)
        sent = fs_sendto(self._poller.listen_fd, PyBytes_AS_STRING(data),
                         PyBytes_GET_SIZE(data), <sockaddr *>&self._peer,
                         self._peer_len)
        if sent == -EAGAIN or sent == -EWOULDBLOCK or sent == -EINTR:
            # Full send buffer: socket.sendto() blocks or honours the
            # socket's timeout.
            sock.sendto(data, address)
        elif sent < 0:
            raise _os_error(<int>-sent)
        return True

    cdef int _shutdown_request(self, request) except -1:
        cdef int fd
        if self._call_shutdown:
            self._server.shutdown_request(request)
        elif self._path == STREAM:
            # TCPServer.shutdown_request: its OSError is ignored, so the
            # call is made directly, on the descriptor if still open.
            fd = request.fileno()
            if fd >= 0:
                shutdown(fd, SHUT_WR)
            request.close()
        return 0

    def stop(self):
        """End run() once the current request is done; thread-safe."""
        self._stopping = True
        fs_poller_wake(&self._poller)

    def pause_accepting(self, until=None):
        """Stop watching the listener until ``until`` (monotonic) or resumed."""
        self._paused_until = INF if until is None else until
        self._paused = True
        self._wake_unless_looping()

    def resume_accepting(self):
        """Watch the listener again at once; thread-safe."""
        self._paused = False
        self._wake_unless_looping()

    cdef void _wake_unless_looping(self):
        # The loop's own thread (a request taken in the loop, the fairness
        # rule) needs no wake-up: it looks at the pause before its next
        # wait.  Any other thread's change must end the wait.
        if PyThread_get_thread_ident() != self._loop_thread:
            fs_poller_wake(&self._poller)

    def close(self):
        """Release the poller and wake-up descriptors."""
        self._release()


def wait_readable(fd, timeout):
    """Wait up to ``timeout`` seconds (None: forever) for ``fd``; return
    whether it became readable.  The GIL is released while waiting."""
    cdef int cfd = PyObject_AsFileDescriptor(fd)
    cdef int ready, timeout_ms = -1
    cdef double deadline_ms = 0
    if timeout is not None:
        timeout_ms = _timeout_ms(timeout)
        deadline_ms = fs_monotonic_ms() + timeout_ms
    while True:
        with nogil:
            ready = fs_wait_readable(cfd, timeout_ms)
        if ready >= 0:
            return ready > 0
        if ready != -EINTR:
            raise _os_error(-ready)
        PyErr_CheckSignals()
        if timeout is not None:
            timeout_ms = _timeout_ms((deadline_ms - fs_monotonic_ms()) / 1000.0)
