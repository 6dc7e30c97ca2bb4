"""Every test module sits in one layer's folder: the folder is its marker, so a test file put
anywhere else would run in no layer and escape ``pytest -m "not e2e"`` or the e2e run alike."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

import pytest

from tests.conftest import LAYERS

TESTS = Path(__file__).parents[1]


def test_every_test_file_sits_in_a_layer_folder(pytestconfig: pytest.Config) -> None:
    """Helper modules (tests/peers.py, tests/conftest.py, ...) are not test files: only the
    names pytest collects (its ``python_files`` patterns) count."""
    patterns = pytestconfig.getini("python_files")
    test_files = [
        path.relative_to(TESTS)
        for path in TESTS.rglob("*.py")
        if any(fnmatch(path.name, pattern) for pattern in patterns)
    ]
    assert len(test_files) > 50  # the patterns found the suite
    misplaced = [str(path) for path in test_files if path.parent.name not in LAYERS]
    assert not misplaced, f"move each into tests/unit, tests/io or tests/e2e: {misplaced}"
    nested = [str(path) for path in test_files if len(path.parts) != 2]
    assert not nested, f"a layer's tests sit directly in its folder: {nested}"
