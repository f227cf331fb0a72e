"""The rfile/wfile objects: fastsock._cio against the standard library's.

``fastsock._pyengine`` builds the standard objects (``socket.makefile()``
and the unbuffered writer), ``fastsock._cio`` the compiled ones.  Most tests
run on both through the ``impl`` fixture; the property tests drive both with
the same random calls on the same random input and require the same bytes
and the same exceptions.  Peers are socket pairs, or loopback TCP where a
reset is needed.
"""

import array
import gc
import io
import select
import signal
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fastsock
from fastsock import _backend, _pyengine

try:
    from fastsock import _cio
except ImportError:  # built without the compiled modules
    _cio = None

needs_cio = pytest.mark.skipif(_cio is None, reason="fastsock._cio is not built")

IMPLS = {"stdlib": _pyengine, "compiled": _cio}
DEFAULT = io.DEFAULT_BUFFER_SIZE


@pytest.fixture(params=[
    "stdlib", pytest.param("compiled", marks=needs_cio)])
def impl(request):
    """The module whose stream_reader/stream_writer a test uses."""
    return IMPLS[request.param]


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    with a, b:
        yield a, b


def tcp_pair():
    """A connected (server side, client side) pair over loopback TCP."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


def drain(sock):
    """Everything ``sock`` can receive now, without waiting."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def outcome(call, *args):
    """What a call did: ("ok", value) or ("error", type, message)."""
    try:
        return ("ok", call(*args))
    except Exception as exc:
        return ("error", type(exc), str(exc))


# --------------------------------------------------------------------------
# Which objects the factories make

@needs_cio
def test_factories_make_compiled_objects_for_plain_sockets(pair):
    a, _ = pair
    with _cio.stream_reader(a, -1) as rfile:
        assert type(rfile) is _cio.SocketReader
    with _cio.stream_reader(a, None) as rfile:
        assert type(rfile) is _cio.SocketReader
    with _cio.stream_writer(a, 0) as wfile:
        assert type(wfile) is _cio.SocketWriter
    with _cio.stream_writer(a, 100) as wfile:
        assert type(wfile) is _cio.BufferedSocketWriter
    # makefile('rb', 0) is already a raw object: it is used as it is.
    with _cio.stream_reader(a, 0) as rfile:
        assert type(rfile) is socket.SocketIO


@needs_cio
def test_factories_leave_sockets_with_their_own_io_to_makefile():
    class CountingSocket(socket.socket):
        def recv_into(self, *args):
            return super().recv_into(*args)

    a, b = socket.socketpair()
    with CountingSocket(fileno=a.detach()) as a, b:
        with _cio.stream_reader(a, -1) as rfile:
            assert type(rfile) is io.BufferedReader
        with _cio.stream_writer(a, 0) as wfile:
            assert type(wfile) is _pyengine.SocketWriter
        with _cio.stream_writer(a, -1) as wfile:
            assert type(wfile) is io.BufferedWriter


def test_streams_are_buffered_io(impl, pair):
    a, _ = pair
    for stream in (impl.stream_reader(a, -1), impl.stream_writer(a, 0),
                   impl.stream_writer(a, -1)):
        with stream:
            assert isinstance(stream, io.BufferedIOBase)
            assert isinstance(stream, io.IOBase)
            assert stream.fileno() == a.fileno()
            assert not stream.seekable()


def test_default_buffer_sizes(impl, pair):
    a, b = pair
    b.sendall(b"x" * (3 * DEFAULT))
    with impl.stream_reader(a, -1) as rfile:
        assert len(rfile.peek()) == DEFAULT
    with impl.stream_writer(a, -1) as wfile:
        wfile.write(b"y" * (DEFAULT - 1))
        assert drain(b) == b""
        wfile.write(b"zz")
        assert drain(b) == b"y" * (DEFAULT - 1)
    assert drain(b) == b"zz"


