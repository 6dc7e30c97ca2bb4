"""Real peers for end-to-end tests: gjproxy processes and small loopback target servers."""

from __future__ import annotations

import hashlib
import json
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
import urllib.request
from collections.abc import Callable
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jproxy.policy.passwords import hash_password

START_TIMEOUT = 15.0
T = TypeVar("T")


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
    """A ``gjproxy`` subcommand (or another ``module`` run with ``-m``) in its own process, its
    log lines collected as they come."""

    started: list[Process] = []
    """Every process a test started; conftest kills those still running when the test ends,
    so a test that fails before its own ``stop`` leaves nothing behind."""

    def __init__(
        self,
        *args: str,
        cwd: Path,
        env: dict | None = None,
        prefix: tuple[str, ...] = (),
        module: str = "jproxy",
        program: tuple[str, ...] | None = None,
    ) -> None:
        Process.started.append(self)
        self.args = args
        self.lines: list[str] = []
        self._new = queue.Queue()
        self.proc = subprocess.Popen(
            [*prefix, *(program or (sys.executable, "-m", module)), *args],
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


HEADLESS_CHROMIUM = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
"""Chromium's flags for a test: no window, no sandbox (root), no traffic of its own."""

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


def client_of(workdir, *servers: str, config: str | None = None, extra=()) -> Process:
    """A client of every one of ``servers`` (``HOST:PORT``, tried in order), with ``config``
    written to client.toml when given; started, not waited on for a tunnel."""
    args = [*(arg for server in servers for arg in ("--server", server)), *extra]
    if config is not None:
        (workdir / "client.toml").write_text(config)
        args += ["--config", "client.toml"]
    client = Process("client", *args, "--socks", "127.0.0.1:0", "--key", "key.dat", cwd=workdir)
    client.port = int(client.wait_for(r"SOCKS5 listening on [\d.]+:(\d+)").group(1))
    return client


SOCKS_PASSWORDS = {"carol": "s3cret carol", "dave": "dave's"}
"""The RFC 1929 users that :func:`write_socks_config` writes, and their passwords."""
FAST_HASH = {"n": 1024}  # tests only: real hashes cost more


def write_socks_config(workdir, *, users: bool = True, no_auth: bool = False) -> str:
    """A server config file for the plain SOCKS5 port: ``SOCKS_PASSWORDS`` in [socks_users]
    when ``users``, and ``socks_no_auth``; its name, relative to ``workdir``."""
    lines = ["[server]", f"socks_no_auth = {'true' if no_auth else 'false'}"]
    if users:
        lines.append("[socks_users]")
        lines += [
            f'{name} = "{hash_password(pw, **FAST_HASH)}"' for name, pw in SOCKS_PASSWORDS.items()
        ]
    (workdir / "gjproxy.toml").write_text("\n".join(lines) + "\n")
    return "gjproxy.toml"


def start_socks_server(
    workdir, unbound, *extra: str, config: str | None = None, env=None, allow_loopback=True
):
    """A server with its plain SOCKS5 port on (``socks``, ``socks_port``), names resolved by
    ``unbound``'s DoH, and a JSON access log in access.jsonl."""
    config = config or write_socks_config(workdir)
    server = start_server(
        workdir,
        "--config",
        config,
        "--socks",
        "127.0.0.1:0",
        "--doh",
        unbound.doh_url,
        "--doh-ca",
        str(unbound.cert),
        "--access-log",
        "access.jsonl",
        *extra,
        env=env,
        allow_loopback=allow_loopback,
    )
    port = int(server.wait_for(r"plain SOCKS5 listening on 127\.0\.0\.1:(\d+)").group(1))
    server.socks = f"127.0.0.1:{port}"
    server.socks_port = port
    return server


def start_java_peer(workdir: Path, role: str, *extra: str) -> Process:
    """``tests/java_peer.py``: a 3.0 ``server`` or ``client`` that behaves on the wire as the
    Java programs do; ``port`` is its tunnel (server) or SOCKS5 (client) port."""
    repo = str(Path(__file__).parents[1])
    path = os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))
    peer = Process(role, *extra, cwd=workdir, env={"PYTHONPATH": path}, module="tests.java_peer")
    peer.port = int(peer.wait_for(r"listening on (\d+)").group(1))
    return peer


# --- loopback targets ---------------------------------------------------------------------


SHUTDOWN_POLL = 0.02
"""How often a loopback server's loop looks for ``shutdown()``: socketserver's default 0.5 s
was half a second of every test that stopped one."""


def serve_in_a_thread(server: socketserver.BaseServer) -> None:
    """Run ``server`` in a daemon thread until its ``shutdown()``."""
    threading.Thread(target=server.serve_forever, args=(SHUTDOWN_POLL,), daemon=True).start()


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
    serve_in_a_thread(server)
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
    serve_in_a_thread(server)
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


# --- a DNS server: unbound, with DNS over HTTPS ---------------------------------------------


