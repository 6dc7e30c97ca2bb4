"""The admin protocol ("Proxy SOCKSv5 configuration protocol"), version 1.

One exchange per connection: the client logs in (``AdminAuthRequest``/``AdminAuthReply``),
sends one ``AdminRequest``, gets one ``AdminReply``, and the server closes. Every length is one
byte, so a user name, a password, each parameter and a reply's data are at most 255 bytes.
"""

from __future__ import annotations

import enum

import construct as c

from schemas.fields import StrictEnum, doc, packet

VERSION = 1
MAX_FIELD_LENGTH = 255
MAX_PARAMS = 255


class AuthStatus(enum.IntEnum):
    OK = 0
    BAD_CREDENTIALS = 1
    BAD_VERSION = 2
    INTERNAL_ERROR = 3


class Method(enum.IntEnum):
    """Request codes (0-253; 4 and up are gjproxy's extensions) and the two error replies."""

    CONNECTIONS_TOTAL = 0
    CONNECTIONS_OPEN = 1
    BYTES_TRANSFERRED = 2
    SET_BUFFER_SIZE = 3
    GET_BUFFER_SIZE = 4
    USERS_CONNECTED = 5
    TUNNELS_OPEN = 6
    DNS_LOOKUPS = 7
    DATAGRAMS_DROPPED = 8
    INVALID_PARAM = 254
    INVALID_METHOD = 255


METHOD_DOCS: dict[Method, tuple[str, str, str]] = {
    Method.CONNECTIONS_TOTAL: (
        "connections since start",
        "none",
        "connections counted since the server started",
    ),
    Method.CONNECTIONS_OPEN: ("open connections", "none", "connections open now"),
    Method.BYTES_TRANSFERRED: (
        "bytes transferred",
        "none",
        "payload bytes relayed since start, both directions summed",
    ),
    Method.SET_BUFFER_SIZE: (
        "set buffer size",
        "one: the new size in bytes, ASCII decimal, 512..1048576",
        "the new size",
    ),
    Method.GET_BUFFER_SIZE: (
        "get buffer size (extension)",
        "none",
        "the relay buffer size in bytes",
    ),
    Method.USERS_CONNECTED: (
        "connected users (extension)",
        "none",
        "`alice=2,bob=1`: the users with tunnels open and how many each, sorted by name;"
        " empty when none",
    ),
    Method.TUNNELS_OPEN: ("tunnels open (extension)", "none", "jProxy tunnels open now"),
    Method.DNS_LOOKUPS: (
        "DNS lookups (extension)",
        "none",
        "`doh=5,failures=0,ms=42,hits=7,misses=5`: names looked up over DNS over HTTPS, how"
        " many of them failed and the milliseconds they took in all, then the DNS cache's hits"
        " and misses (all 0 without `--doh`)",
    ),
    Method.DATAGRAMS_DROPPED: (
        "datagrams dropped (extension)",
        "none",
        "`fragment=1,queue_full=3`: UDP datagrams dropped since start, by reason (below),"
        " sorted; reasons never seen are left out, so it is empty when none was dropped",
    ),
    Method.INVALID_PARAM: ("invalid parameter (reply only)", "", "why"),
    Method.INVALID_METHOD: ("invalid method (reply only)", "", "`no method N`"),
}
"""Each code's name, parameters and reply DATA, for docs/admin.md's method table."""

ERROR_REPLIES = frozenset({Method.INVALID_PARAM, Method.INVALID_METHOD})
"""Reply codes that are not a method: the request was refused."""


def _length_prefixed(what: str) -> tuple[c.Construct, c.Construct]:
    """A one-byte length rebuilt from the bytes that follow it."""
    return (
        "length" / doc(c.Rebuild(c.Int8ub, c.len_(c.this.data)), f"{what} length, 0..255"),
        "data" / doc(c.Bytes(c.this.length), what),
    )


Param = c.Struct(*_length_prefixed("parameter bytes (ASCII for every method gjproxy knows)"))

AdminAuthRequest = packet(
    "AdminAuthRequest",
    "version" / doc(c.Int8ub, "protocol version, 1; a server answers any other with status 2"),
    "user_length" / doc(c.Rebuild(c.Int8ub, c.len_(c.this.user)), "ULEN, user name length"),
    "user" / doc(c.Bytes(c.this.user_length), "UNAME, the admin user name (UTF-8)"),
    "password_length" / doc(c.Rebuild(c.Int8ub, c.len_(c.this.password)), "PLEN"),
    "password" / doc(c.Bytes(c.this.password_length), "PASSWD, the admin password (UTF-8)"),
    doc_text="client -> server, first bytes of an admin connection",
)

AdminAuthReply = packet(
    "AdminAuthReply",
    "version" / doc(c.Int8ub, "protocol version of the server, 1"),
    "status"
    / doc(
        StrictEnum(c.Int8ub, AuthStatus),
        "0 ok, 1 bad credentials, 2 bad protocol version, 3 internal error;"
        " the server closes after anything but 0",
    ),
    doc_text="server -> client",
)

AdminRequest = packet(
    "AdminRequest",
    "method"
    / doc(
        c.Int8ub,
        "method code: 0 connections since start, 1 open connections, 2 bytes transferred,"
        " 3 set buffer size, 4 get buffer size, 5 connected users, 6 tunnels open;"
        " any other code is answered with 255",
    ),
    "param_count" / doc(c.Rebuild(c.Int8ub, c.len_(c.this.params)), "NPARAM, 0..255"),
    "params" / doc(c.Array(c.this.param_count, Param), "NPARAM times: LPARAM, then PARAM"),
    doc_text="client -> server, once, after status 0",
)

AdminReply = packet(
    "AdminReply",
    "code"
    / doc(
        StrictEnum(c.Int8ub, Method),
        "the request's method code, or 254 invalid parameter, 255 invalid method",
    ),
    "length" / doc(c.Rebuild(c.Int8ub, c.len_(c.this.data)), "LEN, data length, 0..255"),
    "data"
    / doc(
        c.StringEncoded(c.Bytes(c.this.length), "ascii"),
        "ASCII: the value (a decimal number, or the user list of method 5);"
        " for 254 and 255, why the request was refused",
    ),
    doc_text="server -> client, then the server closes",
)

PACKETS: tuple[c.Construct, ...] = (AdminAuthRequest, AdminAuthReply, AdminRequest, AdminReply)
"""Every top-level packet of this module, in the order of an exchange."""
