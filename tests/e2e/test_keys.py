"""Key files through the commands: ``gjproxy keygen`` and ``users``, Java's own modified UTF-8,
and what the client and server processes say about a wrong key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from jproxy.tunnel import keys
from tests.keyfiles import USER_NAMES, file_mode
from tests.peers import Process, require_tool, start_client, start_server

JAVA_UTF = Path(__file__).parents[1] / "java" / "ModifiedUtf8.java"


def _keygen(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jproxy", "keygen", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keygen_command_end_to_end(tmp_path: Path) -> None:
    done = _keygen("carol", "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    key = keys.load_client_key(out / "key.dat")
    [user_path] = (out / "users").iterdir()
    assert user_path.name == key.login_hash.hex().upper() + ".dat"
    assert keys.load_user(user_path).user == "carol"
    assert key.login_hash.hex().upper() in done.stdout
    assert str(Path("out") / "key.dat") in done.stdout
    assert str(Path("out") / "users" / user_path.name) in done.stdout
    assert keys.UserDirectory(out / "users").lookup(key.login_hash).user == "carol"

    again = _keygen("dave", "--out", "out", cwd=tmp_path)
    assert again.returncode == 1
    refusal = f"gjproxy keygen: {Path('out') / 'key.dat'} already exists; refusing to overwrite it"
    assert again.stderr == refusal + "\n"
    assert keys.load_client_key(out / "key.dat").login_hash == key.login_hash
    assert len(list((out / "users").iterdir())) == 1


def test_keygen_defaults_to_the_current_directory(tmp_path: Path) -> None:
    done = _keygen("erin", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    key = keys.load_client_key(tmp_path / "key.dat")
    assert keys.UserDirectory(tmp_path / "users").lookup(key.login_hash).user == "erin"


def test_keygen_refuses_an_empty_user_name(tmp_path: Path) -> None:
    done = _keygen("", cwd=tmp_path)
    assert done.returncode == 1
    assert "user name" in done.stderr
    assert not (tmp_path / "key.dat").exists()


# --- the user name: Java's modified UTF-8 -------------------------------------------------


def _java_utf(*args: str) -> list[str]:
    """What Java's own writeUTF/readUTF make of ``args`` (see tests/java/ModifiedUtf8.java)."""
    done = subprocess.run(
        [require_tool("java"), str(JAVA_UTF), *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_java_writes_and_reads_every_name_as_gjproxy_does() -> None:
    names = [entry["user"].encode().hex() for entry in USER_NAMES["valid"]]
    wire = [entry["hex"].replace(" ", "") for entry in USER_NAMES["valid"]]
    with_length = [f"{len(raw) // 2:04x}{raw}" for raw in wire]
    assert _java_utf("write", *names) == with_length
    old_zoe = "7a6fc3abf09f9880"  # "zoë😀" as gjproxy wrote it before issue 9
    assert _java_utf("read", *wire, old_zoe) == [*names, "error"]


def test_keygen_writes_a_supplementary_name_as_java_does_and_the_server_knows_it(
    tmp_path: Path,
) -> None:
    user = "zo\u00eb\U0001f600"
    done = _keygen(user, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [user_path] = (tmp_path / "users").iterdir()
    assert user_path.read_bytes()[:12] == bytes.fromhex("000a 7a6fc3abeda0bdedb880")
    key = keys.load_client_key(tmp_path / "key.dat")
    assert keys.UserDirectory(tmp_path / "users").lookup(key.login_hash).user == user

    assert _java_utf("file", str(user_path)) == [user.encode().hex(), "550"]  # salt, key

    server = start_server(tmp_path)
    client = start_client(tmp_path, server.port)
    try:
        server.wait_for(f"tunnel {user}@[^:]+:\\d+: logged in")
    finally:
        client.stop()
        server.stop()


def test_keygen_adds_a_user_to_an_existing_server_directory(tmp_path: Path) -> None:
    assert _keygen("alice", "--out", "server", cwd=tmp_path).returncode == 0
    done = _keygen("bob", "--key-out", "bob/key.dat", "--users-dir", "server/users", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    bob = keys.load_client_key(tmp_path / "bob" / "key.dat")
    assert file_mode(tmp_path / "bob" / "key.dat") == 0o600
    users = keys.UserDirectory(tmp_path / "server" / "users")
    assert [record.user for record in users.records()] == ["alice", "bob"]
    assert users.lookup(bob.login_hash).user == "bob"

    listed = subprocess.run(
        [sys.executable, "-m", "jproxy", "users", "server/users"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        f"{record.login_hash.hex().upper()}  {record.user}" for record in users.records()
    ]
    assert f"{bob.login_hash.hex().upper()}  bob" in listed.stdout
    assert listed.stderr == ""  # no log line between the listing's lines in a terminal


def _client(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jproxy", "client", "--socks", "127.0.0.1:0", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("mode", [0o640, 0o644])  # 0644: what the Java keygen leaves
def test_the_client_refuses_a_key_file_others_can_read(workdir: Path, mode: int) -> None:
    (workdir / "key.dat").chmod(mode)
    refused = _client("--key", "key.dat", cwd=workdir)
    assert refused.returncode == 2
    assert refused.stderr == (
        f"gjproxy client: key.dat: mode {mode:04o} lets group or others read it; a private key"
        " must be private to its owner: chmod 600 key.dat\n"
    )


def test_a_server_user_file_given_as_the_key_is_named_as_such(workdir: Path) -> None:
    [user_file] = (workdir / "users").glob("*.dat")
    refused = _client("--key", str(user_file), cwd=workdir)
    assert refused.returncode == 2
    assert refused.stderr == (
        f"gjproxy client: {user_file} is a server user file (user 'alice'), not a client key:"
        " the client needs the key.dat that `gjproxy keygen` wrote with it\n"
    )


def test_the_server_logs_an_unknown_hash_as_the_user_file_name_it_lacks(workdir: Path) -> None:
    [user_file] = (workdir / "users").glob("*.dat")
    user_file.rename(workdir / user_file.name)  # the server no longer knows this key
    server = start_server(workdir)
    client = Process(
        "client", "--server", f"127.0.0.1:{server.port}", "--socks", "127.0.0.1:0", cwd=workdir
    )
    server.wait_for(re.escape(f"unknown login hash {user_file.stem}: no users/{user_file.name}"))
    client.stop()
    server.stop()
