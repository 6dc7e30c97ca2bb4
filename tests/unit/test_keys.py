"""Key files: the Java 3.0 files load, generated files share their layout, files are safe,
and user names are Java's modified UTF-8."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path

import gevent
import pytest

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
from tests.keyfiles import JAVA, JAVA_HASH, USER_NAMES, file_mode


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
    assert file_mode(key_path) == 0o600
    assert file_mode(user_path) == 0o600
    assert file_mode(tmp_path / "users") == 0o700

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
