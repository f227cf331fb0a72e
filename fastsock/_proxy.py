"""The PROXY protocol (HAProxy's ``proxy-protocol.txt``), versions 1 and 2.

A proxy that speaks it starts every connection it opens to a server with a
header saying whom the connection is really from.  This module is the
parser, bytes in and a result out, with no socket inside:
``parse_header(data)`` looks at the bytes received so far and

- returns None while they are a valid beginning of a header (every one of
  them is then part of the header: a reader may consume them all);
- returns ``(header, length)`` once a whole header is there: the
  ``ProxyHeader`` and how many of the bytes it took (what follows is the
  client's own data);
- raises ``ProxyProtocolError`` as soon as the bytes cannot begin a header
  of either version: a wrong signature, a version 1 line over 107 bytes
  or with a bad address or port, a version 2 header with an unknown
  version, command, family or transport, or too short for its addresses.

A version 1 header is one line: ``PROXY TCP4 <src> <dst> <sport> <dport>``
(or TCP6), or ``PROXY UNKNOWN`` followed by anything, ended by CRLF, at
most 107 bytes in all.  A version 2 header is binary: a 12-byte signature,
a version and command byte, a family and transport byte, the length of the
rest, the addresses, then type-length-value fields (TLVs).

Reading the header on a connection is TCPServer's business (see
``TCPServer.proxy_protocol``).
"""

import socket
import struct

__all__ = ["ProxyProtocolError", "ProxyHeader", "parse_header",
           "V1_SIGNATURE", "V2_SIGNATURE"]

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX_LENGTH = 107  # the longest line, CRLF included
_V2_FIXED = 16  # signature, version/command, family/transport, length

# The commands and families, by the names the specification gives them.
LOCAL = "LOCAL"
PROXY = "PROXY"
_V2_COMMANDS = {0x0: LOCAL, 0x1: PROXY}
# family nibble: (name, socket family, size of the address block)
_V2_FAMILIES = {
    0x0: ("UNSPEC", None, 0),
    0x1: ("INET", socket.AF_INET, 12),
    0x2: ("INET6", socket.AF_INET6, 36),
    0x3: ("UNIX", getattr(socket, "AF_UNIX", None), 216),
}
_V2_TRANSPORTS = {0x0: "UNSPEC", 0x1: "STREAM", 0x2: "DGRAM"}
_V1_FAMILIES = {b"TCP4": ("INET", socket.AF_INET),
                b"TCP6": ("INET6", socket.AF_INET6)}

# TLV types (section 2.2 of the specification).
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30
_SSL_TEXT_FIELDS = {PP2_SUBTYPE_SSL_VERSION: "version",
                    PP2_SUBTYPE_SSL_CN: "cn",
                    PP2_SUBTYPE_SSL_CIPHER: "cipher",
                    PP2_SUBTYPE_SSL_SIG_ALG: "sig_alg",
                    PP2_SUBTYPE_SSL_KEY_ALG: "key_alg"}
_TLV = struct.Struct("!BH")


class ProxyProtocolError(ValueError):
    """The bytes at the start of a connection are not a valid PROXY header."""


