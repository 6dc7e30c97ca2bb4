"""The command line contract: a bad flag or config file is one clear line and status 2."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

from tests.clients import CLEAN_ENV
from tests.peers import Process, start_server


def gjproxy(*args: str, cwd, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jproxy", *args],
        cwd=cwd,
        env={**CLEAN_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (["server", "--bogus"], None, "unrecognized arguments: --bogus"),
        (["server", "--listen", "nonsense"], None, "--listen: expected HOST:PORT"),
        (["server", "--max-streams", "0"], None, "--max-streams must be at least 1"),
        (["server"], "[server]\nlisen = 1\n", "unknown key(s) in [server]: lisen"),
        (["server"], "[server]\nallow_legacy = 'yes'\n", "allow_legacy must be true or false"),
        (
            ["server"],
            "[server]\nlisten = 16390\n",
            'gjproxy.toml line 2: [server] listen must be a string like "HOST:PORT"',
        ),
        (["server"], "[server]\nmax_tunels = 1\n", "max_tunels (did you mean max_tunnels?)"),
        (
            ["server"],
            '[egress]\ndeny = []\nallow = ["10.0.0.1/8"]\n',
            "gjproxy.toml line 3: bad egress rule '10.0.0.1/8'",
        ),
        (["client"], "[client]\nkeepalive = 'x'\n", "keepalive must be a number like 5"),
        (
            ["server", "--listen", "127.0.0.1:99999"],
            None,
            "--listen: port 99999 is out of range: a port is 0..65535",
        ),
        (["server"], None, "users: no such users directory (name the folder with --users DIR)"),
        (["server", "--doh", "http://127.0.0.1/dns-query"], None, "--doh: expected https://"),
        (["server", "--doh-ca", "ca.pem"], None, "--doh-ca needs --doh"),
        (["server"], "[socks_users]\ncarol = 'plain'\n", "[socks_users] carol: expected scrypt$"),
        (
            ["server", "--socks", "127.0.0.1:0"],
            "[server]\nsocks_no_auth = true\n[socks_users]\nc = 'x'\n",
            "[socks_users] c: expected scrypt$",
        ),
        (["server", "--socks", "localhost"], None, "--socks: expected HOST:PORT"),
        (["server"], "[server]\ndoh = 'https://[::1]/'\ndoh_ca = 'no.pem'\n", "cannot read no.pem"),
        (["client"], "not toml [", "is not valid TOML"),
        (["client", "--key", "missing.dat"], None, "missing.dat: no such client key file"),
        (["client", "--dialect", "2.9"], None, "invalid choice: '2.9'"),
        (["server"], "[sever]\nlisten = 'x'\n", "unknown section [sever] (known: [admin],"),
        (["client"], "[clinet]\n", "did you mean [client]?"),
        (["client"], "[client]\nserver = []\n", "server must name at least one HOST:PORT"),
        (["client"], "[client]\nserver = [1]\n", "server must be a list of strings"),
        (["server", "--admin", "127.0.0.1:0"], None, "--admin needs an admin account"),
        (["server"], "[server]\nadmin = '127.0.0.1:0'\n", "--admin needs an admin account"),
    ],
)
def test_bad_flags_and_config_files_are_one_line_and_status_2(tmp_path, args, config, message):
    if config is not None:
        (tmp_path / "gjproxy.toml").write_text(config)
        args = [*args, "--config", "gjproxy.toml"]
    result = gjproxy(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_a_flag_beats_the_config_file(tmp_path):
    (tmp_path / "gjproxy.toml").write_text('[server]\nlisten = "nonsense-from-file"\n')
    from_file = gjproxy("server", "--config", "gjproxy.toml", cwd=tmp_path)
    assert "nonsense-from-file" in from_file.stderr
    overridden = gjproxy("server", "--config", "gjproxy.toml", "--listen", "flag:bad", cwd=tmp_path)
    assert "'flag:bad'" in overridden.stderr and "nonsense-from-file" not in overridden.stderr


def test_a_server_not_asked_for_admin_warns_about_nothing(workdir):
    server = start_server(workdir, env={"GJPROXY_ADMIN_PASSWORD": ""})
    assert server.stop() == 0
    assert " WARNING " not in server.log() and "admin" not in server.log()


def busy_port() -> socket.socket:
    """A port that is listening already, so that binding it again fails."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


ADMIN_ENV = {"GJPROXY_ADMIN_USER": "ops", "GJPROXY_ADMIN_PASSWORD": "s3cret"}


@pytest.mark.parametrize(
    ("command", "flag"),
    [("server", "--listen"), ("server", "--admin"), ("server", "--metrics"), ("client", "--socks")],
)
def test_a_busy_port_is_one_line_naming_it_and_its_flag(workdir, command, flag):
    with busy_port() as busy:
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        free = {
            "server": ["--users", "users", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
            "client": ["--key", "key.dat", "--socks", "127.0.0.1:0"],
        }[command]
        result = gjproxy(command, *free, flag, taken, cwd=workdir, env=ADMIN_ENV)
    assert result.returncode == 1
    expected = (
        f"gjproxy {command}: cannot listen on {taken}: Address already in use"
        f" (choose another with {flag} HOST:PORT)"
    )
    assert result.stderr.splitlines()[-1] == expected
    assert result.stderr.count("Address already in use") == 1
    assert "('127.0.0.1'" not in result.stderr and "Traceback" not in result.stderr


def test_bare_gjproxy_prints_usage_and_version_is_one_line(tmp_path):
    bare = gjproxy(cwd=tmp_path)
    assert bare.returncode == 2
    assert bare.stderr.startswith("usage: gjproxy")
    for command in ("admin", "client", "keygen", "quickstart", "server", "users"):
        assert f"\n    {command} " in bare.stderr
    version = gjproxy("--version", cwd=tmp_path)
    assert version.returncode == 0
    assert re.fullmatch(r"gjproxy \S+\n", version.stdout)


def test_an_open_client_port_off_loopback_is_a_warning(workdir):
    args = ("client", "--server", "127.0.0.1:9", "--key", "key.dat", "--socks", "0.0.0.0:0")
    open_port = Process(*args, cwd=workdir)
    open_port.wait_for(
        r"WARNING gjproxy\.client: SOCKS5/SOCKS4/HTTP on 0\.0\.0\.0 without authentication:"
        r" anyone who"
        r" reaches it can use the tunnel \(require a login with --socks-user, or listen on"
        r" 127\.0\.0\.1\)"
    )
    assert open_port.stop() == 0
    with_login = Process(
        *args, "--socks-user", "bob", cwd=workdir, env={"GJPROXY_SOCKS_PASSWORD": "pw"}
    )
    with_login.wait_for(r"SOCKS5 listening on 0\.0\.0\.0:\d+ \(user/password\)")
    assert with_login.stop() == 0
    assert "without authentication" not in with_login.log()
    loopback = Process(*args[:-1], "127.0.0.1:0", cwd=workdir)
    loopback.wait_for(r"SOCKS5 listening on 127\.0\.0\.1:\d+ \(no authentication\)")
    assert loopback.stop() == 0
    assert "without authentication" not in loopback.log()


def test_an_empty_users_folder_is_a_warning(tmp_path):
    (tmp_path / "users").mkdir()
    server = start_server(tmp_path)
    server.wait_for(
        r"WARNING gjproxy\.server: no users in users: every login is refused until one is added"
        r" \(gjproxy keygen USER --users-dir users, then SIGHUP\)"
    )
    assert server.stop() == 0