# --------------------------------------------------------------------------
# The same surface, open and closed

STREAM_CALLS = [
    ("detach", ()), ("fileno", ()), ("flush", ()), ("isatty", ()),
    ("peek", (1,)), ("read", (1,)), ("read", (-2,)), ("read", ("1",)),
    ("read1", (1,)), ("read1", (None,)), ("readable", ()),
    ("readinto", (bytearray(2),)), ("readinto", (b"ro",)),
    ("readinto1", (bytearray(2),)), ("readline", (1,)),
    ("readline", (1.5,)), ("readlines", (1,)), ("readlines", ("1",)),
    ("seek", (0,)), ("seek", (0, 9)), ("seekable", ()), ("tell", ()),
    ("truncate", ()), ("writable", ()), ("write", (b"x",)),
    ("write", ("text",)), ("write", (memoryview(b"abcd")[::2],)),
    ("writelines", ([b"y"],)), ("__iter__", ()), ("__next__", ()),
    ("__enter__", ()),
]
STREAM_ATTRIBUTES = ["mode", "name", "closed"]
MAKERS = {
    "reader": lambda impl, sock: impl.stream_reader(sock, -1),
    "buffered writer": lambda impl, sock: impl.stream_writer(sock, -1),
    "unbuffered writer": lambda impl, sock: impl.stream_writer(sock, 0),
}


def surface(impl, kind, closed):
    """The outcome of every call and attribute on a fresh stream."""
    results = {}
    for name, args in STREAM_CALLS + [(a, None) for a in STREAM_ATTRIBUTES]:
        if name == "detach" and not closed:
            continue  # detach() is unsupported by design: see below
        a, b = socket.socketpair()
        with a, b:
            b.sendall(b"ab\ncd\n")
            b.shutdown(socket.SHUT_WR)
            stream = MAKERS[kind](impl, a)
            if closed:
                stream.close()
            if args is None:
                result = outcome(getattr, stream, name)
            else:
                result = outcome(lambda: getattr(stream, name)(*args))
            if result[:2] == ("ok", stream):
                result = ("ok", "itself")
            elif result[:2] == ("error", AttributeError):
                result = result[:2]  # the message names the class
            results[name, repr(args)] = result
            stream.close()
    return results


@needs_cio
@pytest.mark.parametrize("closed", [False, True], ids=["open", "closed"])
@pytest.mark.parametrize("kind", list(MAKERS))
def test_same_results_and_errors_as_the_standard_objects(kind, closed):
    assert surface(_cio, kind, closed) == surface(_pyengine, kind, closed)


@needs_cio
@pytest.mark.parametrize("kind", list(MAKERS))
def test_same_public_names_as_the_standard_objects(kind, pair):
    a, _ = pair

    def names(impl):
        with MAKERS[kind](impl, a) as stream:
            return {n for n in dir(stream) if not n.startswith("_")} - {"raw"}

    assert names(_cio) == names(_pyengine)


@needs_cio
def test_detach_is_unsupported(pair):
    a, _ = pair
    for stream in (_cio.stream_reader(a, -1), _cio.stream_writer(a, -1),
                   _cio.stream_writer(a, 0)):
        with stream, pytest.raises(io.UnsupportedOperation, match="detach"):
            stream.detach()


def test_closed_streams_raise_the_io_messages(impl, pair):
    a, _ = pair
    rfile = impl.stream_reader(a, -1)
    wfile = impl.stream_writer(a, -1)
    rfile.close()
    wfile.close()
    rfile.close()  # closing twice is allowed
    assert rfile.closed and wfile.closed
    for call, message in [(rfile.read, "read of closed file"),
                          (rfile.read1, "read of closed file"),
                          (rfile.readline, "readline of closed file"),
                          (rfile.peek, "peek of closed file"),
                          (rfile.fileno, "I/O operation on closed file."),
                          (wfile.flush, "flush of closed file")]:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(ValueError, match="readinto of closed file"):
        rfile.readinto(bytearray(1))
    with pytest.raises(ValueError, match="write to closed file"):
        wfile.write(b"x")
    with pytest.raises(ValueError, match="I/O operation on closed file."):
        iter(rfile)
    assert rfile.name == wfile.name == -1


