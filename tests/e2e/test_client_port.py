"""The client's one port with real programs: curl (HTTP proxy, CONNECT, SOCKS4/4a/5), wget,
git, pip, Chromium; routing rules seen in both access logs; REJECT; forwards; hostile input."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.peers import (
    HEADLESS_CHROMIUM,
    Process,
    read_json_lines,
    require_tool,
    self_signed_certificate,
    serve_files,
    start_client,
    start_server,
)

TIMEOUT = 60


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    """Plain HTTP on 127.0.0.1 and TLS on 127.0.0.1, with two files."""
    root = tmp_path_factory.mktemp("www")
    (root / "small").write_bytes(os.urandom(1000))
    (root / "big").write_bytes(os.urandom(3_000_000))
    plain = serve_files(root)
    tls = serve_files(root)
    cert, key = self_signed_certificate(root)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    plain.root, plain.cert, plain.tls_port = root, cert, tls.server_address[1]
    yield plain
    plain.shutdown()
    tls.shutdown()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, key_pair):
    """A server with an access log, and a client whose rules send 127.0.0.2 DIRECT and reject
    a name and port 25."""
    workdir = tmp_path_factory.mktemp("front")
    shutil.copy(key_pair / "key.dat", workdir / "key.dat")
    (workdir / "key.dat").chmod(0o600)
    shutil.copytree(key_pair / "users", workdir / "users")
    server = start_server(workdir, "--access-log", str(workdir / "server.log"))
    client = start_client(
        workdir,
        server.port,
        "--access-log",
        str(workdir / "client.log"),
        "--rule",
        "IP-CIDR,127.0.0.2/32,DIRECT",
        "--rule",
        "DOMAIN-SUFFIX,blocked.test,REJECT",
        "--rule",
        "DST-PORT,25,REJECT",
    )
    client.workdir = workdir
    for process in (server, client):  # they serve the whole module: this fixture stops them
        Process.started.remove(process)
    try:
        yield client
    finally:
        stop(client, server)


def stop(*processes: Process) -> None:
    """Stop the processes; a traceback in a log is a defect whatever the test did."""
    for process in processes:
        process.stop()
    for process in processes:
        assert "Traceback" not in process.log(), process.log()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hash(www, name: str) -> str:
    return sha((www.root / name).read_bytes())


def run(
    *args: str, env: dict | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, capture_output=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def curl(*args: str) -> subprocess.CompletedProcess:
    return run(require_tool("curl"), "-sS", "--max-time", "30", *args)


def records(path: Path, count: int, **expected) -> list[dict]:
    found = [
        record
        for record in read_json_lines(path, count)
        if all(record.get(key) == value for key, value in expected.items())
    ]
    return found


def test_curl_speaks_every_protocol_on_one_port(proxy, www):
    port = www.server_address[1]
    url = f"http://127.0.0.1:{port}/big"
    expected = file_hash(www, "big")
    for flags in (
        ["-x", f"http://127.0.0.1:{proxy.port}"],
        ["-p", "-x", f"http://127.0.0.1:{proxy.port}"],  # CONNECT to an http target
        ["--socks4", f"127.0.0.1:{proxy.port}"],
        ["--socks4a", f"127.0.0.1:{proxy.port}"],
        ["--socks5-hostname", f"127.0.0.1:{proxy.port}"],
    ):
        done = curl(*flags, url)
        assert done.returncode == 0, (flags, done.stderr)
        assert sha(done.stdout) == expected, flags
    https = f"https://localhost:{www.tls_port}/small"
    done = curl("-x", f"http://127.0.0.1:{proxy.port}", "--cacert", str(www.cert), https)
    assert done.returncode == 0, done.stderr
    assert sha(done.stdout) == file_hash(www, "small")
    log = proxy.workdir / "client.log"
    assert records(log, 6, service="http", target=f"localhost:{www.tls_port}", route="TUNNEL")
    assert records(log, 6, service="socks4", route="TUNNEL", rule="MATCH,TUNNEL")


def test_keep_alive_reaches_two_hosts_on_one_connection(proxy, www):
    port = www.server_address[1]
    first = f"http://127.0.0.1:{port}/small"
    second = f"http://localhost:{port}/big"
    done = curl("-x", f"http://127.0.0.1:{proxy.port}", "-v", first, "-o", "/dev/null", second)
    assert done.returncode == 0, done.stderr
    assert sha(done.stdout) == file_hash(www, "big")
    assert b"Re-using existing connection" in done.stderr or b"Reusing" in done.stderr


def test_pipelined_requests_are_answered_in_order(proxy, www):
    port = www.server_address[1]
    request = (
        f"GET http://127.0.0.1:{port}/small HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
        f"GET http://127.0.0.1:{port}/big HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
        sock.sendall(request)
        data = _read_all(sock)
    heads = data.count(b"HTTP/1.1 200")
    assert heads == 2
    small, big = (www.root / "small").read_bytes(), (www.root / "big").read_bytes()
    assert data.index(small) < data.index(big[:1000])


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_direct_rule_bypasses_the_server_and_tunnel_does_not(proxy, www):
    port = www.server_address[1]
    direct = serve_files(www.root, host="127.0.0.2")
    try:
        direct_port = direct.server_address[1]
        done = curl("-x", f"http://127.0.0.1:{proxy.port}", f"http://127.0.0.2:{direct_port}/small")
        assert done.returncode == 0, done.stderr
        assert sha(done.stdout) == file_hash(www, "small")
        done = curl("--socks5", f"127.0.0.1:{proxy.port}", f"http://127.0.0.1:{port}/small?t")
        assert sha(done.stdout) == file_hash(www, "small")
    finally:
        direct.shutdown()
    client_log = proxy.workdir / "client.log"
    assert records(client_log, 2, target=f"127.0.0.2:{direct_port}", route="DIRECT")
    server_records = read_json_lines(proxy.workdir / "server.log", 1)
    assert any(record["target"] == f"127.0.0.1:{port}" for record in server_records)
    assert not any(record["target"].startswith("127.0.0.2:") for record in server_records)


def test_reject_rule_gets_403_and_socks_0x02(proxy):
    done = curl("-x", f"http://127.0.0.1:{proxy.port}", "-i", "http://www.blocked.test/")
    assert done.stdout.startswith(b"HTTP/1.1 403"), done.stdout
    assert b"DOMAIN-SUFFIX,blocked.test,REJECT" in done.stdout
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        sock.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x19")  # 127.0.0.1:25
        assert sock.recv(10)[:2] == b"\x05\x02"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"\x04\x01\x00\x19\x7f\x00\x00\x01\x00")
        assert sock.recv(8)[:2] == b"\x00\x5b"


def test_server_egress_refusal_names_the_option(workdir):
    server = start_server(workdir, allow_loopback=False)
    client = start_client(workdir, server.port)
    try:
        done = curl("-x", f"http://127.0.0.1:{client.port}", "-i", "http://127.0.0.1:9/")
        assert done.stdout.startswith(b"HTTP/1.1 403"), done.stdout
        assert b"--allow-egress" in done.stdout
        done = curl("-x", f"http://127.0.0.1:{client.port}", "-i", "http://no.such.invalid/")
        assert done.stdout.startswith(b"HTTP/1.1 502"), done.stdout
    finally:
        stop(client, server)


def test_basic_auth_wrong_and_right(workdir, www):
    server = start_server(workdir)
    client = start_client(
        workdir, server.port, "--socks-user", "ann", env={"GJPROXY_SOCKS_PASSWORD": "s3cret"}
    )
    url = f"http://127.0.0.1:{www.server_address[1]}/small"
    try:
        done = curl("-x", f"http://127.0.0.1:{client.port}", "-i", url)
        assert done.stdout.startswith(b"HTTP/1.1 407"), done.stdout
        assert b'proxy-authenticate: Basic realm="gjproxy"' in done.stdout
        done = curl("-x", f"http://ann:wrong@127.0.0.1:{client.port}", "-i", url)
        assert done.stdout.startswith(b"HTTP/1.1 407"), done.stdout
        done = curl("-x", f"http://ann:s3cret@127.0.0.1:{client.port}", url)
        assert sha(done.stdout) == file_hash(www, "small")
        done = curl("-x", f"http://ann:s3cret@127.0.0.1:{client.port}", "-p", url)
        assert sha(done.stdout) == file_hash(www, "small")
    finally:
        stop(client, server)


def test_forwards_tcp_and_dns_over_udp(workdir, www, unbound):
    import dns.message
    import dns.query

    server = start_server(workdir)
    tcp_port, udp_port = _free_port(), _free_port(socket.SOCK_DGRAM)
    web = www.server_address[1]
    client = start_client(
        workdir,
        server.port,
        "--forward",
        f"{tcp_port}:127.0.0.1:{web}",
        "--forward-udp",
        f"127.0.0.1:{udp_port}:127.0.0.1:{unbound.dns_port}",
    )
    try:
        done = curl(f"http://127.0.0.1:{tcp_port}/big")
        assert sha(done.stdout) == file_hash(www, "big")
        query = dns.message.make_query("web.tunnel.test", "A")
        answer = dns.query.udp(query, "127.0.0.1", port=udp_port, timeout=10)
        assert [item.address for item in answer.answer[0]] == ["127.0.0.1"]
    finally:
        stop(client, server)


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_wget_and_git_through_http_proxy(proxy, www, tmp_path):
    port = www.server_address[1]
    env = {"http_proxy": f"http://127.0.0.1:{proxy.port}", "no_proxy": ""}
    wget = require_tool("wget")
    target = tmp_path / "got"
    done = run(wget, "-q", "-O", str(target), f"http://127.0.0.1:{port}/big", env=env)
    assert done.returncode == 0, done.stderr
    assert sha(target.read_bytes()) == file_hash(www, "big")
    git = require_tool("git")
    repo = www.root / "repo.git"
    if not repo.exists():
        source = tmp_path / "source"
        source.mkdir()
        (source / "data").write_bytes(os.urandom(5000))
        for command in (
            ["init", "-q"],
            ["add", "data"],
            ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one"],
        ):
            subprocess.run([git, *command], cwd=source, check=True)
        subprocess.run([git, "clone", "-q", "--bare", str(source), str(repo)], check=True)
        subprocess.run([git, "update-server-info"], cwd=repo, check=True)
    clone = tmp_path / "clone"
    done = run(
        git,
        "-c",
        f"http.proxy=http://127.0.0.1:{proxy.port}",
        "clone",
        "-q",
        f"http://127.0.0.1:{port}/repo.git",
        str(clone),
    )
    assert done.returncode == 0, done.stderr
    assert sha((clone / "data").read_bytes()) == sha(
        subprocess.run(
            [git, "--git-dir", str(repo), "show", "HEAD:data"], capture_output=True, check=True
        ).stdout
    )


def test_pip_download_through_http_proxy(proxy, www, tmp_path):
    port = www.server_address[1]
    index = www.root / "simple"
    if not index.exists():
        package = tmp_path / "pkg"
        (package / "tinyfront").mkdir(parents=True)
        (package / "tinyfront" / "__init__.py").write_text("VALUE = 1\n")
        (package / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
            '[project]\nname = "tinyfront"\nversion = "1.0"\n'
        )
        wheels = tmp_path / "wheels"
        built = run(
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(package),
            timeout=120,
        )
        assert built.returncode == 0, built.stderr
        (wheel,) = wheels.iterdir()
        (index / "tinyfront").mkdir(parents=True)
        shutil.copy(wheel, index / "tinyfront" / wheel.name)
        (index / "tinyfront" / "index.html").write_text(
            f'<html><body><a href="{wheel.name}">{wheel.name}</a></body></html>'
        )
    out = tmp_path / "dl"
    done = run(
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--index-url",
        f"http://127.0.0.1:{port}/simple/",
        "--trusted-host",
        f"127.0.0.1:{port}",
        "-d",
        str(out),
        "tinyfront",
        env={"http_proxy": f"http://127.0.0.1:{proxy.port}", "no_proxy": "", "NO_PROXY": ""},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (got,) = out.iterdir()
    assert sha(got.read_bytes()) == sha((index / "tinyfront" / got.name).read_bytes())
    assert records(proxy.workdir / "client.log", 1, service="http", target=f"127.0.0.1:{port}")


def _chromium(*args: str, tmp_path: Path) -> str:
    chromium = require_tool("chromium")
    done = run(
        chromium,
        *HEADLESS_CHROMIUM,
        f"--user-data-dir={tmp_path / 'chrome'}",
        *args,
        timeout=90,
    )
    return done.stdout.decode("utf-8", "replace")


def test_chromium_with_proxy_server_and_with_the_pac_file(proxy, www, tmp_path):
    marker = os.urandom(8).hex()
    (www.root / "page.html").write_text(f"<html><body><p>{marker}</p></body></html>")
    port = www.server_address[1]
    page = _chromium(
        f"--proxy-server=http://127.0.0.1:{proxy.port}",
        "--proxy-bypass-list=<-loopback>",
        "--dump-dom",
        f"http://127.0.0.1:{port}/page.html",
        tmp_path=tmp_path,
    )
    assert marker in page
    pac = curl(f"http://127.0.0.1:{proxy.port}/proxy.pac")
    assert b"FindProxyForURL" in pac.stdout and b"isInNet" not in pac.stdout
    direct = serve_files(www.root, host="127.0.0.2")
    try:
        direct_port = direct.server_address[1]
        page = _chromium(
            f"--proxy-pac-url=http://127.0.0.1:{proxy.port}/proxy.pac",
            "--proxy-bypass-list=<-loopback>",
            "--dump-dom",
            f"http://127.0.0.2:{direct_port}/page.html",
            tmp_path=tmp_path,
        )
    finally:
        direct.shutdown()
    assert marker in page
    # The PAC said DIRECT: the browser went straight there, the proxy saw no request for it.
    client_records = read_json_lines(proxy.workdir / "client.log", 1)
    assert not any(record["target"] == f"127.0.0.2:{direct_port}" for record in client_records)


# --- hostile input -----------------------------------------------------------------------


def _exchange(port: int, data: bytes, timeout: float = 20) -> tuple[bytes, float]:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            answer = _read_all(sock)
        except ConnectionResetError:
            answer = b""
    return answer, time.monotonic() - started


def test_hostile_input_gets_an_answer_or_a_close_and_others_go_on(proxy, www):
    port = www.server_address[1]
    target = f"http://127.0.0.1:{port}/small"
    answer, _ = _exchange(proxy.port, b"\x16\x03\x01garbage" * 10)
    assert answer == b""
    head = b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: a\r\nX-Fill: " + b"y" * 70_000
    for oversized in (head + b"\r\n\r\n", head):  # whole, and still growing
        answer, _ = _exchange(proxy.port, oversized)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    both = (
        f"POST {target} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n"
    ).encode()
    answer, _ = _exchange(proxy.port, both)
    assert answer.startswith(b"HTTP/1.1 400") and answer.count(b"HTTP/1.1") == 1, answer
    bad_chunk = (
        f"POST {target} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nxx\r\n"
    ).encode()
    answer, _ = _exchange(proxy.port, bad_chunk)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    answer, _ = _exchange(proxy.port, b"NOT A REQUEST\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer

    slow = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    slow.sendall(b"GET http://127.0.0.1/ HTTP/1.1\r\n")
    started = time.monotonic()
    # meanwhile another user goes on
    done = curl("-x", f"http://127.0.0.1:{proxy.port}", target)
    assert sha(done.stdout) == file_hash(www, "small")
    answer = _read_all(slow)
    slow.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert 8 <= time.monotonic() - started <= 20
    metrics_seen = json.dumps(read_json_lines(proxy.workdir / "client.log", 1))
    assert "127.0.0.1" in metrics_seen


def test_unrecognized_bytes_are_counted(workdir):
    from tests.peers import scrape_metrics

    server = start_server(workdir)
    metrics_port = _free_port()
    client = start_client(workdir, server.port, "--metrics", f"127.0.0.1:{metrics_port}")
    try:
        for _ in range(3):
            assert _exchange(client.port, b"\x00\x01\x02\x03")[0] == b""
        samples = scrape_metrics(metrics_port)
        assert samples["gjproxy_client_unrecognized_connections_total"] == 3
    finally:
        stop(client, server)


def test_route_command_prints_the_decision(tmp_path):
    config = tmp_path / "client.toml"
    config.write_text('[client]\nrules = ["DOMAIN-SUFFIX,corp.example,DIRECT", "MATCH,REJECT"]\n')
    done = run(
        sys.executable, "-m", "jproxy", "route", "--config", str(config), "db.corp.example:5432"
    )
    assert done.stdout.decode().strip() == (
        "db.corp.example:5432 -> DIRECT (rule: DOMAIN-SUFFIX,corp.example,DIRECT)"
    )
    done = run(sys.executable, "-m", "jproxy", "route", "--config", str(config), "example.org")
    assert done.stdout.decode().strip() == "example.org:443 -> REJECT (rule: MATCH,REJECT)"


def test_sighup_reloads_the_rules(workdir, www):
    config = workdir / "client.toml"
    config.write_text('[client]\nrules = ["IP-CIDR,127.0.0.1/32,REJECT"]\n')
    server = start_server(workdir)
    client = start_client(workdir, server.port, "--config", str(config))
    url = f"http://127.0.0.1:{www.server_address[1]}/small"
    try:
        done = curl("-x", f"http://127.0.0.1:{client.port}", "-i", url)
        assert done.stdout.startswith(b"HTTP/1.1 403"), done.stdout
        config.write_text('[client]\nrules = ["IP-CIDR,127.0.0.1/32,TUNNEL"]\n')
        client.proc.send_signal(signal.SIGHUP)
        client.wait_for(r"SIGHUP: \[client\] rules: IP-CIDR,127.0.0.1/32,REJECT -> IP-CIDR")
        done = curl("-x", f"http://127.0.0.1:{client.port}", url)
        assert sha(done.stdout) == file_hash(www, "small")
        config.write_text("[client]\nrules = [\n")  # broken: the rules in use stay
        client.proc.send_signal(signal.SIGHUP)
        client.wait_for(r"SIGHUP: .* refused, the running config stays: .*not valid TOML")
        done = curl("-x", f"http://127.0.0.1:{client.port}", url)
        assert sha(done.stdout) == file_hash(www, "small")
    finally:
        stop(client, server)


def test_udp_destinations_follow_the_rules(workdir):
    import socks

    from tests.peers import UdpEcho

    server = start_server(workdir, "--access-log", str(workdir / "server.log"))
    echo = UdpEcho("127.0.0.1")
    rejected = UdpEcho("127.0.0.1")
    tunnelled = UdpEcho("::1")
    client = start_client(
        workdir,
        server.port,
        "--access-log",
        str(workdir / "client.log"),
        "--rule",
        f"DST-PORT,{rejected.address[1]},REJECT",
        "--rule",
        "IP-CIDR,127.0.0.1/32,DIRECT",
    )
    sock = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.set_proxy(socks.SOCKS5, "127.0.0.1", client.port)
    sock.settimeout(10)
    try:
        sock.sendto(b"to the rejected one", rejected.address)
        sock.sendto(b"hello", echo.address)
        assert sock.recvfrom(65535)[0] == b"hello"
        sock.sendto(b"through", tunnelled.address)
        assert sock.recvfrom(65535)[0] == b"through"
        assert rejected.received == 0
    finally:
        sock.close()
        stop(client, server)
        for peer in (echo, rejected, tunnelled):
            peer.close()
    log = workdir / "client.log"
    target = f"127.0.0.1:{echo.address[1]}"
    assert records(log, 3, transport="udp", target=target, service="direct", route="DIRECT")
    assert records(log, 3, target=f"127.0.0.1:{rejected.address[1]}", route="REJECT")
    through = f"[::1]:{tunnelled.address[1]}"
    assert records(log, 3, target=through, route="TUNNEL", rule="MATCH,TUNNEL", bytes_up=7)
    server_records = read_json_lines(workdir / "server.log", 1)
    assert any(record["target"] == through for record in server_records)
    assert not any(record["target"] == target for record in server_records)


class _Digest(http.server.BaseHTTPRequestHandler):
    """POST: answers the SHA-256 of the body (Content-Length or chunked), chunked itself."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        digest = hashlib.sha256()
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().split(b";")[0], 16):
                digest.update(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
        else:
            digest.update(self.rfile.read(int(self.headers["Content-Length"])))
        answer = digest.hexdigest().encode()
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in (answer[:10], answer[10:]):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args) -> None:
        pass


