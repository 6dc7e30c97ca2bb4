"""Key files: the Java 3.0 files load, generated files share their layout, files are safe."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import gevent
import pytest

from jproxy import keys
from schemas import parse
from schemas.keys import RSA_2048_PUBLIC_KEY_SIZE, SALT_SIZE, ClientKeyFile, UserFile

JAVA = Path(__file__).parent / "vectors" / "java-3.0"
JAVA_HASH = "E6FAE591B1497266DDF1C93343F58E9464F9A1BC144B169FE4DF18FF2A4363D3"


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
        ("client-key.dat", lambda data: data[:-1], "not a valid client key file"),
        ("client-key.dat", lambda data: data[:3], "not a valid client key file"),
        ("client-key.dat", lambda data: data + b"\x00", "not a valid client key file"),
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
    with caplog.at_level(logging.WARNING, logger="jproxy.keys"):
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


def test_sighup_reloads_the_users(java_users: Path, generated) -> None:
    users = keys.UserDirectory(java_users)
    handler = keys.reload_on_sighup(users)
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
    handler = keys.reload_on_sighup(users)
    try:
        shutil.rmtree(java_users)
        with caplog.at_level(logging.WARNING, logger="jproxy.keys"):
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
    with caplog.at_level(logging.WARNING, logger="jproxy.keys"), gevent.Timeout(5):
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
