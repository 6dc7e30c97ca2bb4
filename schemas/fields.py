"""Building blocks shared by every schema: strict enums, documented fields, safe parse/build.

construct raises a zoo of exceptions (StreamError, ConstError, MappingError, ...) and passes
unknown enum values through as plain ints. Everything here turns those into one ``WireError``
that names the packet and the field, so callers handle a single exception type.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from typing import Any

import construct as c

from schemas.errors import WireError

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=1024)
def ip_of(spelled: str | bytes) -> IpAddress | None:
    """The address that ``spelled`` (text, or 4 or 16 packed bytes) is; ``None`` when it is
    none. Cached (addresses are immutable): one connection's host is looked at up to four
    times on its way through SOCKS, the routing rules and the tunnel's connect request, and
    the same hosts come back again and again."""
    try:
        return ipaddress.ip_address(spelled)
    except ValueError:
        return None


class StrictEnum(c.Adapter):
    """An integer field decoded to an ``IntEnum`` member; an unknown value is an error."""

    def __init__(self, subcon: c.Construct, enum_type: type[enum.IntEnum]) -> None:
        super().__init__(subcon)
        self.enum_type = enum_type

    def _decode(self, obj: int, context: Any, path: str) -> enum.IntEnum:
        try:
            return self.enum_type(obj)
        except ValueError:
            raise c.ValidationError(
                f"unknown {self.enum_type.__name__} value {obj}", path=path
            ) from None

    def _encode(self, obj: Any, context: Any, path: str) -> enum.IntEnum:
        try:
            return self.enum_type(obj) if not isinstance(obj, str) else self.enum_type[obj]
        except (ValueError, KeyError):
            raise c.ValidationError(
                f"unknown {self.enum_type.__name__} value {obj!r}", path=path
            ) from None

    def _build(self, obj: Any, stream: Any, context: Any, path: str) -> enum.IntEnum:
        # Return the member, not the caller's int or name: later fields read it from the
        # context (this.status == LoginStatus.OK, the address type of a host).
        member = self._encode(obj, context, path)
        self.subcon._build(member, stream, context, path)
        return member


class AddressKind(enum.IntEnum):
    """Base of the address-type enums, whose members are ``IPV4``, ``DOMAIN`` and ``IPV6``.

    jProxy numbers IPv6 2 and SOCKS5 numbers it 4, so each protocol defines its own members;
    what they share is how a host's text picks one.
    """

    @classmethod
    def of(cls, host: str) -> AddressKind:
        """The type for ``host``: an IP literal keeps its family, anything else is a name."""
        address = ip_of(host)
        if address is None:
            return cls["DOMAIN"]
        return cls["IPV4"] if address.version == 4 else cls["IPV6"]


def unnamed(field: c.Construct) -> c.Construct:
    """``field`` without the names and docs wrapped around it."""
    while isinstance(field, c.Renamed):
        field = field.subcon
    return field


def doc(subcon: c.Construct, text: str) -> c.Construct:
    """Attach the description that docs/protocol.md prints for this field."""
    return subcon * text


class InRange(c.Adapter):
    """An integer field that must lie in ``low..high`` (both inclusive), parsing or building."""

    def __init__(self, subcon: c.Construct, low: int, high: int) -> None:
        super().__init__(subcon)
        self.low, self.high = low, high

    def _check(self, obj: int, path: str) -> int:
        if not self.low <= obj <= self.high:
            raise c.ValidationError(f"must be {self.low}..{self.high}, got {obj}", path=path)
        return obj

    def _decode(self, obj: int, context: Any, path: str) -> int:
        return self._check(obj, path)

    def _encode(self, obj: int, context: Any, path: str) -> int:
        return self._check(obj, path)


def _field_of(error: c.ConstructError) -> str:
    parts = (getattr(error, "path", None) or "").split("->")
    names = (part.strip() for part in parts[1:])
    return ".".join(name for name in names if name and name != "None")


def _reason_of(error: c.ConstructError) -> str:
    text = str(error)
    # construct prefixes messages with "Error in path ...\n"; keep only the reason.
    return text.split("\n", 1)[-1].strip() or type(error).__name__


def parse(schema: c.Construct, data: bytes, **params: Any) -> c.Container:
    """Parse ``data`` completely with ``schema``; any defect raises ``WireError``."""
    name = schema.name or type(schema).__name__
    try:
        return schema.parse(data, **params)
    except c.TerminatedError:
        raise WireError(name, "", "trailing bytes after the end of the packet") from None
    except c.ConstructError as error:
        raise WireError(name, _field_of(error), _reason_of(error)) from None
    except (ValueError, UnicodeDecodeError) as error:
        raise WireError(name, "", str(error)) from None


def build(schema: c.Construct, fields: Any, **params: Any) -> bytes:
    """Build ``schema`` from ``fields``; any defect raises ``WireError``."""
    name = schema.name or type(schema).__name__
    try:
        return schema.build(fields, **params)
    except c.ConstructError as error:
        raise WireError(name, _field_of(error), _reason_of(error)) from None
    except (ValueError, TypeError, KeyError, UnicodeEncodeError) as error:
        raise WireError(name, "", str(error)) from None


def packet(name: str, *fields: c.Construct, doc_text: str = "") -> c.Construct:
    """A named top-level packet that must consume its bytes exactly (no trailing garbage)."""
    schema = c.Struct(*fields, c.Terminated)
    schema.name = name
    schema.docs = doc_text
    return schema
