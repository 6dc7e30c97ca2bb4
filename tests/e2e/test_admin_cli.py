"""``gjproxy admin`` in its own process against a server started here: output and exit status."""

from __future__ import annotations

import os
import pty
import socket
import sys
import tomllib

import gevent.socket
import gevent.subprocess
import pytest
from gevent.server import StreamServer

from jproxy.metrics import Counters
from jproxy.policy.passwords import load_socks_users, verify_password
from tests.admin_listener import PASSWORD, USER, start_admin
from tests.clients import CLEAN_ENV
from tests.peers import start_server


def gjproxy_admin(*args: str, password: str | None = PASSWORD, stdin: str = "", **env: str):
    """Run ``gjproxy admin ARGS`` without a terminal; ``password`` goes in the environment."""
    environ = dict(CLEAN_ENV, **env)
    if password is not None:
        environ["GJPROXY_ADMIN_PASSWORD"] = password
    return gevent.subprocess.run(
        [sys.executable, "-m", "jproxy", "admin", *args],
        input=stdin,
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
        start_new_session=True,  # no controlling terminal: getpass reads stdin
    )


@pytest.fixture
def counters() -> Counters:
    counters = Counters(connections_total=41, connections_open=5, bytes_transferred=123456789)
    counters.doh_lookups, counters.doh_lookup_seconds = 3, 0.0456
    counters.dns_cache_hits, counters.dns_cache_misses = 9, 3
    counters.tunnel_opened("carol", "3.1")
    counters.tunnel_opened("alice", "3.0")
    counters.datagram_dropped("queue_full")
    counters.datagram_dropped("fragment")
    counters.datagram_dropped("fragment")
    return counters


@pytest.fixture
def port(counters, tuning) -> str:
    server = start_admin(counters, tuning)
    yield str(server.address[1])
    server.stop()


def test_stats_prints_every_value(port) -> None:
    result = gjproxy_admin("--port", port, "--user", USER, "stats")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "connections since start: 41",
        "open connections: 5",
        "bytes transferred: 123456789",
        "relay buffer size: 65536",
        "tunnels open: 2",
        "connected users: alice=1,carol=1",
        "DNS lookups: doh=3,failures=0,ms=46,hits=9,misses=3",
        "datagrams dropped: fragment=2,queue_full=1",
    ]


@pytest.mark.parametrize(
    "method, value",
    [
        ("connections", "41"),
        ("open", "5"),
        ("bytes", "123456789"),
        ("users", "alice=1,carol=1"),
        ("dns", "doh=3,failures=0,ms=46,hits=9,misses=3"),
    ],
)
def test_one_method_prints_the_bare_value(port, method, value) -> None:
    result = gjproxy_admin("--host", "127.0.0.1", "--port", port, "--user", USER, method)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{value}\n", "")


def test_set_buffer_applies_to_the_server(port, tuning) -> None:
    result = gjproxy_admin("--port", port, "--user", USER, "set-buffer", "4096")
    assert (result.returncode, result.stdout) == (0, "4096\n")
    assert tuning.buffer_size == 4096
    assert gjproxy_admin("--port", port, "--user", USER, "get-buffer").stdout == "4096\n"


def test_a_refused_parameter_exits_1(port, tuning) -> None:
    result = gjproxy_admin("--port", port, "--user", USER, "set-buffer", "100")
    assert result.returncode == 1
    assert result.stderr == (
        f"gjproxy admin: 127.0.0.1:{port}: invalid parameter: buffer size must be 512..1048576\n"
    )
    assert tuning.buffer_size == 65536


def test_a_wrong_password_exits_3(port) -> None:
    result = gjproxy_admin("--port", port, "--user", USER, "open", password="wrong")
    assert result.returncode == 3
    assert (
        result.stderr == f"gjproxy admin: 127.0.0.1:{port}: login refused: bad user or password\n"
    )


def test_password_typed_at_the_prompt(port) -> None:
    result = gjproxy_admin("--port", port, "--user", USER, "open", password=None, stdin="s3cret\n")
    assert (result.returncode, result.stdout) == (0, "5\n")


def test_user_from_the_config_file_or_the_environment(port, tmp_path) -> None:
    config = tmp_path / "gjproxy.toml"
    config.write_text(f'[admin]\nuser = "{USER}"\nport = {port}\n')
    assert gjproxy_admin("--config", str(config), "open").stdout == "5\n"
    assert gjproxy_admin("--port", port, "open", GJPROXY_ADMIN_USER=USER).stdout == "5\n"
    result = gjproxy_admin("--config", str(config), "--user", "mallory", "open")
    assert result.returncode == 3  # the flag beats the file