def test_unbuffered_writer_goes_on_writing_after_close(impl, pair):
    a, b = pair
    wfile = impl.stream_writer(a, 0)
    wfile.close()
    assert wfile.closed
    assert wfile.write(b"still") == 5
    assert b.recv(10) == b"still"
    with pytest.raises(ValueError, match="I/O operation on closed file."):
        wfile.flush()


# --------------------------------------------------------------------------
# Reading

def test_reads(impl, pair):
    a, b = pair
    b.sendall(b"one\ntwo\nthree\nfour\nfive\nsix\nseven")
    b.shutdown(socket.SHUT_WR)
    with impl.stream_reader(a, 4) as rfile:
        assert rfile.readline() == b"one\n"
        assert rfile.readline(2) == b"tw"
        assert rfile.readline(0) == b""
        assert rfile.readline(None) == b"o\n"
        assert rfile.read(3) == b"thr"
        assert rfile.read1(100) == b"e"  # only what is buffered
        assert rfile.peek() == b"e\nfo"  # one refill, whatever its size
        buf = bytearray(3)
        assert rfile.readinto(buf) == 3 and buf == b"e\nf"
        assert rfile.readlines(1) == [b"our\n"]
        assert next(rfile) == b"five\n"
        assert list(rfile) == [b"six\n", b"seven"]
        assert rfile.read() == b""
        assert rfile.read(5) == b""
        assert rfile.readline() == b""


def test_readline_limit_across_refills(impl, pair):
    a, b = pair
    b.sendall(b"abcdefghij\nklm")
    b.shutdown(socket.SHUT_WR)
    with impl.stream_reader(a, 2) as rfile:
        assert rfile.readline(7) == b"abcdefg"
        assert rfile.readline(7) == b"hij\n"
        assert rfile.readline(7) == b"klm"


def test_read1_and_readinto1_make_one_recv(impl, pair):
    a, b = pair
    a.settimeout(2)  # a second recv() would wait for this, then fail
    with impl.stream_reader(a, 4) as rfile:
        b.sendall(b"abc")
        buf = bytearray(100)
        assert rfile.readinto1(buf) == 3 and buf[:3] == b"abc"
        b.sendall(b"defgh")
        assert rfile.read1(100) == b"defgh"
        b.sendall(b"ij")
        assert rfile.peek(100) == b"ij"
        assert rfile.read1(100) == b"ij"


def test_read_returns_short_only_at_the_end(impl, pair):
    a, b = pair
    payload = bytes(range(256)) * 1000

    def send_slowly():
        for start in range(0, len(payload), 10000):
            b.sendall(payload[start:start + 10000])
            time.sleep(0.001)
        b.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send_slowly)
    sender.start()
    try:
        with impl.stream_reader(a, 1000) as rfile:
            assert rfile.read(70000) == payload[:70000]
            buf = bytearray(50001)
            assert rfile.readinto(buf) == 50001
            assert buf == payload[70000:120001]
            assert rfile.read() == payload[120001:]
    finally:
        sender.join()


def test_nonblocking_socket_reads(impl, pair):
    a, b = pair
    a.settimeout(0)
    with impl.stream_reader(a, -1) as rfile:
        assert rfile.read(5) is None
        assert rfile.read() is None
        assert rfile.readinto(bytearray(5)) is None
        assert rfile.read1(5) == b""
        assert rfile.peek() == b""
        assert rfile.readline() == b""
        b.sendall(b"par")
        assert rfile.read(5) == b"par"
        b.sendall(b"tial")
        assert rfile.readline() == b"tial"


# --------------------------------------------------------------------------
# Writing

