"""TCPServer.proxy_protocol: the PROXY header read on real connections,
under both engines, by a test client playing the proxy."""

import contextlib
import ipaddress
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fastsock

import _proxy_encoder as encode
from _server_helpers import HOST, TIMEOUT, requires_fork, requires_unix, serving

# The forking server's loop runs beside pytest's threads (3.12 warns at
# each fork of a multi-threaded process; its child only serves a request).
pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning")

HERE = os.path.dirname(os.path.abspath(__file__))
CERT = os.path.join(HERE, "tls_keycert.pem")

SERVER_CLASSES = [fastsock.TCPServer, fastsock.ThreadingTCPServer]
if hasattr(fastsock, "ForkingTCPServer"):
    SERVER_CLASSES.append(fastsock.ForkingTCPServer)


class Report(fastsock.StreamRequestHandler):
    """Echoes one line, prefixed with what the handler saw."""

    def handle(self):
        line = self.rfile.readline()
        header = self.proxy_header
        seen = (f"{self.client_address[0]} {self.client_address[1]} "
                f"{self.proxy_address is not None} "
                f"{header.command if header else None} "
                f"{header.alpn if header else None}|")
        self.wfile.write(seen.encode() + line)


@contextlib.contextmanager
def served(server):
    """The server, serving in a thread during the block."""
    with serving(server):
        yield server


def proxy_server(server_class=fastsock.ThreadingTCPServer, address=(HOST, 0),
                 **attributes):
    server = server_class(address, Report)
    server.proxy_protocol = True
    for name, value in attributes.items():
        setattr(server, name, value)
    return server


def exchange(address, *pieces, family=socket.AF_INET):
    """Send ``pieces`` (each its own send), read the reply to EOF."""
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(TIMEOUT)
        client.connect(address)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1) \
            if family != getattr(socket, "AF_UNIX", None) else None
        for piece in pieces:
            client.sendall(piece)
        return read_to_eof(client)


def read_to_eof(client):
    reply = b""
    while True:
        chunk = client.recv(4096)
        if not chunk:
            return reply
        reply += chunk


@pytest.mark.parametrize("server_class", SERVER_CLASSES)
@pytest.mark.parametrize("version", [1, 2])
def test_header_then_data_in_one_segment(engine, server_class, version,
                                         no_leaks):
    make = encode.v1 if version == 1 else encode.v2
    header = make(("203.0.113.9", 40001), ("198.51.100.1", 80))
    with served(proxy_server(server_class)) as server:
        reply = exchange(server.server_address, header + b"hello\n")
    assert reply == b"203.0.113.9 40001 True PROXY None|hello\n"
    assert not server._proxy_policy.connections  # nothing kept


@pytest.mark.parametrize("server_class", SERVER_CLASSES)
def test_header_split_across_segments(engine, server_class):
    header = encode.v2(("2001:db8::7", 5000), ("2001:db8::1", 443),
                       tlvs=[(0x01, b"h2")])
    pieces = [header[:1], header[1:13], header[13:17], header[17:-1],
              header[-1:] + b"da", b"ta\n"]
    with served(proxy_server(server_class)) as server:
        reply = exchange(server.server_address, *pieces)
    assert reply == b"2001:db8::7 5000 True PROXY b'h2'|data\n"


def test_v1_split_byte_by_byte(engine):
    header = encode.v1(("192.0.2.33", 1), ("192.0.2.1", 2))
    with served(proxy_server()) as server:
        reply = exchange(server.server_address,
                         *[header[i:i + 1] for i in range(len(header))],
                         b"x\n")
    assert reply == b"192.0.2.33 1 True PROXY None|x\n"


@pytest.mark.parametrize("header", [
    encode.v2(("192.0.2.5", 9), ("192.0.2.1", 80), local=True),
    encode.v2(),  # UNSPEC
    encode.v1(),  # UNKNOWN
    encode.v2(b"/run/client", b"/run/server", unix=True),
])
def test_headers_without_a_client_address_keep_the_proxys(engine, header):
    with served(proxy_server()) as server:
        with socket.create_connection(server.server_address,
                                      timeout=TIMEOUT) as client:
            client.sendall(header + b"hi\n")
            own_port = client.getsockname()[1]
            reply = read_to_eof(client)
    assert reply.startswith(f"127.0.0.1 {own_port} True ".encode())
    assert reply.endswith(b"|hi\n")


def test_header_before_the_tls_handshake(engine):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERT)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    header = encode.v1(("198.51.100.77", 31337), ("198.51.100.1", 443))
    with served(proxy_server(tls_context=context)) as server:
        with socket.create_connection(server.server_address,
                                      timeout=TIMEOUT) as raw:
            raw.sendall(header)
            with client_context.wrap_socket(raw) as client:
                client.sendall(b"secret\n")
                reply = read_to_eof(client)
    assert reply == b"198.51.100.77 31337 True PROXY None|secret\n"


@pytest.mark.parametrize("server_class", SERVER_CLASSES)
@pytest.mark.parametrize("bad", [
    b"GET / HTTP/1.0\r\n\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
    encode.V2_SIGNATURE + b"\x31",
])
def test_malformed_header_closes_before_the_timeout(engine, server_class, bad,
                                                     caplog):
    # A timeout far beyond TIMEOUT: the close must come from the bytes.
    server = proxy_server(server_class, proxy_protocol_timeout=600)
    with caplog.at_level(logging.WARNING, logger="fastsock"):
        with served(server):
            assert exchange(server.server_address, bad) == b""
            # The server goes on serving.
            assert exchange(server.server_address,
                            encode.v1(("192.0.2.1", 7), ("192.0.2.2", 8))
                            + b"ok\n").endswith(b"|ok\n")
    if server_class is not getattr(fastsock, "ForkingTCPServer", None):
        assert "no valid PROXY header" in caplog.text


