"""The generated Wireshark dissector: the committed file is fresh, and its field names."""

from __future__ import annotations

from jproxy.gen import dissector
from tests.dissection import COMMITTED, NAMES


def test_committed_lua_matches_the_schemas() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == dissector.render(), (
        "docs/jproxy.lua is out of date with schemas/: run"
        " `gjproxy dissector -o docs/jproxy.lua` and commit it"
    )


def test_fields_of_one_layout_share_a_name_and_enums_tell_the_others_apart() -> None:
    names = NAMES["jproxy"]
    assert names[("TcpPacket", "connection_id")] == "jproxy.connection_id"
    assert names[("IcmpEchoReply", "connection_id")] == "jproxy.connection_id"
    assert names[("TcpConnectRequest", "address.host")] == "jproxy.address.host"
    assert names[("TcpConnectReply", "status")] == "jproxy.connect_status"
    assert names[("LoginReply", "status")] == "jproxy.login_status"
    assert NAMES["jproxy_admin"][("AdminRequest", "params.data")] == "jproxy_admin.params.data"
