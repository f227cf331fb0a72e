"""fastsock.http's handlers parse requests faster, and exactly as http.server.

Every request goes to an http.server handler and to the same handler built
on fastsock.http; the responses must match byte for byte (but for the Date
header's time), and so must what the handler saw: command, path, version,
connection state, the ``headers`` object (its type and whole state) and
where the body starts in ``rfile``.
"""

import email.message
import email.parser
import email.utils
import functools
import http.client
import http.server
import io
import re
import socket
import threading
import time

import pytest
from _server_helpers import HOST, connect, recv_until_eof, serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastsock.http

DATE = re.compile(rb"\r\nDate: [^\r\n]*")


def masked(response):
    return DATE.sub(b"\r\nDate: -", response)


def described(value):
    """``value`` as plain data that compares equal when the state does:
    messages by type and attributes, defects (exceptions) by type and
    arguments."""
    if isinstance(value, email.message.Message):
        return type(value), {name: described(item)
                             for name, item in vars(value).items()}
    if isinstance(value, BaseException):
        return type(value), value.args
    if isinstance(value, list):
        return [described(item) for item in value]
    return value


class Recorder:
    """Answers every method with what it parsed; records it and the log."""

    def setup(self):
        super().setup()
        self.seen = self.server.seen

    def record(self):
        headers = getattr(self, "headers", None)
        self.seen.append({
            "command": self.command,
            "path": getattr(self, "path", None),
            "request_version": self.request_version,
            "requestline": self.requestline,
            "close_connection": self.close_connection,
            "headers": described(headers),
        })

    def do_GET(self):
        self.record()
        items = self.headers.items()
        body = repr((items, self.headers.get_all("X-Repeat"),
                     self.headers.get_content_type(),
                     described(self.headers.defects))).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_POST = do_PUT = do_GET

    def log_message(self, format, *args):
        self.seen.append(("log", format % args))


def handler_class(base, protocol):
    return type("Handler", (Recorder, base), {"protocol_version": protocol})


class _Offline:
    """What a server gives a handler, for handling a byte string."""

    def __init__(self):
        self.seen = []


def handle_offline(base, data, protocol):
    """Run a handler over ``data``: (response, records, unread input)."""
    cls = handler_class(base, protocol)
    handler = cls.__new__(cls)
    handler.server = _Offline()
    handler.seen = handler.server.seen
    handler.client_address = ("127.0.0.1", 4321)
    handler.rfile = io.BytesIO(data)
    handler.wfile = io.BytesIO()
    handler.handle()
    end = handler.seen, handler.rfile.read()
    return masked(handler.wfile.getvalue()), end


def assert_same_offline(data, protocol="HTTP/1.1"):
    stdlib = handle_offline(http.server.BaseHTTPRequestHandler, data,
                            protocol)
    fast = handle_offline(fastsock.http.BaseHTTPRequestHandler, data,
                          protocol)
    assert fast == stdlib
    return stdlib


def request(*header_lines, start=b"GET /index.html HTTP/1.1", end=b"\r\n"):
    return b"".join(line + end for line in (start, *header_lines)) + end


WELL_FORMED = [
    request(),
    request(b"Host: example.com", b"Accept: */*", b"User-Agent: t/1.0"),
    request(b"Host: x", end=b"\n"),
    request(b"Host:x", b"X-Empty:", b"X-Blank:   ", b"X-Tab:\t\tv\t"),
    request(b"X-Repeat: 1", b"x-repeat: 2", b"X-REPEAT:3"),
    request(b"X-Trailing: value   ", b"X-Inner: a  b\tc"),
    request(b"Connection: close"),
    request(b"Connection: keep-alive", start=b"GET / HTTP/1.0"),
    request(b"Connection: Keep-Alive", start=b"GET / HTTP/1.1"),
    request(b"Expect: 100-continue", b"Content-Length: 0"),
    request(b"Content-Type: text/plain", b"Content-Length: 3",
            start=b"POST /form HTTP/1.1") + b"abc",
    request(b"!#$%&'*+-.^_`|~09azAZ: odd but legal name"),
    request(b"Weird[]{}()<>@,;=?\"/\\: value"),
    request(b"Host: a", start=b"GET //evil.example/path HTTP/1.1"),
    request(b"Host: a", start=b"HEAD / HTTP/1.1"),
    request(start=b"GET / HTTP/1.0"),
    request(b"Host: a", start=b"  GET   /spaced   HTTP/1.1  "),
    # Two requests on one connection, the second one closing it.
    request(b"Host: a") + request(b"Connection: close", start=b"GET /2 HTTP/1.1"),
    request(b"A: 1", end=b"\r\n")[:-2] + b"\n",  # a block ended by a bare LF
]

