"""The settings of the scale features: bad values are one clear error, config keys work."""

from __future__ import annotations

import os

import pytest

from jproxy.cli import build_parser
from jproxy.commands import client, server
from jproxy.config import ConfigError
from jproxy.tunnel.balance import Strategy


def parsed(*argv: str):
    return build_parser().parse_args(list(argv))


def test_server_workers_from_the_flag_the_config_or_auto(tmp_path) -> None:
    (tmp_path / "s.toml").write_text("[server]\nworkers = 3\n")
    assert server.settings_from(parsed("server", "--workers", "2"), {})["workers"] == 2
    config = parsed("server", "--config", str(tmp_path / "s.toml"))
    assert server.settings_from(config, {})["workers"] == 3
    auto = server.settings_from(parsed("server", "--workers", "auto"), {})["workers"]
    assert auto == len(os.sched_getaffinity(0))
    assert server.settings_from(parsed("server"), {})["workers"] == 1
    for bad in ("0", "two", "-1"):
        with pytest.raises(ConfigError, match="--workers"):
            server.settings_from(parsed("server", "--workers", bad), {})


def test_client_pool_settings(tmp_path) -> None:
    settings = client.settings_from(
        parsed("client", "--tunnels", "4", "--strategy", "fastest", "--failback-after", "2"), {}
    )
    assert (settings["tunnels"], settings["strategy"]) == (4, Strategy.FASTEST)
    assert settings["failback_after"] == 2.0 and settings["connect_timeout"] == 10.0
    for argv, flag in (
        (("--tunnels", "0"), "--tunnels"),
        (("--connect-timeout", "0"), "--connect-timeout"),
        (("--failback-after", "-1"), "--failback-after"),
    ):
        with pytest.raises(ConfigError, match=flag):
            client.settings_from(parsed("client", *argv), {})
    (tmp_path / "c.toml").write_text('[client]\nstrategy = "best"\n')
    with pytest.raises(ConfigError, match="strategy"):
        client.settings_from(parsed("client", "--config", str(tmp_path / "c.toml")), {})
