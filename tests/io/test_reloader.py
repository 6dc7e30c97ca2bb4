"""The SIGHUP driver: reads the settings again, runs the callbacks, logs what changed."""

from __future__ import annotations

import logging
import os
import signal

import gevent
import pytest

from jproxy.config import ConfigError
from jproxy.handlers.net.signals import Reloader


class File:
    """A config file stand-in: ``settings`` is what the next read returns (or raises)."""

    def __init__(self, **settings) -> None:
        self.settings = settings
        self.error: ConfigError | None = None

    def read(self) -> dict:
        if self.error is not None:
            raise self.error
        return dict(self.settings)


def _reloader(file: File, **options) -> Reloader:
    return Reloader("test.toml", file.read, file.read(), lambda key: f"[t] {key}", **options)


def _messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(record.levelname, record.getMessage()) for record in caplog.records]


def test_callbacks_get_the_new_settings_and_the_log_names_each_change(caplog) -> None:
    file = File(listen="a:1", idle=300.0, window=10, secret="x")
    reloader = _reloader(file, secrets=["secret"])
    applied: list[dict] = []
    reloader.on_change(["idle", "window"], applied.append)
    reloader.on_change(["secret"], applied.append)
    file.settings.update(listen="b:2", idle=60.0, secret="y")
    with caplog.at_level(logging.INFO, logger="gjproxy.reload"):
        reloader.reload()
    assert len(applied) == 2 and applied[0]["idle"] == 60.0
    assert applied[0]["listen"] == "a:1"  # a callback never sees a restart-only change
    assert _messages(caplog) == [
        ("INFO", "SIGHUP: [t] idle: 300.0 -> 60.0"),
        ("INFO", "SIGHUP: [t] secret: (changed, not shown)"),
        (
            "WARNING",
            "SIGHUP: [t] listen: a:1 -> b:2 needs a restart; a:1 stays in force until then",
        ),
    ]
    assert reloader.running == {"listen": "a:1", "idle": 60.0, "window": 10, "secret": "y"}


def test_a_file_with_an_error_changes_nothing_but_the_every_time_actions_run(caplog) -> None:
    file = File(idle=300.0)
    reloader = _reloader(file)
    reloader.on_change(["idle"], lambda fresh: pytest.fail("applied a refused file"))
    reread: list[bool] = []
    reloader.every_time(lambda: reread.append(True))
    file.error = ConfigError("test.toml line 2: [t] idle must be a number like 300")
    with caplog.at_level(logging.INFO, logger="gjproxy.reload"):
        assert reloader.reload() is None
    assert reread == [True]  # users reread, access log reopened: as on every SIGHUP
    assert _messages(caplog) == [
        (
            "ERROR",
            "SIGHUP: test.toml refused, the running config stays: test.toml line 2: [t] idle"
            " must be a number like 300",
        )
    ]
    assert reloader.running == {"idle": 300.0}


def test_a_callback_that_cannot_apply_keeps_the_old_value(caplog) -> None:
    file = File(users="users", idle=1.0)
    reloader = _reloader(file)

    def move(fresh: dict) -> None:
        raise ConfigError(f"[t] users: {fresh['users']}: no such users directory")

    reloader.on_change(["users"], move)
    reloader.on_change(["idle"], lambda fresh: None)
    file.settings.update(users="nowhere", idle=2.0)
    with caplog.at_level(logging.INFO, logger="gjproxy.reload"):
        reloader.reload()
    assert reloader.running == {"users": "users", "idle": 2.0}
    assert ("ERROR", "SIGHUP: [t] users: nowhere: no such users directory; kept: [t] users") in (
        _messages(caplog)
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gjproxy.reload"):
        reloader.reload()  # tried again at the next SIGHUP
    assert _messages(caplog)[0][0] == "ERROR"


def test_nothing_changed_is_said(caplog) -> None:
    reloader = _reloader(File(a=1))
    with caplog.at_level(logging.INFO, logger="gjproxy.reload"):
        reloader.reload()
    assert _messages(caplog) == [("INFO", "SIGHUP: test.toml reread, no setting changed")]


def test_sighup_runs_a_reload() -> None:
    file = File(idle=1.0)
    reloader = _reloader(file)
    seen: list[float] = []
    reloader.on_change(["idle"], lambda fresh: seen.append(fresh["idle"]))
    handler = reloader.on_sighup()
    try:
        file.settings["idle"] = 2.0
        os.kill(os.getpid(), signal.SIGHUP)
        with gevent.Timeout(5):
            while not seen:
                gevent.sleep(0.01)
    finally:
        handler.cancel()
    assert seen == [2.0]


def test_the_clients_rules_and_access_log_follow_a_reload(tmp_path, caplog) -> None:
    """``reload_front``: new rules take effect, a bad one keeps those in use, the access log
    moves to its new file; a forward needs a restart."""
    from types import SimpleNamespace

    from jproxy.commands.route import reload_front, rule_set
    from jproxy.handlers.logs.access import AccessLog
    from jproxy.handlers.net.router import Router
    from jproxy.metrics import Counters
    from jproxy.policy.rules import Action

    file = File(rules=["MATCH,TUNNEL"], access_log="", forward=[])
    tunnels = SimpleNamespace(counters=Counters())  # only its counters are read here
    router = Router(tunnels, rule_set(file.settings["rules"]), None, AccessLog(None))
    reloader = _reloader(file)
    reload_front(reloader, router)
    moved = tmp_path / "access.log"
    file.settings.update(
        rules=["DOMAIN,x.example,REJECT", "MATCH,DIRECT"],
        access_log=str(moved),
        forward=["8022:example.org:22"],
    )
    with caplog.at_level(logging.INFO, logger="gjproxy.reload"):
        reloader.reload()
        assert router.rules.decide("x.example", 443).action is Action.REJECT
        assert router.rules.decide("y.example", 443).action is Action.DIRECT
        assert router.access_log.path == str(moved) and moved.exists()
        file.settings["rules"] = ["NOT-A-KIND,x,DIRECT"]
        reloader.reload()
    assert router.rules.decide("x.example", 443).action is Action.REJECT
    messages = _messages(caplog)
    assert (
        "INFO",
        "SIGHUP: [t] rules: MATCH,TUNNEL -> DOMAIN,x.example,REJECT, MATCH,DIRECT",
    ) in messages
    assert any("[t] forward" in text and "needs a restart" in text for _, text in messages)
    assert any(
        level == "ERROR" and "--rule" in text and "kept: [t] rules" in text
        for level, text in messages
    ), messages
    router.access_log.close()
