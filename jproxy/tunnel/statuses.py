"""What a server's connect status means to the person reading a client's log or ping's output.

A refusal says what would change it: NOT_ALLOWED names the server's egress policy and the flag
that opens a destination, so nobody has to guess from a bare status name.
"""

from __future__ import annotations

from schemas.jproxy import ConnectStatus

NOT_ALLOWED_TEXT = (
    "not allowed by the server's egress policy (its access log names the rule or range;"
    " the server's --allow-egress CIDR[:PORTS] or [egress] allow opens a destination)"
)

_TEXTS = {
    ConnectStatus.GENERAL_FAILURE: "general failure (see the server's log)",
    ConnectStatus.REFUSED: "connection refused by the target",
    ConnectStatus.TIMED_OUT: "timed out",
    ConnectStatus.UNREACHABLE: "unreachable",
    ConnectStatus.UNKNOWN_HOST: "unknown host",
    ConnectStatus.CONNECTION_LIMIT: "over a limit of the server (its log says which)",
    ConnectStatus.NOT_ALLOWED: NOT_ALLOWED_TEXT,
}


def status_text(status: ConnectStatus) -> str:
    """``NAME: what it means``, e.g. ``NOT_ALLOWED: not allowed by the server's egress ...``."""
    meaning = _TEXTS.get(status)
    return f"{status.name}: {meaning}" if meaning else status.name
