"""The compiled engine: the serve_forever() loop in C.

It waits in C (epoll, kqueue or poll(), see includes/poller.h) with the GIL
released, on the listening socket and on a wake-up descriptor that stop(),
pause_accepting() and resume_accepting() write to from any thread.

It looks at which hooks the server keeps from fastsock's base classes, and
takes each request one of two ways:

- the generic way, when ``get_request``, ``_handle_request_noblock`` or
  ``fileno`` is the server's own, when the listening socket is not a plain
  ``socket.socket`` (an ``ssl.SSLSocket``, say), or when ``tls_context`` is
  set (TCPServer.get_request() then does more than accept): the loop calls
  ``server._handle_request_noblock()``, exactly as the pure engine does;
- the compiled way otherwise: the connection is accepted (or the datagram
  received) in C and the request goes through the same steps as
  ``BaseServer._handle_request_noblock``.  A hook the server overrides is
  called as such; a default one is done in place: no verify_request call,
  the handler built directly for finish_request (unless ``proxy_protocol``
  is set: TCPServer.finish_request then reads the PROXY header first, and
  is called), shutdown(SHUT_WR) and close() for shutdown_request.

The choice is made when run() starts and made again whenever the server's
class (or a base) is modified or a hook is set on or deleted from the
instance: a class's version tag (includes/type_version.h) and a look at the
instance's dict tell, per request: the dict's keys are looked at again
only when its own version tag (where the interpreter keeps one that can be
relied on) has changed.

On the compiled way one wake-up takes up to a batch of requests, one after
the other, each only once the one before is done, and only while nothing
asked the loop to stop or pause; what is not taken stays queued in the
socket, as with the standard library.  A server with its own
``service_actions`` takes one request per loop turn, since that hook may
need to run between requests (ForkingMixIn caps its children there); so
does a datagram server with its own ``process_request``, which hands the
datagram to a thread (ThreadingMixIn) that needs the GIL to serve it.

For a handler class that keeps DatagramRequestHandler's ``setup`` and
``finish`` (and BaseRequestHandler's ``__init__``), the compiled way does
their work in place and calls only ``handle``: the same attributes, set in
the same order, and the reply sent to the sockaddr the datagram came from
when ``handle`` left the socket and client address as they were.
Datagrams are received one at a time (no recvmmsg): one received ahead
would be lost to a KeyboardInterrupt or shutdown() that the standard
library leaves queued in the socket.

ThreadingMixIn's pool (``WorkerPool`` here) is fastsock._workers' pool as
setup.py compiles it into fastsock._cworkers.  While the server keeps
ThreadingMixIn's ``process_request``, the loop hands each request to that
pool itself, as the hook would.  Its workers run each request through a
_RequestRunner, which calls ``process_request_thread`` where the server
overrides it (or a hook it calls) and otherwise does its work here, with
datagram handlers built in place as above.
"""

from cpython.bytes cimport (
    PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE)
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject_AsFileDescriptor
from cpython.pythread cimport (
    PY_LOCK_ACQUIRED, PyLockStatus, PyThread_allocate_lock,
    PyThread_free_lock, PyThread_release_lock, PyThread_type_lock)
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

NAME = "cython"

try:
    from fastsock._cio import stream_reader, stream_writer
except ImportError:  # built without it: the pure engine's file objects
    from fastsock._pyengine import stream_reader, stream_writer


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

# What the choice of path depends on, besides the server's class: names
# that, set on the instance, override the class's.
cdef tuple WATCHED = (
    "_handle_request_noblock", "fileno", "get_request", "verify_request",
    "process_request", "finish_request", "shutdown_request", "close_request",
    "service_actions", "tls_context", "proxy_protocol")

cdef double INF = float("inf")
# The socket module's class, as long as it is the C socket type's subclass:
# a library that rebinds socket.socket before fastsock is imported must not
# have its class taken for one whose descriptor can be read from C.
cdef object SocketType = (
    socket.socket if issubclass(socket.socket, _socket.socket)
    else _socket.socket)
cdef object getdefaulttimeout = socket.getdefaulttimeout
cdef object object_new = object.__new__
cdef object object_getattribute = object.__getattribute__
cdef object object_setattr = object.__setattr__
# What a datagram handler built in place is given, in this order.
cdef tuple HANDLER_ATTRIBUTES = (
    "request", "client_address", "server", "packet", "socket", "rfile",
    "wfile")
