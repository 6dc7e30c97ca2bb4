"""docs/console.md shows the console's screenshot, and the picture is there."""

from __future__ import annotations

from pathlib import Path


def test_docs_console_md_shows_the_screenshot():
    docs = Path(__file__).resolve().parents[2] / "docs"
    assert "console.png" in (docs / "console.md").read_text()
    assert (docs / "console.png").stat().st_size > 10_000
