"""The generated Wireshark dissector run by a real tshark (PDML), what schemas/ expect it to show
for the same bytes, and tunnels sealed here to capture: shared by the dissector's tests."""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from jproxy.gen import dissector
from jproxy.tunnel import keylog
from jproxy.tunnel.crypto import EcbSealer, GcmSealer
from schemas import build, introspect, jproxy, parse
from schemas.jproxy import Direction
from tests.pcap import CLIENT
from tests.peers import require_tool

ROOT = Path(__file__).parents[1]
COMMITTED = ROOT / "docs" / "jproxy.lua"
VECTORS = ROOT / "tests" / "vectors"
JAVA = VECTORS / "java-3.0"
TSHARK_TIMEOUT = 120
KEY = bytes(range(16))
WRAPPED = bytes((i * 7 + 3) % 256 for i in range(256))
NAMES = {protocol.name: dissector.field_abbreviations(protocol) for protocol in dissector.PROTOCOLS}


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
    assert "Lua Error" not in run.stderr + run.stdout, run.stderr
    return ET.fromstring(run.stdout)


def dissected(root: ET.Element, protocol: str = "jproxy") -> dict[str, list[tuple]]:
    """Per direction, each message tshark shows: ``(name, [(field, value), ...], problems)``.

    Frames are looked into: the message a frame carries is listed, not the frame (which has
    a field of its own, ``jproxy.frame``: ``jproxy.message`` is never a frame).
    """
    messages: dict[str, list[tuple]] = {"c2s": [], "s2c": []}
    for packet in root.iter("packet"):
        port = packet.find(".//field[@name='tcp.srcport']")
        direction = "c2s" if port is not None and int(port.get("show")) == CLIENT[1] else "s2c"
        for proto in packet.findall(f"proto[@name='{protocol}']"):
            for item in proto.iter("field"):
                if item.get("name") != f"{protocol}.message":
                    continue
                assert item.get("show") != "Frame", "a frame shown as a message"
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
    found = [item for item in root.iter("field") if item.get("name") == "jproxy.frame"]
    assert all(item.get("show") == "Frame" for item in found)
    return found


def experts(element: ET.Element) -> list[str]:
    return [item.get("showname") for item in element.iter("field") if _expert(item)]


def _expert(item: ET.Element) -> bool:
    return item.get("name", "").startswith("_ws.expert") and item.get("name") == "_ws.expert"


class Shown(tuple):
    """A field as PDML shows it, ``(show, value)``; equal to the schema's value it displays."""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Shown):
            return tuple(self) == tuple(other)
        show, raw = self
        if isinstance(other, bytes):
            return bytes.fromhex(raw or "") == other
        if isinstance(other, int):
            return show is not None and int(show, 0) == other
        return show == other

    __hash__ = tuple.__hash__


def _value(item: ET.Element) -> Shown:
    return Shown((item.get("show"), item.get("value")))


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
    return int(value) if isinstance(value, int) else value


def write_key_log(path: Path, wrapped: bytes, key: bytes) -> Path:
    path.write_text("# another tool's line\n" + keylog.key_log_line(wrapped, key))
    return path


def sealed_tunnel(
    dialect: jproxy.Dialect, messages: list[tuple[str, bytes]]
) -> list[tuple[str, bytes]]:
    """The chunks of a tunnel in ``dialect`` that carries ``messages`` after its login."""
    hello = build(jproxy.Hello, {"major": 3, "minor": int(dialect)})
    reply = build(jproxy.LoginReply, {"status": "OK", "wrapped_key": WRAPPED}, key_size=256)
    chunks = [
        ("c2s", hello),
        ("s2c", build(jproxy.HelloReply, {"status": "OK"})),
        ("c2s", build(jproxy.LoginRequest, {"login_hash": bytes(32)})),
        ("s2c", reply),
    ]
    sealers = {
        "c2s": GcmSealer(KEY, Direction.CLIENT_TO_SERVER)
        if dialect is jproxy.Dialect.SECURE_3_1
        else EcbSealer(KEY),
        "s2c": GcmSealer(KEY, Direction.SERVER_TO_CLIENT)
        if dialect is jproxy.Dialect.SECURE_3_1
        else EcbSealer(KEY),
    }
    for direction, data in messages:
        chunks.append((direction, sealers[direction].seal(data)))
    return chunks
