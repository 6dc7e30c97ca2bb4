"""Real peers for end-to-end tests: gjproxy processes and small loopback target servers."""

from __future__ import annotations

import hashlib
import os
import queue
import re
import selectors
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

START_TIMEOUT = 15.0


def require_tool(name: str) -> str:
    """The path of a tool the test needs; missing fails under CI=true and skips elsewhere."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (README's test command installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


class Process:
    """A ``gjproxy`` subcommand in its own process, its log lines collected as they come."""

    def __init__(
        self, *args: str, cwd: Path, env: dict | None = None, prefix: tuple[str, ...] = ()
    ) -> None:
        self.args = args
        self.lines: list[str] = []
        self._new = queue.Queue()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "jproxy", *args],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)
        self._new.put(None)

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match:
        """The first log line (past or future) matching ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                match = regex.search(line)
                if match:
                    return match
            seen = len(self.lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no log line matching {pattern!r}:\n" + self.log())
            try:
                if self._new.get(timeout=remaining) is None and self.proc.poll() is not None:
                    if not any(regex.search(line) for line in self.lines[seen:]):
                        raise AssertionError(f"exited before {pattern!r}:\n" + self.log())
            except queue.Empty:
                pass

    def log(self) -> str:
        return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


LOOPBACK_EGRESS = ("--allow-egress", "127.0.0.0/8", "--allow-egress", "::1/128")
"""The targets of these tests listen on loopback, which the server denies unless allowed."""


def start_server(
    workdir: Path,
    *extra: str,
    listen: str = "127.0.0.1:0",
    env=None,
    allow_loopback: bool = True,
    prefix: tuple[str, ...] = (),
) -> Process:
    """A server; ``allow_loopback`` passes ``LOOPBACK_EGRESS`` (tests of denial turn it off);
    ``prefix`` runs it under a wrapper such as ``prlimit``."""
    egress = LOOPBACK_EGRESS if allow_loopback else ()
    server = Process(
        *("server", "--listen", listen, "--users", "users", *egress, *extra),
        cwd=workdir,
        env=env,
        prefix=prefix,
    )
    server.port = int(server.wait_for(r"tunnel server listening on [\d.]+:(\d+)").group(1))
    return server


def start_client(workdir: Path, server_port: int, *extra: str, env=None) -> Process:
    client = Process(
        "client",
        "--server",
        f"127.0.0.1:{server_port}",
        "--socks",
        "127.0.0.1:0",
        "--key",
        "key.dat",
        *extra,
        cwd=workdir,
        env=env,
    )
    client.port = int(client.wait_for(r"SOCKS5 listening on [\d.]+:(\d+)").group(1))
    client.wait_for(r"tunnel to .* up")
    return client


# --- loopback targets ---------------------------------------------------------------------


class _QuietHTTPHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # many streams connect at once; the default backlog of 5 drops


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


def serve_files(directory: Path, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """An HTTP server for ``directory`` on ``host`` (127.0.0.1 or ::1), on a free port."""
    handler = partial(_QuietHTTPHandler, directory=str(directory))
    server = (_HTTPServer6 if ":" in host else _HTTPServer)((host, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _Threaded(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # 200 streams connect at once; the default backlog of 5 drops


class _Threaded6(_Threaded):
    address_family = socket.AF_INET6


def serve_tcp(handle, host: str = "127.0.0.1") -> _Threaded:
    """A threaded TCP server on ``host`` (127.0.0.1 or ::1) running ``handle(sock)`` per client."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(30)
            try:
                handle(self.request)
            except OSError:
                pass

    server = (_Threaded6 if ":" in host else _Threaded)((host, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def echo(sock: socket.socket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


def digest_after_eof(sock: socket.socket) -> None:
    """Reads until the client half-closes, then answers with the sha256 of what it read."""
    digest = hashlib.sha256()
    while data := sock.recv(65536):
        digest.update(data)
    sock.sendall(digest.hexdigest().encode() * 1000)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- floods -----------------------------------------------------------------------------------


class Flood:
    """Connections to ``port`` that never log in, from ``sources``, reopened when dropped.

    Half stay silent; the other half trickle ``trickle`` one byte per ``pace`` seconds (a
    hello that would take longer than any deadline). One thread drives them all, until
    ``stop()``; ``opened`` and ``dropped`` count what happened meanwhile.
    """

    def __init__(
        self,
        port: int,
        count: int,
        sources: list[str],
        trickle: bytes = b"jProxy\x03\x01" + bytes(32),
        pace: float = 0.5,
    ) -> None:
        self.port, self.count, self.sources = port, count, sources
        self.trickle, self.pace = trickle, pace
        self.opened = self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _open(self, slot: int) -> socket.socket | None:
        sock = socket.socket()
        try:
            sock.bind((self.sources[slot % len(self.sources)], 0))
            sock.settimeout(2)
            sock.connect(("127.0.0.1", self.port))
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        self.opened += 1
        return sock

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        socks: dict[int, socket.socket | None] = {}
        sent: dict[int, int] = {}

        def reopen(slot: int) -> None:
            old = socks.get(slot)
            if old is not None:
                selector.unregister(old)
                old.close()
            socks[slot] = sock = self._open(slot)
            sent[slot] = 0
            if sock is not None:
                selector.register(sock, selectors.EVENT_READ, slot)

        for slot in range(self.count):
            if self._stop.is_set():
                break
            reopen(slot)
        next_byte = time.monotonic()
        while not self._stop.is_set():
            for key, _ in selector.select(timeout=0.05):
                try:
                    alive = key.fileobj.recv(4096) != b""
                except BlockingIOError:
                    alive = True
                except OSError:
                    alive = False
                if not alive:
                    self.dropped += 1
                    reopen(key.data)
            if time.monotonic() >= next_byte:
                next_byte += self.pace
                for slot in range(0, self.count, 2):
                    sock = socks.get(slot)
                    if sock is None:
                        reopen(slot)
                        continue
                    try:
                        sock.send(self.trickle[sent[slot] % len(self.trickle) :][:1])
                        sent[slot] += 1
                    except OSError:
                        self.dropped += 1
                        reopen(slot)
        for sock in socks.values():
            if sock is not None:
                sock.close()
        selector.close()
