"""Shared fixtures: one key pair for the session, and loopback target servers.

The tests sit in three layers, one folder each, and each folder is a pytest marker:
``tests/unit`` (the pure cores, fed bytes and events with a fake clock), ``tests/io``
(drivers in this process on real sockets) and ``tests/e2e`` (real processes and real peers).
``pytest -m "not e2e"`` runs the first two in seconds.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from jproxy.tuning import RelayTuning
from jproxy.tunnel.keys import generate, save_client_key, save_user
from tests.peers import Process, Unbound, serve_files

FILE_SIZES = (0, 1, 4079, 4080, 4081, 65536, 1_000_000)
BIG_FILE_SIZE = 100 * 1024 * 1024


LAYERS = ("unit", "io", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its layer: the name of the folder it sits in."""
    for item in items:
        layer = Path(item.fspath).parent.name
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))


@pytest.fixture(scope="session")
def key_pair(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    key, record = generate("alice")
    save_client_key(key, folder / "key.dat")
    save_user(record, folder / "users")
    return folder


@pytest.fixture
def workdir(tmp_path, key_pair) -> Path:
    """A folder holding key.dat and users/, as ``gjproxy keygen`` leaves them."""
    shutil.copy2(key_pair / "key.dat", tmp_path / "key.dat")
    shutil.copytree(key_pair / "users", tmp_path / "users")
    return tmp_path


@pytest.fixture
def tuning() -> RelayTuning:
    """A fresh set of live-tunable relay settings at their defaults."""
    return RelayTuning()


@pytest.fixture(scope="session")
def web(tmp_path_factory):
    """An HTTP server with files of the sizes that sit on frame boundaries, and 100 MB."""
    root = tmp_path_factory.mktemp("www")
    for size in FILE_SIZES:
        (root / f"f{size}").write_bytes(os.urandom(size))
    with (root / "big").open("wb") as file:
        block = os.urandom(1 << 20)
        for _ in range(BIG_FILE_SIZE >> 20):
            file.write(block)
    server = serve_files(root)
    server.root = root
    yield server
    server.shutdown()


DNS_RECORDS = {
    "web.tunnel.test": ("127.0.0.1", 300),
    "brief.tunnel.test": ("127.0.0.1", 1),
    "six.tunnel.test": ("::1", 300),
    **{f"n{index}.tunnel.test": (f"127.0.1.{index}", 300) for index in range(64)},
}
"""Names only the test's unbound knows (never /etc/hosts): proof that DoH was asked."""


@pytest.fixture(scope="session")
def unbound(tmp_path_factory):
    """unbound on loopback serving DNS_RECORDS over DoH and plain DNS, for the whole session."""
    server = Unbound(tmp_path_factory.mktemp("unbound"), DNS_RECORDS)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_process_outlives_its_test():
    """Kill the gjproxy processes a test left running (it failed before stopping them)."""
    yield
    while Process.started:
        process = Process.started.pop()
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(10)
