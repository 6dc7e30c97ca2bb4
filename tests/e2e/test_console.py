"""The live console of real ``gjproxy`` processes: the page in Debian's Chromium (driven by
playwright-python, never its own browser download), the API against a known mix of traffic,
``gjproxy status``, and hostile console clients that must not slow the tunnel."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests.clients import curl, recv_exactly, socks_connect
from tests.peers import (
    HEADLESS_CHROMIUM,
    Process,
    echo,
    poll_until,
    require_tool,
    serve_tcp,
    start_client,
    start_server,
)

SECRET = "console-test-secret"
ENV = {"GJPROXY_CONSOLE_SECRET": SECRET}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = list(HEADLESS_CHROMIUM)
CONSOLE_LINE = r"console on http://127\.0\.0\.1:(\d+)/ui/"


def with_console(process: Process) -> Process:
    process.console = int(process.wait_for(CONSOLE_LINE).group(1))
    return process


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, key_pair):
    """A server and a client, each with its console on a free loopback port."""
    workdir = tmp_path_factory.mktemp("console")
    shutil.copy2(key_pair / "key.dat", workdir / "key.dat")
    shutil.copytree(key_pair / "users", workdir / "users")
    server = with_console(start_server(workdir, "--console", "127.0.0.1:0", env=ENV))
    client = with_console(start_client(workdir, server.port, "--console", "127.0.0.1:0", env=ENV))
    for process in (server, client):  # they outlive each test: this fixture stops them
        Process.started.remove(process)
    yield server, client
    client.stop()
    server.stop()
    for process in (server, client):
        assert "Traceback" not in process.log(), process.log()


def api(port: int, path: str, secret: str = SECRET, method: str = "GET") -> tuple[int, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        headers={"Authorization": f"Bearer {secret}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read()
            return answer.status, json.loads(body) if body else None
    except urllib.error.HTTPError as error:
        return error.code, None


def trickle(sock: socket.socket) -> None:
    """An HTTP download that lasts: 16 KiB every 20 ms, for up to 60 s."""
    sock.recv(4096)
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
    block = bytes(16384)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sock.sendall(block)
        time.sleep(0.02)


@pytest.fixture(scope="module")
def slow_target():
    server = serve_tcp(trickle)
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def echo_target():
    server = serve_tcp(echo)
    yield server
    server.shutdown()


def rate_limited_curl(socks_port: int, url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [require_tool("curl"), "-sS", "--limit-rate", "4M", "--max-time", "60"]
        + ["--socks5-hostname", f"127.0.0.1:{socks_port}", "-o", "/dev/null", url],
        stderr=subprocess.PIPE,
        text=True,
    )


# --- the page in a real browser -------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    require_tool(CHROMIUM)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def distinct_colours(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 20) or ())


def test_the_page_shows_a_download_live_and_its_close_button_resets_it(
    proxy, browser, slow_target, tmp_path
):
    server, client = proxy
    target_port = slow_target.server_address[1]
    download = rate_limited_curl(client.port, f"http://127.0.0.1:{target_port}/slow")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(f"http://127.0.0.1:{client.console}/?token={SECRET}")
        assert "token=" not in page.url  # the secret went to sessionStorage, not the history
        row = page.locator("#connections tbody tr", has_text=f"127.0.0.1:{target_port}")
        row.wait_for(timeout=15000)
        first = int(row.get_attribute("data-download"))
        page.wait_for_function(
            f"""() => {{
                const row = [...document.querySelectorAll('#connections tbody tr')]
                    .find((r) => r.textContent.includes('127.0.0.1:{target_port}'));
                return row && Number(row.dataset.download) > {first};
            }}""",
            timeout=15000,
        )
        page.wait_for_function(
            "() => Number(document.getElementById('chart').dataset.points) >= 3", timeout=15000
        )
        tunnel = page.locator("#tunnels tbody tr").first
        assert tunnel.get_attribute("data-state") == "up"
        assert f"127.0.0.1:{server.port}" in tunnel.inner_text()
        shot = tmp_path / "console.png"
        page.screenshot(path=str(shot), full_page=True)
        assert distinct_colours(shot) > 50, "the screenshot looks blank"
        page.fill("#filter", "no-such-host")  # filtered out, then back
        page.locator("#connections tbody tr").first.wait_for(state="detached", timeout=5000)
        page.fill("#filter", str(target_port))
        row.wait_for(timeout=5000)
        page.click("#connections th[data-key=download]")  # sorted by it, largest first
        assert "sorted" in page.get_attribute("#connections th[data-key=download]", "class")
        row.locator("button.close").click()
        _, errors = download.communicate(timeout=15)
        assert download.returncode == 56, errors  # curl: "Recv failure: Connection reset"
        assert "reset" in errors.lower()
        row.wait_for(state="detached", timeout=15000)
    finally:
        download.kill()
        page.close()


def test_a_wrong_secret_gets_the_login_and_no_data(proxy, browser):
    server, _ = proxy
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"http://127.0.0.1:{server.console}/ui/?token=wrong")
        page.locator("#login").wait_for(state="visible", timeout=10000)
        assert "wrong" in page.inner_text("#login-why")
        assert page.locator("#console").is_hidden()
        assert page.locator("#tunnels tbody tr").count() == 0
        page.fill("#secret", SECRET)  # the right one opens the server's page, users included
        page.click("#login button")
        page.locator("#users tbody tr", has_text="alice").wait_for(timeout=10000)
    finally:
        context.close()


# --- the API against a known mix of traffic -------------------------------------------------


def test_the_api_reports_a_known_mix_of_traffic(proxy, web, echo_target):
    server, client = proxy
    echo_port = echo_target.server_address[1]
    assert len(curl(client.port, f"http://127.0.0.1:{web.server_port}/f65536")) == 65536
    refused = subprocess.run(
        [require_tool("curl"), "-sS", "--max-time", "10", "--socks5-hostname"]
        + [f"127.0.0.1:{client.port}", "http://10.1.2.3:8080/"],
        capture_output=True,
    )
    assert refused.returncode != 0
    sock = socks_connect(client.port, "127.0.0.1", echo_port)
    try:
        sock.sendall(b"x" * 1000)
        assert recv_exactly(sock, 1000) == b"x" * 1000
        source = f"127.0.0.1:{sock.getsockname()[1]}"

        def open_row(port: int):
            rows = api(port, "/api/connections")[1]["connections"]
            mine = [row for row in rows if row["destination"] == f"127.0.0.1:{echo_port}"]
            return mine[0] if mine and mine[0]["download"] == 1000 else None

        mine = poll_until(lambda: open_row(client.console), timeout=10, what="the client's row")
        assert (mine["source"], mine["upload"], mine["route"]) == (source, 1000, "tunnel")
        tunnels = api(client.console, "/api/tunnels")[1]["tunnels"]
        assert [t["state"] for t in tunnels] == ["up"] and mine["tunnel"] == tunnels[0]["id"]
        assert tunnels[0]["server"] == f"127.0.0.1:{server.port}"
        assert tunnels[0]["dialect"] == "3.1" and tunnels[0]["rtt_ms"] is not None
        assert tunnels[0]["channels"] >= 1
        theirs = poll_until(lambda: open_row(server.console), timeout=10, what="the server's row")
        assert (theirs["user"], theirs["upload"], theirs["network"]) == ("alice", 1000, "tcp")
        status, clash = api(client.console, "/connections")
        entry = next(c for c in clash["connections"] if c["id"] == mine["id"])
        assert entry["metadata"]["destinationPort"] == str(echo_port)
        assert entry["metadata"]["sourcePort"] == source.rpartition(":")[2]
        assert isinstance(entry["chains"], list) and entry["upload"] == 1000
        assert clash["downloadTotal"] >= 65536 + 1000
        for port in (client.console, server.console):
            notes = api(port, "/api/refusals")[1]["notes"]
            assert any(n["kind"] == "refused" and n["target"] == "10.1.2.3:8080" for n in notes), (
                notes
            )
        server_notes = api(server.console, "/api/refusals")[1]["notes"]
        assert any(n["user"] == "alice" and n["kind"] == "refused" for n in server_notes)
        # The server resets it: the application sees a reset, not a clean end.
        assert api(server.console, f"/connections/{theirs['id']}", method="DELETE")[0] == 204
        with pytest.raises(ConnectionResetError):
            while sock.recv(4096):
                pass
    finally:
        sock.close()


# --- gjproxy status -------------------------------------------------------------------------


def status(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jproxy", "status", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_gjproxy_status_says_up_then_down_with_its_exit_status(workdir):
    server = start_server(workdir)
    client = with_console(start_client(workdir, server.port, "--console", "127.0.0.1:0", env=ENV))
    (workdir / "client.toml").write_text(
        f'[client]\nconsole = "127.0.0.1:{client.console}"\nconsole_secret = "{SECRET}"\n'
    )
    try:
        up = status(workdir, "--config", "client.toml")
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"127.0.0.1:{server.port}" in up.stdout and " up " in up.stdout
        assert "open connections: 0" in up.stdout
        wrong = status(workdir, "--console", f"http://127.0.0.1:{client.console}/?token=no")
        assert wrong.returncode == 1 and "refused the secret" in wrong.stdout
        server.stop()
        client.wait_for(r"lost, reconnecting")

        def down() -> subprocess.CompletedProcess | None:
            result = status(workdir, "--config", "client.toml")
            return result if result.returncode == 1 else None

        result = poll_until(down, timeout=10, what="status exit 1")
        assert " down " in result.stdout, result.stdout
    finally:
        client.stop()
        server.stop()
    for process in (server, client):
        assert "Traceback" not in process.log(), process.log()


# --- hostile console clients ----------------------------------------------------------------


def timed_downloads(socks_port: int, web, count: int = 3) -> float:
    started = time.monotonic()
    for _ in range(count):
        assert len(curl(socks_port, f"http://127.0.0.1:{web.server_port}/f1000000")) == 1_000_000
    return time.monotonic() - started


def test_hostile_console_clients_are_bounded_and_never_slow_the_tunnel(proxy, web):
    _, client = proxy
    address = ("127.0.0.1", client.console)
    baseline = timed_downloads(client.port, web)
    hostile = []
    try:
        for _ in range(8):  # streams that are never read: the console drops or skips them
            sock = socket.create_connection(address, timeout=5)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET /api/events?token={SECRET} HTTP/1.1\r\nHost: c\r\n\r\n".encode())
            hostile.append(sock)
        for _ in range(40):  # idle connections past the cap, and a trickled head
            sock = socket.create_connection(address, timeout=5)
            sock.sendall(b"GET /api/")
            hostile.append(sock)
        flooded = timed_downloads(client.port, web)
        assert flooded < baseline * 3 + 2, (baseline, flooded)
        odd = socket.create_connection(address, timeout=5)
        odd.sendall(b"GET /" + b"%2e" * 10000 + b" HTTP/1.1\r\n\r\n")
        assert odd.recv(100).startswith((b"HTTP/1.1 503 ", b"HTTP/1.1 431 "))
        odd.close()
    finally:
        for sock in hostile:
            sock.close()
    assert poll_until(
        lambda: api(client.console, "/api/tunnels")[0] == 200, timeout=10, what="recovery"
    )
    odd = socket.create_connection(address, timeout=5)
    odd.sendall(b"GET /" + b"%2e" * 10000 + b" HTTP/1.1\r\n\r\n")
    assert odd.recv(100).startswith(b"HTTP/1.1 431 ")
    odd.close()


class EventReader(threading.Thread):
    """Reads the page's stream (Server-Sent Events) and keeps the last snapshot."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(f"GET /api/events?token={SECRET} HTTP/1.1\r\nHost: c\r\n\r\n".encode())
        self.messages = 0
        self.last: dict | None = None
        self.failure: Exception | None = None

    def run(self) -> None:
        buffer = b""
        try:
            while data := self.sock.recv(65536):
                buffer += data
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    _, marker, payload = event.partition(b"data: ")
                    if marker:
                        self.last = json.loads(payload)
                        self.messages += 1
        except OSError as error:
            self.failure = error


def test_the_page_stream_survives_a_thousand_connections_with_bounded_memory(proxy, echo_target):
    _, client = proxy
    echo_port = echo_target.server_address[1]
    reader = EventReader(client.console)
    reader.start()
    poll_until(lambda: reader.messages >= 1, timeout=10, what="a first snapshot")
    rss_before = client.rss_kib()

    def one(_: int) -> None:
        sock = socks_connect(client.port, "127.0.0.1", echo_port)
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
        sock.close()

    seen = reader.messages
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(one, range(1000)))
    # a snapshot taken after the connections, not the one before them (open 0 as well)
    poll_until(
        lambda: reader.messages > seen and reader.last["open"] == 0,
        timeout=10,
        what="every row gone",
    )
    assert reader.messages > seen and reader.is_alive(), reader.failure
    rss_growth = client.rss_kib() - rss_before
    assert rss_growth < 40 * 1024, f"RSS grew {rss_growth} KiB"
    reader.sock.close()