@pytest.mark.parametrize("wbufsize", [0, 3, -1])
def test_write_accepts_any_contiguous_buffer(impl, pair, wbufsize):
    a, b = pair
    with impl.stream_writer(a, wbufsize) as wfile:
        assert wfile.write(b"ab") == 2
        assert wfile.write(bytearray(b"cd")) == 2
        assert wfile.write(memoryview(b"efgh")[1:3]) == 2
        assert wfile.write(array.array("i", [1, 2])) == 8
        wfile.writelines([b"x", bytearray(b"y")])
        with pytest.raises(TypeError):
            wfile.write("text")
        with pytest.raises(BufferError):
            wfile.write(memoryview(b"abcd")[::2])
    assert drain(b) == b"abcdfg" + array.array("i", [1, 2]).tobytes() + b"xy"


def test_buffered_writer_sends_when_full_or_flushed(impl, pair):
    a, b = pair
    with impl.stream_writer(a, 4) as wfile:
        wfile.write(b"abc")
        assert drain(b) == b""
        wfile.write(b"de")
        assert drain(b) == b"abc"
        wfile.write(b"0123456789")  # too big for the buffer: sent
        assert drain(b) == b"de0123456789"
        wfile.write(b"xy")
        wfile.flush()
        assert drain(b) == b"xy"
        wfile.write(b"end")
    assert drain(b) == b"end"  # close() flushes


def test_dropped_buffered_writer_flushes(impl, pair):
    a, b = pair
    wfile = impl.stream_writer(a, -1)
    wfile.write(b"pending")
    del wfile
    gc.collect()
    assert drain(b) == b"pending"


# --------------------------------------------------------------------------
# The socket's life cycle

def test_socket_close_waits_for_buffered_streams(impl, pair):
    a, b = pair
    rfile = impl.stream_reader(a, -1)
    wfile = impl.stream_writer(a, -1)
    a.close()
    b.sendall(b"still open\n")
    assert rfile.readline() == b"still open\n"
    wfile.write(b"reply")
    wfile.flush()
    assert b.recv(10) == b"reply"
    rfile.close()
    assert a.fileno() != -1  # the writer still holds the descriptor
    wfile.close()
    assert a.fileno() == -1


def test_dropped_reader_gives_back_its_reference(impl, pair):
    a, _ = pair
    rfile = impl.stream_reader(a, -1)
    del rfile
    gc.collect()
    a.close()
    assert a.fileno() == -1


def test_unbuffered_writer_holds_no_reference(impl, pair):
    a, _ = pair
    wfile = impl.stream_writer(a, 0)
    a.close()
    assert a.fileno() == -1
    assert wfile.fileno() == -1


# --------------------------------------------------------------------------
# Peers that go away

def wait_for_hangup(sock):
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if any(ev & select.POLLHUP for _, ev in poller.poll(50)):
            return
    raise AssertionError("the peer's reset never arrived")


def reset_scenario(impl):
    server, client = tcp_pair()
    with server, client:
        client.sendall(b"line\npartial")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                          struct.pack("ii", 1, 0))
        client.close()  # with SO_LINGER 0: RST instead of FIN
        wait_for_hangup(server)
        rfile = impl.stream_reader(server, -1)
        wfile = impl.stream_writer(server, 0)
        results = [outcome(rfile.readline) for _ in range(3)]
        results += [outcome(wfile.write, b"reply") for _ in range(2)]
        rfile.close()
        return results


def test_peer_reset(impl):
    results = reset_scenario(impl)
    errors = [r[1] for r in results if r[0] == "error"]
    assert ConnectionResetError in errors
    assert all(issubclass(e, (ConnectionError)) for e in errors)


@needs_cio
def test_peer_reset_like_the_standard_objects():
    assert reset_scenario(_cio) == reset_scenario(_pyengine)