EDGE_CASES = [
    request(b"X-Folded: one", b"  two", b"\tthree"),  # continuation lines
    request(b" Leading: space"),
    request(b"From nobody Mon Jan  1 00:00:00 2024", b"Host: a"),
    request(b"From: someone@example.com", b"Host: a"),
    request(b": no name", b"Host: a"),
    request(b"No colon here", b"Host: a"),
    request(b"Space Name: x", b"Host: a"),
    request(b"Name : x", b"Host: a"),
    request(b"X-Latin: caf\xe9", b"Host: a"),
    request(b"X-Utf8: \xe2\x80\xa8 sep", b"Host: a"),
    request(b"X-Next: a\x85b", b"Host: a"),
    request(b"X-Cr: a\rb", b"Host: a"),
    request(b"X-Vt: a\x0bb", b"X-Ff: a\x0cb", b"X-Fs: a\x1cb\x1dc\x1ed"),
    request(b"X-Nul: a\x00b", b"X-Del: a\x7fb"),
    request(b"X-Crs: a\r\r", b"Host: a"),
    request(b"Content-Type: multipart/form-data; boundary=xyz",
            b"Content-Length: 0", start=b"POST / HTTP/1.1"),
    request(b"Content-Type: message/rfc822", start=b"POST / HTTP/1.1"),
    request(b"content-type: MULTIPART/mixed", start=b"POST / HTTP/1.1"),
    request(b"Content-Type: message/delivery-status"),
    request(b"X-Mention: multipart message", b"Host: a"),
    request(*(b"H%d: v" % i for i in range(99))),  # the most headers allowed
    request(*(b"H%d: v" % i for i in range(100))),  # one too many
    request(b"X-Long: " + b"a" * 65527),  # the longest line allowed
    request(b"X-Long: " + b"a" * 65528),  # one byte too long
    b"GET / HTTP/1.1\r\nHost: a\r\n",  # the connection ends in the headers
    b"GET / HTTP/1.1\r\nHost: a",
    b"GET / HTTP/1.1\r\n",
    b"GET /\r\n",  # HTTP/0.9
    b"POST /\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"GET / HTTP/1.1.1\r\n\r\n",
    b"GET / HTTP/1.x\r\n\r\n",
    b"GET / FTP/1.1\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\n\r\n",
    b"\r\n",
    b"",
    b"BREW /pot HTTP/1.1\r\n\r\n",  # no do_BREW
    b"GET /" + b"a" * 65536 + b" HTTP/1.1\r\n\r\n",  # request line too long
]


@pytest.mark.parametrize("protocol", ["HTTP/1.0", "HTTP/1.1"])
@pytest.mark.parametrize("data", WELL_FORMED + EDGE_CASES)
def test_parsing_matches_http_server(data, protocol):
    assert_same_offline(data, protocol)


def test_plain_headers_skip_the_email_parser(monkeypatch):
    stdlib = assert_same_offline(WELL_FORMED[1])
    assert stdlib[1][0][0]["headers"][1]["_headers"] == [
        ("Host", "example.com"), ("Accept", "*/*"), ("User-Agent", "t/1.0")]

    def no_email_parser(*args, **kwargs):
        raise AssertionError("the email parser was used")

    monkeypatch.setattr(email.parser, "Parser", no_email_parser)
    for data in WELL_FORMED:
        message = fastsock.http._parse_headers(
            io.BytesIO(data.partition(b"\n")[2]))
        assert type(message) is http.client.HTTPMessage
    with pytest.raises(AssertionError, match="email parser"):
        fastsock.http._parse_headers(io.BytesIO(b"A: 1\r\n  2\r\n\r\n"))


