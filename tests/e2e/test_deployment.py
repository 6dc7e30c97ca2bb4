"""The systemd units in contrib/systemd: valid for systemd, hardened, running real commands."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from jproxy.cli import build_parser
from tests.peers import require_tool

UNITS = Path(__file__).parents[2] / "contrib" / "systemd"
INSTALLED = "/opt/gjproxy/bin/gjproxy"
"""Where docs/deployment.md installs the command; the test puts this Python's in its place."""

HARDENING = (
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "CapabilityBoundingSet=\n",
    "User=gjproxy",
)


def exec_start(text: str) -> list[str]:
    [line] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


@pytest.mark.parametrize("unit", ["gjproxy-server.service", "gjproxy-client.service"])
def test_unit_passes_systemd_analyze_verify(tmp_path, unit) -> None:
    analyze = require_tool("systemd-analyze")
    text = (UNITS / unit).read_text()
    for setting in HARDENING:
        assert setting in text, f"{unit} lacks {setting!r}"
    command = exec_start(text)
    assert command[0] == INSTALLED
    build_parser().parse_args(command[1:])  # a command line gjproxy accepts (else exit 2)

    (tmp_path / unit).write_text(text.replace(INSTALLED, f"{sys.executable} -m jproxy"))
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / unit)], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr  # warnings fail too