def test_half_close(impl, pair):
    a, b = pair
    b.sendall(b"request\n")
    b.shutdown(socket.SHUT_WR)
    with impl.stream_reader(a, -1) as rfile, \
            impl.stream_writer(a, 0) as wfile:
        assert rfile.readline() == b"request\n"
        assert rfile.readline() == b""
        assert rfile.read() == b""
        assert wfile.write(b"response") == 8
    assert b.recv(100) == b"response"


# --------------------------------------------------------------------------
# Timeouts

def test_read_timeout(impl, pair):
    a, b = pair
    a.settimeout(0.05)
    b.sendall(b"whole\nhalf")
    with impl.stream_reader(a, -1) as rfile:
        assert rfile.readline() == b"whole\n"
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="timed out"):
            rfile.readline()
        assert time.monotonic() - started >= 0.04
        # As with SocketIO: a stream that timed out stays unusable.
        b.sendall(b" more\n")
        with pytest.raises(OSError, match="cannot read from timed out object"):
            rfile.readline()


def test_timeout_is_read_at_each_call(impl, pair):
    a, b = pair
    with impl.stream_reader(a, -1) as rfile:
        a.settimeout(0.02)
        with pytest.raises(TimeoutError):
            rfile.read1(1)
    with impl.stream_reader(a, -1) as rfile:
        a.settimeout(None)
        timer = threading.Timer(0.1, b.sendall, [b"late\n"])
        timer.start()
        assert rfile.readline() == b"late\n"  # waits past the old timeout
        timer.join()


def send_later(sock, pieces, pause=0.05):
    """Send ``pieces`` from another thread, ``pause`` seconds apart."""
    def run():
        for piece in pieces:
            time.sleep(pause)
            sock.sendall(piece)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["blocking", "timeout"])
def test_lines_already_received_or_arriving_later(impl, pair, timeout):
    a, b = pair
    a.settimeout(timeout)
    with impl.stream_reader(a, -1) as rfile:
        b.sendall(b"here\n")  # in the kernel before the call
        assert rfile.readline() == b"here\n"
        sender = send_later(b, [b"in ", b"three ", b"pieces\n"])
        assert rfile.readline() == b"in three pieces\n"
        sender.join()


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["blocking", "timeout"])
def test_iteration_across_arrivals_until_eof(impl, pair, timeout):
    a, b = pair
    a.settimeout(timeout)
    with impl.stream_reader(a, -1) as rfile:
        sender = send_later(b, [b"one\ntw", b"o\nthr", b"ee"])
        sender.join()
        b.shutdown(socket.SHUT_WR)
        assert list(rfile) == [b"one\n", b"two\n", b"three"]
        assert rfile.readline() == b""


@needs_cio
def test_reader_of_any_object_with_a_socket_interface():
    """The descriptor is read from socket objects only; anything else is
    asked for fileno() (and gettimeout() when a call would wait)."""
    class Facade:
        def __init__(self, sock):
            self._sock, self._io_refs = sock, 0

        def fileno(self):
            return self._sock.fileno()

        def gettimeout(self):
            return self._sock.gettimeout()

        def _decref_socketios(self):
            self._io_refs -= 1

    a, b = socket.socketpair()
    with a, b:
        a.settimeout(0)
        facade = Facade(a)
        with _cio.SocketReader(facade) as rfile:
            assert rfile.read(10) is None
            b.sendall(b"through the facade\n")
            assert rfile.readline() == b"through the facade\n"
        _cio.SocketWriter(facade).write(b"back\n")
        assert b.recv(10) == b"back\n"


def test_detached_socket_fails_like_the_standard_objects(pair):
    a, b = pair
    results = []
    for impl in IMPLS.values():
        if impl is None:
            continue
        rfile = impl.stream_reader(a, -1)
        wfile = impl.stream_writer(a, 0)
        fd = a.detach()
        try:
            results.append((outcome(rfile.read1, 1), outcome(wfile.write, b"x")))
        finally:
            a = socket.socket(fileno=fd)
        rfile.close()
    a.close()
    assert len(set(results)) == 1
    assert results[0][0][1] is OSError


