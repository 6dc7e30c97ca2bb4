"""README's two commands: the second is what CI runs, and every pip is a virtual environment's."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", section, re.DOTALL)
    return [textwrap.dedent(block).strip() for block in blocks]


def test_readme_starts_with_exactly_two_commands_and_ci_runs_the_second():
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("gjproxy quickstart")
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert f"\n{commands[1]}\n" in ci_script


def test_readme_commands_install_into_their_own_virtual_environment():
    """A stock Debian 12 refuses ``pip install`` into its Python: every pip is the venv's."""
    for command in readme_commands():
        assert "python3-venv" in command and "python3 -m venv .venv" in command
        assert command.count("pip install") == command.count(".venv/bin/pip install") > 0
    assert ".venv/bin/python -m pytest" in readme_commands()[1]