class ProxyHeader:
    """One parsed header.

    ``version`` is 1 or 2; ``command`` "PROXY" or "LOCAL" (version 2 only:
    a connection of the proxy's own, health checks, whose addresses mean
    nothing); ``family`` "INET", "INET6", "UNIX" or, when the proxy does not
    know, "UNSPEC" (v2) or "UNKNOWN" (v1); ``transport`` "STREAM", "DGRAM"
    or "UNSPEC".  ``source`` and ``destination`` are ``(host, port)`` for
    INET and INET6, the path (bytes, NUL padding removed) for UNIX, and
    None otherwise or for LOCAL.  ``tlvs`` maps each v2 TLV type to its raw
    value (bytes; the last of a repeated type); ``alpn``, ``authority``
    and ``ssl`` are the ALPN, authority and SSL TLVs decoded (None when
    absent): ``ssl`` is a dict with ``client`` (the bits), ``verify`` (0:
    the client presented a verified certificate) and the text sub-fields
    present among ``version``, ``cn``, ``cipher``, ``sig_alg``, ``key_alg``.
    """

    __slots__ = ("version", "command", "family", "transport", "source",
                 "destination", "tlvs", "alpn", "authority", "ssl")

    def __init__(self, version, command, family, transport="STREAM",
                 source=None, destination=None, tlvs=None):
        self.version = version
        self.command = command
        self.family = family
        self.transport = transport
        self.source = source
        self.destination = destination
        self.tlvs = tlvs if tlvs is not None else {}
        self.alpn = self.tlvs.get(PP2_TYPE_ALPN)
        authority = self.tlvs.get(PP2_TYPE_AUTHORITY)
        self.authority = (None if authority is None
                          else authority.decode("utf-8", "replace"))
        ssl = self.tlvs.get(PP2_TYPE_SSL)
        self.ssl = None if ssl is None else _parse_ssl_tlv(ssl)

    @property
    def has_address(self):
        """Whether ``source`` is an IP address and port that stands for the
        client (PROXY command, INET or INET6)."""
        return self.command == PROXY and self.family in ("INET", "INET6")

    def __repr__(self):
        return (f"<ProxyHeader v{self.version} {self.command} {self.family} "
                f"{self.transport} source={self.source!r} "
                f"destination={self.destination!r}>")


def parse_header(data):
    """Parse the header at the start of ``data`` (bytes received so far).

    Returns None when more bytes are needed (all of ``data`` is then header),
    ``(header, length)`` when complete; raises ProxyProtocolError as soon as
    ``data`` cannot begin a header.
    """
    data = bytes(data)
    if data[:1] == b"P":
        if not V1_SIGNATURE.startswith(data[:len(V1_SIGNATURE)]):
            raise ProxyProtocolError("not a PROXY header: bad v1 signature")
        return _parse_v1(data)
    if data[:1] == b"\r":
        if not V2_SIGNATURE.startswith(data[:len(V2_SIGNATURE)]):
            raise ProxyProtocolError("not a PROXY header: bad v2 signature")
        return _parse_v2(data)
    if not data:
        return None
    raise ProxyProtocolError(
        f"not a PROXY header: starts with {data[:8]!r}")


def _parse_v1(data):
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        # A lone LF, or any byte a v1 line cannot hold, shows it at once.
        if b"\n" in data[:V1_MAX_LENGTH]:
            raise ProxyProtocolError("v1 header: LF without CR")
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(
                f"v1 header: no CRLF within {V1_MAX_LENGTH} bytes")
        _check_v1_prefix(data)
        return None
    line = data[:end]
    parts = line.split(b" ")
    if parts[1:2] == [b"UNKNOWN"]:
        # The rest of the line is to be ignored.
        return ProxyHeader(1, PROXY, "UNKNOWN", "UNSPEC"), end + 2
    if len(parts) != 6:
        raise ProxyProtocolError(f"v1 header: expected 6 fields in {line!r}")
    _, protocol, src, dst, sport, dport = parts
    try:
        family, socket_family = _V1_FAMILIES[protocol]
    except KeyError:
        raise ProxyProtocolError(
            f"v1 header: unknown protocol {protocol!r}") from None
    source = (_v1_host(socket_family, src), _v1_port(sport))
    destination = (_v1_host(socket_family, dst), _v1_port(dport))
    return ProxyHeader(1, PROXY, family, "STREAM", source, destination), end + 2


def _check_v1_prefix(data):
    """Reject an incomplete v1 line that already shows a bad character."""
    body = data[len(V1_SIGNATURE):]
    if body.endswith(b"\r"):
        body = body[:-1]
    if any(byte < 0x20 or byte > 0x7e for byte in body):
        raise ProxyProtocolError(
            "v1 header: a byte that is not printable ASCII")


