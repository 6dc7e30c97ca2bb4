"""One walk over a construct schema, shared by everything derived from the schemas.

The docs generator, the fast codecs, the SOCKS readers, the handshake's sizes and the
Wireshark dissector generator all need the same facts about a packet: its fields in order
(nested structs flattened to dotted paths), each field's fixed size or length rule, the struct
format of an integer, its constant or enum, and the ``doc()`` description. This module reads
them from the construct tree once, as plain data (``Field`` and ``Shape``), so no other module
looks inside construct's classes.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import construct as c
from construct.expr import BinExpr, opnames

from schemas.fields import InRange, StrictEnum, unnamed

# --- shapes: what a field is on the wire ---------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What one construct occupies on the wire; ``size`` is None when it varies."""

    construct: c.Construct
    """the construct itself, names and docs peeled off"""
    size: int | None


@dataclass(frozen=True)
class Integer(Shape):
    """A fixed-size integer (``c.FormatField``) and the wrappers that give it meaning."""

    format: str
    """struct format with its byte order, e.g. ``">H"``"""
    constant: int | None = None
    enum_type: type[enum.IntEnum] | None = None
    bounds: tuple[int, int] | None = None
    reproduced: bool = True
    """False when a wrapper (Rebuild, InRange, ...) adds meaning that only construct applies."""


@dataclass(frozen=True)
class Blob(Shape):
    """Bytes of a length that is a number or an expression of earlier fields."""

    length: Any
    """an int, or a construct expression (``this.length``)"""
    constant: bytes | None = None
    encoding: str | None = None
    """text encoding when the bytes are a string (``StringEncoded``)"""


@dataclass(frozen=True)
class Rest(Shape):
    """Everything up to the end of the packet (``GreedyBytes``)."""


@dataclass(frozen=True)
class Delimited(Shape):
    """Bytes up to and including a terminator (``NullTerminated``)."""

    terminator: bytes


@dataclass(frozen=True)
class Prefixed(Shape):
    """A length integer, then that many bytes holding ``body``."""

    length: Integer
    body: Shape


@dataclass(frozen=True)
class Repeat(Shape):
    """``count`` elements of one shape (``Array``)."""

    count: Any
    element: Shape


@dataclass(frozen=True)
class Record(Shape):
    """Named fields one after another (``Struct``, ``Sequence``)."""

    fields: tuple[Field, ...]


@dataclass(frozen=True)
class Conditional(Shape):
    """``then`` when ``condition`` holds, else ``otherwise`` (``If``, ``IfThenElse``)."""

    condition: Any
    then: Shape
    otherwise: Shape


@dataclass(frozen=True)
class Choice(Shape):
    """The first option that parses (``Select``; ``Optional`` is a field or nothing)."""

    options: tuple[Shape, ...]


@dataclass(frozen=True)
class Switch(Shape):
    """One shape chosen by the value of ``key`` (``Switch``); ``default`` None is an error."""

    key: Any
    cases: dict[Any, Shape]
    default: Shape | None


@dataclass(frozen=True)
class Nothing(Shape):
    """Occupies no bytes: a check (``Terminated``) or ``Pass``."""


@dataclass(frozen=True)
class Opaque(Shape):
    """Anything this walker does not know; only construct can read it."""


@dataclass(frozen=True)
class Field:
    """One field of a packet, found by ``fields``."""

    path: str
    """dotted from the packet: ``"address.host"``; ``""`` for an unnamed check"""
    construct: c.Construct
    """the field as the struct holds it (name and docs included), for construct to parse"""
    description: str
    shape: Shape
    adapter: type[c.Adapter] | None
    """the class of the schema's own adapter around the field (a host decoder), if any"""
    offset: int | None
    """bytes from the start of the packet, None once a field of varying size came before"""
    opens: tuple[str, ...] = ()
    """descriptions of the nested structs this field is the first of, outermost first"""

    @property
    def size(self) -> int | None:
        return self.shape.size

    @property
    def integer(self) -> Integer | None:
        return self.shape if isinstance(self.shape, Integer) else None


def fixed_size(construct: c.Construct) -> int | None:
    """Bytes ``construct`` always occupies, None when that depends on fields or parameters."""
    try:
        return construct.sizeof()
    except (c.SizeofError, LookupError):
        return None


