# cython: auto_pickle=False
"""Compiled ``rfile`` and ``wfile`` objects for StreamRequestHandler.

The standard library builds a handler's streams from ``socket.makefile()``:
an ``io.BufferedReader`` (or ``io.BufferedWriter``) over ``socket.SocketIO``,
whose every refill is a Python method call, and, for ``wbufsize == 0``, a
small Python writer whose every write is a ``sendall()``.  The classes here
do the same work in C, calling ``recv()``/``send()`` on the socket's
descriptor with the GIL released:

- ``SocketReader``: the buffered reader (``rbufsize != 0``);
- ``BufferedSocketWriter``: the buffered writer (``wbufsize != 0``);
- ``SocketWriter``: the unbuffered writer (``wbufsize == 0``).

They are meant to be indistinguishable from the standard objects: the same
bytes for the same calls (the readers refill their buffers at the same
moments and by the same amounts, so even ``read1()`` and ``peek()`` agree),
the same exceptions with the same messages, and the same life cycle: the
buffered objects hold one of the socket's makefile references, so
``socket.close()`` leaves the descriptor open until they are closed too.

Waiting follows the socket module.  The socket's timeout is read anew by
every call that has to wait, since a handler may change it at any time:
``None`` blocks in the call itself, ``0`` never waits, and a positive
timeout waits in ``poll()`` and then raises ``TimeoutError("timed out")``,
after which the reader refuses to read from the socket again, as
``SocketIO`` does.  Calls interrupted by a signal run the Python signal
handlers and are retried (PEP 475).  One difference is invisible from
Python: the call is tried before waiting, which saves a ``poll()`` whenever
data (or buffer space) is already there.

``stream_reader()`` and ``stream_writer()`` pick a class, and fall back to
the standard objects for a zero-size read buffer (``makefile('rb', 0)`` is
already a thin raw object) and for sockets that do their own I/O, such as
``ssl.SSLSocket``: ``is_plain_socket()``, which the compiled engine also
asks about the listening socket, says which are which.

What it assumes of the interpreter: a GIL; it must not be built for a
free-threaded one.  The buffered objects' fast paths (a read served from
the buffer, a write that fits in it) check and move ``_pos``/``_end``
without their lock, running no Python code in between: under the GIL no
other thread can run there.  Every step that can let go of the GIL (recv,
send, a wait) is taken with the lock held, and leaves the buffer in a
state those fast paths may read.  is_plain_socket()'s cache is three C
variables, set together with no Python code in between.
"""

import _socket
import io
import os
import socket
import sys