cdef tuple BASES = None  # fastsock's (BaseServer, TCPServer, UDPServer)
cdef object THREADING_MIXIN = None  # fastsock's ThreadingMixIn
cdef tuple HANDLER_BASES = None  # (BaseRequestHandler, DatagramRequestHandler)
cdef dict DEFINED = None  # fastsock._server.DEFINED, once imported


cdef tuple _bases():
    global BASES, THREADING_MIXIN
    if BASES is None:
        # Imported late: fastsock._server imports the engines.
        from fastsock._server import (
            BaseServer, TCPServer, ThreadingMixIn, UDPServer)
        BASES = (BaseServer, TCPServer, UDPServer)
        THREADING_MIXIN = ThreadingMixIn
    return BASES


cdef tuple _handler_bases():
    global HANDLER_BASES
    if HANDLER_BASES is None:
        from fastsock._server import (
            BaseRequestHandler, DatagramRequestHandler)
        HANDLER_BASES = (BaseRequestHandler, DatagramRequestHandler)
    return HANDLER_BASES


cdef object _default(object base, str name):
    """``base``'s ``name`` as fastsock defines it, taken when its classes
    were made: a patch of the base class counts as an override."""
    global DEFINED
    if DEFINED is None:
        from fastsock._server import DEFINED as defined
        DEFINED = defined
    return DEFINED[base, name]


cdef bint _class_keeps(object cls, tuple hooks) except -1:
    """Whether class ``cls`` has each ``(base, name)`` of ``hooks`` as
    fastsock defines it."""
    for base, name in hooks:
        if getattr(cls, name, None) is not _default(base, name):
            return False
    return True


cdef bint _keeps(object server, str name, object base) except -1:
    """Whether ``server.name`` is still ``base``'s own method."""
    return (getattr(type(server), name, None) is _default(base, name)
            and name not in getattr(server, "__dict__", ()))


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


cdef class _InPlaceHandlers:
    """Whether a handler class runs as fastsock's DatagramRequestHandler
    does, all but handle() its own: a plain class that keeps object.__new__,
    BaseRequestHandler.__init__ and DatagramRequestHandler's setup() and
    finish().  The answer for the last class asked about is kept until the
    class (or a base) changes, as for the server's hooks."""

    cdef object _cls
    cdef unsigned int _version
    cdef bint _inline

    cdef bint accepts(self, cls) except -1:
        if type(cls) is not type:
            return False  # a metaclass could make calling it do anything
        cdef unsigned int version = fs_type_version(cls)
        if cls is self._cls and version != 0 and version == self._version:
            return self._inline
        BaseRequestHandler, DatagramRequestHandler = _handler_bases()
        # Workers share one: set the fields together, after every look-up.
        cdef bint inline = (
            getattr(cls, "__new__", None) is object_new
            # Plain attribute access: setup() reads back what it stored.
            and getattr(cls, "__getattribute__", None) is object_getattribute
            and getattr(cls, "__setattr__", None) is object_setattr
            and not any(hasattr(cls, name) for name in HANDLER_ATTRIBUTES)
            and _class_keeps(cls, (
                (BaseRequestHandler, "__init__"),
                (DatagramRequestHandler, "setup"),
                (DatagramRequestHandler, "finish"))))
        self._cls = cls
        self._inline = inline
        # Read last: the look-ups above gave the class a valid tag.
        self._version = fs_type_version(cls)
        return inline


cdef object _datagram_handler(cls, request, client_address, server):
    """The handler ``cls(request, client_address, server)`` builds, up to
    handle(), for a class that _InPlaceHandlers accepts: what
    BaseRequestHandler.__init__ and DatagramRequestHandler.setup() do, the
    same attributes set in the same order.  The caller calls handle(), then
    does finish()'s work."""
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
    return handler


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


# The hooks whose defaults _RequestRunner does in place.
cdef tuple RUNNER_HOOKS = (
    "process_request_thread", "finish_request", "shutdown_request",
    "close_request")


