"""How fast the generated Lua dissector decrypts captures: tshark over a 1 MB tunnel per dialect.

The dissector's AES and GHASH are plain Lua (Wireshark 4.0 has no AES in its Lua API); this
prints what that costs, against the same capture dissected without its key.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jproxy.gen import dissector
from jproxy.tunnel import keylog
from jproxy.tunnel.crypto import EcbSealer, GcmSealer
from schemas import build, jproxy
from schemas.jproxy import Dialect, Direction
from tests.pcap import write_pcap

MESSAGES = 256
DATA = 4000
ROUNDS = 3
TIMEOUT = 300
KEY = bytes(range(16))
WRAPPED = bytes(256)


def capture(folder: Path, dialect: Dialect) -> Path:
    """A tunnel in ``dialect`` whose server sends MESSAGES data messages of DATA bytes."""
    sealer = GcmSealer(KEY, Direction.SERVER_TO_CLIENT) if dialect else EcbSealer(KEY)
    chunks = [
        ("c2s", build(jproxy.Hello, {"major": 3, "minor": int(dialect)})),
        ("s2c", build(jproxy.HelloReply, {"status": "OK"})),
        ("c2s", build(jproxy.LoginRequest, {"login_hash": bytes(32)})),
        ("s2c", build(jproxy.LoginReply, {"status": "OK", "wrapped_key": WRAPPED}, key_size=256)),
    ]
    message = build(jproxy.TcpPacket, {"connection_id": 1, "data": bytes(DATA)})
    chunks += [("s2c", sealer.seal(message)) for _ in range(MESSAGES)]
    path = folder / f"{dialect.name}.pcap"
    write_pcap(path, chunks)
    return path


def seconds(tshark: str, lua: Path, pcap: Path, *options: str) -> float:
    runs = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        command = [tshark, "-n", "-X", f"lua_script:{lua}", *options, "-r", str(pcap)]
        subprocess.run(command, capture_output=True, timeout=TIMEOUT, check=True)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> int:
    tshark = shutil.which("tshark")
    if tshark is None:
        sys.stderr.write("tshark is not installed (apt-get install tshark)\n")
        return 1
    megabytes = MESSAGES * DATA / 1e6
    print(f"tshark over {megabytes:.2f} MB of stream data in {MESSAGES} frames,")
    print(f"median of {ROUNDS} runs (seconds, and decrypted KB/s)")
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        lua = folder / "jproxy.lua"
        lua.write_text(dissector.render(), encoding="utf-8")
        key_log = folder / "keys.log"
        key_log.write_text(keylog.key_log_line(WRAPPED, KEY))
        for dialect in (Dialect.SECURE_3_1, Dialect.LEGACY_3_0):
            pcap = capture(folder, dialect)
            plain = seconds(tshark, lua, pcap)
            decrypted = seconds(tshark, lua, pcap, "-o", f"jproxy.keylog:{key_log}")
            rate = megabytes * 1000 / max(decrypted - plain, 1e-9)
            print(
                f"  {dialect.name:<11} without key {plain:5.2f} s   with key {decrypted:5.2f} s"
                f"   {rate:6.0f} KB/s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
