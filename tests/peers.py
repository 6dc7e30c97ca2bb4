"""Real peers for end-to-end tests: gjproxy processes and small loopback target servers."""

from __future__ import annotations

import hashlib
import os
import queue
import re
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

import dns.message
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


def serve_files(directory: Path) -> ThreadingHTTPServer:
    handler = partial(_QuietHTTPHandler, directory=str(directory))
    server = _HTTPServer(("127.0.0.1", 0), handler)
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


class UdpEcho:
    """A UDP echo server on ``host`` (127.0.0.1 or ::1) in a thread; ``sources`` records who
    sent what."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.address = self.sock.getsockname()[:2]
        self.received = 0
        self.sources: list[tuple] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.received += 1
            self.sources.append(source[:2])
            self.sock.sendto(data, source)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


UNBOUND_ZONE = "gjproxy.test."
UNBOUND_ANSWER = "192.0.2.7"


UNBOUND_ATTEMPTS = 5


def start_unbound(workdir: Path) -> tuple[subprocess.Popen, int]:
    """unbound on 127.0.0.1 (UDP only), answering ``www.gjproxy.test. A 192.0.2.7`` from a local
    zone (nothing recursive, nothing leaves the host); returns the process and its port.

    unbound takes no port 0: a port found free is tried, and another one if someone took it
    meanwhile.
    """
    unbound = shutil.which("unbound", path="/usr/sbin") or require_tool("unbound")
    log = workdir / "unbound.log"
    for _ in range(UNBOUND_ATTEMPTS):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = workdir / "unbound.conf"
        config.write_text(
            f"""server:
    interface: 127.0.0.1@{port}
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{workdir}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    do-ip6: no
    do-tcp: no
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    local-zone: "{UNBOUND_ZONE}" static
    local-data: "www.{UNBOUND_ZONE} 60 IN A {UNBOUND_ANSWER}"
remote-control:
    control-enable: no
"""
        )
        with log.open("wb") as output:
            process = subprocess.Popen(
                [unbound, "-d", "-c", str(config)],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if _answers_dns(port, process):
            return process, port
        process.kill()
        process.wait(START_TIMEOUT)
        if "already in use" not in log.read_text():
            break
    raise AssertionError("unbound did not start:\n" + log.read_text())


def _answers_dns(port: int, process: subprocess.Popen) -> bool:
    """Whether a DNS server answers on 127.0.0.1:``port`` before ``process`` exits or the
    start timeout passes (any answer to a query of the root will do)."""
    deadline = time.monotonic() + START_TIMEOUT
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as check:
        check.settimeout(0.2)
        while time.monotonic() < deadline and process.poll() is None:
            check.sendto(dns.message.make_query(".", "NS").to_wire(), ("127.0.0.1", port))
            try:
                check.recvfrom(512)
                return True
            except (TimeoutError, ConnectionRefusedError):
                continue
    return False
