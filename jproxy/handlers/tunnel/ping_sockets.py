"""The server's ICMP echo: one ping socket per echo, for the tunnel's ICMP echo messages.

Unprivileged ping sockets (``SOCK_DGRAM`` with ``IPPROTO_ICMP``/``IPPROTO_ICMPV6``) work where
``net.ipv4.ping_group_range`` includes the process's group; their kernel picks the identifier
and hands over only the replies to it. Otherwise a raw socket (root or CAP_NET_RAW) sends with
an identifier of our own and reads every echo reply, keeping those that match. With neither,
echoes are answered with a general failure and the server's log says "ICMP unavailable" and
why (at most at the tunnel's echo rate).
"""

from __future__ import annotations

import logging
import random
import socket
import time
from typing import NamedTuple

from gevent import socket as gsocket

from jproxy.tunnel.icmp import echo_request, read_echo_reply
from schemas.jproxy import ConnectStatus

log = logging.getLogger(__name__)

RECV_SIZE = 65535
_PROTOCOL = {4: socket.IPPROTO_ICMP, 6: socket.IPPROTO_ICMPV6}
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


class IcmpUnavailable(OSError):
    """Neither a ping socket nor a raw socket may be opened by this process."""


_VIA = {False: "ping socket", True: "raw socket"}
_said: set[tuple[int, bool]] = set()
"""The (IP version, raw) kinds of socket the log already named: said once per process."""


def open_ping_socket(version: int) -> tuple[gsocket.socket, bool]:
    """A socket for echoes over IP ``version`` and whether it is raw (chooses identifiers)."""
    family, protocol = _FAMILY[version], _PROTOCOL[version]
    for kind, raw in ((socket.SOCK_DGRAM, False), (socket.SOCK_RAW, True)):
        try:
            sock = gsocket.socket(family, kind, protocol)
        except PermissionError:
            continue
        if (version, raw) not in _said:
            _said.add((version, raw))
            log.info("ICMP echo over IPv%d through a %s", version, _VIA[raw])
        return sock, raw
    raise IcmpUnavailable(
        "ICMP unavailable: no ping socket (net.ipv4.ping_group_range excludes this group)"
        " and no raw socket (not root, no CAP_NET_RAW)"
    )


class Echo(NamedTuple):
    status: ConnectStatus
    elapsed_ms: int
    data: bytes
    via: str
    """How it went out ("ping socket", "raw socket") or why not, for the access log."""


def ping(address: str, data: bytes, timeout: float, sequence: int) -> Echo:
    """One echo to the IP ``address`` and its outcome.

    Raises ``IcmpUnavailable``; other socket errors become "unreachable".
    """
    version = 6 if ":" in address else 4
    sock, raw = open_ping_socket(version)
    identifier = random.getrandbits(16)
    via = _VIA[raw]
    started = time.monotonic()
    try:
        sock.settimeout(timeout)
        sock.sendto(echo_request(version, identifier, sequence, data), (address, 0))
        deadline = started + timeout
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            packet, source = sock.recvfrom(RECV_SIZE)
            reply = read_echo_reply(version, packet, with_ip_header=raw and version == 4)
            if reply is None or reply.sequence != sequence:
                continue
            if raw and (reply.identifier != identifier or source[0] != address):
                continue  # a raw socket sees every echo reply of the host
            return Echo(ConnectStatus.OK, _ms_since(started), reply.data, via)
    except TimeoutError:
        return Echo(ConnectStatus.TIMED_OUT, _ms_since(started), b"", via)
    except OSError as error:
        log.debug("echo to %s failed: %s", address, error)
        return Echo(ConnectStatus.UNREACHABLE, _ms_since(started), b"", via)
    finally:
        sock.close()


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
