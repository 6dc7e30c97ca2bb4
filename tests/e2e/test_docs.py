"""`gjproxy docs` writes docs/protocol.md and docs/cli.md where it is told."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from jproxy.gen import protocol_docs as docs


def test_command_writes_the_docs(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "jproxy", "docs"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert run.stdout.splitlines() == [
        "wrote docs/protocol.md",
        "wrote docs/cli.md",
        "skipped docs/admin.md: not there (its tables are filled in place)",
    ]
    assert (tmp_path / "docs" / "protocol.md").read_text(encoding="utf-8") == docs.render()

    out, cli_out = tmp_path / "elsewhere" / "p.md", tmp_path / "elsewhere" / "c.md"
    run = subprocess.run(
        [sys.executable, "-m", "jproxy", "docs", "--out", str(out), "--cli-out", str(cli_out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert run.stdout.splitlines()[:2] == [f"wrote {out}", f"wrote {cli_out}"]
    assert out.read_text(encoding="utf-8") == docs.render()
    assert cli_out.read_text(encoding="utf-8") == (tmp_path / "docs" / "cli.md").read_text()
