"""Which target host texts the server resolves, and how host texts appear in log lines.

A client names its target either as an IP literal or as a host name. Names are checked before
any resolver sees them (RFC 1035 section 2.3.1 with RFC 1123's leading digits): a name that
cannot exist never reaches ``getaddrinfo`` (which raised ``UnicodeError`` on empty or
over-long labels) nor a DNS-over-HTTPS query, and is refused with "unknown host".

Rules: labels of 1..63 bytes of letters, digits, hyphens and underscores, no hyphen at either
end of a label; at most 253 bytes without the one optional trailing dot. Underscores are
accepted because real names carry them (``_dmarc``, ``my_host`` in private zones) and DNS
itself allows them (RFC 2181 section 11). Internationalized names travel as their punycode
(``xn--``) labels, which these rules accept. A name whose last label is all digits is refused
(RFC 3696 section 2): ``127.1`` or ``2130706433`` are the legacy numeric forms of addresses,
which the system resolver would read as 127.0.0.1 and a DNS server would not, so one answer
for both: neither. IP literals are the standard forms only (``127.0.0.1``, ``::1``), without
a zone index (``fe80::1%eth0``).
"""

from __future__ import annotations

import re

from schemas.fields import IpAddress, ip_of

MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?\Z")
_LOG_QUOTE_LIMIT = 300


class InvalidHost(ValueError):
    """A target host that is neither an IP literal nor a well-formed name; says why."""


def ip_literal(host: str) -> IpAddress | None:
    """The address ``host`` spells in standard form; ``None`` when it is not an IP literal."""
    if "%" in host:  # a zone index: not a target a remote client may name
        return None
    return ip_of(host)


def check_host(host: str) -> None:
    """Raise ``InvalidHost`` unless ``host`` is an IP literal or a well-formed host name."""
    if ip_literal(host) is not None:
        return
    name = host[:-1] if host.endswith(".") else host
    if not name:
        raise InvalidHost("empty host name")
    if not name.isascii():
        raise InvalidHost("host name is not ASCII (send punycode)")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidHost(f"host name longer than {MAX_NAME_LENGTH} characters")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise InvalidHost("host name has an empty label")
        if len(label) > MAX_LABEL_LENGTH:
            raise InvalidHost(f"host name has a label longer than {MAX_LABEL_LENGTH} characters")
        if not _LABEL.match(label):
            raise InvalidHost(
                "host name label has a character other than a letter, digit, '-' or '_', "
                "or starts or ends with '-'"
            )
    if labels[-1].isdigit():
        raise InvalidHost("host name ends in an all-digit label (a legacy numeric address?)")


def for_log(text: str) -> str:
    """``text`` safe to put in a log line: control bytes, quotes and backslashes escaped, and
    cut at a bound, so a hostile name can neither forge a line nor flood one."""
    escaped = text[:_LOG_QUOTE_LIMIT].encode("unicode_escape").decode("ascii")
    escaped = escaped.replace('"', '\\"')
    return escaped + ("..." if len(text) > _LOG_QUOTE_LIMIT else "")
