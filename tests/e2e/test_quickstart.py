"""README's first command: ``gjproxy quickstart`` makes keys once and serves SOCKS5 at once."""

from __future__ import annotations

import re
import socket
import stat

from tests.e2e.test_tunnel import curl
from tests.peers import Process


def quickstart(workdir, admin: str = "127.0.0.1:0") -> Process:
    return Process(
        "quickstart",
        "--socks",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        admin,
        "--console",
        "127.0.0.1:0",
        cwd=workdir,
    )


def test_quickstart_makes_keys_once_and_carries_curl(tmp_path, web):
    first = quickstart(tmp_path)
    port = int(first.wait_for(r"SOCKS5 proxy: 127\.0\.0\.1:(\d+)").group(1))
    first.wait_for(r"password, shown once: \S+")
    first.wait_for(r"console: http://127\.0\.0\.1:\d+/ui/\?token=[\w-]{16,}")
    first.wait_for(r"egress: loopback allowed \(127\.0\.0\.0/8, ::1/128\)")
    first.wait_for(r"curl --socks5-hostname 127\.0\.0\.1:\d+")
    body = curl(port, f"http://127.0.0.1:{web.server_port}/f65536")
    assert body == (web.root / "f65536").read_bytes()
    assert first.stop() == 0

    folder = tmp_path / "gjproxy-quickstart"
    secrets = [folder / "key.dat", folder / "admin-password-hash", *folder.glob("users/*.dat")]
    assert len(secrets) == 3
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in secrets)
    key_before = (folder / "key.dat").read_bytes()

    again = quickstart(tmp_path)
    again.wait_for(r"try: +curl")  # printed last, after the admin lines
    assert "shown once" not in again.log()  # the password is printed only when it is made
    again.wait_for(r"admin: gjproxy admin --port \d+ --user admin stats")
    again.wait_for(r"its hash is in gjproxy-quickstart/admin-password-hash\); to get a new one")
    assert (folder / "key.dat").read_bytes() == key_before
    assert again.stop() == 0


def test_a_busy_port_is_named_and_costs_no_password(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        failed = quickstart(tmp_path, admin=taken)
        assert failed.proc.wait(30) == 1
    failed.wait_for(
        re.escape(
            f"gjproxy quickstart: cannot listen on {taken}: Address already in use"
            " (choose another with --admin HOST:PORT)"
        )
    )
    assert failed.log().count("cannot listen") == 1
    assert "shown once" not in failed.log()
    assert not (tmp_path / "gjproxy-quickstart" / "admin-password-hash").exists()

    moved = quickstart(tmp_path)
    moved.wait_for(r"password, shown once: \S+")  # the first password is still to come
    assert moved.stop() == 0