cdef class _RequestRunner:
    """``server.process_request_thread(request, client_address)`` for a
    worker of the compiled pool.

    A datagram server that keeps ThreadingMixIn's process_request_thread
    and UDPServer's finish_request, shutdown_request and close_request, and
    has no tls_context and no proxy_protocol, has that hook's work done here: the handler built
    as finish_request() builds it, in place (_datagram_handler) for a class
    that _InPlaceHandlers accepts, its reply then sent with the call
    DatagramRequestHandler.finish() makes; an Exception goes to
    handle_error(); shutdown_request() would do nothing.  Any other server
    has the hook called.  Which applies is decided per request, from the
    class's version tag and the instance's dict, as the loop decides."""

    cdef object _server
    cdef _InPlaceHandlers _in_place
    cdef unsigned int _type_version
    cdef bint _class_keeps

    def __cinit__(self, server):
        self._server = server
        self._in_place = _InPlaceHandlers()

    def __call__(self, request, client_address):
        server = self._server
        if not self._keeps_hooks(server):
            server.process_request_thread(request, client_address)
            return
        try:
            cls = server.RequestHandlerClass
            if self._in_place.accepts(cls):
                handler = _datagram_handler(cls, request, client_address,
                                            server)
                try:
                    handler.handle()
                finally:
                    handler.socket.sendto(handler.wfile.getvalue(),
                                          handler.client_address)
            else:
                cls(request, client_address, server)
        except Exception:
            server.handle_error(request, client_address)

    cdef bint _keeps_hooks(self, server) except -1:
        cls = type(server)
        cdef unsigned int version = fs_type_version(cls)
        cdef bint keeps
        if version == 0 or version != self._type_version:
            BaseServer, TCPServer, UDPServer = _bases()
            keeps = _class_keeps(cls, (
                (THREADING_MIXIN, "process_request_thread"),
                (UDPServer, "finish_request"),
                (UDPServer, "shutdown_request"),
                (UDPServer, "close_request")))
            # Workers share one: set the fields together.
            self._class_keeps = keeps
            # Read last: the look-ups above gave the class a valid tag.
            self._type_version = fs_type_version(cls)
        if (not self._class_keeps
                or getattr(server, "tls_context", None) is not None
                or getattr(server, "proxy_protocol", False)):
            return False
        instance_dict = getattr(server, "__dict__", None)
        if instance_dict:
            for name in RUNNER_HOOKS:
                if name in instance_dict:
                    return False
        return True


