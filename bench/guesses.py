"""Password guessing against a real ``gjproxy server``, and what a real login costs meanwhile.

Starts ``gjproxy server`` (admin port, plain SOCKS port with one ``[socks_users]`` user, real
scrypt parameters) and ``gjproxy client`` from the ``jproxy`` on PYTHONPATH, so the same script
measures any tree: ``PYTHONPATH=. python bench/guesses.py``. For each attack, 32 parallel
connections guess for 20 s while a real login is timed every second:

- plain SOCKS (RFC 1929): guesses from 127.0.0.1; real logins from 127.0.0.2, and from
  127.0.0.1 itself with the user's right password (proven once before the attack);
- admin: guesses from 127.0.0.3; the operator logs in from 127.0.0.2;
- admin through the tunnel: a tunnel user guesses the operator's own name through the client's
  SOCKS port (the server's connections reach the admin port from 127.0.0.1; ``--allow-egress``
  names the admin port, as the server's own ports are refused otherwise); the operator logs
  in directly from 127.0.0.1.

Prints guesses answered and guesses really checked (answered minus those the server turned
away unchecked, from its log), both per minute, and the real logins' times.
Bounded: about 2 minutes. Exits 0 whatever the numbers.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.flood import ADMIN_PASSWORD, ADMIN_USER, _logged, _table, _timed  # noqa: E402
from jproxy.admin.protocol import login_bytes, request_bytes  # noqa: E402
from jproxy.policy.passwords import hash_password  # noqa: E402
from jproxy.tunnel.keys import generate, save_client_key, save_user  # noqa: E402
from tests.peers import Process, _free_port, start_client, start_server  # noqa: E402

SECONDS = 20.0
PARALLEL = 32
SOCKS_USER, SOCKS_PASSWORD = "carol", "carol's real password"

Connect = Callable[[str], socket.socket]


def _direct(port: int) -> Connect:
    def connect(source: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))
        return sock

    return connect


def _through_tunnel(socks_port: int, port: int) -> Connect:
    """A connection to 127.0.0.1:``port`` made by the server for a tunnel user."""

    def connect(source: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", socks_port), timeout=20)
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        sock.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + port.to_bytes(2, "big"))
        reply = sock.recv(10)
        assert reply[:2] == b"\x05\x00", reply
        return sock

    return connect


def _admin(connect: Connect, password: str, source: str = "127.0.0.1") -> bytes:
    with connect(source) as sock:
        sock.sendall(login_bytes(ADMIN_USER, password) + request_bytes(6))
        return sock.recv(2)


def _socks(connect: Connect, password: str, source: str = "127.0.0.1") -> bytes:
    with connect(source) as sock:
        sock.sendall(b"\x05\x01\x02")
        if sock.recv(2) != b"\x05\x02":
            return b""
        user, secret = SOCKS_USER.encode(), password.encode()
        sock.sendall(bytes([1, len(user)]) + user + bytes([len(secret)]) + secret)
        return sock.recv(2)


def _attack(
    server: Process,
    title: str,
    guess: Callable[[str], bytes],
    real: dict[str, Callable[[], bytes]],
) -> None:
    before = len(server.lines)
    answered = [0]
    errors: dict[str, int] = {}
    stop = time.monotonic() + SECONDS

    def guesser(n: int) -> None:
        count = 0
        while time.monotonic() < stop:
            count += 1
            try:
                got = guess(f"guess-{n}-{count}")
            except (OSError, AssertionError) as error:
                got = type(error).__name__.encode()
                time.sleep(0.01)
            if got == b"\x01\x01":
                answered[0] += 1
            else:
                errors[repr(got)] = errors.get(repr(got), 0) + 1

    threads = [threading.Thread(target=guesser, args=(n,)) for n in range(PARALLEL)]
    for thread in threads:
        thread.start()
    time.sleep(1)

    def ok(action: Callable[[], bytes]) -> Callable[[], None]:
        def timed() -> None:
            assert action() == b"\x01\x00"

        return timed

    count = int(SECONDS - 3) // (len(real) or 1)
    rows = [(name, _timed(ok(action), count, pause=1.0)) for name, action in real.items()]
    for thread in threads:
        thread.join()
    time.sleep(11)  # the log limiter's window ends and it reports what it suppressed
    lines = server.lines[before:]
    turned_away = _logged(lines, "too many parallel logins", "too many parallel logins")
    per_minute = 60 / SECONDS
    print(
        f"\n{title}: {PARALLEL} parallel guessers for {SECONDS:g} s: "
        f"{answered[0] * per_minute:,.0f} guesses/min answered, "
        f"{(answered[0] - turned_away) * per_minute:,.0f}/min checked; other outcomes: {errors}"
    )
    _table("  real logins meanwhile", rows)


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="gjproxy-guesses-"))
    key, record = generate("alice")
    save_client_key(key, workdir / "key.dat")
    save_user(record, workdir / "users")
    (workdir / "gjproxy.toml").write_text(
        f'[socks_users]\n{SOCKS_USER} = "{hash_password(SOCKS_PASSWORD)}"\n'
    )
    env = {"GJPROXY_ADMIN_USER": ADMIN_USER, "GJPROXY_ADMIN_PASSWORD": ADMIN_PASSWORD}
    admin_port = _free_port()
    admin = f"127.0.0.1:{admin_port}"  # named, so that tunnel users may reach it
    server = start_server(
        workdir, "--config", "gjproxy.toml", "--admin", admin, "--allow-egress", admin,
        "--socks", "127.0.0.1:0", env=env,
    )  # fmt: skip
    socks_port = int(server.wait_for(r"plain SOCKS5 listening on [\d.]+:(\d+)").group(1))
    client = start_client(workdir, server.port)
    print(f"jproxy from {sys.modules['jproxy'].__file__}")
    try:
        socks = _direct(socks_port)
        assert _socks(socks, SOCKS_PASSWORD) == b"\x01\x00"  # proven once
        _attack(
            server,
            "plain SOCKS port",
            lambda password: _socks(socks, password),
            {
                "from 127.0.0.2": lambda: _socks(socks, SOCKS_PASSWORD, "127.0.0.2"),
                "from 127.0.0.1 (proven)": lambda: _socks(socks, SOCKS_PASSWORD),
            },
        )
        admin = _direct(admin_port)
        _attack(
            server,
            "admin port",
            lambda password: _admin(admin, password, "127.0.0.3"),
            {"operator from 127.0.0.2": lambda: _admin(admin, ADMIN_PASSWORD, "127.0.0.2")},
        )
        tunnel = _through_tunnel(client.port, admin_port)
        _attack(
            server,
            "admin port through the tunnel",
            lambda password: _admin(tunnel, password),
            {"operator from 127.0.0.1": lambda: _admin(admin, ADMIN_PASSWORD)},
        )
    finally:
        client.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
