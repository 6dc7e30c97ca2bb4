"""Every test module sits in one layer's folder: the folder is its marker, so a test file put
anywhere else would run in no layer and escape ``pytest -m "not e2e"`` or the e2e run alike.
Shared helpers sit in tests/ itself, never in a test module another one imports."""

from __future__ import annotations

import ast
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


def test_no_test_module_imports_another() -> None:
    """A helper two test modules need goes to tests/ (peers.py, clients.py, ...): importing a
    test module ties one layer's tests to another's and hides the helper among tests."""
    borrowed = []
    for path in TESTS.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            borrowed += [
                f"{path.relative_to(TESTS)}: {name}"
                for name in names
                if name.split(".")[:2] in [["tests", layer] for layer in LAYERS]
            ]
    assert not borrowed, f"move what these use into a helper module of tests/: {borrowed}"
