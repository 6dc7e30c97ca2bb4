"""The package as users get it: README's commands, CI's script and a built wheel."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import zipfile
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


def test_a_built_wheel_installs_working_schemas_and_the_command(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            "-q",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("gjproxy-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(name for name in names if name.endswith("entry_points.txt"))
        assert "gjproxy = jproxy.cli:main" in archive.read(entry_points).decode()
    assert not any(name.startswith("tests/") for name in names)
    assert "jproxy/gen/dissector.lua" in names  # `gjproxy dissector` reads it
    probe = (
        "import schemas.jproxy, schemas.fast, schemas.keys, schemas.admin, schemas.socks5, "
        "jproxy.cli; print(schemas.jproxy.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(wheel), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert str(wheel) in result.stdout  # imported from the wheel, not from this checkout
