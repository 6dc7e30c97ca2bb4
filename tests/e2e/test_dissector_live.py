"""A live capture on lo of a real tunnel carrying curl, decrypted by the dissector with the
key log that gjproxy wrote: both dialects, and an altered frame in 3.1."""

from __future__ import annotations

import os
import signal
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from jproxy.tunnel import keylog
from tests.dissection import experts, frames, tshark_pdml
from tests.peers import require_tool, serve_files, start_client, start_server

CAPTURE_SECONDS = 120
BODY_SIZE = 50_000


class Capture:
    """dumpcap on lo, filtered to one TCP port, writing a pcap file; bounded in time."""

    def __init__(self, path: Path, port: int) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [
                require_tool("dumpcap"),
                "-i",
                "lo",
                "-f",
                f"tcp port {port}",
                "-P",
                "-a",
                f"duration:{CAPTURE_SECONDS}",
                "-w",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for line in self.proc.stderr:
            if line.startswith("Capturing on"):
                return
        raise AssertionError(f"dumpcap did not start: {self.proc.wait(timeout=10)}")

    def stop(self) -> None:
        """Stop once the file has stopped growing (dumpcap writes in batches), within 5 s."""
        size, deadline = -1, time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if self.path.exists() and self.path.stat().st_size == size:
                break
            size = self.path.stat().st_size if self.path.exists() else -1
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)


def _curl(socks_port: int, url: str) -> bytes:
    """What curl received: status line, headers and body, exactly as they came."""
    run = subprocess.run(
        [require_tool("curl"), "-s", "-i", "--socks5-hostname", f"127.0.0.1:{socks_port}", url],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return run.stdout


def _alter_tag_of_packet(pcap: Path, number: int) -> None:
    """Flip the last byte (inside a GCM tag) of packet ``number`` (1-based) of a pcap file."""
    data = bytearray(pcap.read_bytes())
    offset = 24
    for _ in range(number - 1):
        (length,) = struct.unpack_from("<I", data, offset + 8)
        offset += 16 + length
    (length,) = struct.unpack_from("<I", data, offset + 8)
    data[offset + 16 + length - 1] ^= 0x01
    pcap.write_bytes(bytes(data))


@pytest.mark.parametrize("dialect", ["3.1", "3.0"])
def test_live_tunnel_decrypted_from_the_key_log(workdir: Path, tmp_path: Path, dialect: str):
    require_tool("tshark")
    site = tmp_path / "site"
    site.mkdir()
    (site / "page").write_bytes(os.urandom(BODY_SIZE))
    web = serve_files(site)
    server_log, client_log = workdir / "server-keys.log", workdir / "client-keys.log"
    server = start_server(
        workdir, "--allow-legacy", "--allow-egress", "127.0.0.1/32", "--keylog", str(server_log)
    )
    pcap = tmp_path / "live.pcap"
    capture = Capture(pcap, server.port)
    client = start_client(
        workdir, server.port, "--dialect", dialect, env={"GJPROXY_KEYLOG": str(client_log)}
    )
    try:
        received = _curl(client.port, f"http://127.0.0.1:{web.server_port}/page")
    finally:
        client.stop()
        capture.stop()
        server.stop()
        web.shutdown()

    assert len(received) > BODY_SIZE
    assert "key log on" in server.log() and "key log on" in client.log()
    for path in (server_log, client_log):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (line,) = server_log.read_text().splitlines()
    assert client_log.read_text().splitlines() == [line]
    assert line.startswith(keylog.LABEL + " ")

    options = ("-o", f"jproxy.port:{server.port}", "-o", f"jproxy.keylog:{server_log}")
    root = tshark_pdml(pcap, *options)

    shown = frames(root)
    assert shown and not [text for frame in shown for text in experts(frame)]
    assert _stream_bytes_from(root, server.port) == len(received)

    if dialect == "3.1":
        _alter_tag_of_packet(pcap, _packet_of_first(root, "TcpConnectRequest"))
        altered = tshark_pdml(pcap, *options)
        failures = [text for frame in frames(altered) for text in experts(frame)]
        assert any("authentication failed" in text for text in failures)


def _stream_bytes_from(root, port: int) -> int:
    """The data lengths of every TcpPacket the server at ``port`` sent."""
    total = 0
    for packet in root.iter("packet"):
        if int(packet.find(".//field[@name='tcp.srcport']").get("show")) != port:
            continue
        for item in packet.iter("field"):
            if item.get("show") == "TcpPacket":
                total += int(item.find("field[@name='jproxy.length']").get("show"))
    return total


def _packet_of_first(root, message: str) -> int:
    for packet in root.iter("packet"):
        if any(item.get("show") == message for item in packet.iter("field")):
            return int(packet.find(".//field[@name='num']").get("show"))
    raise AssertionError(f"no {message} in the capture")