cdef class ServeLoop:
    """The loop of one ``serve_forever()`` call: see the module docstring."""

    cdef object _server
    cdef fs_poller _poller
    cdef bint _stopping
    cdef bint _paused
    cdef double _paused_until  # a monotonic() deadline; INF: until resumed

    # The path chosen, and what it was chosen from.
    cdef RequestPath _path
    cdef int _batch
    cdef object _listener
    cdef int _family, _type, _proto
    cdef bint _call_service_actions
    cdef bint _call_verify, _call_process, _call_finish, _call_shutdown
    cdef bint _submit_to_pool
    cdef unsigned int _type_version
    cdef object _instance_dict
    cdef unsigned int _watched_mask
    cdef unsigned long long _instance_dict_version  # 0: not known

    # Receive buffer for datagrams, grown to max_packet_size.
    cdef char *_dgram_buf
    cdef size_t _dgram_buf_size
    # The sender of the datagram being handled, as recvfrom() gave it.
    cdef sockaddr_storage _peer
    cdef socklen_t _peer_len
    cdef CachedAddress _addresses[ADDRESS_CACHE_SIZE]

    # Whether RequestHandlerClass runs in place.
    cdef _InPlaceHandlers _in_place

    def __cinit__(self, server):
        fs_poller_init(&self._poller)
        self._server = server
        self._in_place = _InPlaceHandlers()
        cdef int err = fs_poller_open(&self._poller,
                                      PyObject_AsFileDescriptor(server.fileno()))
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
        self._choose_path()
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

    cdef int _choose_path(self) except -1:
        """Pick the way requests are taken; see the module docstring."""
        BaseServer, TCPServer, UDPServer = _bases()
        server = self._server
        self._instance_dict = getattr(server, "__dict__", None)
        # Read first: a change from here on makes the next look scan again.
        self._instance_dict_version = self._dict_version()
        self._watched_mask = self._watched_on_instance()
        self._call_service_actions = not _keeps(server, "service_actions",
                                                BaseServer)
        self._path = GENERIC
        listener = getattr(server, "socket", None)
        if (type(listener) is SocketType
                and getattr(server, "tls_context", None) is None
                and _keeps(server, "_handle_request_noblock", BaseServer)
                and _keeps(server, "fileno", TCPServer)
                and listener.fileno() == self._poller.listen_fd
                and listener.family in (AF_INET, AF_INET6, AF_UNIX)):
            if _keeps(server, "get_request", TCPServer):
                self._path = STREAM
                base = TCPServer
            elif _keeps(server, "get_request", UDPServer):
                self._path = DATAGRAM
                base = UDPServer
        if self._path != GENERIC:
            self._listener = listener
            self._family, self._type, self._proto = (
                listener.family, listener.type, listener.proto)
            self._call_verify = not _keeps(server, "verify_request",
                                           BaseServer)
            self._call_process = not _keeps(server, "process_request",
                                            BaseServer)
            # ThreadingMixIn's own process_request only hands the request
            # to the server's pool, once it has made one.
            self._submit_to_pool = (
                self._call_process
                and _keeps(server, "process_request", THREADING_MIXIN))
            # A datagram handed to another thread (ThreadingMixIn) needs
            # the GIL there: a batch taken meanwhile would keep its worker
            # waiting and the idle ones busy, making more threads start.
            self._batch = (1 if self._call_service_actions
                           or (self._path == DATAGRAM and self._call_process)
                           else BATCH)
            # Without tls_context (GENERIC above) or proxy_protocol,
            # TCPServer's finish_request only builds the handler, as
            # BaseServer's does.
            self._call_finish = (not _keeps(server, "finish_request", base)
                                 or getattr(server, "proxy_protocol", False))
            self._call_shutdown = not (
                _keeps(server, "shutdown_request", base)
                and _keeps(server, "close_request", base))
        # Read last: the look-ups above gave the class a valid tag.
        self._type_version = fs_type_version(type(server))
        return 0

    cdef unsigned int _watched_on_instance(self) except? 0:
        """Which WATCHED names the server's instance dict has, as bits."""
        cdef unsigned int mask = 0, bit = 1
        if self._instance_dict is not None:
            for name in WATCHED:
                if name in self._instance_dict:
                    mask |= bit
                bit <<= 1
        return mask

    cdef unsigned long long _dict_version(self):
        if type(self._instance_dict) is not dict:
            return 0
        return fs_dict_version(<dict>self._instance_dict)

    cdef int _refresh_path(self) except -1:
        """Choose again if the server's class or instance hooks changed."""
        cdef unsigned int version = fs_type_version(type(self._server))
        cdef unsigned long long dict_version
        if version == 0 or version != self._type_version:
            self._choose_path()
            return 0
        dict_version = self._dict_version()
        if dict_version != 0 and dict_version == self._instance_dict_version:
            return 0  # the same keys as at the last look
        if self._watched_on_instance() != self._watched_mask:
            self._choose_path()
        else:
            self._instance_dict_version = dict_version
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
                    handler_cls = server.RequestHandlerClass
                    if self._path == DATAGRAM and self._in_place.accepts(
                            handler_cls):
                        self._run_datagram_handler(handler_cls, request,
                                                   client_address)
                    else:
                        handler_cls(request, client_address, server)
                self._shutdown_request(request)
        except Exception:
            server.handle_error(request, client_address)
            self._shutdown_request(request)
        except BaseException:
            self._shutdown_request(request)
            raise
        return 0

    cdef int _run_datagram_handler(self, cls, request,
                                   client_address) except -1:
        """``cls(request, client_address, server)`` for a class that
        _InPlaceHandlers accepts, the reply sent by _send_reply()."""
        handler = _datagram_handler(cls, request, client_address,
                                    self._server)
        try:
            handler.handle()
        finally:
            self._send_reply(handler, client_address)
        return 0

    cdef int _send_reply(self, handler, client_address) except -1:
        """DatagramRequestHandler.finish(): ``self.socket.sendto(
        self.wfile.getvalue(), self.client_address)``.  When that is the
        server's socket, the reply's bytes and the request's own client
        address, the datagram goes out in C to the sockaddr it came from:
        no address to parse."""
        cdef ssize_t sent
        sock = handler.socket
        if type(sock) is not SocketType or sock is not self._listener:
            sendto = sock.sendto
            sendto(handler.wfile.getvalue(), handler.client_address)
            return 0
        data = handler.wfile.getvalue()
        address = handler.client_address
        if (address is not client_address or self._peer_len == 0
                or type(data) is not bytes
                or self._listener_fd() != self._poller.listen_fd):
            sock.sendto(data, address)
            return 0
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
        return 0

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
        fs_poller_wake(&self._poller)

    def resume_accepting(self):
        """Watch the listener again at once; thread-safe."""
        self._paused = False
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
