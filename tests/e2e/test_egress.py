"""The egress policy of a real server: loopback targets with and without the allow rule,
the server's own ports, deny rules, the config file, and what a SOCKS application sees."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from python_socks.sync import Proxy

from tests.clients import (
    ADMIN_ENV,
    GENERAL_FAILURE,
    HOST_UNREACHABLE,
    NOT_ALLOWED,
    echoes,
    socks_error,
)
from tests.peers import (
    CountingEcho,
    free_port,
    require_tool,
    start_client,
    start_server,
)


@pytest.fixture
def target():
    server = CountingEcho()
    yield server
    server.close()


@pytest.fixture
def denying(workdir):
    """A server started WITHOUT the loopback allow rule, and a client of it."""
    server = start_server(workdir, allow_loopback=False)
    client = start_client(workdir, server.port)
    yield server, client
    client.stop()
    server.stop()


# The bypass forms, and the SOCKS reply each gets: names that only the system
# resolver's legacy parser reads as addresses are refused as names (unknown host).
BYPASSES = [
    ("127.0.0.1", NOT_ALLOWED),
    ("localhost", NOT_ALLOWED),
    ("0.0.0.0", NOT_ALLOWED),
    ("::ffff:127.0.0.1", NOT_ALLOWED),
    ("::", NOT_ALLOWED),
    ("::1", NOT_ALLOWED),
    ("0x7f000001", NOT_ALLOWED),  # a "name" getaddrinfo reads as 127.0.0.1: judged resolved
    ("127.1", HOST_UNREACHABLE),
    ("2130706433", HOST_UNREACHABLE),
]


def test_loopback_is_denied_by_default_in_every_spelling(denying, target):
    server, client = denying
    server.wait_for(r"egress: allow none; deny none")
    for host, code in BYPASSES:
        assert socks_error(client.port, host, target.port) == code, host
    assert target.accepted == 0  # not one connection reached the target
    server.wait_for(
        rf'gjproxy.access: .*"user":"alice",.*"target":"127\.0\.0\.1:{target.port}",'
        rf'.*"status":"NOT_ALLOWED",.*"ended":"refused","reason":"not allowed: '
        rf"127\.0\.0\.1 port {target.port}: in 127\.0\.0\.0/8, denied by default; open it with"
        rf' --allow-egress 127\.0\.0\.1:{target.port} \(or 127\.0\.0\.0/8, or \[egress\] allow\)"'
    )
    client.wait_for(
        rf"CONNECT 127\.0\.0\.1:{target.port}: server says NOT_ALLOWED: not allowed by the"
        r" server's egress policy \(its access log names the rule or range; the server's"
        r" --allow-egress CIDR\[:PORTS\] or \[egress\] allow opens a destination\)"
    )
    server.wait_for(rf'"target":"127\.1:{target.port}",.*"status":"UNKNOWN_HOST",.*all-digit label')
    assert "Traceback" not in server.log()


def test_curl_through_the_tunnel_is_refused_by_ruleset(denying, target):
    server, client = denying
    curl = require_tool("curl")
    result = subprocess.run(
        [curl, "-sS", "--max-time", "20", "--socks5-hostname", f"127.0.0.1:{client.port}"]
        + [f"http://localhost:{target.port}/"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 97, result.stderr  # CURLE_PROXY: the SOCKS reply refused it
    assert result.stderr.rstrip().endswith("(2)")  # curl names the SOCKS reply: 2, by ruleset
    assert target.accepted == 0


def test_loopback_reaches_targets_when_allowed(workdir, target):
    target6 = CountingEcho("::1")
    server = start_server(workdir)  # passes --allow-egress 127.0.0.0/8 and ::1/128
    client = start_client(workdir, server.port)
    try:
        for host in ("127.0.0.1", "localhost", "::ffff:127.0.0.1", "127.0.0.1"):
            assert echoes(client.port, host, target.port), host
        assert echoes(client.port, "::1", target6.port)
        assert target.accepted == 4 and target6.accepted == 1
        # ... but not the unspecified address, which no rule names
        assert socks_error(client.port, "0.0.0.0", target.port) == NOT_ALLOWED
        server.wait_for(
            rf'"target":"localhost:{target.port}","connected":"127\.0\.0\.1:{target.port}"'
        )
    finally:
        client.stop()
        server.stop()
        target6.close()


def test_the_servers_own_ports_stay_denied_when_loopback_is_allowed(workdir):
    server = start_server(
        workdir, "--admin", "127.0.0.1:0", "--metrics", "127.0.0.1:0", env=ADMIN_ENV
    )
    admin_port = int(server.wait_for(r"admin protocol over TCP on [\d.]+:(\d+)").group(1))
    metrics_port = int(server.wait_for(r"metrics on http://[\d.]+:(\d+)/").group(1))
    line = server.wait_for(r"egress: allow 127\.0\.0\.0/8, ::1/128; deny none; .* ports (.*) and")
    assert set(line.group(1).split(", ")) == {str(server.port), str(admin_port), str(metrics_port)}
    client = start_client(workdir, server.port)
    try:
        for port in (server.port, admin_port, metrics_port):
            for host in ("127.0.0.1", "localhost", "0.0.0.0", "::ffff:127.0.0.1"):
                assert socks_error(client.port, host, port) == NOT_ALLOWED, (host, port)
        server.wait_for(
            rf'"127\.0\.0\.1:{admin_port}",.*"NOT_ALLOWED",.*own listening port {admin_port}'
        )
    finally:
        client.stop()
        server.stop()


def test_an_allow_rule_naming_the_admin_port_opens_it(workdir):
    admin_port = free_port()
    server = start_server(
        workdir,
        "--admin",
        f"127.0.0.1:{admin_port}",
        "--allow-egress",
        f"127.0.0.1:{admin_port}",
        env=ADMIN_ENV,
    )
    server.wait_for(r"admin protocol over TCP")
    client = start_client(workdir, server.port)
    try:
        proxy = Proxy.from_url(f"socks5://127.0.0.1:{client.port}", rdns=True)
        proxy.connect("127.0.0.1", admin_port, timeout=15).close()
        assert socks_error(client.port, "127.0.0.1", server.port) == NOT_ALLOWED
    finally:
        client.stop()
        server.stop()


def test_a_deny_rule_beats_the_allow_rules(workdir, target):
    other = CountingEcho()
    server = start_server(workdir, "--deny-egress", f"127.0.0.1/32:{target.port}")
    client = start_client(workdir, server.port)
    try:
        assert socks_error(client.port, "127.0.0.1", target.port) == NOT_ALLOWED
        assert socks_error(client.port, "localhost", target.port) == NOT_ALLOWED
        assert echoes(client.port, "127.0.0.1", other.port)
        assert target.accepted == 0
        server.wait_for(rf'"NOT_ALLOWED",.*denied by rule 127\.0\.0\.1/32:{target.port}')
    finally:
        client.stop()
        server.stop()
        other.close()


def test_the_config_files_egress_table(workdir, target):
    (workdir / "gjproxy.toml").write_text(
        '[egress]\nallow = ["127.0.0.0/8"]\ndeny = ["[::1]/128"]\n'
    )
    server = start_server(workdir, "--config", "gjproxy.toml", allow_loopback=False)
    client = start_client(workdir, server.port)
    try:
        assert echoes(client.port, "127.0.0.1", target.port)
        assert socks_error(client.port, "::1", target.port) == NOT_ALLOWED
    finally:
        client.stop()
        server.stop()


def test_a_legacy_tunnel_gets_general_failure_for_a_refused_target(workdir, target):
    server = start_server(workdir, "--allow-legacy", allow_loopback=False)
    client = start_client(workdir, server.port, "--dialect", "3.0")
    try:
        # the Java 3.0 client drops a SOCKS connection on a status it does not know: 1 instead
        assert socks_error(client.port, "127.0.0.1", target.port) == GENERAL_FAILURE
        assert target.accepted == 0
        server.wait_for(rf'"target":"127\.0\.0\.1:{target.port}",.*"status":"NOT_ALLOWED"')
    finally:
        client.stop()
        server.stop()


def test_bad_egress_rules_are_one_line_and_status_2(workdir):
    for args, config in [
        (["--allow-egress", "10.0.0.0/8:http"], None),
        (["--deny-egress", "localhost"], None),
        ([], '[egress]\nallow = ["10.0.0.1/8"]\n'),
        ([], "[egress]\nallow = [1]\n"),
        ([], '[egress]\nallowed = ["10.0.0.0/8"]\n'),
    ]:
        if config is not None:
            (workdir / "bad.toml").write_text(config)
            args = [*args, "--config", "bad.toml"]
        result = subprocess.run(
            [sys.executable, "-m", "jproxy", "server", "--users", "users", *args],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2, (args, result.stderr)
        assert re.fullmatch(r"gjproxy server: [^\n]*(egress|allowed)[^\n]*\n", result.stderr), (
            result.stderr
        )
