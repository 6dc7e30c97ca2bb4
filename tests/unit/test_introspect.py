"""schemas.introspect: the one walk over a schema that docs, codecs and the dissector share."""

from __future__ import annotations

import construct as c
import pytest

from schemas import introspect
from schemas.admin import AdminAuthRequest, AdminRequest
from schemas.jproxy import (
    AddressType,
    ConnectStatus,
    Hello,
    LoginReply,
    TcpConnectReply,
    TcpConnectRequest,
    TcpDisconnect,
)
from schemas.socks5 import SocksRequest


def test_fields_flatten_nested_structs_with_offsets_and_shapes() -> None:
    walked = [field for field in introspect.fields(TcpConnectRequest) if field.path]
    assert [(field.path, field.offset, field.size) for field in walked] == [
        ("type", 0, 1),
        ("connection_id", 1, 2),
        ("port", 3, 2),
        ("address.type", 5, 1),
        ("address.host", 6, None),
    ]
    assert walked[0].integer.constant == 0x01
    assert walked[3].integer.enum_type is AddressType
    assert walked[3].opens == ("destination",)
    host = walked[4].shape
    assert isinstance(host, introspect.Prefixed)
    assert host.length.format == ">B"
    assert isinstance(host.body, introspect.Rest)
    assert walked[4].adapter is not None  # the schema's own host decoder


def test_integers_carry_format_enum_and_whether_struct_reproduces_them() -> None:
    status = introspect.field(TcpConnectReply, "status").integer
    assert (status.format, status.enum_type, status.reproduced) == (">B", ConnectStatus, True)
    length = introspect.field(AdminAuthRequest, "user_length").integer
    assert length.reproduced is False  # Rebuild: only construct computes it when building


def test_length_rules_keep_their_expressions() -> None:
    wrapped = introspect.field(LoginReply, "wrapped_key").shape
    assert isinstance(wrapped, introspect.Conditional)
    assert isinstance(wrapped.then, introspect.Blob)
    assert isinstance(wrapped.otherwise, introspect.Nothing)
    params = introspect.field(AdminRequest, "params").shape
    assert isinstance(params, introspect.Repeat)
    assert isinstance(params.element, introspect.Record)
    assert [field.path for field in params.element.fields] == ["length", "data"]
    pad = introspect.field(TcpDisconnect, "legacy_pad").shape
    assert isinstance(pad, introspect.Choice)
    switch = introspect.field(SocksRequest, "address.host").shape
    assert isinstance(switch, introspect.Switch) and switch.default is None
    assert isinstance(introspect.field(SocksRequest, "reserved").shape, introspect.Blob)


def test_leading_integers_and_packed_size() -> None:
    header, rest = introspect.leading_integers(TcpConnectRequest)
    assert [field.path for field in header] == ["type", "connection_id", "port", "address.type"]
    assert rest[0].path == "address.host"
    assert introspect.packed_size(Hello) == 8
    with pytest.raises(TypeError):
        introspect.packed_size(TcpConnectRequest)
    with pytest.raises(KeyError):
        introspect.field(Hello, "nothing")


def test_expressions_render_through_callbacks() -> None:
    text = introspect.render_expression(
        (c.this.blocks + 1) * c.this._params.key_size,
        path=lambda parts, param: ("P:" if param else "F:") + ".".join(parts),
        value=str,
        operator=lambda name: {"*": "times"}.get(name, name),
        computed="?",
        length=lambda inner: f"#{inner}",
    )
    assert text == "(F:blocks + 1) times P:key_size"
