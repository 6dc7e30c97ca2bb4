"""The key log: off by default; on by flag, environment or config file (the flag wins); 0600."""

from __future__ import annotations

import stat
from pathlib import Path

from jproxy.cli import build_parser
from jproxy.commands import client, server
from jproxy.handlers.tunnel.keylog import open_key_log
from jproxy.tunnel.keylog import ID_BYTES, LABEL, key_log_line


def _settings(command, argv: list[str], environ: dict) -> dict:
    return command.settings_from(build_parser().parse_args(argv), environ)


def test_off_unless_asked_for_and_the_flag_beats_environment_and_file(tmp_path: Path) -> None:
    config = tmp_path / "gjproxy.toml"
    config.write_text('[server]\nkeylog = "from-file"\n[client]\nkeylog = "from-file"\n')
    for command, name in ((server, "server"), (client, "client")):
        assert _settings(command, [name], {})["keylog"] == ""
        assert _settings(command, [name, "--config", str(config)], {})["keylog"] == "from-file"
        environ = {"GJPROXY_KEYLOG": "from-env"}
        assert _settings(command, [name, "--config", str(config)], environ)["keylog"] == "from-env"
        argv = [name, "--config", str(config), "--keylog", "from-flag"]
        assert _settings(command, argv, environ)["keylog"] == "from-flag"
    assert open_key_log("") is None


def test_lines_are_appended_to_a_file_only_its_owner_reads(tmp_path: Path) -> None:
    path = tmp_path / "keys.log"
    path.write_text("earlier line\n")
    path.chmod(0o644)
    key_log = open_key_log(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key_log.record(bytes(range(256)), bytes(range(16)))
    assert path.read_text().splitlines() == [
        "earlier line",
        f"{LABEL} {bytes(range(ID_BYTES)).hex()} {bytes(range(16)).hex()}",
    ]
    fresh = tmp_path / "new.log"
    open_key_log(str(fresh)).record(b"\x01" * 256, b"\x02" * 16)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert fresh.read_text() == key_log_line(b"\x01" * 256, b"\x02" * 16)
