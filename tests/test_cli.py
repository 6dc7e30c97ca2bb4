"""The command line contract: a bad flag or config file is one clear line and status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest


def gjproxy(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jproxy", *args],
        cwd=cwd,
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
        (["server"], "[server]\nallow_legacy = 'yes'\n", "allow_legacy must be a bool"),
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