def test_request_bodies_with_length_expect_and_chunked(proxy, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Digest)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    body = tmp_path / "body"
    body.write_bytes(os.urandom(2_500_000))  # over 1 MB: curl sends Expect: 100-continue
    url = f"http://127.0.0.1:{server.server_address[1]}/up"
    try:
        for extra in ([], ["-H", "Transfer-Encoding: chunked"]):
            done = curl(
                "-v",
                "-x",
                f"http://127.0.0.1:{proxy.port}",
                "--data-binary",
                f"@{body}",
                *extra,
                url,
            )
            assert done.returncode == 0, done.stderr
            assert done.stdout.decode() == sha(body.read_bytes())
            if not extra:  # the proxy answered the expectation: curl did not wait it out
                assert b"< HTTP/1.1 100 Continue" in done.stderr, done.stderr
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--rule", "DOMAIN,x", "--rule: rule 'DOMAIN,x': expected DOMAIN,VALUE,ACTION"),
        ("--forward", "abc", "--forward: expected [BIND:]PORT:HOST:PORT, got 'abc'"),
    ],
)
def test_bad_rules_and_forwards_are_one_line_and_status_2(tmp_path, flag, value, says):
    done = run(sys.executable, "-m", "jproxy", "client", flag, value)
    assert done.returncode == 2
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and says in lines[0], lines
