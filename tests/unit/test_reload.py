"""What a reload changes: the pure diff of settings, and the config file's messages."""

from __future__ import annotations

import argparse

import pytest

from jproxy import reload
from jproxy.config import ConfigError, host_port, resolve
from jproxy.reload import Change, describe, plan, value_text


def test_changed_keys_are_sorted_into_reloadable_and_restart() -> None:
    running = {"listen": ("0.0.0.0", 16384), "idle_timeout": 300.0, "users": "users", "x": 1}
    fresh = {"listen": ("0.0.0.0", 16390), "idle_timeout": 60.0, "users": "users", "y": 2}
    outcome = plan(running, fresh, reloadable={"idle_timeout", "users", "y"})
    assert outcome.apply == (Change("idle_timeout", 300.0, 60.0), Change("y", None, 2))
    assert outcome.restart == (
        Change("listen", ("0.0.0.0", 16384), ("0.0.0.0", 16390)),
        Change("x", 1, None),
    )
    in_force = outcome.in_force(running)
    assert in_force["listen"] == ("0.0.0.0", 16384)  # the old value stays until a restart
    assert in_force["idle_timeout"] == 60.0 and in_force["y"] == 2


def test_an_unchanged_file_changes_nothing() -> None:
    settings = {"listen": ("::", 1), "rules": ["a", "b"]}
    outcome = plan(settings, dict(settings), reloadable=set())
    assert outcome.apply == outcome.restart == ()
    assert outcome.in_force(settings) == settings


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (("0.0.0.0", 16384), "0.0.0.0:16384"),
        (("::1", 80), "[::1]:80"),
        ([("a", 1), ("b", 2)], "a:1, b:2"),
        (["10.0.0.0/8", "::1/128"], "10.0.0.0/8, ::1/128"),
        ("", "none"),
        ([], "none"),
        (None, "none"),
        (True, "on"),
        (False, "off"),
        (60.0, "60.0"),
    ],
)
def test_values_read_as_in_a_config_file(value, text) -> None:
    assert value_text(value) == text


def test_a_secret_shows_neither_value() -> None:
    change = Change("socks_users", {"carol": "scrypt$a"}, {"carol": "scrypt$b"})
    assert describe(change, "[socks_users]", secret=True) == f"[socks_users]: {reload.SECRET}"
    assert "scrypt" not in describe(change, "[socks_users]", secret=True)
    assert describe(Change("grace", 5.0, 1.0), "[server] grace") == "[server] grace: 5.0 -> 1.0"


DEFAULTS = {"listen": "0.0.0.0:16384", "max_tunnels": 64, "idle_timeout": 300.0, "legacy": False}


def _resolve(table: dict) -> dict:
    return resolve(argparse.Namespace(), {"server": table}, "server", DEFAULTS)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"listen": 16390}, '[server] listen must be a string like "HOST:PORT"'),
        ({"max_tunnels": "64"}, "[server] max_tunnels must be a whole number like 64"),
        ({"max_tunnels": True}, "[server] max_tunnels must be a whole number like 64"),
        ({"idle_timeout": "5m"}, "[server] idle_timeout must be a number like 300"),
        ({"legacy": 1}, "[server] legacy must be true or false"),
        ({"max_tunels": 3}, "unknown key(s) in [server]: max_tunels (did you mean max_tunnels?)"),
        ({"zzz": 3}, "unknown key(s) in [server]: zzz"),
    ],
)
def test_config_messages_use_plain_words(table, message) -> None:
    with pytest.raises(ConfigError) as error:
        _resolve(table)
    assert message in str(error.value)
    assert "str" not in str(error.value).split()


def test_a_whole_number_of_seconds_is_a_number() -> None:
    assert _resolve({"idle_timeout": 60})["idle_timeout"] == 60.0


def test_a_port_out_of_range_says_the_range() -> None:
    with pytest.raises(
        ConfigError, match=r"--listen: port 99999 is out of range: a port is 0\.\.65535"
    ):
        host_port("127.0.0.1:99999", "--listen")
    assert host_port("[::1]:65535", "--listen") == ("::1", 65535)