@pytest.mark.parametrize(
    "args, message",
    [
        (("open",), "no admin user"),
        (("--user", USER, "set-buffer"), "set-buffer needs N"),
        (("--user", USER, "open", "7"), "open takes no ARG"),
        (("--user", USER, "reboot"), "invalid choice: 'reboot'"),
        (("--user", USER, "--port", "0", "open"), "port must be 1..65535"),
        (("--user", USER, "--config", "/nonexistent.toml", "open"), "cannot read config file"),
    ],
)
def test_usage_errors_exit_2(args, message) -> None:
    result = gjproxy_admin(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_nothing_listening_exits_5() -> None:
    with socket.socket() as unused:  # bound, never listening: connections are refused
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        result = gjproxy_admin("--port", str(port), "--user", USER, "open")
    assert result.returncode == 5
    assert result.stderr == f"gjproxy admin: 127.0.0.1:{port}: cannot connect: Connection refused\n"


def canned_peer(*answers: bytes) -> StreamServer:
    """A stand-in server that answers each chunk it receives with the next canned bytes."""

    def handle(sock, address) -> None:
        sock.settimeout(5)
        for answer in answers:
            if not sock.recv(1024):
                return
            sock.sendall(answer)

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    return server


NOT_ADMIN = "this is not a gjproxy admin port: "


@pytest.mark.parametrize(
    "answers, status, message",
    [
        ((b"\x01\x02",), 4, "the server does not speak version 1 of the admin protocol"),
        ((b"\x01\x03",), 1, "the server failed internally while checking the login"),
        ((b"\x01\x00", b"\xff\x03no!"), 1, "the server does not offer method 1: no!"),
        ((b"\x01\x00", b"\x01\x05"), 4, "bad reply: AdminReply: cut short after 2 bytes"),
        ((b"\x01\x00", b"\x02\x011"), 4, "bad reply: AdminReply.code: 2 answers no request"),
        ((b"\x02\x00",), 4, "bad reply: AdminAuthReply.version: expected 1"),
        ((b"\x01\x07",), 4, "bad reply: AdminAuthReply.status: unknown AuthStatus value 7"),
        ((b"HTTP/1.1 400",), 4, NOT_ADMIN + "it answered with an HTTP reply (a web server's"),
        ((b"jProxy\x00",), 4, NOT_ADMIN + "it answered with a jProxy hello (a tunnel port)"),
        ((b"",), 4, NOT_ADMIN + "no reply to the login; the admin port is the server's --admin"),
    ],
)
def test_misbehaving_servers(answers, status, message) -> None:
    peer = canned_peer(*answers)
    try:
        result = gjproxy_admin("--port", str(peer.address[1]), "--user", USER, "open")
    finally:
        peer.stop()
    assert result.returncode == status
    assert result.stderr.startswith(f"gjproxy admin: 127.0.0.1:{peer.address[1]}: {message}")


def test_hash_password_prints_the_config_line() -> None:
    result = gjproxy_admin("hash-password", password="correct horse")
    assert result.returncode == 0
    stored = tomllib.loads(result.stdout)["password_hash"]
    assert verify_password("correct horse", stored)


def test_hash_password_at_the_prompt_asks_twice() -> None:
    result = gjproxy_admin("hash-password", password=None, stdin="pw1\npw1\n")
    assert verify_password("pw1", tomllib.loads(result.stdout)["password_hash"])
    result = gjproxy_admin("hash-password", password=None, stdin="pw1\npw2\n")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.endswith("gjproxy admin: the two passwords differ\n")


def test_help_lists_the_exit_statuses() -> None:
    result = gjproxy_admin("--help")
    assert result.returncode == 0
    for status in range(6):
        assert f"\n  {status}  " in result.stdout


@pytest.mark.parametrize(
    "section, message",
    [
        ("user = 7", "config: [admin] user must be a string"),
        (
            'user = "alice"\nport = "8080"',
            "gjproxy.toml line 3: [admin] port must be a whole number like 8080",
        ),
        (
            'user = "alice"\ncolour = "red"',
            "gjproxy.toml line 3: unknown key(s) in [admin]: colour",
        ),
    ],
)
def test_a_bad_admin_section_exits_2(tmp_path, section, message) -> None:
    config = tmp_path / "gjproxy.toml"
    config.write_text(f"[admin]\n{section}\n")
    result = gjproxy_admin("--config", str(config), "open")
    message = message.replace("gjproxy.toml", str(config))
    assert (result.returncode, result.stderr) == (2, f"gjproxy admin: {message}\n")


def test_the_config_file_servers_admin_address_is_where_admin_goes(port, tmp_path) -> None:
    config = tmp_path / "gjproxy.toml"
    config.write_text(f'[server]\nadmin = "0.0.0.0:{port}"\n[admin]\nuser = "{USER}"\n')
    result = gjproxy_admin("--config", str(config), "open")
    assert (result.returncode, result.stdout, result.stderr) == (0, "5\n", "")
    wrong = gjproxy_admin("--config", str(config), "open", password="wrong")
    assert wrong.stderr == f"gjproxy admin: 127.0.0.1:{port}: login refused: bad user or password\n"


def test_ctrl_c_at_the_password_prompt_is_one_line_and_status_130() -> None:
    pid, terminal = pty.fork()  # the child gets a terminal, so getpass prompts on it
    if pid == 0:
        os.execve(
            sys.executable,
            [sys.executable, "-m", "jproxy", "admin", "--user", USER, "open"],
            CLEAN_ENV,
        )
    output = b""
    with gevent.Timeout(20):
        while b"admin password: " not in output:
            gevent.socket.wait_read(terminal)
            output += os.read(terminal, 1024)
        os.write(terminal, b"\x03")  # the terminal turns it into SIGINT, as a keyboard would
        while True:
            gevent.socket.wait_read(terminal)
            try:
                chunk = os.read(terminal, 1024)
            except OSError:  # EIO: the child exited and closed the terminal
                break
            if not chunk:
                break
            output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    assert os.waitstatus_to_exitcode(status) == 130
    after_prompt = output.split(b"admin password: ", 1)[1].decode()
    assert [line for line in after_prompt.splitlines() if line.strip()] == [
        "gjproxy admin: interrupted"
    ]


def test_stats_says_none_for_an_empty_value(tuning) -> None:
    server = start_admin(Counters(), tuning)
    try:
        result = gjproxy_admin("--port", str(server.address[1]), "--user", USER, "stats")
    finally:
        server.stop()
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert "connected users: none" in lines
    assert "datagrams dropped: none" in lines
    assert all(not line.endswith(": ") for line in lines)


def test_hash_password_for_a_socks_user_prints_the_socks_users_line() -> None:
    result = gjproxy_admin(
        "hash-password", "--socks-user", "carol", GJPROXY_SOCKS_PASSWORD="carol's secret"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('carol = "scrypt$')
    table = tomllib.loads(result.stdout)
    assert verify_password("carol's secret", table["carol"])
    # Pasted under [socks_users], it is a user of the server's plain SOCKS port.
    assert load_socks_users({"socks_users": table}).hashes == table


def test_hash_password_quotes_a_socks_user_name_toml_needs_quoted() -> None:
    result = gjproxy_admin(
        "hash-password", "--socks-user", 'd "j" ż', GJPROXY_SOCKS_PASSWORD="pw", password=None
    )
    assert result.returncode == 0, result.stderr
    assert list(tomllib.loads(result.stdout)) == ['d "j" ż']


def test_hash_password_for_a_socks_user_asks_for_its_password() -> None:
    result = gjproxy_admin(
        "hash-password", "--socks-user", "carol", password="admin pw", stdin="pw1\npw1\n"
    )
    assert result.returncode == 0, result.stderr
    assert "new carol's SOCKS password" in result.stderr  # not the admin variable's password
    assert verify_password("pw1", tomllib.loads(result.stdout)["carol"])


def test_socks_user_goes_with_hash_password_only(port) -> None:
    result = gjproxy_admin("--port", port, "--user", USER, "--socks-user", "carol", "open")
    assert (result.returncode, result.stderr) == (
        2,
        "gjproxy admin: --socks-user goes with hash-password\n",
    )


def test_an_unknown_method_is_an_admin_error() -> None:
    result = gjproxy_admin("statz")
    assert result.returncode == 2
    assert result.stderr.startswith("gjproxy admin: argument METHOD: invalid choice: 'statz'")


def test_the_tunnel_port_is_not_the_admin_port(workdir) -> None:
    server = start_server(workdir)
    try:
        result = gjproxy_admin("--port", str(server.port), "--user", USER, "stats")
    finally:
        server.stop()
    assert result.returncode == 4
    assert result.stderr == (
        f"gjproxy admin: 127.0.0.1:{server.port}: this is not a gjproxy admin port: no reply to"
        " the login; the admin port is the server's --admin address\n"
    )
