"""SIGHUP reloads the whole config file where that is safe, and says what it changed.

A real server and client with config files: an edited ``[egress]`` opens a destination at
once, a changed listen address is named as needing a restart while the old one keeps
serving, a broken file is refused whole with the place to fix, and the client's SOCKS login
changes with its file.
"""

from __future__ import annotations

import re
import signal

import pytest
from python_socks import ProxyError
from python_socks.sync import Proxy

from jproxy.policy.passwords import hash_password
from tests.clients import NOT_ALLOWED, admin, echoes, socks_error
from tests.peers import CountingEcho, Process, start_client, start_server

SERVER_CONFIG = """\
[server]
listen = "127.0.0.1:0"
users = "users"
idle_timeout = 300

[egress]
allow = [{allow}]
"""


def _reload(process: Process, pattern: str) -> re.Match:
    process.proc.send_signal(signal.SIGHUP)
    return process.wait_for(pattern)


def test_sighup_applies_egress_and_limits_and_names_what_needs_a_restart(workdir) -> None:
    target = CountingEcho()
    config = workdir / "server.toml"
    config.write_text(SERVER_CONFIG.format(allow=""))
    server = Process("server", "--config", str(config), cwd=workdir)
    port = int(server.wait_for(r"tunnel server listening on [\d.]+:(\d+)").group(1))
    client = start_client(workdir, port)
    try:
        assert socks_error(client.port, "127.0.0.1", target.port) == NOT_ALLOWED
        client.wait_for(r"server says NOT_ALLOWED: .*--allow-egress")
        server.wait_for(
            rf"denied by default; open it with --allow-egress 127\.0\.0\.1:{target.port}"
        )

        config.write_text(
            SERVER_CONFIG.format(allow=f'"127.0.0.1:{target.port}"')
            .replace("idle_timeout = 300", "idle_timeout = 60")
            .replace('"127.0.0.1:0"', '"127.0.0.1:7"')
        )
        _reload(
            server,
            rf"SIGHUP: \[egress\]: allow none; deny none -> allow 127\.0\.0\.1:{target.port}",
        )
        server.wait_for(r"SIGHUP: \[server\] idle_timeout: 300\.0 -> 60\.0")
        server.wait_for(
            r"WARNING .*SIGHUP: \[server\] listen: 127\.0\.0\.1:0 -> 127\.0\.0\.1:7 needs a"
            r" restart; 127\.0\.0\.1:0 stays in force until then"
        )
        assert echoes(client.port, "127.0.0.1", target.port)  # through the old listener

        config.write_text(config.read_text().replace("[egress]", "[egress\nallow = 1"))
        refused = _reload(
            server, r"ERROR .*SIGHUP: .*server\.toml refused, the running config stays: (.*)"
        )
        assert "(at line 6, column 8)" in refused.group(1)
        assert echoes(client.port, "127.0.0.1", target.port)  # the rule in force stays

        config.write_text(SERVER_CONFIG.format(allow="") + "idle = 1\n")
        _reload(
            server,
            r"refused, the running config stays: .*server\.toml line 8:"
            r" unknown key\(s\) in \[egress\]: idle",
        )
        assert echoes(client.port, "127.0.0.1", target.port)
    finally:
        client.stop()
        server.stop()
        target.close()
    assert "Traceback" not in server.log() + client.log()


def test_sighup_changes_the_clients_socks_login(workdir) -> None:
    target = CountingEcho()
    config = workdir / "client.toml"
    config.write_text("[client]\n")
    server = start_server(workdir)
    client = start_client(workdir, server.port, "--config", str(config))
    try:
        assert echoes(client.port, "127.0.0.1", target.port)
        config.write_text('[client]\nsocks_user = "bob"\nsocks_password = "a good password"\n')
        _reload(client, r"SIGHUP: \[client\] socks_user: \(changed, not shown\)")
        assert "a good password" not in client.log()
        proxy = Proxy.from_url(
            f"socks5://bob:a%20good%20password@127.0.0.1:{client.port}", rdns=True
        )
        with proxy.connect("127.0.0.1", target.port, timeout=15) as sock:
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
        with pytest.raises(ProxyError):  # no login: no longer served
            echoes(client.port, "127.0.0.1", target.port)
    finally:
        client.stop()
        server.stop()
        target.close()


SOCKS_CONFIG = """\
[server]
listen = "127.0.0.1:0"
users = "users"
socks = "127.0.0.1:0"
admin = "127.0.0.1:0"
access_log = "{log}"

[egress]
allow = ["127.0.0.1/32"]

[socks_users]
{socks_user} = "{socks_hash}"

[admin]
user = "ops"
password_hash = "{admin_hash}"
"""


def test_sighup_changes_socks_users_the_admin_password_and_the_access_log(workdir) -> None:
    target = CountingEcho()
    config = workdir / "server.toml"
    first = {"socks_user": "carol", "socks_hash": hash_password("pw one"), "log": "a.jsonl"}
    config.write_text(SOCKS_CONFIG.format(**first, admin_hash=hash_password("admin one")))
    server = Process(
        "server", "--config", str(config), cwd=workdir, env={"GJPROXY_ADMIN_PASSWORD": ""}
    )
    socks = int(server.wait_for(r"plain SOCKS5 listening on 127\.0\.0\.1:(\d+)").group(1))
    admin_port = int(server.wait_for(r"admin protocol over TCP on 127\.0\.0\.1:(\d+)").group(1))
    try:
        assert _plain_echoes(socks, "carol:pw%20one", target.port)
        second = {"socks_user": "dave", "socks_hash": hash_password("pw two"), "log": "b.jsonl"}
        config.write_text(SOCKS_CONFIG.format(**second, admin_hash=hash_password("admin two")))
        _reload(server, r"SIGHUP: \[socks_users\]: \(changed, not shown\)")
        server.wait_for(r"SIGHUP: \[admin\]: \(changed, not shown\)")
        server.wait_for(r"SIGHUP: \[server\] access_log: a\.jsonl -> b\.jsonl")
        assert _plain_echoes(socks, "dave:pw%20two", target.port)
        with pytest.raises(ProxyError):
            _plain_echoes(socks, "carol:pw%20one", target.port)
        assert admin(admin_port, "open", password="admin two").returncode == 0
        assert admin(admin_port, "open", password="admin one").returncode == 3
        assert '"user":"carol"' in (workdir / "a.jsonl").read_text()
        assert '"user":"dave"' in (workdir / "b.jsonl").read_text()
        assert "dave" not in (workdir / "a.jsonl").read_text()
    finally:
        server.stop()
        target.close()
    assert "Traceback" not in server.log()


def _plain_echoes(port: int, login: str, target_port: int) -> bool:
    proxy = Proxy.from_url(f"socks5://{login}@127.0.0.1:{port}", rdns=True)
    with proxy.connect("127.0.0.1", target_port, timeout=15) as sock:
        sock.sendall(b"ping")
        return sock.recv(4) == b"ping"