def test_another_message_class_goes_through_the_email_parser():
    class Message(http.client.HTTPMessage):
        pass

    def parse(base):
        handler = type("H", (base,), {"MessageClass": Message})
        return handle_offline(handler, request(b"Host: a", b"B: 2"),
                              "HTTP/1.1")

    stdlib = parse(http.server.BaseHTTPRequestHandler)
    assert parse(fastsock.http.BaseHTTPRequestHandler) == stdlib
    assert stdlib[1][0][0]["headers"][0] is Message


HEADER_TEXT = st.lists(
    st.sampled_from([b"a", b"Z", b"-", b":", b" ", b"\t", b"\r", b"\n",
                     b"\r\n", b"\x0b", b"\x1c", b"\x85", b"\xe9", b"\x00",
                     b"From ", b"Content-Type: ", b"multipart/x",
                     b"message/x", b"Connection: ", b"close", b"Expect: ",
                     b"100-continue", b"X-Repeat: "]),
    max_size=30).map(b"".join)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(HEADER_TEXT, max_size=8),
       ending=st.sampled_from([b"\r\n", b"\n", b""]),
       protocol=st.sampled_from(["HTTP/1.0", "HTTP/1.1"]))
def test_random_header_blocks_match_http_server(lines, ending, protocol):
    data = b"POST /p HTTP/1.1\r\n" + b"\r\n".join(lines) + ending + b"\r\nbody"
    assert_same_offline(data, protocol)


@settings(max_examples=200, deadline=None)
@given(fields=st.lists(st.tuples(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e,
                          blacklist_characters=":"), min_size=1, max_size=12),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e)
            | st.just("\t"), max_size=20)), max_size=12),
    newline=st.sampled_from([b"\r\n", b"\n"]))
def test_random_plain_fields_match_http_server(fields, newline):
    lines = [f"{name}:{value}".encode() for name, value in fields]
    assert_same_offline(request(*lines, end=newline))


# -- through real servers ----------------------------------------------------

def start_server(module, base, protocol):
    server = module.ThreadingHTTPServer((HOST, 0),
                                        handler_class(base, protocol))
    server.seen = []
    return server


def exchange(server, data):
    """The whole answer to ``data``, on a connection of its own."""
    with connect(server) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return recv_until_eof(sock)


def wait_for_records(server, count):
    deadline = time.monotonic() + 10
    while len(server.seen) < count and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize("protocol", ["HTTP/1.0", "HTTP/1.1"])
def test_servers_answer_byte_for_byte_alike(engine, protocol, no_leaks):
    stdlib = start_server(http.server, http.server.BaseHTTPRequestHandler,
                          protocol)
    fast = start_server(fastsock.http, fastsock.http.BaseHTTPRequestHandler,
                        protocol)
    with serving(stdlib), serving(fast):
        for data in WELL_FORMED + EDGE_CASES:
            expected = masked(exchange(stdlib, data))
            assert masked(exchange(fast, data)) == expected, data[:80]
        # Both logs are complete once every connection has been handled.
        wait_for_records(fast, len(stdlib.seen))
    assert fast.seen == stdlib.seen


def test_file_servers_answer_byte_for_byte_alike(engine, tmp_path, no_leaks):
    (tmp_path / "page.html").write_bytes(b"<p>hello</p>")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_bytes(b"a" * 3000)
    modified = email.utils.formatdate(
        (tmp_path / "page.html").stat().st_mtime + 60, usegmt=True).encode()
    requests = [
        request(b"Host: a", start=b"GET /page.html HTTP/1.1"),
        request(b"Host: a", start=b"HEAD /page.html HTTP/1.1"),
        request(b"If-Modified-Since: " + modified,
                start=b"GET /page.html HTTP/1.1"),
        request(b"If-Modified-Since: yesterday",
                start=b"GET /page.html HTTP/1.1"),
        request(b"Host: a", start=b"GET / HTTP/1.1"),
        request(b"Host: a", start=b"GET /sub HTTP/1.1"),
        request(b"Range: bytes=0-1", start=b"GET /sub/a.txt HTTP/1.0"),
        request(b"Host: a", start=b"GET /missing HTTP/1.1"),
        request(b"Host: a", start=b"POST /page.html HTTP/1.1"),
    ]
    answers = []
    for module in (http.server, fastsock.http):
        quiet = type("Files", (module.SimpleHTTPRequestHandler,),
                     {"log_message": lambda self, *args: None})
        handler = functools.partial(quiet, directory=str(tmp_path))
        server = module.ThreadingHTTPServer((HOST, 0), handler)
        with serving(server):
            answers.append([masked(exchange(server, data))
                            for data in requests])
    assert answers[1] == answers[0]
    assert b"304 Not Modified" in answers[0][2]
    assert b"<p>hello</p>" in answers[0][0]