_INTEGER_WRAPPERS = (c.Renamed, c.Const, c.Adapter, c.Rebuild, c.Default)
"""Subconstructs that read their subconstruct's bytes as they are and only add meaning."""


def shape_of(construct: c.Construct) -> Shape:
    """What ``construct`` is on the wire."""
    inner = unnamed(construct)
    size = fixed_size(inner)
    integer = _integer(inner)
    if integer is not None:
        return integer
    if isinstance(inner, c.Const) and isinstance(inner.value, bytes):
        return Blob(inner, size, len(inner.value), constant=inner.value)
    if isinstance(inner, c.StringEncoded):
        blob = shape_of(inner.subcon)
        if isinstance(blob, Blob):
            return Blob(inner, size, blob.length, encoding=inner.encoding)
        return blob
    if isinstance(inner, c.Padded) and inner.subcon is c.Pass:
        return Blob(inner, size, inner.length)  # reserved bytes (``Padding``)
    if isinstance(inner, c.Bytes):
        return Blob(inner, size, inner.length)
    if inner is c.GreedyBytes:
        return Rest(inner, None)
    if inner is c.Terminated or inner is c.Pass:
        return Nothing(inner, 0)
    if isinstance(inner, c.NullTerminated):
        return Delimited(inner, size, inner.term)
    if isinstance(inner, c.Prefixed):
        length = _integer(unnamed(inner.lengthfield))
        if length is not None:
            return Prefixed(inner, size, length, shape_of(inner.subcon))
    if isinstance(inner, c.Array):
        return Repeat(inner, size, inner.count, shape_of(inner.subcon))
    if isinstance(inner, c.Struct | c.Sequence | c.FocusedSeq):
        return Record(inner, size, tuple(_flat(inner, "", 0, ())))
    if isinstance(inner, c.IfThenElse):
        return Conditional(
            inner, size, inner.condfunc, shape_of(inner.thensubcon), shape_of(inner.elsesubcon)
        )
    if isinstance(inner, c.Select):
        return Choice(inner, size, tuple(shape_of(option) for option in inner.subcons))
    if isinstance(inner, c.Switch):
        default = None if inner.default is c.Error else shape_of(inner.default)
        cases = {key: shape_of(case) for key, case in inner.cases.items()}
        return Switch(inner, size, inner.keyfunc, cases, default)
    if isinstance(inner, c.Subconstruct):
        return _rewrapped(shape_of(inner.subcon), inner, size)
    return Opaque(inner, size)


def _rewrapped(shape: Shape, outer: c.Construct, size: int | None) -> Shape:
    """``shape`` of a subconstruct, as seen through ``outer`` (an adapter, a check)."""
    values = {name: getattr(shape, name) for name in shape.__dataclass_fields__}
    return type(shape)(**{**values, "construct": outer, "size": size})


def _integer(construct: c.Construct) -> Integer | None:
    """The integer under ``construct``'s wrappers, None when it is not a fixed-size integer."""
    constant, enum_type, bounds, reproduced = None, None, None, True
    outer, field = construct, construct
    while not isinstance(field, c.FormatField):
        if not isinstance(field, _INTEGER_WRAPPERS):
            return None
        if isinstance(field, c.Const):
            constant = field.value
        elif isinstance(field, StrictEnum):
            enum_type = field.enum_type
        elif isinstance(field, InRange):
            bounds = (field.low, field.high)
            reproduced = False
        elif not isinstance(field, c.Renamed):
            reproduced = False
        field = field.subcon
    if constant is not None and not isinstance(constant, int):
        return None
    return Integer(
        outer, struct.calcsize(field.fmtstr), field.fmtstr, constant, enum_type, bounds, reproduced
    )


def _adapter(construct: c.Construct) -> type[c.Adapter] | None:
    """The class of the first adapter a schema defines around a field (not construct's own)."""
    field = construct
    while isinstance(field, c.Subconstruct):
        if isinstance(field, c.Adapter) and not type(field).__module__.startswith("construct"):
            if not isinstance(field, StrictEnum | InRange):
                return type(field)
        field = field.subcon
    return None


