"""ICMP echo: the request's checksum, and reading a reply with or without its IP header."""

from __future__ import annotations

from jproxy.tunnel.icmp import checksum, echo_request, read_echo_reply


def test_echo_request_checksum_and_reply_reading() -> None:
    request = echo_request(4, 0x1234, 7, b"abc")
    assert checksum(request) == 0  # a correct checksum sums to zero
    reply = bytes([0]) + request[1:]  # type 0: the echo reply (checksum not rechecked)
    ip_header = bytes([0x45]) + bytes(19)
    assert read_echo_reply(4, ip_header + reply, with_ip_header=True) == (0x1234, 7, b"abc")
    assert read_echo_reply(4, reply, with_ip_header=False) == (0x1234, 7, b"abc")
    assert read_echo_reply(4, request, with_ip_header=False) is None  # our own request
    assert read_echo_reply(6, reply, with_ip_header=False) is None  # not ICMPv6's reply type
    assert read_echo_reply(4, b"\x00", with_ip_header=False) is None
