"""Admin credentials: the scrypt hash line, where credentials come from, the login throttle."""

from __future__ import annotations

import re

import pytest

from jproxy.config import ConfigError
from jproxy.policy import passwords
from jproxy.policy.passwords import (
    AdminCredentials,
    LoginThrottle,
    hash_password,
    load_admin_credentials,
    load_socks_users,
    verify_password,
)

FAST = {"n": 1024}  # tests only: the default cost (n=16384) is for real servers


def test_hash_line_format_and_defaults() -> None:
    stored = hash_password("s3cret")
    scheme, params, salt, digest = stored.split("$")
    assert (scheme, params) == ("scrypt", "n=16384,r=8,p=1")
    assert len(salt) == 24 and len(digest) == 44  # 16 and 32 bytes in base64
    assert verify_password("s3cret", stored)


def test_verify_accepts_only_the_password() -> None:
    stored = hash_password("s3cret", **FAST)
    assert verify_password(b"s3cret", stored)
    assert not verify_password("s3creT", stored)
    assert not verify_password("", stored)


def test_each_hash_has_its_own_salt() -> None:
    assert hash_password("same", **FAST) != hash_password("same", **FAST)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain",
        "scrypt$n=1000,r=8,p=1$c2FsdA==$" + "A" * 44,  # n not a power of two
        "scrypt$n=16384,r=0,p=1$c2FsdA==$" + "A" * 44,
        "scrypt$n=16384,r=8,p=1$***$" + "A" * 44,
        "scrypt$n=16384,r=8,p=1$c2FsdA==$AAAA",  # hash too short
        "bcrypt$n=16384,r=8,p=1$c2FsdA==$" + "A" * 44,
    ],
)
def test_malformed_hashes_never_verify(stored) -> None:
    assert not verify_password("anything", stored)


def test_credentials_check_user_and_password() -> None:
    credentials = AdminCredentials("alice", hash_password("s3cret", **FAST), "test")
    assert credentials.check(b"alice", b"s3cret")
    assert not credentials.check(b"alice", b"wrong")
    assert not credentials.check(b"mallory", b"s3cret")
    assert "scrypt" not in repr(credentials)


def test_config_file_credentials() -> None:
    stored = hash_password("s3cret", **FAST)
    config = {"admin": {"user": "alice", "password_hash": stored, "port": 8080}}
    credentials = load_admin_credentials(config, {})
    assert (credentials.user, credentials.password_hash) == ("alice", stored)
    assert credentials.source == "the config file"


def test_the_config_file_beats_the_environment() -> None:
    config = {"admin": {"user": "alice", "password_hash": hash_password("s3cret", **FAST)}}
    environ = {"GJPROXY_ADMIN_USER": "bob", "GJPROXY_ADMIN_PASSWORD": "other"}
    credentials = load_admin_credentials(config, environ)
    assert credentials.user == "alice"
    assert credentials.check(b"alice", b"s3cret")


def test_environment_credentials_are_hashed_at_once() -> None:
    environ = {"GJPROXY_ADMIN_USER": "alice", "GJPROXY_ADMIN_PASSWORD": "s3cret"}
    credentials = load_admin_credentials({}, environ)
    assert credentials.password_hash.startswith("scrypt$")
    assert "s3cret" not in credentials.password_hash
    assert credentials.check(b"alice", b"s3cret")
    assert credentials.source == "environment variable GJPROXY_ADMIN_PASSWORD"


def test_user_from_the_file_and_password_from_the_environment() -> None:
    credentials = load_admin_credentials(
        {"admin": {"user": "alice"}}, {"GJPROXY_ADMIN_PASSWORD": "s3cret"}
    )
    assert credentials.check(b"alice", b"s3cret")


def test_without_a_password_there_is_no_admin_account() -> None:
    assert load_admin_credentials({"admin": {"user": "alice"}}, {}) is None


