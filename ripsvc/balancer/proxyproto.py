"""The PROXY protocol header (v1 text, v2 binary) a load balancer sends before the client's bytes.

HAProxy, AWS NLB and others open each connection with one header naming the real client, then
relay the client's stream unchanged. `parse` is fed the bytes received so far and says: more
needed, done (with how many bytes the header took), or not a PROXY header at all. It rejects as
early as it can, so a client speaking HTTP straight to a PROXY-only listener is refused on its
first byte instead of holding the connection until a timeout. TLVs after a v2 address block are
skipped, not interpreted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

V1_PREFIX = b"PROXY "
#: The longest v1 line the protocol allows, CRLF included.
V1_MAX_LINE = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16
#: Our own cap on a whole v2 header: its 16-bit length would otherwise let a peer make us
#: buffer 64 KiB before anything is checked.
V2_MAX_HEADER = 4096

_V2_FIXED = struct.Struct("!BBH")  # ver_cmd, family/protocol, length of the rest
_V2_INET4 = struct.Struct("!4s4sHH")
_V2_INET6 = struct.Struct("!16s16sHH")
_V2_LOCAL, _V2_PROXY = 0x0, 0x1

_V1_UNKNOWN = b"UNKNOWN"
_V1_PROTOCOLS = (b"TCP4", b"TCP6", _V1_UNKNOWN)
_DIGITS = b"0123456789"
_V4_CHARS = _DIGITS + b"."
# Dots too: an IPv6 address may end in dotted IPv4.
_V6_CHARS = _DIGITS + b"abcdefABCDEF:."
_PORT_MAX_DIGITS = 5


class ProxyHeaderError(ValueError):
    """Malformed PROXY header: the connection must be closed."""


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """What the header says about the connection.

    `source` is None when it names no usable peer (v1 UNKNOWN, v2 LOCAL, a Unix socket or
    UNSPEC family): the caller then keeps the socket's own peer address.
    """

    source: tuple[str, int] | None
    destination: tuple[str, int] | None


NO_ADDRESS = ProxyInfo(None, None)


def parse(data: bytes) -> tuple[ProxyInfo | None, int]:
    """Parse a PROXY header at the start of `data`.

    Returns (None, 0) while more bytes are needed (data is a valid prefix so far);
    (info, n) once complete, n = bytes consumed (the rest of data is the application stream);
    raises ProxyHeaderError as soon as data cannot be the start of a valid v1 or v2 header.
    """
    first = data[:1]
    if first == b"P":
        return _parse_v1(data)
    if first == b"\r":
        return _parse_v2(data)
    if not data:
        return None, 0
    raise ProxyHeaderError(f"not a PROXY protocol header: starts with {data[:8]!r}")


# -- v1 ------------------------------------------------------------------------------------------


def _parse_v1(data: bytes) -> tuple[ProxyInfo | None, int]:
    end = data.find(b"\r\n", 0, V1_MAX_LINE)
    if end < 0:
        if len(data) >= V1_MAX_LINE:
            raise ProxyHeaderError(f"PROXY v1 line without CRLF in its first {V1_MAX_LINE} bytes")
        _check_v1_partial(data)
        return None, 0
    if not data.startswith(V1_PREFIX):
        raise ProxyHeaderError(f"not a PROXY v1 header: {data[:8]!r}")
    return _parse_v1_line(data[len(V1_PREFIX):end]), end + 2


def _parse_v1_line(line: bytes) -> ProxyInfo:
    """The line between "PROXY " and CRLF."""
    protocol, space, rest = line.partition(b" ")
    if protocol == _V1_UNKNOWN:
        return NO_ADDRESS  # whatever follows is to be ignored
    address_type = _v1_address_type(protocol)
    fields = rest.split(b" ")
    if not space or len(fields) != 4:
        raise ProxyHeaderError(
            f"PROXY v1 {protocol.decode()} needs 4 single-space separated fields, got {rest!r}")
    source, destination, source_port, destination_port = fields
    return ProxyInfo((_v1_address(address_type, source), _v1_port(source_port)),
                     (_v1_address(address_type, destination), _v1_port(destination_port)))


def _v1_address_type(protocol: bytes) -> type[IPv4Address] | type[IPv6Address]:
    if protocol == b"TCP4":
        return IPv4Address
    if protocol == b"TCP6":
        return IPv6Address
    raise _bad_v1_protocol(protocol)


def _bad_v1_protocol(protocol: bytes) -> ProxyHeaderError:
    return ProxyHeaderError(
        f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, not {protocol[:16]!r}")


def _v1_address(address_type: type[IPv4Address] | type[IPv6Address], raw: bytes) -> str:
    # ipaddress alone would also take a zone index ("fe80::1%eth0"); the character check
    # also guarantees the decode below cannot fail.
    chars = _V4_CHARS if address_type is IPv4Address else _V6_CHARS
    if not raw.translate(None, chars):
        try:
            return str(address_type(raw.decode("ascii")))
        except ValueError:
            pass
    raise ProxyHeaderError(f"bad address in PROXY v1 header: {raw[:48]!r}")


def _v1_port(raw: bytes) -> int:
    # isdigit() on bytes is ASCII-only, so "-1", "+1", " 1" and non-ASCII digits all fail here.
    if (not raw.isdigit() or len(raw) > _PORT_MAX_DIGITS
            or (raw[:1] == b"0" and len(raw) > 1) or int(raw) > 0xFFFF):
        raise ProxyHeaderError(f"bad port in PROXY v1 header: {raw[:8]!r}")
    return int(raw)


def _check_v1_partial(data: bytes) -> None:
    """Raise unless `data`, a v1 header without its CRLF yet, can still become a valid one."""
    if len(data) <= len(V1_PREFIX):
        if not V1_PREFIX.startswith(data):
            raise ProxyHeaderError(f"not a PROXY header: starts with {data!r}")
        return
    if not data.startswith(V1_PREFIX):
        raise ProxyHeaderError(f"not a PROXY v1 header: {data[:8]!r}")
    line = data[len(V1_PREFIX):]
    if line.endswith(b"\r"):
        # Only valid as the first half of the closing CRLF: the line must be whole already.
        _parse_v1_line(line[:-1])
        return
    protocol, space, rest = line.partition(b" ")
    if not space:
        if not any(known.startswith(protocol) for known in _V1_PROTOCOLS):
            raise _bad_v1_protocol(protocol)
        return
    if protocol == _V1_UNKNOWN:
        return
    address_type = _v1_address_type(protocol)
    fields = rest.split(b" ")
    if len(fields) > 4:
        raise ProxyHeaderError(f"PROXY v1 header has too many fields: {rest[:64]!r}")
    *whole, last = fields
    for index, raw in enumerate(whole):
        if index < 2:
            _v1_address(address_type, raw)
        else:
            _v1_port(raw)
    if len(whole) < 2:
        # The longest textual IPv6 (with a dotted IPv4 tail) is 45 characters.
        chars, longest = (_V4_CHARS, 15) if address_type is IPv4Address else (_V6_CHARS, 45)
        if last.translate(None, chars) or len(last) > longest:
            raise ProxyHeaderError(f"bad address in PROXY v1 header: {last[:48]!r}")
    elif (last.translate(None, _DIGITS) or len(last) > _PORT_MAX_DIGITS
            or (last[:1] == b"0" and len(last) > 1)):
        raise ProxyHeaderError(f"bad port in PROXY v1 header: {last[:8]!r}")


# -- v2 ------------------------------------------------------------------------------------------


def _parse_v2(data: bytes) -> tuple[ProxyInfo | None, int]:
    if not V2_SIGNATURE.startswith(data[:len(V2_SIGNATURE)]):
        raise ProxyHeaderError(f"not a PROXY header: starts with {data[:12]!r}")
    if len(data) < V2_FIXED_LENGTH:
        # Check the version/command and family bytes as soon as they arrive.
        if len(data) > 12 and _v2_command(data[12]) == _V2_PROXY and len(data) > 13:
            _v2_address_length(data[13])
        return None, 0
    ver_cmd, family, length = _V2_FIXED.unpack_from(data, 12)
    command = _v2_command(ver_cmd)
    total = V2_FIXED_LENGTH + length
    if total > V2_MAX_HEADER:
        raise ProxyHeaderError(f"PROXY v2 header of {total} bytes, over our {V2_MAX_HEADER} cap")
    if command == _V2_LOCAL:
        # The balancer talking for itself (a health check): the spec says to ignore the
        # family and address block and keep the real endpoints.
        return (NO_ADDRESS, total) if len(data) >= total else (None, 0)
    needed = _v2_address_length(family)
    if length < needed:
        raise ProxyHeaderError(
            f"PROXY v2 length {length} is shorter than the {needed}-byte address block "
            f"of family 0x{family:02x}")
    if len(data) < total:
        return None, 0
    if family == 0x11:
        src, dst, src_port, dst_port = _V2_INET4.unpack_from(data, V2_FIXED_LENGTH)
        return ProxyInfo((str(IPv4Address(src)), src_port),
                         (str(IPv4Address(dst)), dst_port)), total
    if family == 0x21:
        src, dst, src_port, dst_port = _V2_INET6.unpack_from(data, V2_FIXED_LENGTH)
        return ProxyInfo((str(IPv6Address(src)), src_port),
                         (str(IPv6Address(dst)), dst_port)), total
    return NO_ADDRESS, total  # UNSPEC or a Unix socket: no (address, port) to give


def _v2_command(ver_cmd: int) -> int:
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header with version {ver_cmd >> 4}, not 2")
    command = ver_cmd & 0x0F
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError(f"PROXY v2 header with unknown command {command}")
    return command


#: Address block length by family/protocol byte, for the combinations we accept.
_V2_ADDRESS_LENGTHS = {
    0x00: 0,  # UNSPEC
    0x11: 12,  # TCP over IPv4
    0x21: 36,  # TCP over IPv6
    0x31: 216,  # Unix stream
    0x32: 216,  # Unix datagram: no address for us either way
}


def _v2_address_length(family: int) -> int:
    try:
        return _V2_ADDRESS_LENGTHS[family]
    except KeyError:
        pass
    if family in (0x12, 0x22):
        raise ProxyHeaderError("PROXY v2 header for UDP: only stream connections are served")
    raise ProxyHeaderError(f"PROXY v2 header with unknown family/protocol 0x{family:02x}")
