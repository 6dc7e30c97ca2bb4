"""docs/protocol.md is generated from the schemas and kept in step with them."""

from __future__ import annotations

from pathlib import Path

import construct as c
import pytest

from jproxy.gen import protocol_docs as docs
from schemas.fields import StrictEnum, doc, packet
from schemas.jproxy import AddressType, Frame, LoginReply, TcpConnectRequest

COMMITTED = Path(__file__).parents[2] / "docs" / "protocol.md"


def test_committed_docs_match_the_schemas() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == docs.render(), (
        "docs/protocol.md is out of date with schemas/: run `gjproxy docs` and commit it"
    )


def test_every_packet_has_a_section_and_every_field_a_meaning() -> None:
    text = docs.render()
    modules = docs._schema_modules()
    assert [module.__name__ for module in modules][0] == "schemas.jproxy"
    for module in modules:
        assert f"## `{module.__name__}`" in text
        for schema in module.PACKETS:
            assert f"### `{schema.name}`" in text
            assert schema.docs, f"{schema.name} has no doc_text"
            for row in docs.packet_rows(schema):
                assert row.meaning, f"{schema.name}.{row.name} has no doc()"


def test_message_type_table_names_dialects() -> None:
    text = docs.render()
    assert "| 0x21 | TCP_PACKET | 3.0 and 3.1 | `TcpPacket` | `TcpPacket` |" in text
    assert "| 0x03 | ICMP_ECHO | 3.1 only | `IcmpEchoRequest` | `IcmpEchoReply` |" in text


def test_rows_of_jproxy_packets() -> None:
    assert docs.packet_rows(TcpConnectRequest) == [
        docs.Row("0", "1", "type", "message type 0x01"),
        docs.Row(
            "1",
            "2",
            "connection_id",
            "stream id chosen by the client, unique among its live streams",
        ),
        docs.Row("3", "2", "port", "destination port"),
        docs.Row(
            "5",
            "1",
            "address.type",
            "destination: 1 IPv4, 2 IPv6, 3 DNS name; SOCKS5's 4 for IPv6 is unknown here;"
            " values: IPV4 = 1, IPV6 = 2, DOMAIN = 3",
        ),
        docs.Row(
            "6",
            "1 + n",
            "address.host",
            "length byte, then 4 (IPv4) or 16 (IPv6) address bytes or a 1..255-byte ASCII name",
        ),
    ]
    assert [row.length for row in docs.packet_rows(Frame)] == ["1", "blocks * 16"]
    assert docs.packet_rows(LoginReply)[1].length == "key_size if status == OK, else 0"


def test_rows_of_every_kind_of_field() -> None:
    """The walker is generic: constructs no jProxy packet uses yet get a length too."""
    sample = packet(
        "Sample",
        "name" / doc(c.PascalString(c.Int16ub, "utf8"), "a name"),
        "items" / doc(c.PrefixedArray(c.Int16ub, c.Int32ub), "numbers"),
        "pad" / doc(c.Padding(3), "padding"),
        "inner"
        / doc(
            c.Struct(
                "kind" / doc(StrictEnum(c.Int8ub, AddressType), "kind"),
                "value"
                / doc(
                    c.Switch(c.this.kind, {AddressType.IPV4: c.Bytes(4)}, default=c.GreedyBytes),
                    "value",
                ),
            ),
            "nested",
        ),
        "flag" / doc(c.Optional(c.Const(b"\x01")), "flag"),
        "rest" / doc(c.GreedyBytes, "the rest"),
        doc_text="test packet",
    )
    assert [(row.offset, row.length, row.name) for row in docs.packet_rows(sample)] == [
        ("0", "2 + n", "name"),
        ("var", "2 + count*4", "items"),
        ("var", "3", "pad"),
        ("var", "1", "inner.kind"),
        ("var", "by kind: 4 if IPV4, else rest", "inner.value"),
        ("var", "1 or 0", "flag"),
        ("var", "rest", "rest"),
    ]


@pytest.mark.parametrize(
    ("expression", "text"),
    [
        (c.this.blocks * 16, "blocks * 16"),
        (c.this._params.key_size, "key_size"),
        (c.len_(c.this.data), "len(data)"),
        ((c.this.a + 1) * c.this.b, "(a + 1) * b"),
        (c.this.kind == AddressType.DOMAIN, "kind == DOMAIN"),
        (lambda this: 1, "computed"),
        (7, "7"),
    ],
)
def test_expression_text(expression: object, text: str) -> None:
    assert docs.expression(expression) == text