# -- hooks that subclasses override ------------------------------------------

class Overriding(Recorder):
    """Overrides the hooks the fast paths sit in; each call is recorded."""

    def called(self, name):
        self.seen.append(("called", name))

    def handle_one_request(self):
        self.called("handle_one_request")
        super().handle_one_request()

    def parse_request(self):
        self.called("parse_request")
        return super().parse_request()

    def send_response(self, code, message=None):
        self.called("send_response")
        super().send_response(code, message)

    def send_header(self, keyword, value):
        self.called("send_header " + keyword)
        super().send_header(keyword, "x-" + value)

    def end_headers(self):
        self.called("end_headers")
        super().end_headers()

    def date_time_string(self, timestamp=None):
        self.called("date_time_string")
        return "the date"

    def version_string(self):
        self.called("version_string")
        return "Tested/1"

    def log_request(self, code="-", size="-"):
        self.called("log_request")
        super().log_request(code, size)

    def log_message(self, format, *args):
        self.seen.append(("log_message", format % args))


@pytest.mark.parametrize("data", [
    request(b"Host: a", b"Connection: close"),
    request(b"X-Folded: a", b" b"),
    request(b"X-Long: " + b"a" * 65528),  # an error response
])
def test_overridden_hooks_are_called(engine, data, no_leaks):
    results = []
    for module in (http.server, fastsock.http):
        handler = type("H", (Overriding, module.BaseHTTPRequestHandler),
                       {"protocol_version": "HTTP/1.1"})
        server = module.ThreadingHTTPServer((HOST, 0), handler)
        server.seen = []
        with serving(server):
            response = exchange(server, data)
            wait_for_records(server, 1)
        results.append((response, server.seen))
    assert results[1] == results[0]
    response, seen = results[0]
    assert b"\r\nDate: x-the date\r\n" in response
    assert b"\r\nServer: x-Tested/1\r\n" in response
    names = [entry[1] for entry in seen
             if isinstance(entry, tuple) and entry[0] == "called"]
    assert names[:3] == ["handle_one_request", "parse_request",
                         "send_response"]
    assert "date_time_string" in names and "end_headers" in names
    assert any(isinstance(entry, tuple) and entry[0] == "log_message"
               for entry in seen)


# -- the Date header ---------------------------------------------------------

@pytest.mark.parametrize("now", [
    1700000000.0, 1700000000.25, 1700000000.9999, 1700000000.9999994,
    1700000000.9999996, 1700000001.0000001, 1700000061.5,
    0.0, -0.5, -1.0, -86400.75,
])
def test_date_header_matches_http_server(monkeypatch, now):
    stdlib = http.server.BaseHTTPRequestHandler.__new__(
        http.server.BaseHTTPRequestHandler)
    fast = fastsock.http.BaseHTTPRequestHandler.__new__(
        fastsock.http.BaseHTTPRequestHandler)
    monkeypatch.setattr(time, "time", lambda: now)
    # Twice: made afresh, then (within the same second) from the cache.
    assert fast.date_time_string() == stdlib.date_time_string()
    assert fast.date_time_string() == stdlib.date_time_string()
    assert fast.date_time_string(now - 86400) == \
        stdlib.date_time_string(now - 86400)
    assert stdlib.date_time_string() == email.utils.formatdate(now,
                                                                usegmt=True)


def test_date_header_from_many_threads():
    handler = fastsock.http.BaseHTTPRequestHandler.__new__(
        fastsock.http.BaseHTTPRequestHandler)
    wrong = []

    def check():
        for _ in range(2000):
            before = time.time()
            text = handler.date_time_string()
            after = time.time()
            allowed = {email.utils.formatdate(t, usegmt=True)
                       for t in (before, after)}
            if text not in allowed:
                wrong.append((text, allowed))

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong
