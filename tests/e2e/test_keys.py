"""Key files: the Java 3.0 files load, generated files share their layout, files are safe."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from functools import partial
from pathlib import Path

import gevent
import pytest

from jproxy.commands.server import reread_users
from jproxy.handlers.net.signals import Reloader
from jproxy.tunnel import keys
from schemas import WireError, build, parse
from schemas.keys import (
    RSA_2048_PUBLIC_KEY_SIZE,
    SALT_SIZE,
    ClientKeyFile,
    UserFile,
    decode_modified_utf8,
    encode_modified_utf8,
)
from tests.peers import Process, require_tool, start_client, start_server

JAVA = Path(__file__).parents[1] / "vectors" / "java-3.0"
JAVA_HASH = "E6FAE591B1497266DDF1C93343F58E9464F9A1BC144B169FE4DF18FF2A4363D3"
USER_NAMES = json.loads((Path(__file__).parents[1] / "vectors" / "user-names.json").read_text())
JAVA_UTF = Path(__file__).parents[1] / "java" / "ModifiedUtf8.java"


@pytest.fixture(scope="module")
def generated() -> tuple[keys.ClientKey, keys.UserRecord]:
    return keys.generate("bob")


@pytest.fixture
def java_users(tmp_path: Path) -> Path:
    """A users directory holding the Java capture's user file under its server-side name."""
    users = tmp_path / "users"
    users.mkdir()
    shutil.copy(JAVA / "server-user.dat", users / f"{JAVA_HASH}.dat")
    return users


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_java_client_key_loads() -> None:
    key = keys.load_client_key(JAVA / "client-key.dat")
    assert key.login_hash.hex().upper() == JAVA_HASH
    assert key.private_key.key_size == 2048
    assert key.modulus_size == 256


def test_java_user_file_loads_and_matches_the_client_key() -> None:
    record = keys.load_user(JAVA / "server-user.dat")
    client = keys.load_client_key(JAVA / "client-key.dat")
    assert record.user == "alice"
    assert len(record.salt) == SALT_SIZE
    assert len(record.public_key_der) == RSA_2048_PUBLIC_KEY_SIZE
    assert record.login_hash == client.login_hash
    assert record.file_name == f"{JAVA_HASH}.dat"
    assert record.public_key.public_numbers() == client.private_key.public_key().public_numbers()


def test_generated_files_have_the_java_layout(tmp_path: Path, generated) -> None:
    client_key, record = generated
    keys.save_client_key(client_key, tmp_path / "key.dat")
    user_path = keys.save_user(record, tmp_path / "users")

    key_fields = parse(ClientKeyFile, (tmp_path / "key.dat").read_bytes())
    user_fields = parse(UserFile, user_path.read_bytes())
    assert user_fields.user == "bob"
    assert len(user_fields.salt) == SALT_SIZE
    assert len(user_fields.public_key) == RSA_2048_PUBLIC_KEY_SIZE
    recomputed = hashlib.sha256(user_fields.public_key + user_fields.salt).digest()
    assert key_fields.login_hash == recomputed == client_key.login_hash
    assert user_path.name == recomputed.hex().upper() + ".dat"
    assert record.public_key.public_numbers().e == keys.RSA_PUBLIC_EXPONENT

    reloaded = keys.load_client_key(tmp_path / "key.dat")
    assert reloaded.private_key.private_numbers() == client_key.private_key.private_numbers()
    assert keys.load_user(user_path) == record


def test_files_are_private_and_never_overwritten(tmp_path: Path, generated) -> None:
    client_key, record = generated
    key_path = tmp_path / "key.dat"
    keys.save_client_key(client_key, key_path)
    user_path = keys.save_user(record, tmp_path / "users")
    assert _mode(key_path) == 0o600
    assert _mode(user_path) == 0o600
    assert _mode(tmp_path / "users") == 0o700

    before = key_path.read_bytes(), user_path.read_bytes()
    with pytest.raises(keys.KeyFileError, match=f"{key_path} already exists"):
        keys.save_client_key(client_key, key_path)
    with pytest.raises(keys.KeyFileError, match="already exists"):
        keys.save_user(record, tmp_path / "users")
    assert (key_path.read_bytes(), user_path.read_bytes()) == before


