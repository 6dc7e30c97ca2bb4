"""The generated Wireshark dissector, run by a real tshark over captures written here.

Every message tshark shows must carry the fields that schemas/ parse from the same bytes:
the recorded Java 3.0 tunnel (decrypted with its key), a 3.1 tunnel sealed by jproxy.crypto
(decrypted by the dissector's own AES-GCM), and an admin exchange.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from jproxy import dissector, keylog
from schemas import introspect, jproxy, parse
from schemas.jproxy import Direction
from tests.pcap import CLIENT, write_pcap
from tests.peers import require_tool

ROOT = Path(__file__).parent.parent
COMMITTED = ROOT / "docs" / "jproxy.lua"
VECTORS = Path(__file__).parent / "vectors"
JAVA = VECTORS / "java-3.0"
TSHARK_TIMEOUT = 120
KEY = bytes(range(16))
WRAPPED = bytes((i * 7 + 3) % 256 for i in range(256))
NAMES = {protocol.name: dissector.field_abbreviations(protocol) for protocol in dissector.PROTOCOLS}


def test_committed_lua_matches_the_schemas() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == dissector.render(), (
        "docs/jproxy.lua is out of date with schemas/: run"
        " `gjproxy dissector -o docs/jproxy.lua` and commit it"
    )


def test_command_writes_the_dissector(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "jproxy.lua"
    run = subprocess.run(
        [sys.executable, "-m", "jproxy", "dissector", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert run.stdout.strip() == f"wrote {out}"
    assert out.read_text(encoding="utf-8") == dissector.render()
    run = subprocess.run(
        [sys.executable, "-m", "jproxy", "dissector"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert run.stdout == dissector.render()


def test_fields_of_one_layout_share_a_name_and_enums_tell_the_others_apart() -> None:
    names = NAMES["jproxy"]
    assert names[("TcpPacket", "connection_id")] == "jproxy.connection_id"
    assert names[("IcmpEchoReply", "connection_id")] == "jproxy.connection_id"
    assert names[("TcpConnectRequest", "address.host")] == "jproxy.address.host"
    assert names[("TcpConnectReply", "status")] == "jproxy.connect_status"
    assert names[("LoginReply", "status")] == "jproxy.login_status"
    assert NAMES["jproxy_admin"][("AdminRequest", "params.data")] == "jproxy_admin.params.data"


# --- running tshark ---------------------------------------------------------------------


def tshark_pdml(pcap: Path, *options: str) -> ET.Element:
    """tshark's full dissection of ``pcap`` with the committed dissector, as PDML."""
    tool = require_tool("tshark")
    run = subprocess.run(
        [tool, "-n", "-X", f"lua_script:{COMMITTED}", *options, "-r", str(pcap), "-T", "pdml"],
        capture_output=True,
        text=True,
        timeout=TSHARK_TIMEOUT,
        env={**os.environ, "HOME": str(pcap.parent)},
    )
    assert run.returncode == 0, run.stderr
    assert "Lua: Error" not in run.stderr, run.stderr
    return ET.fromstring(run.stdout)


def dissected(root: ET.Element, protocol: str = "jproxy") -> dict[str, list[tuple]]:
    """Per direction, each message tshark shows: ``(name, [(field, value), ...], problems)``.

    Frames are looked into: the message a frame carries is listed, not the frame.
    """
    messages: dict[str, list[tuple]] = {"c2s": [], "s2c": []}
    for packet in root.iter("packet"):
        port = packet.find(".//field[@name='tcp.srcport']")
        direction = "c2s" if port is not None and int(port.get("show")) == CLIENT[1] else "s2c"
        for proto in packet.findall(f"proto[@name='{protocol}']"):
            for item in proto.iter("field"):
                if item.get("name") != f"{protocol}.message" or item.get("show") == "Frame":
                    continue
                values = [
                    (child.get("name"), _value(child))
                    for child in item
                    if child.get("name") != f"{protocol}.message"
                    and not child.get("name").startswith("_ws.expert")
                ]
                problems = [e.get("showname") for e in item.iter("field") if _expert(e)]
                messages[direction].append((item.get("show"), values, problems))
    return messages


def frames(root: ET.Element) -> list[ET.Element]:
    return [item for item in root.iter("field") if item.get("show") == "Frame"]


def experts(element: ET.Element) -> list[str]:
    return [item.get("showname") for item in element.iter("field") if _expert(item)]


def _expert(item: ET.Element) -> bool:
    return item.get("name", "").startswith("_ws.expert") and item.get("name") == "_ws.expert"


def _value(item: ET.Element) -> object:
    show, raw = item.get("show"), item.get("value")
    if ":" in (show or "") and raw and len(show) == 3 * len(raw) // 2 - 1:
        return raw  # bytes
    try:
        return int(show, 0)
    except (TypeError, ValueError):
        return show


def expected(protocol: str, schema, data: bytes, **params) -> tuple:
    """What tshark should show for ``data``: the fields schemas/ parse, named as tshark does."""
    fields = parse(schema, data, **params)
    values = []
    for field in introspect.fields(schema):
        if not field.path:
            continue
        value = fields
        for part in field.path.split("."):
            value = value[part]
        if isinstance(field.shape, introspect.Repeat):
            for element in value:
                for sub in field.shape.element.fields:
                    abbr = NAMES[protocol][(schema.name, f"{field.path}.{sub.path}")]
                    values.append((abbr, _plain(element[sub.path])))
        elif value is not None:
            values.append((NAMES[protocol][(schema.name, field.path)], _plain(value)))
    return (schema.name, values, [])


def _plain(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex() if value else ""
    return int(value) if isinstance(value, int) else value


# --- captures -------------------------------------------------------------------------


def _java_vectors() -> dict:
    return json.loads((JAVA / "vectors.json").read_text())


def _key_log(path: Path, wrapped: bytes, key: bytes) -> Path:
    path.write_text("# another tool's line\n" + keylog.key_log_line(wrapped, key))
    return path


def test_java_capture_decrypted_with_its_key_matches_the_schemas(tmp_path: Path) -> None:
    transcript = json.loads((JAVA / "transcript.json").read_text())
    chunks = [
        (event["dir"], bytes.fromhex(event["hex"]))
        for event in transcript["connections"][0]["events"]
        if "hex" in event
    ]
    pcap = tmp_path / "java.pcap"
    write_pcap(pcap, chunks)
    vectors = _java_vectors()
    wire = {"c2s": [], "s2c": []}
    for message in vectors["tunnel"]["messages"]:
        data = bytes.fromhex(message.get("plaintext_hex") or message["wire_hex"])
        wire[message["dir"]].append((message["encrypted"], data))
    reply = wire["s2c"][1][1]
    key_log = _key_log(
        tmp_path / "keys.log", reply[1:], bytes.fromhex(vectors["tunnel"]["aes_key_hex"])
    )

    shown = dissected(tshark_pdml(pcap, "-o", f"jproxy.keylog:{key_log}"))

    for direction, handshake in (
        ("c2s", dissector.PROTOCOLS[0].sequence[jproxy.C2S]),
        ("s2c", dissector.PROTOCOLS[0].sequence[jproxy.S2C]),
    ):
        want = []
        for index, (encrypted, data) in enumerate(wire[direction]):
            if encrypted:
                schema, _ = jproxy.parse_message(data, Direction(direction))
            else:
                schema = handshake[index]
            want.append(expected("jproxy", schema, data, key_size=256))
        assert shown[direction] == want
    assert len(shown["c2s"]) + len(shown["s2c"]) == len(vectors["tunnel"]["messages"])