@pytest.mark.parametrize("wbufsize", [0, -1])
def test_write_with_timeout_completes_while_the_peer_reads(impl, pair,
                                                           wbufsize):
    a, b = pair
    a.settimeout(5.0)
    data = bytes(range(256)) * 40_000  # far more than the socket buffers
    received = []
    reader = threading.Thread(
        target=lambda: received.append(b"".join(iter(
            lambda: b.recv(65536), b""))))
    reader.start()
    with impl.stream_writer(a, wbufsize) as wfile:
        assert wfile.write(data) == len(data)
    a.shutdown(socket.SHUT_WR)
    reader.join()
    assert received == [data]


@pytest.mark.parametrize("wbufsize", [0, -1])
def test_write_timeout(impl, pair, wbufsize):
    a, b = pair
    a.settimeout(0.05)
    wfile = impl.stream_writer(a, wbufsize)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out"):
        wfile.write(b"x" * 8_000_000)  # the peer reads nothing
    assert time.monotonic() - started >= 0.04
    b.close()
    try:
        wfile.close()
    except OSError:
        pass  # what the buffered writer still holds cannot go anywhere


def nonblocking_write_scenario(impl):
    a, b = socket.socketpair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        a.settimeout(0)
        results = []
        for wbufsize in (0, 1000):
            wfile = impl.stream_writer(a, wbufsize)
            for size in (700, 3000, 700, 50, 2500):
                try:
                    results.append(("ok", wfile.write(b"x" * size)))
                except BlockingIOError as exc:
                    results.append(("blocked", exc.errno,
                                    getattr(exc, "characters_written", None)))
            results.append(outcome(wfile.flush))
            results.append(len(drain(b)))
            results.append(outcome(wfile.flush))
            results.append(outcome(wfile.close))
            results.append(len(drain(b)))
        return results


@needs_cio
def test_nonblocking_writes_like_the_standard_objects():
    assert nonblocking_write_scenario(_cio) == nonblocking_write_scenario(
        _pyengine)


# --------------------------------------------------------------------------
# Signals, the GIL and threads

class Interrupted(Exception):
    pass


@pytest.fixture
def poke_main_thread():
    """Send SIGUSR1 to the main thread after a while, with a handler."""
    if not hasattr(signal, "pthread_kill"):
        pytest.skip("needs signal.pthread_kill")
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run in the main thread only")
    main = threading.get_ident()
    timers = []

    def poke(handler, after=0.05):
        signal.signal(signal.SIGUSR1, handler)
        timer = threading.Timer(after, signal.pthread_kill,
                                [main, signal.SIGUSR1])
        timers.append(timer)
        timer.start()

    previous = signal.getsignal(signal.SIGUSR1)
    yield poke
    for timer in timers:
        timer.join()
    signal.signal(signal.SIGUSR1, previous)


def test_interrupted_read_is_retried(impl, pair, poke_main_thread):
    a, b = pair
    calls = []
    poke_main_thread(lambda signum, frame: calls.append(signum))
    sender = threading.Timer(0.15, b.sendall, [b"after the signal\n"])
    sender.start()
    with impl.stream_reader(a, -1) as rfile:
        assert rfile.readline() == b"after the signal\n"
    sender.join()
    assert calls == [signal.SIGUSR1]


def raise_interrupted(signum, frame):
    raise Interrupted


def test_signal_handler_error_ends_a_read(impl, pair, poke_main_thread):
    a, _ = pair
    a.settimeout(5)  # bounds the test should the signal be lost
    poke_main_thread(raise_interrupted)
    with impl.stream_reader(a, -1) as rfile, pytest.raises(Interrupted):
        rfile.readline()