from cpython.buffer cimport (
    PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from cpython.long cimport PyLong_AsSsize_t, PyLong_CheckExact
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.number cimport PyIndex_Check, PyNumber_AsSsize_t
from cpython.pythread cimport (
    NOWAIT_LOCK, WAIT_LOCK, PyThread_acquire_lock, PyThread_allocate_lock,
    PyThread_free_lock, PyThread_get_thread_ident, PyThread_release_lock,
    PyThread_type_lock,
)
from libc.errno cimport EAGAIN, EINTR, errno
from libc.limits cimport INT_MAX, INT_MIN
from libc.math cimport ceil
from libc.string cimport memchr, memcpy, memmove
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from cpython.ref cimport PyObject

from includes.cio_sys cimport (
    EWOULDBLOCK, MSG_NOSIGNAL, POLLIN, POLLOUT, fs_socket_fd, poll, pollfd,
    recv, send,
)
from includes.type_version cimport fs_type_version


__all__ = ["stream_reader", "stream_writer", "SocketReader",
           "BufferedSocketWriter", "SocketWriter"]

UnsupportedOperation = io.UnsupportedOperation

cdef Py_ssize_t DEFAULT_BUFFER_SIZE = io.DEFAULT_BUFFER_SIZE

# What a transfer can end with, besides a byte count.
cdef enum:
    WOULD_BLOCK = -2  # the socket does not wait (timeout 0, or none at all)
    TIMED_OUT = -3    # the socket's timeout ran out

# What changed between Python versions: since 3.12 the read methods a
# writer lacks check their argument; since 3.13 (gh-117151) a buffered write
# at least the buffer's size goes out at once.
cdef bint WRITERS_CHECK_READ_SIZE = sys.version_info >= (3, 12)
cdef bint FULL_BUFFER_WRITES_GO_OUT = sys.version_info >= (3, 13)

cdef str CLOSED_FILE = "I/O operation on closed file."
cdef str CLOSED_SOCKET = "I/O operation on closed socket."
cdef str NOT_WITHOUT_BLOCKING = "write could not complete without blocking"

# Whence values io.BufferedReader.seek() accepts before finding out that a
# socket cannot seek.
cdef frozenset _WHENCES = frozenset(
    [0, 1, 2] + [getattr(os, name) for name in ("SEEK_HOLE", "SEEK_DATA")
                 if hasattr(os, name)])


# --------------------------------------------------------------------------
# Socket calls

cdef double _monotonic() noexcept nogil:
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec + now.tv_nsec * 1e-9


cdef int _raise_errno(int err) except -1:
    global errno
    errno = err
    PyErr_SetFromErrno(OSError)
    return -1


# The socket's own methods, called unbound on sockets whose class keeps
# them: no attribute lookup and no bound method per call.
cdef object _SocketClass = socket.socket
cdef object _CSocket = _socket.socket
cdef object _sock_fileno = _SocketClass.fileno
cdef object _sock_gettimeout = _SocketClass.gettimeout


cdef bint _fd_layout_known():
    """Whether fs_socket_fd() reads what fileno() returns, open or closed;
    False when that cannot be checked (no socket pair to be had)."""
    try:
        a, b = socket.socketpair()
    except OSError:  # e.g. out of descriptors: fileno() it is
        return False
    with a, b:
        known = (fs_socket_fd(a) == a.fileno() != fs_socket_fd(b) == b.fileno())
    return known and fs_socket_fd(a) == a.fileno() == -1


# Whether a socket's descriptor may be read from its C object, saving the
# fileno() call that each recv()/send() would otherwise make.
cdef bint FD_IN_OBJECT = _fd_layout_known()
# The same, for fastsock._cengine.
FD_LAYOUT_KNOWN = FD_IN_OBJECT

# The timeout of a call that has not needed it yet.
cdef double UNREAD = -2.0


cdef struct _Call:
    # One socket call: whether the socket is a plain one (is_plain_socket),
    # the descriptor, the socket's timeout (-1 for None, read when the call
    # first finds that it would wait) and the deadline of a positive
    # timeout (0 until the first wait).
    bint plain
    int fd
    double timeout
    double deadline


cdef int _start_call(object sock, bint plain, _Call *call) except -1:
    """Read the descriptor now (the timeout only when a call has to wait)."""
    call.plain = plain
    if not plain:
        call.fd = sock.fileno()
    elif FD_IN_OBJECT:
        call.fd = fs_socket_fd(sock)
    else:
        call.fd = _sock_fileno(sock)
    call.timeout = UNREAD
    call.deadline = 0
    return 0


cdef double _call_timeout(object sock, _Call *call) except? -3:
    cdef object value
    if call.timeout == UNREAD:
        value = _sock_gettimeout(sock) if call.plain else sock.gettimeout()
        call.timeout = -1.0 if value is None else <double>value
    return call.timeout


cdef int _wait(int fd, bint sending, double deadline) except -1:
    """Wait for ``fd`` until ``deadline``: 1 when ready, 0 when too late."""
    cdef pollfd entry
    cdef double left
    cdef int ready, err
    entry.fd = fd
    entry.events = POLLOUT if sending else POLLIN
    while True:
        left = deadline - _monotonic()
        if left <= 0:
            return 0
        with nogil:
            ready = poll(&entry, 1, <int>min(ceil(left * 1000), INT_MAX))
            err = errno
        if ready >= 0:
            return ready > 0
        if err != EINTR:
            return _raise_errno(err)
        PyErr_CheckSignals()


cdef Py_ssize_t _transfer(object sock, _Call *call, bint sending, char *data,
                          Py_ssize_t size) except -1:
    """One ``recv()`` or ``send()`` on the socket, as the socket module makes
    it.  Returns the byte count, WOULD_BLOCK or TIMED_OUT; raises OSError
    otherwise.

    The call releases the GIL even when it will not wait.  Keeping it (with
    MSG_DONTWAIT) looks cheaper but is not: with many handler threads on a
    core, threads woken by their peers' data preempt the one in the call,
    find the GIL taken and sleep again (about three context switches per
    echoed line instead of one, at 256 connections).  The timeout is only
    read once the call would wait: the descriptor blocks exactly when the
    timeout is None.
    """
    cdef ssize_t n
    cdef int err
    while True:
        with nogil:
            if sending:
                n = send(call.fd, data, <size_t>size, MSG_NOSIGNAL)
            else:
                n = recv(call.fd, data, <size_t>size, 0)
            err = errno
        if n >= 0:
            return n
        if err == EINTR:
            PyErr_CheckSignals()
            continue
        if err != EAGAIN and err != EWOULDBLOCK:
            return _raise_errno(err)
        if _call_timeout(sock, call) <= 0:
            return WOULD_BLOCK
        if call.deadline == 0:
            call.deadline = _monotonic() + call.timeout
        if not _wait(call.fd, sending, call.deadline):
            return TIMED_OUT


cdef Py_ssize_t _send_once(object sock, bint plain, const char *data,
                           Py_ssize_t size) except -1:
    """``socket.send()``: one send, WOULD_BLOCK when it cannot go now."""
    cdef _Call call
    _start_call(sock, plain, &call)
    cdef Py_ssize_t n = _transfer(sock, &call, True, <char *>data, size)
    if n == TIMED_OUT:
        raise TimeoutError("timed out")
    return n


cdef int _send_all(object sock, bint plain, const char *data,
                   Py_ssize_t size) except -1:
    """``socket.sendall()``: the timeout bounds the whole call."""
    cdef _Call call
    cdef Py_ssize_t n
    _start_call(sock, plain, &call)
    while True:
        n = _transfer(sock, &call, True, <char *>data, size)
        if n == TIMED_OUT:
            raise TimeoutError("timed out")
        if n == WOULD_BLOCK:
            return _raise_errno(EAGAIN)
        data += n
        size -= n
        # A send cut short by a signal returns a partial count, not EINTR.
        PyErr_CheckSignals()
        if size <= 0:
            return 0
        if _call_timeout(sock, &call) > 0:
            # The clock starts when the first send falls short (that is when
            # the timeout is read), microseconds after the socket module's.
            if call.deadline == 0:
                call.deadline = _monotonic() + call.timeout
            elif call.deadline <= _monotonic():
                raise TimeoutError("timed out")


# --------------------------------------------------------------------------
# Argument conversions, with the io module's error messages

cdef Py_ssize_t _optional_size(object size) except? -2:
    """An int or None (taken as -1), like the size of BufferedReader.read."""
    if size is None:
        return -1
    if PyLong_CheckExact(size):
        return PyLong_AsSsize_t(size)
    if not PyIndex_Check(size):
        raise TypeError(f"argument should be integer or None, "
                        f"not '{type(size).__name__}'")
    return PyNumber_AsSsize_t(size, OverflowError)


cdef inline Py_ssize_t _size(object size) except? -1:
    return PyNumber_AsSsize_t(size, OverflowError)


cdef int _get_writable_buffer(object target, Py_buffer *view) except -1:
    try:
        PyObject_GetBuffer(target, view, PyBUF_WRITABLE)
    except (TypeError, BufferError):
        raise TypeError(f"readinto() argument must be read-write bytes-like "
                        f"object, not {type(target).__name__}") from None
    return 0


cdef int _check_unused_size(object size) except -1:
    """The C int that io's unsupported read methods want, since 3.12."""
    if WRITERS_CHECK_READ_SIZE and not INT_MIN <= _size(size) <= INT_MAX:
        raise OverflowError("Python int too large to convert to C int")
    return 0


cdef int _check_writable_buffer(object target) except -1:
    cdef Py_buffer view
    _get_writable_buffer(target, &view)
    PyBuffer_Release(&view)
    return 0


# --------------------------------------------------------------------------
# The io.IOBase protocol

cdef class _Stream:
    """What the three classes share: io.IOBase's protocol over a socket.

    The defaults are those of a stream that can only be written, like the
    standard library's unbuffered socket writer; the subclasses override
    what they do differently.
    """

    cdef object _sock
    cdef bint _plain  # the socket module's own I/O: see _start_call
    cdef bint _closed

    cdef int _check_closed(self, str message) except -1:
        if self._closed:
            raise ValueError(message)
        return 0

    @property
    def closed(self):
        return self._closed

    def close(self):
        if not self._closed:
            try:
                self.flush()
            finally:
                self._closed = True

    def flush(self):
        self._check_closed(CLOSED_FILE)

    def fileno(self):
        return self._sock.fileno()

    def isatty(self):
        self._check_closed(CLOSED_FILE)
        return False

    def readable(self):
        return False

    def writable(self):
        return False

    def seekable(self):
        return False

    def detach(self):
        raise UnsupportedOperation("detach")

    def read(self, size=-1, /):
        _check_unused_size(size)
        raise UnsupportedOperation("read")

    def read1(self, size=-1, /):
        _check_unused_size(size)
        raise UnsupportedOperation("read1")

    def readinto(self, buffer, /):
        _check_writable_buffer(buffer)
        raise UnsupportedOperation("read")

    def readinto1(self, buffer, /):
        _check_writable_buffer(buffer)
        raise UnsupportedOperation("read1")

    def readline(self, size=-1, /):
        _optional_size(size)
        raise UnsupportedOperation("read")

    def readlines(self, hint=None, /):
        """Read lines until their total size passes ``hint`` (if > 0)."""
        cdef Py_ssize_t limit = _optional_size(hint), total = 0, length
        if limit <= 0:
            return list(self)
        lines = []
        for line in self:
            lines.append(line)
            length = len(line)
            if length > limit - total:
                break
            total += length
        return lines

    def seek(self, pos, whence=0, /):
        raise UnsupportedOperation("seek")

    def tell(self):
        raise UnsupportedOperation("seek")

    def truncate(self, pos=None, /):
        raise UnsupportedOperation("truncate")

    def write(self, data, /):
        raise UnsupportedOperation("write")

    def writelines(self, lines, /):
        self._check_closed(CLOSED_FILE)
        write = self.write
        for line in lines:
            write(line)

    def __enter__(self):
        self._check_closed(CLOSED_FILE)
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __iter__(self):
        self._check_closed(CLOSED_FILE)
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line


cdef class _BufferedStream(_Stream):
    """A stream with a buffer, a lock and a makefile reference on its socket.

    The lock serializes the calls that may release the GIL, as the io
    module's buffered objects do; the calls that only copy from or to the
    buffer skip it when that is safe.  ``close()`` gives the makefile
    reference back (``socket._decref_socketios()``), which really closes
    the socket if ``socket.close()`` was called in the meantime.
    """

    cdef char *_buf
    cdef Py_ssize_t _size
    cdef PyThread_type_lock _lock
    cdef long _owner  # thread holding the lock, 0 when free

    def __cinit__(self, *args, **kwargs):
        self._closed = True  # until __init__ succeeds
        self._lock = PyThread_allocate_lock()
        if self._lock == NULL:
            raise MemoryError()

    def __init__(self, sock, Py_ssize_t buffer_size=DEFAULT_BUFFER_SIZE):
        if not self._closed:
            raise RuntimeError(f"{type(self).__name__} is already open")
        if buffer_size <= 0:
            raise ValueError("buffer size must be strictly positive")
        cdef bint plain = is_plain_socket(sock)
        cdef char *buf = <char *>PyMem_Malloc(buffer_size)
        if buf == NULL:
            raise MemoryError()
        try:
            # Taken last, once nothing else can fail: close() gives it back,
            # and a stream whose __init__ failed is never closed.
            sock._io_refs += 1
        except BaseException:
            PyMem_Free(buf)
            raise
        self._buf = buf
        self._size = buffer_size
        self._sock = sock
        self._plain = plain
        self._closed = False

    def __dealloc__(self):
        PyMem_Free(self._buf)
        if self._lock != NULL:
            PyThread_free_lock(self._lock)

    def __del__(self):
        # Like an io object dropped unclosed: close it, quietly.
        if not self._closed:
            try:
                self.close()
            except Exception:
                pass

    cdef int _enter(self) except -1:
        """Take the lock, waiting with the GIL released if need be."""
        cdef long me = PyThread_get_thread_ident()
        if not PyThread_acquire_lock(self._lock, NOWAIT_LOCK):
            if self._owner == me:
                raise RuntimeError(f"reentrant call inside {self!r}")
            with nogil:
                PyThread_acquire_lock(self._lock, WAIT_LOCK)
        self._owner = me
        return 0

    cdef int _enter_open(self, str closed_message) except -1:
        """Take the lock; raise ValueError if the stream was closed."""
        self._enter()
        if self._closed:
            self._leave()
            raise ValueError(closed_message)
        return 0

    cdef void _leave(self) noexcept:
        self._owner = 0
        PyThread_release_lock(self._lock)

    cdef int _flush_unlocked(self) except -1:
        return 0

    def close(self):
        if self._closed:
            return
        self._enter()
        try:
            if self._closed:  # by another thread, while this one waited
                return
            try:
                self._flush_unlocked()
            finally:
                self._closed = True
                PyMem_Free(self._buf)
                self._buf = NULL
                self._forget_buffer()
                sock, self._sock = self._sock, None
                sock._decref_socketios()
        finally:
            self._leave()

    cdef void _forget_buffer(self) noexcept:
        pass

    def detach(self):
        self.flush()
        raise UnsupportedOperation("detach")

    def fileno(self):
        self._check_closed(CLOSED_FILE)
        return self._sock.fileno()

    @property
    def name(self):
        return -1 if self._closed else self._sock.fileno()

    def seekable(self):
        self._check_closed(CLOSED_SOCKET)
        return False

    def seek(self, pos, whence=0, /):
        if whence not in _WHENCES:
            raise ValueError(f"whence value {whence} unsupported")
        self._check_closed("seek of closed file")
        raise UnsupportedOperation("File or stream is not seekable.")

    def truncate(self, pos=None, /):
        self._check_closed("truncate of closed file")
        raise UnsupportedOperation("truncate")

    def __repr__(self):
        return (f"<{type(self).__module__}.{type(self).__qualname__} "
                f"name={self.name!r}>")


# --------------------------------------------------------------------------
# Reading

cdef class SocketReader(_BufferedStream):
    """A buffered reader over a socket: ``socket.makefile('rb', size)``.

    The buffer holds ``_buf[_pos:_end]``; ``_end == -1`` means that nothing
    is buffered.  Any call that reads from the socket first leaves nothing
    buffered, so that a concurrent call seeing buffered bytes may take them
    without the lock.
    """

    cdef Py_ssize_t _pos
    cdef Py_ssize_t _end
    cdef bint _timed_out

    def __cinit__(self, *args, **kwargs):
        self._end = -1

    cdef void _forget_buffer(self) noexcept:
        self._pos = 0
        self._end = -1

    @property
    def mode(self):
        return "rb"

    def readable(self):
        self._check_closed(CLOSED_SOCKET)
        return True

    cdef inline Py_ssize_t _available(self) noexcept:
        return self._end - self._pos if self._end != -1 else 0

    cdef inline bytes _take(self, Py_ssize_t n):
        data = PyBytes_FromStringAndSize(self._buf + self._pos, n)
        self._pos += n
        return data

    cdef Py_ssize_t _recv(self, char *into, Py_ssize_t size) except -1:
        """One recv() like ``SocketIO.readinto()``: bytes, 0 or WOULD_BLOCK."""
        cdef _Call call
        cdef Py_ssize_t n
        if self._timed_out:
            raise OSError("cannot read from timed out object")
        _start_call(self._sock, self._plain, &call)
        n = _transfer(self._sock, &call, False, into, size)
        if n == TIMED_OUT:
            self._timed_out = True
            raise TimeoutError("timed out")
        return n

    cdef Py_ssize_t _fill(self) except -1:
        """Receive after what is buffered, or from the start if nothing is."""
        cdef Py_ssize_t start = self._end if self._end != -1 else 0
        cdef Py_ssize_t n = self._recv(self._buf + start, self._size - start)
        if n > 0:
            self._end = start + n
        return n

    def read(self, size=-1, /):
        """Read ``size`` bytes, fewer only at the end of the stream; all of
        it up to the end when ``size`` is -1 or None.  None when the socket
        does not wait and has nothing.
        """
        cdef Py_ssize_t n = _optional_size(size)
        if n < -1:
            raise ValueError("read length must be non-negative or -1")
        self._check_closed("read of closed file")
        if n != -1 and n <= self._available():
            return self._take(n)
        self._enter_open("read of closed file")
        try:
            if n == -1:
                return self._read_all()
            return self._read_some(n)
        finally:
            self._leave()

    cdef object _read_all(self):
        cdef Py_ssize_t have = self._available()
        head = self._take(have) if have else None
        self._end = -1
        rest = self._recv_to_end()
        if head is None:
            return rest
        return head if rest is None else head + rest

    cdef object _recv_to_end(self):
        """Receive until the end of the stream in chunks of the default
        buffer size; None if the first chunk would block."""
        cdef char *data = NULL
        cdef char *grown
        cdef Py_ssize_t capacity = 0, total = 0, n
        try:
            while True:
                if capacity - total < DEFAULT_BUFFER_SIZE:
                    capacity = max(2 * capacity, total + DEFAULT_BUFFER_SIZE)
                    grown = <char *>PyMem_Realloc(data, capacity)
                    if grown == NULL:
                        raise MemoryError()
                    data = grown
                n = self._recv(data + total, DEFAULT_BUFFER_SIZE)
                if n == WOULD_BLOCK and total == 0:
                    return None
                if n <= 0:
                    return PyBytes_FromStringAndSize(data, total)
                total += n
        finally:
            PyMem_Free(data)

    cdef object _read_some(self, Py_ssize_t n):
        """read(n) past the buffer: whole buffer-sized blocks go straight
        into the result, the rest through the buffer."""
        cdef Py_ssize_t have = self._available(), written = 0, remaining, got
        if n <= have:
            return self._take(n)
        result = PyBytes_FromStringAndSize(NULL, n)
        cdef char *out = PyBytes_AS_STRING(result)
        if have:
            memcpy(out, self._buf + self._pos, have)
            self._pos += have
            written = have
        remaining = n - written
        self._end = -1
        while remaining >= self._size:
            got = self._recv(out + written,
                             remaining - remaining % self._size)
            if got <= 0:
                return self._short_read(result, written, got)
            written += got
            remaining -= got
        self._pos = 0
        self._end = 0
        while remaining > 0:
            got = self._fill()
            if got <= 0:
                return self._short_read(result, written, got)
            got = min(got, remaining)
            memcpy(out + written, self._buf + self._pos, got)
            self._pos += got
            written += got
            remaining -= got
        return result

    cdef object _short_read(self, bytes result, Py_ssize_t written,
                            Py_ssize_t last):
        """What read(n) returns when the socket ran dry after ``written``."""
        if last == WOULD_BLOCK and written == 0:
            return None
        return result[:written]

    def read1(self, size=-1, /):
        """Buffered bytes if any, else what one recv() of ``size`` (default:
        the buffer size) brings."""
        cdef Py_ssize_t n = _size(size), have, got
        if n < 0:
            n = self._size
        self._check_closed("read of closed file")
        if n == 0:
            return b""
        if self._available():
            return self._take(min(self._available(), n))
        self._enter_open("read of closed file")
        try:
            have = self._available()
            if have:  # another thread refilled the buffer meanwhile
                return self._take(min(have, n))
            self._end = -1
            if n <= self._size:
                # The buffer holds nothing now: use it as the landing area.
                got = self._recv(self._buf, n)
                return PyBytes_FromStringAndSize(self._buf, max(got, 0))
            result = PyBytes_FromStringAndSize(NULL, n)
            got = max(self._recv(PyBytes_AS_STRING(result), n), 0)
            return result if got == n else result[:got]
        finally:
            self._leave()

    def peek(self, size=0, /):
        """The buffered bytes, after one recv() if there were none; the
        position does not move."""
        _size(size)
        self._check_closed("peek of closed file")
        cdef Py_ssize_t got = self._available()
        if got:
            return PyBytes_FromStringAndSize(self._buf + self._pos, got)
        self._enter_open("peek of closed file")
        try:
            got = self._available()
            if got:
                return PyBytes_FromStringAndSize(self._buf + self._pos, got)
            self._end = -1
            got = max(self._fill(), 0)
            self._pos = 0
            return PyBytes_FromStringAndSize(self._buf, got)
        finally:
            self._leave()

    def readinto(self, buffer, /):
        """Fill ``buffer``; short only at the end of the stream."""
        return self._readinto(buffer, False)

    def readinto1(self, buffer, /):
        """Fill ``buffer`` from the buffer, or else with at most one recv()."""
        return self._readinto(buffer, True)

    cdef object _readinto(self, object buffer, bint once):
        cdef Py_buffer view
        _get_writable_buffer(buffer, &view)
        try:
            self._check_closed("readinto of closed file")
            return self._readinto_view(<char *>view.buf, view.len, once)
        finally:
            PyBuffer_Release(&view)

    cdef object _readinto_view(self, char *out, Py_ssize_t size, bint once):
        cdef Py_ssize_t written = 0, got
        if self._available() >= size:
            memcpy(out, self._buf + self._pos, size)
            self._pos += size
            return size
        self._enter_open("readinto of closed file")
        try:
            written = min(self._available(), size)
            memcpy(out, self._buf + self._pos, written)
            self._pos += written
            if written == size:
                return size
            self._end = -1
            self._pos = 0
            while written < size:
                if size - written > self._size:
                    # Too big for the buffer: straight into the caller's.
                    got = self._recv(out + written, size - written)
                elif once and written:
                    break
                else:
                    got = self._fill()
                    if got > 0:
                        got = min(got, size - written)
                        memcpy(out + written, self._buf + self._pos, got)
                        self._pos += got
                        written += got
                        continue
                if got == 0 or (got == WOULD_BLOCK and written):
                    break
                if got == WOULD_BLOCK:
                    return None
                written += got
                if once:
                    break
            return written
        finally:
            self._leave()

    def readline(self, size=-1, /):
        """Read through the next newline, at most ``size`` bytes if >= 0."""
        cdef Py_ssize_t limit = _optional_size(size)
        self._check_closed("readline of closed file")
        return self._readline(limit)

    def __next__(self):
        self._check_closed("readline of closed file")
        line = self._readline(-1)
        if not line:
            raise StopIteration
        return line

    cdef bytes _readline(self, Py_ssize_t limit):
        cdef Py_ssize_t n = self._available()
        cdef const char *start = self._buf + self._pos
        cdef const char *newline
        if 0 <= limit < n:
            n = limit
        newline = <const char *>memchr(start, b"\n", n)
        if newline != NULL:
            return self._take(newline - start + 1)
        if n == limit:
            return self._take(n)
        self._enter_open("readline of closed file")
        try:
            return self._readline_slow(limit)
        finally:
            self._leave()

    cdef bytes _readline_slow(self, Py_ssize_t limit):
        """readline() once the buffer holds no (allowed) newline: keep what
        it holds, then refill it from the start until a newline, the limit
        or the end of the stream.  A line that one piece holds, the common
        case, is returned without a list to join."""
        cdef Py_ssize_t n = self._available()
        cdef const char *newline
        cdef bytes first = None, piece
        cdef list pieces = None
        if 0 <= limit < n:
            n = limit
        if n:
            first = self._take(n)
            if limit >= 0:
                limit -= n
        while True:
            self._end = -1
            n = self._fill()
            if n <= 0:
                break
            if 0 <= limit < n:
                n = limit
            newline = <const char *>memchr(self._buf, b"\n", n)
            if newline != NULL:
                n = newline - self._buf + 1
            self._pos = 0
            piece = self._take(n)
            if first is None:
                first = piece
            elif pieces is None:
                pieces = [first, piece]
            else:
                pieces.append(piece)
            if newline != NULL or n == limit:
                break
            if limit >= 0:
                limit -= n
        if pieces is not None:
            return b"".join(pieces)
        return first if first is not None else b""


# --------------------------------------------------------------------------
# Writing

cdef class BufferedSocketWriter(_BufferedStream):
    """A buffered writer over a socket: ``socket.makefile('wb', size)``.

    ``_buf[_start:_end]`` is written but not yet sent.  Data that fits
    after ``_end`` is only copied; otherwise the buffer is sent first, and
    then whatever of the data does not fit in an empty buffer (since Python
    3.13, a write of the buffer's size does not stay in it either).  Each
    send is a ``socket.send()``, bounded by the socket's timeout on its own.
    """

    cdef Py_ssize_t _start
    cdef Py_ssize_t _end

    cdef void _forget_buffer(self) noexcept:
        self._start = self._end = 0

    @property
    def mode(self):
        return "wb"

    def writable(self):
        self._check_closed(CLOSED_SOCKET)
        return True

    def write(self, data, /):
        """Buffer (or send) all of ``data``; return its size in bytes."""
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if (self._owner == 0 and not self._closed
                    and view.len <= self._size - self._end
                    and not self._goes_out(view.len)):
                memcpy(self._buf + self._end, view.buf, view.len)
                self._end += view.len
                return view.len
            self._enter_open("write to closed file")
            try:
                return self._write(<const char *>view.buf, view.len)
            finally:
                self._leave()
        finally:
            PyBuffer_Release(&view)

    cdef inline bint _goes_out(self, Py_ssize_t size) noexcept:
        """Whether ``size`` more bytes bypass an empty buffer."""
        return size > self._size or (FULL_BUFFER_WRITES_GO_OUT
                                     and size == self._size)

    cdef Py_ssize_t _write(self, const char *data, Py_ssize_t size) except -1:
        cdef Py_ssize_t room = self._size - self._end, written = 0, n
        if size <= room and not self._goes_out(size):
            memcpy(self._buf + self._end, data, size)
            self._end += size
            return size
        try:
            self._flush_unlocked()
        except BlockingIOError:
            # Make room by dropping what went out, then keep what fits.
            memmove(self._buf, self._buf + self._start, self._end - self._start)
            self._end -= self._start
            self._start = 0
            room = min(self._size - self._end, size)
            memcpy(self._buf + self._end, data, room)
            self._end += room
            if room == size:
                return size
            raise BlockingIOError(EAGAIN, NOT_WITHOUT_BLOCKING, room) from None
        while self._goes_out(size - written):
            n = _send_once(self._sock, self._plain, data + written,
                           size - written)
            if n == WOULD_BLOCK and size - written == self._size:
                break  # it fits: keep it for later
            if n == WOULD_BLOCK:
                memcpy(self._buf, data + written, self._size)
                self._end = self._size
                raise BlockingIOError(EAGAIN, NOT_WITHOUT_BLOCKING,
                                      written + self._size)
            written += n
            PyErr_CheckSignals()
        memcpy(self._buf, data + written, size - written)
        self._end = size - written
        return size

    cdef int _flush_unlocked(self) except -1:
        cdef Py_ssize_t n
        while self._start < self._end:
            n = _send_once(self._sock, self._plain,
                           self._buf + self._start,
                           self._end - self._start)
            if n == WOULD_BLOCK:
                raise BlockingIOError(EAGAIN, NOT_WITHOUT_BLOCKING, 0)
            self._start += n
            PyErr_CheckSignals()
        self._start = self._end = 0
        return 0

    def flush(self):
        """Send everything written so far."""
        self._enter_open("flush of closed file")
        try:
            self._flush_unlocked()
        finally:
            self._leave()


cdef class SocketWriter(_Stream):
    """The unbuffered writer: every write() is a ``sendall()``.

    Like the standard library's, it does not hold a makefile reference and
    goes on writing after close(), which only marks it closed.
    """

    def __init__(self, sock):
        self._plain = is_plain_socket(sock)
        self._sock = sock

    def writable(self):
        return True

    def write(self, data, /):
        """Send all of ``data``; return its size in bytes."""
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            _send_all(self._sock, self._plain,
                      <const char *>view.buf, view.len)
            return view.len
        finally:
            PyBuffer_Release(&view)


for _cls in (SocketReader, BufferedSocketWriter, SocketWriter):
    io.BufferedIOBase.register(_cls)
del _cls


# --------------------------------------------------------------------------
# Factories

# The methods through which the socket module does a socket's I/O, each with
# the function a plain socket has: the C socket type's own, and the socket
# module's accept() (as imported, see FD_IN_OBJECT).  A class that overrides
# any of them (ssl.SSLSocket; a subclass that counts bytes) does I/O of its
# own, which C must not bypass.
cdef tuple _PLAIN_IO = tuple(
    [(name, getattr(_CSocket, name))
     for name in ("fileno", "gettimeout", "recv", "recv_into", "recvfrom",
                  "send", "sendall", "sendto", "_accept")]
    + [("accept", _SocketClass.accept)])

# is_plain_socket()'s answer for the last class asked about, kept until that
# class (or a base) changes.  The class is known by its address and version
# tag, which is never reused, so no reference to it is kept.
cdef PyObject *_last_class = NULL
cdef unsigned int _last_version = 0
cdef bint _last_plain = False


cdef bint _plain_class(object cls) except -1:
    # The descriptor is read from the C object, which must be the socket
    # module's.
    if not (issubclass(cls, _SocketClass) and issubclass(cls, _CSocket)):
        return False
    for name, method in _PLAIN_IO:
        if getattr(cls, name, None) is not method:
            return False
    return True


cpdef bint is_plain_socket(object sock) except -1:
    """Whether ``sock``'s I/O is the socket module's own, on its descriptor:
    whether C may do what its methods would (recv, send, accept, ...)."""
    global _last_class, _last_version, _last_plain
    cls = type(sock)
    cdef unsigned int version = fs_type_version(cls)
    if (<PyObject *>cls == _last_class and version != 0
            and version == _last_version):
        return _last_plain
    cdef bint plain = _plain_class(cls)
    _last_class = <PyObject *>cls
    _last_plain = plain
    # Read last: the look-ups above gave the class a valid tag.
    _last_version = fs_type_version(cls)
    return plain


def stream_reader(sock, bufsize):
    """The ``rfile`` of a StreamRequestHandler: ``sock.makefile('rb',
    bufsize)``, compiled when it can be."""
    if bufsize == 0 or not is_plain_socket(sock):
        return sock.makefile("rb", bufsize)
    if bufsize is None or bufsize < 0:
        bufsize = DEFAULT_BUFFER_SIZE
    return SocketReader(sock, bufsize)


def stream_writer(sock, bufsize):
    """The ``wfile`` of a StreamRequestHandler: unbuffered for bufsize 0,
    else ``sock.makefile('wb', bufsize)``; compiled when it can be."""
    if not is_plain_socket(sock):
        if bufsize == 0:
            # Imported here: most processes never need the pure engine.
            from fastsock._pyengine import SocketWriter as _PySocketWriter
            return _PySocketWriter(sock)
        return sock.makefile("wb", bufsize)
    if bufsize == 0:
        return SocketWriter(sock)
    if bufsize is None or bufsize < 0:
        bufsize = DEFAULT_BUFFER_SIZE
    return BufferedSocketWriter(sock, bufsize)