@pytest.mark.parametrize(
    "config, environ, message",
    [
        ({}, {"GJPROXY_ADMIN_PASSWORD": "s3cret"}, "needs a user"),
        ({"admin": {"user": "alice", "password_hash": "x"}}, {}, "password_hash: expected"),
        ({"admin": {"user": 7, "password_hash": "x"}}, {}, "user must be a string"),
        ({"admin": "alice"}, {}, r"\[admin\] must be a table"),
        ({"admin": {"user": "a" * 256}}, {"GJPROXY_ADMIN_PASSWORD": "pw"}, "1..255 bytes"),
        ({"admin": {"user": "alice"}}, {"GJPROXY_ADMIN_PASSWORD": "p" * 256}, "1..255 bytes"),
    ],
)
def test_bad_credential_settings_are_config_errors(config, environ, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_admin_credentials(config, environ)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_doubles_up_to_the_cap() -> None:
    throttle = LoginThrottle(0.25, 3.0, clock=Clock())
    delays = []
    for _ in range(7):
        delays.append(throttle.delay("192.0.2.1"))
        throttle.failed("192.0.2.1")
    assert delays == [0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 3.0]
    assert throttle.delay("192.0.2.2") == 0.0


def test_throttle_survives_endless_failures() -> None:
    throttle = LoginThrottle(0.25, 3.0, clock=Clock())
    for _ in range(5000):
        throttle.failed("192.0.2.1")
    assert throttle.delay("192.0.2.1") == 3.0


def test_throttle_forgets_after_success_or_quiet() -> None:
    clock = Clock()
    throttle = LoginThrottle(0.25, 3.0, forget_after=600, clock=clock)
    throttle.failed("192.0.2.1")
    throttle.failed("192.0.2.1")
    throttle.succeeded("192.0.2.1")
    assert throttle.delay("192.0.2.1") == 0.0
    throttle.failed("192.0.2.1")
    clock.now += 599
    assert throttle.delay("192.0.2.1") == 0.25
    clock.now += 2
    assert throttle.delay("192.0.2.1") == 0.0


def test_throttle_table_is_bounded_and_drops_the_quietest() -> None:
    clock = Clock()
    throttle = LoginThrottle(0.25, 3.0, max_addresses=100, clock=clock)
    for index in range(1000):
        clock.now += 1
        throttle.failed(f"10.0.{index // 256}.{index % 256}")
    throttle.failed("10.0.3.231")  # index 999, the newest, fails again
    assert throttle.delay("10.0.0.0") == 0.0  # dropped
    assert throttle.delay("10.0.3.200") == 0.25  # among the newest 100
    assert throttle.delay("10.0.3.231") == 0.5
    assert len(throttle._failures) == 100


def test_a_socks_password_pays_scrypt_once_and_a_wrong_one_every_time(monkeypatch) -> None:
    table = load_socks_users({"socks_users": {"carol": hash_password("pw", **FAST)}})
    scrypt_runs = []
    monkeypatch.setattr(
        passwords, "verify_password", lambda *args: scrypt_runs.append(1) or verify_password(*args)
    )
    assert [table.check(b"carol", b"pw") for _ in range(5)] == [True] * 5
    assert len(scrypt_runs) == 1
    assert [table.check(b"carol", b"pW") for _ in range(3)] == [False] * 3
    assert len(scrypt_runs) == 4
    assert table.check(b"carol", b"pw") and len(scrypt_runs) == 4


def test_socks_users_check_name_and_password_and_refuse_unknown_names() -> None:
    table = load_socks_users({"socks_users": {"carol": hash_password("pw", **FAST)}})
    assert table.check(b"carol", b"pw")
    assert not table.check(b"carol", b"pW")
    assert not table.check(b"mallory", b"pw")
    assert not table.check(b"\xff", b"pw")
    assert "pw" not in repr(table) and "scrypt" not in repr(table)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"carol": 1}, "[socks_users] carol must be a string"),
        ({"x" * 256: "scrypt$"}, "a user name must be 1..255 bytes"),
        ("x", "[socks_users] must be a table"),
    ],
)
def test_bad_socks_users_are_config_errors(table, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_socks_users({"socks_users": table})