@pytest.mark.parametrize("wbufsize", [0, -1])
def test_signal_handler_error_ends_a_write(impl, pair, poke_main_thread,
                                           wbufsize):
    a, b = pair
    a.settimeout(5)
    poke_main_thread(raise_interrupted)
    wfile = impl.stream_writer(a, wbufsize)
    with pytest.raises(Interrupted):
        wfile.write(b"x" * 8_000_000)  # the peer reads nothing
    b.close()
    try:
        wfile.close()
    except OSError:
        pass


def test_blocked_read_releases_the_gil(impl, pair):
    a, b = pair
    # A kernel-side limit on the blocking recv(): should the GIL stay held,
    # the read gives up after 2 s and the test fails instead of hanging.
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                 struct.pack("ll", 2, 0))
    lines = []
    with impl.stream_reader(a, -1) as rfile:
        reader = threading.Thread(target=lambda: lines.append(
            outcome(rfile.readline)))
        reader.start()
        time.sleep(0.05)
        b.sendall(b"ping\n")
        reader.join()
    assert lines == [("ok", b"ping\n")]


@pytest.mark.parametrize("wbufsize", [0, -1])
def test_blocked_write_releases_the_gil(impl, pair, wbufsize):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                 struct.pack("ll", 2, 0))
    b.settimeout(5)
    payload = bytes(range(256)) * 10000  # more than the socket buffers hold
    results = []
    with impl.stream_writer(a, wbufsize) as wfile:
        def write():
            results.append(outcome(wfile.write, payload))
            results.append(outcome(wfile.flush))

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.05)  # the writer now waits for room
        received = bytearray()
        while len(received) < len(payload):
            received += b.recv(65536)
        writer.join()
    assert results == [("ok", len(payload)), ("ok", None)]
    assert received == payload


@needs_cio
def test_threads_share_a_reader(pair, no_leaks):
    # Every line whole, and once.  Not so for io.BufferedReader, whose
    # readline() measures the buffered bytes before it takes its lock: a
    # thread that waited for the lock may return bytes another took.
    a, b = pair
    expected = [b"line %05d\n" % i for i in range(3000)]

    def send():
        b.sendall(b"".join(expected))
        b.shutdown(socket.SHUT_WR)

    got = [[], []]
    with _cio.stream_reader(a, 64) as rfile:
        threads = [threading.Thread(target=lambda out=out: out.extend(rfile))
                   for out in got]
        threads.append(threading.Thread(target=send))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(got[0] + got[1]) == expected


# --------------------------------------------------------------------------
# Property tests: same calls, same input, same results

CHUNKS = st.lists(st.sampled_from([b"a", b"bcd", b"efghijk", b"\n", b"\r\n",
                                   b"\0\xff"]), max_size=10).map(b"".join)
SIZE = st.integers(-1, 24)
READ_CALLS = st.one_of(
    st.tuples(st.sampled_from(["read", "readline"]), st.none() | SIZE),
    st.tuples(st.sampled_from(["read1", "peek"]), SIZE),
    st.tuples(st.sampled_from(["readinto", "readinto1"]),
              st.integers(0, 24)),
    st.tuples(st.just("readlines"), st.integers(0, 24)),
    st.tuples(st.sampled_from(["next", "close"]), st.none()),
)


@st.composite
def read_scenarios(draw):
    """Where the input comes from, and what to call between arrivals.

    ``"eof"``: a blocking socket whose whole input and end came first;
    ``"timeout"`` (short) and ``"nonblocking"``: input arrives between
    the calls, and the end maybe somewhere.
    """
    mode = draw(st.sampled_from(["eof", "timeout", "nonblocking"]))
    steps = draw(st.lists(st.tuples(st.lists(CHUNKS, max_size=3), READ_CALLS),
                          max_size=12))
    eof_at = 0 if mode == "eof" else draw(st.integers(0, len(steps) + 1))
    bufsize = draw(st.sampled_from([1, 2, 5, 16, DEFAULT]))
    return mode, bufsize, steps, eof_at