def fields(schema: c.Construct, prefix: str = "") -> list[Field]:
    """Every field of a packet in wire order, nested structs entered (``address.type``).

    Unnamed checks that occupy no bytes (the end-of-packet check) are included with an empty
    name; callers that only want bytes skip fields whose size is 0 and that have no name.
    """
    inner = unnamed(schema)
    if not isinstance(inner, c.Struct):
        raise TypeError(f"{schema!r} is not a Struct")
    return list(_flat(inner, prefix, 0, ()))


def _flat(
    record: c.Construct, prefix: str, offset: int | None, opens: tuple[str, ...]
) -> Iterator[Field]:
    first = True
    for sub in record.subcons:
        path = f"{prefix}{sub.name}" if sub.name else ""
        inner = unnamed(sub)
        description = sub.docs or ""
        context = opens if first else ()
        if isinstance(inner, c.Struct):
            nested = list(_flat(inner, f"{path}.", offset, (*context, description)))
            yield from nested
            size = fixed_size(inner)
        else:
            shape = shape_of(sub)
            yield Field(path, sub, description, shape, _adapter(sub), offset, context)
            size = shape.size
        if not (not sub.name and size == 0):
            first = False
        offset = None if offset is None or size is None else offset + size


def leading_integers(schema: c.Construct) -> tuple[list[Field], list[Field]]:
    """The run of fixed-size integer fields a packet starts with, and the fields after it."""
    walked = fields(schema)
    for index, field in enumerate(walked):
        if field.integer is None:
            return walked[:index], walked[index:]
    return walked, []


def field(schema: c.Construct, path: str) -> Field:
    """The field of ``schema`` at the dotted ``path``; KeyError if there is none."""
    for candidate in fields(schema):
        if candidate.path == path:
            return candidate
    raise KeyError(f"{getattr(schema, 'name', schema)} has no field {path}")


def byte_values(construct: c.Construct) -> dict[int, Any]:
    """What a one-byte ``construct`` parses each byte value to; values it refuses are left out.

    Asking construct about all 256 values gives a derived reader the field's checks
    (constants, enums, ranges, validators) without writing them a second time.
    """
    values = {}
    for value in range(256):
        try:
            values[value] = construct.parse(bytes([value]))
        except c.ConstructError:
            continue
    return values


def packed_size(schema: c.Construct) -> int:
    """Bytes of a packet of fixed size (a hello); TypeError when its size varies."""
    sizes = [field.size for field in fields(schema)]
    if None in sizes:
        raise TypeError(f"{schema.name} has no fixed size")
    return sum(sizes)


# --- expressions: the length rules and conditions of fields -----------------------------


_CONTEXT_PATH = re.compile(r"this((?:\['\w+'\])+)")
_HIDDEN_PATH_PARTS = {"_params", "_", "_root"}


def render_expression(
    expr: Any,
    *,
    path: Callable[[tuple[str, ...], bool], str],
    value: Callable[[Any], str],
    operator: Callable[[str], str],
    computed: str,
    length: Callable[[str], str],
) -> str:
    """A construct expression as text, each kind of leaf written by its callback.

    ``path`` gets the field names (``("blocks",)``) and whether they name a parameter
    (``this._params.key_size``); ``operator`` gets construct's operator name (``"=="``).
    """
    if isinstance(expr, BinExpr):
        sides = []
        for side in (expr.lhs, expr.rhs):
            text = render_expression(
                side,
                path=path,
                value=value,
                operator=operator,
                computed=computed,
                length=length,
            )
            sides.append(f"({text})" if isinstance(side, BinExpr) else text)
        return f"{sides[0]} {operator(opnames[expr.op])} {sides[1]}"
    if isinstance(expr, int | str | bytes | enum.Enum):
        return value(expr)
    if callable(expr) and not isinstance(expr, c.ExprMixin):
        return computed
    text = repr(expr)
    match = re.fullmatch(r"len_\((.*)\)", text)
    if match:
        return length(_path_text(match.group(1), path))
    return _path_text(text, path)


def _path_text(text: str, path: Callable[[tuple[str, ...], bool], str]) -> str:
    match = _CONTEXT_PATH.fullmatch(text)
    if match is None:
        return text
    parts = re.findall(r"\['(\w+)'\]", match.group(1))
    is_param = "_params" in parts
    return path(tuple(part for part in parts if part not in _HIDDEN_PATH_PARTS), is_param)
