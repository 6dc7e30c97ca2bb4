"""The package as users get it: a built wheel installs working schemas and the command."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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