def play_reads(impl, scenario):
    mode, bufsize, steps, eof_at = scenario
    a, b = socket.socketpair()
    with a, b:
        a.settimeout({"eof": None, "timeout": 0.01, "nonblocking": 0}[mode])
        rfile = impl.stream_reader(a, bufsize)
        if mode == "eof":
            b.sendall(b"".join(c for chunks, _ in steps for c in chunks))
        results = []
        for index, (chunks, (name, arg)) in enumerate(steps):
            if index == eof_at:
                b.shutdown(socket.SHUT_WR)
            if index < eof_at:
                for chunk in chunks:
                    b.sendall(chunk)
            results.append(play_read(rfile, name, arg))
        rfile.close()
        return results


def play_read(rfile, name, arg):
    if name in ("readinto", "readinto1"):
        buffer = bytearray(arg)
        return outcome(getattr(rfile, name), buffer), bytes(buffer)
    if name == "next":
        return outcome(next, rfile)
    if name == "close":
        return outcome(rfile.close)
    return outcome(getattr(rfile, name), arg)


@needs_cio
@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(read_scenarios())
def test_reads_like_the_standard_reader(scenario):
    assert play_reads(_cio, scenario) == play_reads(_pyengine, scenario)


BUFFER_TYPES = st.sampled_from([bytes, bytearray, memoryview])
WRITE_CALLS = st.one_of(
    st.tuples(st.just("write"),
              st.tuples(BUFFER_TYPES, st.binary(max_size=40))),
    st.tuples(st.just("writelines"), st.lists(st.binary(max_size=12),
                                              max_size=3)),
    st.tuples(st.sampled_from(["flush", "close"]), st.none()),
)


def play_writes(impl, wbufsize, calls):
    a, b = socket.socketpair()
    with a, b:
        wfile = impl.stream_writer(a, wbufsize)
        results = []
        for name, arg in calls:
            if name == "write":
                kind, data = arg
                result = outcome(wfile.write, kind(data))
            elif name == "writelines":
                result = outcome(wfile.writelines, arg)
            else:
                result = outcome(getattr(wfile, name))
            results.append((result, drain(b)))
        wfile.close()
        results.append(drain(b))
        return results


@needs_cio
@settings(max_examples=80, deadline=None)
@given(st.sampled_from([0, 1, 3, 16, -1]), st.lists(WRITE_CALLS, max_size=15))
def test_writes_like_the_standard_writers(wbufsize, calls):
    assert (play_writes(_cio, wbufsize, calls)
            == play_writes(_pyengine, wbufsize, calls))


# --------------------------------------------------------------------------
# In a handler

@needs_cio
@pytest.mark.parametrize("wbufsize", [0, -1])
def test_stream_request_handler_with_compiled_streams(monkeypatch, wbufsize):
    monkeypatch.setattr(_pyengine, "stream_reader", _cio.stream_reader)
    monkeypatch.setattr(_pyengine, "stream_writer", _cio.stream_writer)
    seen = []

    class Upper(fastsock.StreamRequestHandler):
        def handle(self):
            seen.append((type(self.rfile), type(self.wfile)))
            for line in self.rfile:
                self.wfile.write(line.upper())

    Upper.wbufsize = wbufsize
    with _backend.use(_pyengine.NAME), \
            fastsock.TCPServer(("127.0.0.1", 0), Upper) as server:
        worker = threading.Thread(target=server.handle_request)
        worker.start()
        with socket.create_connection(server.server_address) as client:
            client.sendall(b"one\ntwo\n")
            client.shutdown(socket.SHUT_WR)
            reply = b"".join(iter(lambda: client.recv(100), b""))
        worker.join()
    assert reply == b"ONE\nTWO\n"
    writer_class = _cio.SocketWriter if wbufsize == 0 else \
        _cio.BufferedSocketWriter
    assert seen == [(_cio.SocketReader, writer_class)]
