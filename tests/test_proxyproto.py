"""PROXY protocol v1/v2 header parsing: valid headers, partial input, and early rejection."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import struct

import pytest

from ripsvc.balancer.proxyproto import (
    V1_MAX_LINE,
    V2_MAX_HEADER,
    V2_SIGNATURE,
    ProxyHeaderError,
    ProxyInfo,
    parse,
)

PAYLOAD = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
NONE = ProxyInfo(None, None)


def v2(body: bytes = b"", *, ver_cmd: int = 0x21, family: int = 0x11,
       length: int | None = None) -> bytes:
    """A v2 header: signature, version/command, family/protocol, length, then `body`."""
    size = len(body) if length is None else length
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, family, size) + body


def inet4(src: str, dst: str, src_port: int, dst_port: int) -> bytes:
    return struct.pack("!4s4sHH", socket.inet_pton(socket.AF_INET, src),
                       socket.inet_pton(socket.AF_INET, dst), src_port, dst_port)


def inet6(src: str, dst: str, src_port: int, dst_port: int) -> bytes:
    return struct.pack("!16s16sHH", socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst), src_port, dst_port)


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


TLVS = tlv(0x01, b"h2") + tlv(0x04, b"\x00") + tlv(0x05, b"conn-42")  # ALPN, NOOP, UNIQUE_ID
V2_IPV4 = v2(inet4("192.0.2.10", "198.51.100.1", 51234, 443))
V2_IPV6 = v2(inet6("2001:db8::1", "2001:db8::2", 40000, 8080), family=0x21)
V1_TCP4 = b"PROXY TCP4 192.0.2.10 198.51.100.1 51234 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 8080\r\n"

VALID = [
    (V1_TCP4, ProxyInfo(("192.0.2.10", 51234), ("198.51.100.1", 443))),
    (V1_TCP6, ProxyInfo(("2001:db8::1", 40000), ("2001:db8::2", 8080))),
    (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
     ProxyInfo(("0.0.0.0", 0), ("255.255.255.255", 65535))),
    # Written in full and in capitals, returned in canonical form.
    (b"PROXY TCP6 2001:0DB8:0000:0000:0000:0000:0000:00FF ::1 1 2\r\n",
     ProxyInfo(("2001:db8::ff", 1), ("::1", 2))),
    (b"PROXY UNKNOWN\r\n", NONE),
    (b"PROXY UNKNOWN 192.0.2.10 198.51.100.1 51234 443\r\n", NONE),
    (b"PROXY UNKNOWN anything at all, even \n or \r alone\r\n", NONE),
    (V2_IPV4, ProxyInfo(("192.0.2.10", 51234), ("198.51.100.1", 443))),
    (v2(inet4("192.0.2.10", "198.51.100.1", 51234, 443) + TLVS),
     ProxyInfo(("192.0.2.10", 51234), ("198.51.100.1", 443))),
    (V2_IPV6, ProxyInfo(("2001:db8::1", 40000), ("2001:db8::2", 8080))),
    (v2(inet6("::ffff:192.0.2.1", "fe80::1", 0, 65535) + TLVS, family=0x21),
     # (Python 3.13 writes this IPv4-mapped address with a dotted tail, 3.11 in hex.)
     ProxyInfo((str(ipaddress.ip_address("::ffff:192.0.2.1")), 0), ("fe80::1", 65535))),
    (v2(ver_cmd=0x20, family=0x00), NONE),  # LOCAL, as HAProxy's health checks send it
    (v2(inet4("192.0.2.10", "198.51.100.1", 1, 2), ver_cmd=0x20), NONE),  # LOCAL, block ignored
    (v2(b"\x00" * 216, family=0x31), NONE),  # Unix stream
    (v2(b"/run/a.sock".ljust(108, b"\x00") * 2 + TLVS, family=0x32), NONE),  # Unix datagram
    (v2(family=0x00), NONE),  # PROXY command, UNSPEC family
    (v2(TLVS, family=0x00), NONE),
]


@pytest.mark.parametrize(("header", "expected"), VALID)
def test_valid_header_is_parsed_and_consumed_exactly(header: bytes, expected: ProxyInfo) -> None:
    assert parse(header) == (expected, len(header))


@pytest.mark.parametrize(("header", "expected"), VALID)
def test_stream_after_header_is_not_consumed(header: bytes, expected: ProxyInfo) -> None:
    data = header + PAYLOAD
    info, consumed = parse(data)
    assert info == expected
    assert data[consumed:] == PAYLOAD


@pytest.mark.parametrize(("header", "expected"), VALID)
def test_every_proper_prefix_asks_for_more(header: bytes, expected: ProxyInfo) -> None:
    # Bytes arriving one at a time: no verdict until the last byte of the header.
    for size in range(len(header)):
        assert parse(header[:size]) == (None, 0), header[:size]
    assert parse(header) == (expected, len(header))


def test_v1_line_of_exactly_the_maximum_length_is_accepted() -> None:
    address = b":".join([b"ffff"] * 8)
    line = b"PROXY UNKNOWN " + address + b" " + address + b" 65535 65535\r\n"
    assert len(line) == V1_MAX_LINE
    assert parse(line + PAYLOAD) == (NONE, V1_MAX_LINE)


def test_v1_without_crlf_in_the_maximum_length_is_refused() -> None:
    line = b"PROXY UNKNOWN " + b"a" * (V1_MAX_LINE - 14)
    assert len(line) == V1_MAX_LINE
    assert parse(line[:-1]) == (None, 0)
    with pytest.raises(ProxyHeaderError, match="CRLF"):
        parse(line)
    with pytest.raises(ProxyHeaderError, match="CRLF"):
        parse(line + b"\r\n")  # CRLF one byte too late


def test_v2_header_of_exactly_the_cap_is_accepted() -> None:
    body = inet4("192.0.2.10", "198.51.100.1", 51234, 443)
    body += tlv(0x04, b"\x00" * (V2_MAX_HEADER - 16 - len(body) - 3))
    header = v2(body)
    assert len(header) == V2_MAX_HEADER
    assert parse(header + PAYLOAD) == (VALID[0][1], V2_MAX_HEADER)


def test_empty_input_asks_for_more() -> None:
    assert parse(b"") == (None, 0)


def test_error_is_a_value_error_and_info_is_frozen() -> None:
    assert issubclass(ProxyHeaderError, ValueError)
    info, _ = parse(V1_TCP4)
    assert info is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.source = None  # type: ignore[misc]


# -- refused ---------------------------------------------------------------------------------


@pytest.mark.parametrize("request_line", [
    b"GET / HTTP/1.1\r\n", b"HEAD / HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00",  # TLS ClientHello
    b" PROXY TCP4", b"\nPROXY", b"proxy TCP4",
])
def test_non_proxy_stream_is_refused_on_its_first_byte(request_line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(request_line[:1])
    with pytest.raises(ProxyHeaderError):
        parse(request_line)


@pytest.mark.parametrize(("request_line", "diverges_at"), [
    (b"POST / HTTP/1.1\r\n", 2), (b"PUT /x HTTP/1.1\r\n", 2), (b"PATCH /x HTTP/1.1\r\n", 2),
    (b"PRI * HTTP/2.0\r\n", 3), (b"PROPFIND / HTTP/1.1\r\n", 4),
])
def test_request_starting_like_proxy_is_refused_where_it_diverges(request_line: bytes,
                                                                  diverges_at: int) -> None:
    for size in range(diverges_at):
        assert parse(request_line[:size]) == (None, 0)
    with pytest.raises(ProxyHeaderError):
        parse(request_line[:diverges_at])


@pytest.mark.parametrize("data", [
    b"PROXY\r\n", b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n", b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
])
def test_v1_bad_prefix_is_refused(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(data)


@pytest.mark.parametrize("line", [
    b"PROXY \r\n", b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", b"PROXY TCP 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY UNKNOWNX\r\n", b"PROXY UNKNOWN1 1.2.3.4 5.6.7.8 1 2\r\n", b"PROXY unknown\r\n",
])
def test_v1_wrong_protocol_word_is_refused(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError, match="protocol"):
        parse(line)


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
    b"PROXY TCP4\r\n", b"PROXY TCP4 \r\n", b"PROXY TCP4 1.2.3.4\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", b"PROXY TCP6 ::1 ::2 1\r\n",
])
def test_v1_bad_spacing_or_field_count_is_refused(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(line)


@pytest.mark.parametrize(("protocol", "address"), [
    (b"TCP4", b"256.1.1.1"), (b"TCP4", b"1.2.3"), (b"TCP4", b"1.2.3.4.5"),
    (b"TCP4", b"01.2.3.4"), (b"TCP4", b"1.2.3.4/32"), (b"TCP4", b"::1"), (b"TCP4", b"localhost"),
    (b"TCP4", b"0x7f.0.0.1"), (b"TCP4", b"\xd9\xa1.2.3.4"),
    (b"TCP6", b"1.2.3.4"), (b"TCP6", b"2001:db8:::1"), (b"TCP6", b"2001:db8::g"),
    (b"TCP6", b"fe80::1%eth0"), (b"TCP6", b"1:2:3:4:5:6:7:8:9"), (b"TCP6", b"[::1]"),
])
def test_v1_bad_address_is_refused(protocol: bytes, address: bytes) -> None:
    good = b"1.2.3.4" if protocol == b"TCP4" else b"::1"
    for src, dst in ((address, good), (good, address)):
        with pytest.raises(ProxyHeaderError, match="address"):
            parse(b"PROXY " + protocol + b" " + src + b" " + dst + b" 1 2\r\n")


@pytest.mark.parametrize("port", [b"70000", b"65536", b"0080", b"00", b"-1", b"+80", b"8o",
                                  b"123456", b"\xd9\xa1"])
def test_v1_bad_port_is_refused(port: bytes) -> None:
    for ports in (port + b" 80", b"80 " + port):
        with pytest.raises(ProxyHeaderError, match="port"):
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 " + ports + b"\r\n")


@pytest.mark.parametrize("partial", [
    b"PROXY FOO", b"PROXY TCP44", b"PROXY UNKNOWNX", b"PROXY TCP4 1.2.3.4  ",
    b"PROXY TCP4 999.1.1.1 ", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3", b"PROXY TCP4 1.2.3.4x",
    b"PROXY TCP4 ::1", b"PROXY TCP6 ::1%", b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 ",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 08", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 123456",
    b"PROXY TCP4 1.2.3.4\r", b"PROXY TCP4 1.2.3.4\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", b"PROXY \r",
])
def test_v1_error_is_raised_before_the_crlf_arrives(partial: bytes) -> None:
    assert len(partial) < V1_MAX_LINE
    with pytest.raises(ProxyHeaderError):
        parse(partial)


def test_v2_wrong_signature_is_refused_at_the_first_wrong_byte() -> None:
    for size in range(1, len(V2_SIGNATURE) + 1):
        wrong = V2_SIGNATURE[:size - 1] + bytes([V2_SIGNATURE[size - 1] ^ 0x40])
        if wrong[:1] == b"P":
            continue  # a v1 prefix, not a v2 one
        with pytest.raises(ProxyHeaderError):
            parse(wrong)
    with pytest.raises(ProxyHeaderError):
        parse(b"\r\n\r\nGET / HTTP/1.1")


@pytest.mark.parametrize(("ver_cmd", "why"), [
    *((v, "version") for v in (0x11, 0x31, 0x01, 0xF1, 0x10)),
    *((c, "command") for c in (0x22, 0x2F, 0x23)),
])
def test_v2_wrong_version_or_command_is_refused_on_byte_13(ver_cmd: int, why: str) -> None:
    header = v2(inet4("1.2.3.4", "5.6.7.8", 1, 2), ver_cmd=ver_cmd)
    with pytest.raises(ProxyHeaderError, match=why):
        parse(header[:13])
    with pytest.raises(ProxyHeaderError, match=why):
        parse(header)


@pytest.mark.parametrize("family", [0x12, 0x22])
def test_v2_udp_is_refused_on_byte_14(family: int) -> None:
    header = v2(b"\x00" * 36, family=family)
    with pytest.raises(ProxyHeaderError, match="UDP"):
        parse(header[:14])
    with pytest.raises(ProxyHeaderError, match="UDP"):
        parse(header)


@pytest.mark.parametrize("family", [0x01, 0x02, 0x10, 0x13, 0x20, 0x33, 0x41, 0xFF])
def test_v2_unknown_family_is_refused_on_byte_14(family: int) -> None:
    header = v2(b"\x00" * 216, family=family)
    with pytest.raises(ProxyHeaderError, match="family"):
        parse(header[:14])
    with pytest.raises(ProxyHeaderError, match="family"):
        parse(header)


@pytest.mark.parametrize(("family", "block"), [(0x11, 12), (0x21, 36), (0x31, 216), (0x32, 216)])
def test_v2_length_shorter_than_address_block_is_refused(family: int, block: int) -> None:
    for length in (0, block - 1):
        header = v2(b"\x00" * length, family=family)
        with pytest.raises(ProxyHeaderError, match="shorter"):
            parse(header[:16])  # refused before the body arrives
        with pytest.raises(ProxyHeaderError, match="shorter"):
            parse(header + PAYLOAD)
    assert parse(v2(b"\x00" * block, family=family))[1] == 16 + block


@pytest.mark.parametrize(("ver_cmd", "length"), [(0x21, V2_MAX_HEADER - 15), (0x20, 0xFFFF)])
def test_v2_length_over_cap_is_refused_on_byte_16(ver_cmd: int, length: int) -> None:
    header = v2(ver_cmd=ver_cmd, length=length)
    assert len(header) == 16
    with pytest.raises(ProxyHeaderError, match="cap"):
        parse(header)
    with pytest.raises(ProxyHeaderError, match="cap"):
        parse(header + b"\x00" * length)


def test_v2_tlvs_are_awaited_before_the_header_completes() -> None:
    # The length says 12 address bytes + 20 TLV bytes: 31 of the 32 are not enough.
    header = v2(inet4("1.2.3.4", "5.6.7.8", 1, 2) + b"\x00" * 20)
    assert parse(header[:-1]) == (None, 0)
    assert parse(header)[1] == len(header)
