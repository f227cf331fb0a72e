"""fastsock._proxy: the PROXY header parser, driven with bytes alone.

Round trips against the test-side encoder (tests/_proxy_encoder.py), every
prefix of a valid header answered "need more", and fuzzed input answered
only with a result, "need more" or ProxyProtocolError.
"""

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st

from fastsock._proxy import ProxyProtocolError, parse_header

import _proxy_encoder as encode

FUZZ = settings(max_examples=300, deadline=None)

ipv4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)),
                 st.integers(0, 2**32 - 1))
ipv6 = st.builds(lambda n: str(ipaddress.IPv6Address(n)),
                 st.integers(0, 2**128 - 1))
port = st.integers(0, 65535)
endpoints = st.one_of(
    st.tuples(st.tuples(ipv4, port), st.tuples(ipv4, port)),
    st.tuples(st.tuples(ipv6, port), st.tuples(ipv6, port)))
# TLVs other than the SSL one, whose value has a structure of its own.
plain_tlvs = st.lists(st.tuples(st.integers(0, 255).filter(lambda k: k != 0x20),
                                st.binary(max_size=40)), max_size=4)
trailing = st.binary(max_size=64)


def same_endpoint(parsed, expected):
    """Equal addresses and ports: the parser writes addresses as the
    socket module does (inet_ntop), which may differ from ipaddress."""
    return (ipaddress.ip_address(parsed[0]) == ipaddress.ip_address(expected[0])
            and parsed[1] == expected[1])


def assert_needs_more_on_every_prefix(header):
    for end in range(len(header)):
        assert parse_header(header[:end]) is None, header[:end]


@FUZZ
@given(endpoints, trailing)
def test_v1_round_trip(ends, data):
    source, destination = ends
    header = encode.v1(source, destination)
    parsed, length = parse_header(header + data)
    assert length == len(header)
    assert (parsed.version, parsed.command) == (1, "PROXY")
    assert parsed.family == ("INET" if "." in source[0] else "INET6")
    assert same_endpoint(parsed.source, source)
    assert same_endpoint(parsed.destination, destination)
    assert parsed.has_address
    assert_needs_more_on_every_prefix(header)


@FUZZ
@given(endpoints, plain_tlvs, trailing)
def test_v2_round_trip(ends, tlvs, data):
    source, destination = ends
    header = encode.v2(source, destination, tlvs=tlvs)
    parsed, length = parse_header(header + data)
    assert length == len(header)
    assert (parsed.version, parsed.command, parsed.transport) == (
        2, "PROXY", "STREAM")
    assert same_endpoint(parsed.source, source)
    assert same_endpoint(parsed.destination, destination)
    assert parsed.tlvs == dict(tlvs)
    assert_needs_more_on_every_prefix(header)


@FUZZ
@given(st.binary(max_size=107), st.binary(max_size=107), trailing)
def test_v2_unix_round_trip(source, destination, data):
    source, destination = source.replace(b"\0", b""), destination.replace(
        b"\0", b"")
    header = encode.v2(source[:108], destination[:108], unix=True)
    parsed, length = parse_header(header + data)
    assert length == len(header)
    assert (parsed.family, parsed.source, parsed.destination) == (
        "UNIX", source[:108], destination[:108])
    assert not parsed.has_address  # the handler keeps the proxy's address


@FUZZ
@given(st.one_of(st.none(), endpoints), plain_tlvs, trailing)
def test_v2_local_keeps_no_address(ends, tlvs, data):
    source, destination = ends or (None, None)
    header = encode.v2(source, destination, local=True, tlvs=tlvs)
    parsed, length = parse_header(header + data)
    assert length == len(header)
    assert parsed.command == "LOCAL" and parsed.source is None
    assert not parsed.has_address
    assert parsed.tlvs == dict(tlvs)


def test_v1_unknown_and_v2_unspec_keep_no_address():
    parsed, length = parse_header(b"PROXY UNKNOWN ff::1 whatever\r\nGET")
    assert (parsed.family, length, parsed.has_address) == ("UNKNOWN", 30, False)
    parsed, _ = parse_header(encode.v2())
    assert (parsed.family, parsed.has_address) == ("UNSPEC", False)


def test_v2_named_tlvs_are_decoded():
    ssl = (bytes([0x07]) + (0).to_bytes(4, "big")
           + encode.tlv(0x21, b"TLSv1.3") + encode.tlv(0x22, b"client.example")
           + encode.tlv(0x23, b"TLS_AES_128_GCM_SHA256"))
    header = encode.v2(("192.0.2.1", 1234), ("192.0.2.2", 443), tlvs=[
        (0x01, b"h2"), (0x02, b"www.example.com"), (0x20, ssl)])
    parsed, _ = parse_header(header)
    assert parsed.alpn == b"h2"
    assert parsed.authority == "www.example.com"
    assert parsed.ssl == {"client": 7, "verify": 0, "version": "TLSv1.3",
                          "cn": "client.example",
                          "cipher": "TLS_AES_128_GCM_SHA256"}


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n",  # no header at all: never guessed
    b"\x16\x03\x01",  # a TLS ClientHello
    b"PROXX",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF without CR
    b"PROXY " + b"1" * 101,  # 107 bytes, no CRLF
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 ::1 ::2 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
    b"PROXY TCP4 1.2.3.4\t",  # a control character, line unfinished
    b"\r\n\r\n\x00\r\nQUIX",
    encode.V2_SIGNATURE + b"\x11",  # version 1 in a v2 header
    encode.V2_SIGNATURE + b"\x22",  # command 2
    encode.V2_SIGNATURE + b"\x21\x41",  # family 4
    encode.V2_SIGNATURE + b"\x21\x13",  # transport 3
    encode.V2_SIGNATURE + b"\x21\x11\x00\x0b",  # too short for IPv4
    encode.V2_SIGNATURE + b"\x21\x21\x00\x23",  # too short for IPv6
])
def test_malformed_headers_are_rejected_at_once(data):
    with pytest.raises(ProxyProtocolError):
        parse_header(data)


def test_truncated_tlv_is_rejected():
    header = encode.v2(("1.2.3.4", 1), ("5.6.7.8", 2), tlvs=[(1, b"h2")])
    broken = header[:15] + bytes([header[15] + 1]) + header[16:-2] + b"\x00\x09h2\x00"
    with pytest.raises(ProxyProtocolError):
        parse_header(broken)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzzed_bytes_get_one_of_three_answers(data):
    try:
        result = parse_header(data)
    except ProxyProtocolError:
        return
    if result is not None:
        header, length = result
        assert 0 < length <= len(data)


@FUZZ
@given(endpoints, plain_tlvs, st.data())
def test_mutated_v2_headers_get_one_of_three_answers(ends, tlvs, data):
    header = bytearray(encode.v2(*ends, tlvs=tlvs))
    position = data.draw(st.integers(0, len(header) - 1))
    header[position] = data.draw(st.integers(0, 255))
    try:
        result = parse_header(bytes(header))
    except ProxyProtocolError:
        return
    if result is not None:
        assert 0 < result[1] <= len(header)