@pytest.mark.parametrize(
    ("source", "damage", "problem"),
    [
        ("client-key.dat", lambda data: data[:-1], "not a valid client key file (truncated at"),
        ("client-key.dat", lambda data: data[:3], "not a valid client key file (truncated at"),
        ("client-key.dat", lambda data: data + b"\x00", "key file (trailing bytes after the end"),
        ("client-key.dat", lambda data: data[:4] + b"\x30" * 1218 + data[-32:], "PKCS#8"),
        ("server-user.dat", lambda data: data[:200], "not a valid user file"),
        ("server-user.dat", lambda data: b"\x00\x02\xff\xfe" + data[4:], "not a valid user file"),
        ("server-user.dat", lambda data: data[:-10], "X.509"),
        ("server-user.dat", lambda data: b"", "not a valid user file"),
    ],
)
def test_damaged_files_name_the_file_and_the_problem(
    tmp_path: Path, source: str, damage, problem: str
) -> None:
    path = tmp_path / source
    path.write_bytes(damage((JAVA / source).read_bytes()))
    load = keys.load_client_key if source == "client-key.dat" else keys.load_user
    with pytest.raises(keys.KeyFileError) as caught:
        load(path)
    assert str(path) in str(caught.value)
    assert problem in str(caught.value)
    assert "ClientKeyFile" not in str(caught.value)  # the parser's names stay inside


def test_a_garbage_key_file_says_where_it_ends(tmp_path: Path) -> None:
    path = tmp_path / "key.dat"
    path.write_bytes(b"hello, I am no key\n")
    with pytest.raises(keys.KeyFileError) as caught:
        keys.load_client_key(path)
    assert str(caught.value) == f"{path}: not a valid client key file (truncated at byte 19)"


def test_missing_file_is_a_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(keys.KeyFileError, match=f"{tmp_path / 'key.dat'}: no such"):
        keys.load_client_key(tmp_path / "key.dat")


def test_user_directory_finds_users_by_hash(java_users: Path, generated) -> None:
    _, record = generated
    keys.save_user(record, java_users)
    users = keys.UserDirectory(java_users)
    assert len(users) == 2
    assert users.lookup(bytes.fromhex(JAVA_HASH)).user == "alice"
    assert users.lookup(record.login_hash) == record
    assert users.lookup(bytes(32)) is None