def _v1_host(family, text):
    try:
        return socket.inet_ntop(family,
                                socket.inet_pton(family, text.decode("ascii")))
    except (OSError, UnicodeDecodeError, ValueError):
        raise ProxyProtocolError(
            f"v1 header: bad address {text!r}") from None


def _v1_port(text):
    if not (text.isdigit() and len(text) <= 5 and int(text) <= 65535):
        raise ProxyProtocolError(f"v1 header: bad port {text!r}")
    return int(text)


def _parse_v2(data):
    if len(data) < 13:
        return None
    version, command = data[12] >> 4, data[12] & 0xf
    if version != 2:
        raise ProxyProtocolError(f"v2 header: unknown version {version}")
    if command not in _V2_COMMANDS:
        raise ProxyProtocolError(f"v2 header: unknown command {command:#x}")
    if len(data) < 14:
        return None
    family_code, transport_code = data[13] >> 4, data[13] & 0xf
    if family_code not in _V2_FAMILIES:
        raise ProxyProtocolError(
            f"v2 header: unknown address family {family_code:#x}")
    if transport_code not in _V2_TRANSPORTS:
        raise ProxyProtocolError(
            f"v2 header: unknown transport {transport_code:#x}")
    if len(data) < _V2_FIXED:
        return None
    family, socket_family, address_size = _V2_FAMILIES[family_code]
    length = int.from_bytes(data[14:16], "big")
    if _V2_COMMANDS[command] == PROXY and length < address_size:
        raise ProxyProtocolError(
            f"v2 header: {length} bytes cannot hold {family} addresses")
    total = _V2_FIXED + length
    if len(data) < total:
        return None
    command = _V2_COMMANDS[command]
    transport = _V2_TRANSPORTS[transport_code]
    if command == LOCAL:
        # The addresses are the proxy's own business; TLVs still parse.
        tlvs_start = _V2_FIXED + (address_size if length >= address_size
                                  else length)
        return (ProxyHeader(2, LOCAL, family, transport,
                            tlvs=_parse_tlvs(data[tlvs_start:total])), total)
    block = data[_V2_FIXED:_V2_FIXED + address_size]
    source = destination = None
    if family in ("INET", "INET6"):
        half = (address_size - 4) // 2
        sport, dport = struct.unpack("!HH", block[2 * half:])
        source = (socket.inet_ntop(socket_family, block[:half]), sport)
        destination = (socket.inet_ntop(socket_family, block[half:2 * half]),
                       dport)
    elif family == "UNIX":
        source = block[:108].split(b"\0", 1)[0]
        destination = block[108:].split(b"\0", 1)[0]
    tlvs = _parse_tlvs(data[_V2_FIXED + address_size:total])
    return (ProxyHeader(2, PROXY, family, transport, source, destination,
                        tlvs), total)


def _parse_tlvs(data):
    tlvs = {}
    position = 0
    while position < len(data):
        if len(data) - position < _TLV.size:
            raise ProxyProtocolError("v2 header: truncated TLV")
        kind, size = _TLV.unpack_from(data, position)
        position += _TLV.size
        if len(data) - position < size:
            raise ProxyProtocolError(
                f"v2 header: TLV {kind:#x} longer than the header")
        tlvs[kind] = data[position:position + size]
        position += size
    return tlvs


def _parse_ssl_tlv(value):
    if len(value) < 5:
        raise ProxyProtocolError("v2 header: SSL TLV shorter than 5 bytes")
    fields = {"client": value[0],
              "verify": int.from_bytes(value[1:5], "big")}
    for kind, raw in _parse_tlvs(value[5:]).items():
        name = _SSL_TEXT_FIELDS.get(kind)
        if name is not None:
            fields[name] = raw.decode("utf-8", "replace")
    return fields
