"""Shared fixtures: key pairs and users folders, loopback target servers, and the thinnest
SOCKS5 handler for the core's tests with real clients.

The tests sit in three layers, one folder each, and each folder is a pytest marker:
``tests/unit`` (pure code: the cores fed bytes and events with a fake clock, the generated
docs, the parsers; no socket, no wait, no subprocess), ``tests/io`` (drivers in this process
on real sockets, files and signals; their deadlines are made short) and ``tests/e2e`` (real
processes and real peers, started through tests/peers.py and driven through tests/clients.py).
``pytest -m "not e2e"`` runs the first two in about 25 s. tests/unit/test_layers.py keeps every
test file in a layer's folder. The helpers that more than one test module uses sit in tests/
itself (peers.py, clients.py, admin_listener.py, mux_cores.py, ...), never in a test module.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jproxy.socks.socks5 import Socks5Server
from jproxy.tuning import RelayTuning
from jproxy.tunnel.keys import (
    ClientKey,
    UserDirectory,
    UserRecord,
    generate,
    save_client_key,
    save_user,
)
from tests.keyfiles import JAVA, JAVA_HASH
from tests.peers import Process, Unbound, serve_files
from tests.socks5_handler import TIMEOUT, serve_one

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


@pytest.fixture(scope="module")
def generated() -> tuple[ClientKey, UserRecord]:
    """A fresh key pair for the user bob, once per test module."""
    return generate("bob")


@pytest.fixture
def java_users(tmp_path: Path) -> Path:
    """A users directory holding the Java capture's user file under its server-side name."""
    users = tmp_path / "users"
    users.mkdir()
    shutil.copy(JAVA / "server-user.dat", users / f"{JAVA_HASH}.dat")
    return users


@pytest.fixture
def users(java_users: Path) -> UserDirectory:
    """A server's users directory that knows the Java capture's user (alice)."""
    return UserDirectory(java_users)


@pytest.fixture
def proxy_for() -> Iterator[Callable[[Socks5Server], tuple[int, concurrent.futures.Future]]]:
    """Serve one SOCKS client with a given core on an ephemeral loopback port, in a thread
    (tests/socks5_handler.py): the SOCKS5 core's tests with python-socks and curl."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        listeners: list[socket.socket] = []

        def start(server: Socks5Server) -> tuple[int, concurrent.futures.Future]:
            listener = socket.create_server(("127.0.0.1", 0))
            listener.settimeout(TIMEOUT)
            listeners.append(listener)
            return listener.getsockname()[1], pool.submit(serve_one, listener, server)

        yield start
        for listener in listeners:
            listener.close()