def test_user_directory_skips_bad_files_with_a_warning(
    java_users: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = (JAVA / "server-user.dat").read_bytes()
    (java_users / "alice.dat").write_bytes(data)
    (java_users / f"{JAVA_HASH.lower()}.dat").write_bytes(data)
    (java_users / f"{'0' * 64}.dat").write_bytes(data)
    (java_users / f"{'1' * 64}.dat").write_bytes(data[:100])
    (java_users / "notes.txt").write_text("not a user file, not even looked at")
    with caplog.at_level(logging.WARNING, logger="jproxy.tunnel.keys"):
        users = keys.UserDirectory(java_users)
    assert len(users) == 1
    warnings = "\n".join(record.getMessage() for record in caplog.records)
    assert "alice.dat: the name must be the 64-digit upper-hex login hash" in warnings
    assert f"{JAVA_HASH.lower()}.dat: the name must be" in warnings
    assert f"{'0' * 64}.dat: its content hashes to {JAVA_HASH}.dat" in warnings
    assert f"{'1' * 64}.dat: not a valid user file" in warnings
    assert "notes.txt" not in warnings


def test_user_directory_must_exist(tmp_path: Path) -> None:
    with pytest.raises(keys.KeyFileError, match=f"{tmp_path / 'nowhere'}: no such users"):
        keys.UserDirectory(tmp_path / "nowhere")


def _users_reloader(users: keys.UserDirectory) -> Reloader:
    """The server's SIGHUP, without a config file: the users are reread every time."""
    reloader = Reloader("no file", dict, {}, str)
    reloader.every_time(partial(reread_users, users))
    return reloader


def test_sighup_reloads_the_users(java_users: Path, generated) -> None:
    users = keys.UserDirectory(java_users)
    handler = _users_reloader(users).on_sighup()
    try:
        _, record = generated
        keys.save_user(record, java_users)
        (java_users / f"{JAVA_HASH}.dat").unlink()
        assert users.lookup(record.login_hash) is None
        os.kill(os.getpid(), signal.SIGHUP)
        with gevent.Timeout(5):
            while users.lookup(record.login_hash) is None:
                gevent.sleep(0.01)
        assert len(users) == 1
        assert users.lookup(bytes.fromhex(JAVA_HASH)) is None
    finally:
        handler.cancel()


def test_sighup_with_a_vanished_directory_keeps_the_users(
    java_users: Path, caplog: pytest.LogCaptureFixture
) -> None:
    users = keys.UserDirectory(java_users)
    handler = _users_reloader(users).on_sighup()
    try:
        shutil.rmtree(java_users)
        with caplog.at_level(logging.WARNING, logger="gjproxy.server"):
            os.kill(os.getpid(), signal.SIGHUP)
            with gevent.Timeout(5):
                while not caplog.records:
                    gevent.sleep(0.01)
        assert "keeping the previous 1 user(s)" in caplog.records[0].getMessage()
        assert caplog.records[0].levelname == "WARNING"
        assert users.lookup(bytes.fromhex(JAVA_HASH)).user == "alice"
    finally:
        handler.cancel()


@pytest.mark.parametrize("breakage", ["a file", "a symlink loop"])
def test_an_unreadable_directory_keeps_the_users(
    java_users: Path, caplog: pytest.LogCaptureFixture, breakage: str
) -> None:
    """A folder that cannot be listed is an error, never an empty list of users."""
    users = keys.UserDirectory(java_users)
    shutil.rmtree(java_users)
    if breakage == "a file":
        java_users.write_bytes(b"")
    else:
        java_users.symlink_to(java_users)
    with pytest.raises(keys.KeyFileError, match="cannot list users directory"):
        users.reload()
    assert users.lookup(bytes.fromhex(JAVA_HASH)).user == "alice"


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink to /dev/zero"])
def test_only_regular_files_are_read(
    java_users: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """A FIFO named like a user file once froze the whole server on SIGHUP."""
    odd = java_users / f"{'A' * 64}.dat"
    if kind == "fifo":
        os.mkfifo(odd)
    elif kind == "directory":
        odd.mkdir()
    else:
        odd.symlink_to("/dev/zero")
    with caplog.at_level(logging.WARNING, logger="jproxy.tunnel.keys"), gevent.Timeout(5):
        users = keys.UserDirectory(java_users)
    assert len(users) == 1
    assert f"{odd}: not a regular file" in caplog.text or f"{odd}: cannot read" in caplog.text


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


def _user_file(name: bytes) -> bytes:
    """The Java capture's user file with its name replaced by ``name`` (already encoded)."""
    java = (JAVA / "server-user.dat").read_bytes()
    salt_and_key = java[2 + int.from_bytes(java[:2], "big") :]
    return len(name).to_bytes(2, "big") + name + salt_and_key


def _note(entry: dict) -> str:
    return entry["note"]


@pytest.mark.parametrize("entry", USER_NAMES["valid"], ids=_note)
def test_user_name_vector_reads_and_writes(entry: dict) -> None:
    name = bytes.fromhex(entry["hex"])
    assert decode_modified_utf8(name) == entry["user"]
    assert encode_modified_utf8(entry["user"]) == name
    data = _user_file(name)
    fields = parse(UserFile, data)
    assert (fields.user_length, fields.user) == (len(name), entry["user"])
    rebuilt = {"user": entry["user"], "salt": fields.salt, "public_key": fields.public_key}
    assert build(UserFile, rebuilt) == data


@pytest.mark.parametrize("entry", USER_NAMES["invalid"], ids=_note)
def test_user_name_not_in_modified_utf8_is_refused_saying_where(entry: dict) -> None:
    name = bytes.fromhex(entry["hex"])
    with pytest.raises(ValueError, match=re.escape(entry["error"])):
        decode_modified_utf8(name)
    with pytest.raises(WireError) as caught:
        parse(UserFile, _user_file(name))
    assert (caught.value.packet, caught.value.field) == ("UserFile", "user")
    assert entry["error"] in caught.value.reason


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


def test_an_unpaired_surrogate_cannot_be_written() -> None:
    with pytest.raises(WireError, match="unpaired UTF-16 surrogate U\\+D83D"):
        build(UserFile, {"user": "zo\ud83d", "salt": bytes(SALT_SIZE), "public_key": b""})


def test_a_user_file_in_standard_utf8_is_refused_with_a_clear_error(
    tmp_path: Path, generated, caplog: pytest.LogCaptureFixture
) -> None:
    """A name beyond U+FFFF written as gjproxy did before issue 9 (as standard UTF-8)."""
    _, record = generated
    name = "zo\u00eb\U0001f600".encode()
    users = tmp_path / "users"
    users.mkdir()
    path = users / record.file_name
    path.write_bytes(len(name).to_bytes(2, "big") + name + record.salt + record.public_key_der)
    with pytest.raises(keys.KeyFileError) as caught:
        keys.load_user(path)
    assert str(caught.value) == (
        f"{path}: not a valid user file (UserFile.user: 4-byte UTF-8 sequence at 4: standard"
        " UTF-8, not Java's modified UTF-8 (which writes a character beyond U+FFFF as two"
        " 3-byte surrogates); Java's readUTF refuses it too)"
    )
    with caplog.at_level(logging.WARNING, logger="jproxy.tunnel.keys"):
        assert len(keys.UserDirectory(users)) == 0
    assert "4-byte UTF-8 sequence" in caplog.text


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
    assert _mode(tmp_path / "bob" / "key.dat") == 0o600
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