def sbin_tool(name: str) -> str:
    """A tool that Debian installs in /usr/sbin, which a user's PATH may lack."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin") or require_tool(name)


def self_signed_certificate(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """``(cert.pem, key.pem)`` for ``host`` (an IP literal) and the name localhost."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def free_port(udp_too: bool = False) -> int:
    """A TCP port the kernel just handed out (and free for UDP too, when asked), for a peer
    that cannot be told to pick one (port 0)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            if not udp_too:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as same:
                try:
                    same.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def refusing_address() -> tuple[socket.socket, str]:
    """A bound port nobody listens on: connections to it are refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


class Unbound:
    """unbound on loopback: DNS over HTTPS (``doh_url``, ``cert``) and plain DNS (``dns_port``,
    UDP and TCP), serving ``records`` (name -> (address, ttl)) from static local zones (each
    name's parent), so names it does not list there are NXDOMAIN and nothing is recursed."""

    def __init__(self, folder: Path, records: dict[str, tuple[str, int]]) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = self_signed_certificate(folder)
        self.records = records
        self.proc: subprocess.Popen | None = None
        for _ in range(5):  # the ports are picked before unbound binds them: retry a race
            self.https_port, self.dns_port = free_port(), free_port(udp_too=True)
            if self._start():
                return
        raise AssertionError("unbound did not start:\n" + self.log())

    @property
    def doh_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}/dns-query"

    def _config(self) -> str:
        zones = "\n".join(
            f'  local-zone: "{zone}." static'
            for zone in sorted({name.partition(".")[2] for name in self.records})
        )
        data = "\n".join(
            f'  local-data: "{name}. {ttl} IN {"AAAA" if ":" in address else "A"} {address}"'
            for name, (address, ttl) in self.records.items()
        )
        return f"""server:
  interface: 127.0.0.1@{self.https_port}
  interface: 127.0.0.1@{self.dns_port}
  https-port: {self.https_port}
  port: {self.dns_port}
  tls-service-key: "{self.key}"
  tls-service-pem: "{self.cert}"
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "{self.folder}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 1
  num-threads: 1
  access-control: 127.0.0.0/8 allow
  extended-statistics: yes
  module-config: "iterator"
{zones}
{data}
remote-control:
  control-enable: yes
  control-interface: "{self.folder / "control.sock"}"
  control-use-cert: no
"""

    def _start(self) -> bool:
        config = self.folder / "unbound.conf"
        config.write_text(self._config())
        self.config = config
        self.stderr = (self.folder / "unbound.log").open("a")  # every attempt's reasons
        self.proc = subprocess.Popen(
            [sbin_tool("unbound"), "-d", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self.stderr,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if "start of service" in self.log():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        self.stop()
        return False

    def log(self) -> str:
        return (self.folder / "unbound.log").read_text()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def statistics(self) -> dict[str, float]:
        """unbound's counters (``unbound-control stats_noreset``), e.g. ``num.query.https``."""
        out = subprocess.run(
            [sbin_tool("unbound-control"), "-c", str(self.config), "stats_noreset"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return {
            key: float(value)
            for key, _, value in (line.partition("=") for line in out.splitlines())
        }

    def https_connections(self) -> int:
        """TCP connections established to the DoH port right now (counted by ``ss``)."""
        out = subprocess.run(
            [require_tool("ss"), "-Htn", "state", "established", f"( sport = :{self.https_port} )"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return len(out.splitlines())


def curl_socks(
    socks: str, url: str, *extra: str, timeout: float = 30
) -> subprocess.CompletedProcess:
    """curl through the SOCKS5 proxy at ``socks`` (``HOST:PORT``), the name resolved by the
    proxy (``--socks5-hostname``); the result as it is, failures included."""
    return subprocess.run(
        [require_tool("curl"), "-sS", "--max-time", str(timeout), "--socks5-hostname", socks]
        + [*extra, url],
        capture_output=True,
        timeout=timeout + 5,
    )


def poll_until(condition: Callable[[], T], timeout: float = 15.0, what: object = "condition") -> T:
    """``condition()``'s value once it is true, checked every 50 ms; fail after ``timeout``,
    saying ``what`` (as it reads then: a ``Flood`` gives its counters)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def count_lines(process: Process, pattern: str, at_least: int = 0, timeout: float = 5.0) -> int:
    """Log lines matching ``pattern``, once there are ``at_least`` (or ``timeout`` passed): a
    line reaches us through a pipe a little after what it reports (a socket closed)."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        count = sum(1 for line in list(process.lines) if regex.search(line))
        if count >= at_least or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def wait_for_access(process: Process, timeout: float = START_TIMEOUT, **expected) -> dict:
    """The first record of ``process``'s access log (the JSON lines of the ``gjproxy.access``
    logger) whose fields have the ``expected`` values; a string is a regular expression that
    the field's text must match whole."""
    deadline = time.monotonic() + timeout
    while True:
        for line in list(process.lines):
            _, marker, text = line.partition("gjproxy.access: ")
            if not marker or not text.startswith("{"):
                continue
            record = json.loads(text)
            if all(
                re.fullmatch(value, str(record.get(key)))
                if isinstance(value, str)
                else record.get(key) == value
                for key, value in expected.items()
            ):
                return record
        if time.monotonic() > deadline:
            raise AssertionError(f"no access record with {expected}:\n" + process.log())
        time.sleep(0.05)


def read_json_lines(path: Path, count: int, timeout: float = 10.0) -> list[dict]:
    """Every JSON line of ``path``, once there are at least ``count`` (or ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)


def scrape_metrics(port: int) -> dict[str, float]:
    """The samples of a server's Prometheus page: ``name{label=value}`` -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name + "".join(f"{{{k}={v}}}" for k, v in sorted(sample.labels.items())): (
            sample.value
        )
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# --- floods -----------------------------------------------------------------------------------


IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # 24 on Linux


class Flood:
    """Connections to ``port`` that never log in, from ``sources``, reopened when dropped.

    Half stay silent; the other half trickle ``trickle`` one byte per ``pace`` seconds (a
    hello that would take longer than any deadline). One thread drives them all with
    non-blocking connects, so a server slow to accept never stalls the rest, until ``stop()``;
    ``opened`` and ``dropped`` count what happened meanwhile, ``failed`` the connects that did
    not complete (each is retried at the next ``pace``).
    """

    CONNECT_TIMEOUT = 2.0

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
        self.opened = self.dropped = self.failed = 0
        self.last_error: OSError | None = None
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

    def __str__(self) -> str:
        return (
            f"flood of {self.count}: opened {self.opened}, dropped {self.dropped}, "
            f"failed {self.failed} (last error: {self.last_error})"
        )

    def _start_connect(self, slot: int) -> socket.socket | None:
        """A socket from the slot's source with its connect under way, or None."""
        try:
            sock = socket.socket()
        except OSError as error:
            self.failed, self.last_error = self.failed + 1, error
            return None
        try:
            # the port is chosen at connect, knowing the destination: churning thousands of
            # connections from one address never runs out of ports that bind() would choose
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((self.sources[slot % len(self.sources)], 0))
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", self.port))
        except OSError as error:
            sock.close()
            self.failed, self.last_error = self.failed + 1, error
            return None
        return sock

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        socks: dict[int, socket.socket] = {}
        connecting: dict[int, float] = {}  # slot -> when its connect must have completed
        sent: dict[int, int] = {}

        def close(slot: int) -> None:
            sock = socks.pop(slot, None)
            if sock is not None:
                selector.unregister(sock)
                sock.close()
            connecting.pop(slot, None)

        def reopen(slot: int) -> None:
            close(slot)
            sent[slot] = 0
            sock = self._start_connect(slot)
            if sock is not None:
                socks[slot] = sock
                connecting[slot] = time.monotonic() + self.CONNECT_TIMEOUT
                selector.register(sock, selectors.EVENT_WRITE, slot)

        def connected(slot: int) -> None:
            error = socks[slot].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self.failed, self.last_error = self.failed + 1, OSError(error, os.strerror(error))
                close(slot)
                return
            del connecting[slot]
            selector.modify(socks[slot], selectors.EVENT_READ, slot)
            self.opened += 1

        def readable(slot: int) -> None:
            try:
                alive = socks[slot].recv(4096) != b""
            except BlockingIOError:
                alive = True
            except OSError:
                alive = False
            if not alive:
                self.dropped += 1
                reopen(slot)

        def tick() -> None:
            """Retry what is not connected, give up on late connects, trickle one byte."""
            now = time.monotonic()
            for slot in range(self.count):
                if slot not in socks:
                    reopen(slot)
                elif slot in connecting:
                    if connecting[slot] < now:
                        self.failed, self.last_error = self.failed + 1, TimeoutError("connect")
                        reopen(slot)
                elif slot % 2 == 0:
                    try:
                        socks[slot].send(self.trickle[sent[slot] % len(self.trickle) :][:1])
                        sent[slot] += 1
                    except BlockingIOError:
                        pass
                    except OSError:
                        self.dropped += 1
                        reopen(slot)

        for slot in range(self.count):
            if self._stop.is_set():
                break
            reopen(slot)
        next_tick = time.monotonic()
        while not self._stop.is_set():
            for key, _ in selector.select(timeout=0.05):
                if socks.get(key.data) is not key.fileobj:
                    continue  # closed and reopened earlier in this batch
                if key.data in connecting:
                    connected(key.data)
                else:
                    readable(key.data)
            if time.monotonic() >= next_tick:
                next_tick += self.pace
                tick()
        for slot in list(socks):
            close(slot)
        selector.close()


class CountingEcho:
    """An echo server on ``host`` that counts the connections it accepted."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.accepted = 0
        self.server = serve_tcp(self._handle, host)
        self.port = self.server.server_address[1]

    def _handle(self, sock: socket.socket) -> None:
        self.accepted += 1
        echo(sock)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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
