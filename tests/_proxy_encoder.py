"""A PROXY protocol header encoder for the tests, written from HAProxy's
proxy-protocol.txt independently of fastsock._proxy (no tests here)."""

import ipaddress
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(source=None, destination=None):
    """A version 1 line; no addresses: PROXY UNKNOWN."""
    if source is None:
        return b"PROXY UNKNOWN\r\n"
    version = ipaddress.ip_address(source[0]).version
    return (f"PROXY TCP{version} {source[0]} {destination[0]} "
            f"{source[1]} {destination[1]}\r\n").encode()


def tlv(kind, value):
    return struct.pack("!BH", kind, len(value)) + value


def v2(source=None, destination=None, *, local=False, unix=False,
       tlvs=(), transport=1):
    """A version 2 header.  ``source``/``destination``: (host, port), or
    paths (bytes) with ``unix``; None for UNSPEC.  ``tlvs``: (type, value)
    pairs."""
    if unix:
        family = 3
        block = source.ljust(108, b"\0") + destination.ljust(108, b"\0")
    elif source is None:
        family, block = 0, b""
    else:
        src = ipaddress.ip_address(source[0])
        dst = ipaddress.ip_address(destination[0])
        family = 1 if src.version == 4 else 2
        block = (src.packed + dst.packed
                 + struct.pack("!HH", source[1], destination[1]))
    rest = block + b"".join(tlv(kind, value) for kind, value in tlvs)
    command = 0 if local else 1
    return (V2_SIGNATURE + bytes([0x20 | command, family << 4 | transport])
            + struct.pack("!H", len(rest)) + rest)
