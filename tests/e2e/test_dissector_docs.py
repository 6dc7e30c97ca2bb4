"""docs/dissector.md shows real tshark output: the samples there are what tshark prints today.

Regenerate them with ``PYTHONPATH=. python -m tests.e2e.test_dissector_docs``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from schemas import build, jproxy
from tests.dissection import COMMITTED, KEY, TSHARK_TIMEOUT, WRAPPED, sealed_tunnel, write_key_log
from tests.pcap import write_pcap
from tests.peers import require_tool

DOC = Path(__file__).parents[2] / "docs" / "dissector.md"
SAMPLES = {
    "summary": (),
    "connect": ("-O", "jproxy", "-Y", 'jproxy.message == "TcpConnectRequest"'),
    "fields": ("-T", "fields", "-e", "frame.number", "-e", "jproxy.frame", "-e", "jproxy.message"),
}
"""Each sample's tshark options, after reading the capture with the key log."""


def _capture(folder: Path) -> tuple[Path, Path]:
    """A 3.1 tunnel with one HTTP request, as ``tunnel.pcap``, and its key log."""
    request = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
    response = b"HTTP/1.1 204 No Content\r\n\r\n"
    messages = [
        (
            "c2s",
            build(
                jproxy.TcpConnectRequest,
                {"connection_id": 1, "port": 80, "address": jproxy.address_for("example.com")},
            ),
        ),
        (
            "s2c",
            build(jproxy.TcpConnectReply, {"connection_id": 1, "status": "OK", "elapsed_ms": 12}),
        ),
        ("c2s", build(jproxy.TcpPacket, {"connection_id": 1, "data": request})),
        ("s2c", build(jproxy.TcpPacket, {"connection_id": 1, "data": response})),
        ("c2s", build(jproxy.TcpDisconnect, {"connection_id": 1, "reason": "CLIENT_CLOSED"})),
        ("s2c", build(jproxy.TcpDisconnect, {"connection_id": 1, "reason": "CLIENT_CLOSED"})),
    ]
    pcap = folder / "tunnel.pcap"
    write_pcap(pcap, sealed_tunnel(jproxy.Dialect.SECURE_3_1, messages))
    return pcap, write_key_log(folder / "keys.log", WRAPPED, KEY)


def samples() -> dict[str, str]:
    """Each sample as docs/dissector.md shows it: the command line, then tshark's output."""
    tool = require_tool("tshark")
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        pcap, key_log = _capture(Path(folder))
        for name, options in SAMPLES.items():
            command = [
                tool,
                "-n",
                "-X",
                f"lua_script:{COMMITTED}",
                "-o",
                f"jproxy.keylog:{key_log}",
                "-r",
                str(pcap),
                *options,
            ]
            run = subprocess.run(
                command, capture_output=True, text=True, timeout=TSHARK_TIMEOUT, check=True
            )
            shown = " ".join(
                f"'{part}'" if " " in part else part
                for part in [
                    "tshark",
                    "-n",
                    "-X",
                    "lua_script:docs/jproxy.lua",
                    "-o",
                    "jproxy.keylog:keys.log",
                    "-r",
                    "tunnel.pcap",
                    *options,
                ]
            )
            out[name] = f"$ {shown}\n{run.stdout.rstrip()}\n"
    return out


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- sample: {name} -->\n```text\n)(.*?)(```)", re.S)


def test_samples_in_the_doc_are_what_tshark_prints() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name, sample in samples().items():
        match = _block(name).search(text)
        assert match, f"docs/dissector.md has no sample {name}"
        assert match.group(2) == sample, (
            "docs/dissector.md is stale: run `PYTHONPATH=. python -m tests.e2e.test_dissector_docs`"
        )


if __name__ == "__main__":
    text = DOC.read_text(encoding="utf-8")
    for name, sample in samples().items():
        text = _block(name).sub(lambda m, s=sample: m.group(1) + s + m.group(3), text)
    DOC.write_text(text, encoding="utf-8")
    sys.stdout.write(f"updated {DOC}\n")