def test_incomplete_header_times_out(engine):
    with served(proxy_server(fastsock.TCPServer,
                              proxy_protocol_timeout=0.3)) as server:
        with socket.create_connection(server.server_address,
                                      timeout=TIMEOUT) as client:
            client.sendall(encode.v1(("192.0.2.1", 7), ("192.0.2.2", 8))[:-2])
            assert read_to_eof(client) == b""


def test_eof_inside_the_header_closes(engine):
    with served(proxy_server()) as server:
        with socket.create_connection(server.server_address,
                                      timeout=TIMEOUT) as client:
            client.sendall(encode.V2_SIGNATURE[:5])
            client.shutdown(socket.SHUT_WR)
            assert read_to_eof(client) == b""


def test_untrusted_peer_is_refused_without_reading(engine, caplog):
    header = encode.v1(("192.0.2.1", 7), ("192.0.2.2", 8))
    server = proxy_server(proxy_protocol_trusted=["10.0.0.0/8", "192.0.2.9"])
    with caplog.at_level(logging.WARNING, logger="fastsock"):
        with served(server):
            assert exchange(server.server_address, header + b"x\n") == b""
    assert "not a trusted PROXY protocol sender" in caplog.text


def test_trusted_list_names_the_loopback_network(engine):
    header = encode.v1(("192.0.2.1", 7), ("192.0.2.2", 8))
    server = proxy_server(proxy_protocol_trusted="127.0.0.0/8")
    with served(server):
        assert exchange(server.server_address, header + b"x\n").endswith(
            b"|x\n")


@requires_unix
def test_unix_peers_are_trusted_by_default(engine, sock_dir):
    path = os.path.join(sock_dir, "proxy.sock")
    header = encode.v2(("192.0.2.44", 4444), ("192.0.2.2", 80))
    server = proxy_server(fastsock.ThreadingUnixStreamServer, path)
    with served(server):
        reply = exchange(path, header + b"u\n", family=socket.AF_UNIX)
    assert reply == b"192.0.2.44 4444 True PROXY None|u\n"


def test_refusals_are_logged_at_most_once_a_second(engine, caplog):
    server = proxy_server(fastsock.TCPServer)
    with caplog.at_level(logging.WARNING, logger="fastsock"):
        with served(server):
            for _ in range(5):
                assert exchange(server.server_address, b"nonsense\n") == b""
    records = [r for r in caplog.records if r.name == "fastsock"]
    # Five refusals within a second or so: one line, or two with a count.
    assert 1 <= len(records) < 5
    if len(records) > 1:
        assert "more refused" in records[-1].getMessage()


def test_handler_without_proxy_protocol_has_no_header(engine):
    seen = []

    class Look(fastsock.StreamRequestHandler):
        def handle(self):
            seen.append((self.proxy_header, self.proxy_address))

    with served(fastsock.TCPServer((HOST, 0), Look)) as server:
        exchange(server.server_address, b"x")
    assert seen == [(None, None)]


def test_failure_path_needs_are_imported_when_serving_starts():
    """A fresh process: logging and ipaddress are in once serving starts,
    before any client."""
    code = """
import sys, threading
import fastsock
server = fastsock.ThreadingTCPServer(("127.0.0.1", 0),
                                     fastsock.BaseRequestHandler)
server.proxy_protocol = True
assert "fastsock._proxy" not in sys.modules
thread = threading.Thread(target=server.serve_forever, args=(0.05,))
thread.start()
import time
deadline = time.monotonic() + 5
while server._proxy_policy is None and time.monotonic() < deadline:
    time.sleep(0.01)
print("ipaddress" in sys.modules, "logging" in sys.modules,
      "fastsock._proxy" in sys.modules)
server.shutdown(); server.server_close()
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True"]


def test_datagram_server_refuses_proxy_protocol(engine):
    server = fastsock.UDPServer((HOST, 0), fastsock.DatagramRequestHandler)
    server.proxy_protocol = True
    try:
        with pytest.raises(ValueError, match="stream servers"):
            server.serve_forever(0.05)
    finally:
        server.server_close()


# Headers of every shape, cut anywhere, with the client's data behind them.
_ADDRESSES = st.sampled_from([
    (("192.0.2.10", 1), ("192.0.2.1", 80)),
    (("2001:db8::10", 65535), ("2001:db8::1", 443)),
])
_TLVS = st.lists(st.tuples(st.sampled_from([0x01, 0x02, 0x04, 0xe0]),
                           st.binary(max_size=300)), max_size=3)


@st.composite
def _proxied_streams(draw):
    ends = draw(_ADDRESSES)
    if draw(st.booleans()):
        header = encode.v1(*ends)
    else:
        header = encode.v2(*ends, tlvs=draw(_TLVS))
    data = draw(st.binary(min_size=1, max_size=200).filter(
        lambda d: b"\n" not in d)) + b"\n"
    stream = header + data
    cuts = sorted(draw(st.sets(st.integers(1, len(stream) - 1), max_size=4)))
    pieces = [stream[i:j] for i, j in zip([0] + cuts, cuts + [len(stream)])]
    return ends[0], pieces, data


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_proxied_streams())
def test_any_header_cut_anywhere_reaches_the_handler_intact(engine, case):
    source, pieces, data = case
    with served(proxy_server()) as server:
        reply = exchange(server.server_address, *pieces)
    host, port = reply.split(b" ", 2)[:2]
    assert (ipaddress.ip_address(host.decode()), int(port)) == (
        ipaddress.ip_address(source[0]), source[1])
    assert reply.endswith(b"|" + data)
