"""README's first command: ``gjproxy quickstart`` makes keys once and serves SOCKS5 at once."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

from jproxy.cli import build_parser
from jproxy.commands.quickstart import command_name
from tests.clients import curl
from tests.peers import Process


def quickstart(workdir, admin: str = "127.0.0.1:0", **options) -> Process:
    return Process(
        "quickstart",
        "--socks",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        admin,
        "--console",
        "127.0.0.1:0",
        cwd=workdir,
        **options,
    )


def test_quickstart_makes_keys_once_and_carries_curl(tmp_path, web):
    first = quickstart(tmp_path)
    port = int(first.wait_for(r"SOCKS5 proxy: 127\.0\.0\.1:(\d+)").group(1))
    first.wait_for(r"password, shown once: \S+")
    first.wait_for(r"console: http://127\.0\.0\.1:\d+/ui/\?token=[\w-]{16,}")
    first.wait_for(r"egress: loopback allowed \(127\.0\.0\.0/8, ::1/128\)")
    first.wait_for(r"curl --socks5-hostname 127\.0\.0\.1:\d+")
    body = curl(port, f"http://127.0.0.1:{web.server_port}/f65536")
    assert body == (web.root / "f65536").read_bytes()
    assert first.stop() == 0

    folder = tmp_path / "gjproxy-quickstart"
    secrets = [folder / "key.dat", folder / "admin-password-hash", *folder.glob("users/*.dat")]
    assert len(secrets) == 3
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in secrets)
    key_before = (folder / "key.dat").read_bytes()

    again = quickstart(tmp_path)
    again.wait_for(r"try: +curl")  # printed last, after the admin lines
    assert "shown once" not in again.log()  # the password is printed only when it is made
    again.wait_for(r"admin: .+ admin --port \d+ --user admin stats")
    again.wait_for(r"its hash is in gjproxy-quickstart/admin-password-hash\); to get a new one")
    assert (folder / "key.dat").read_bytes() == key_before
    assert again.stop() == 0


def test_a_busy_port_is_named_and_costs_no_password(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        failed = quickstart(tmp_path, admin=taken)
        assert failed.proc.wait(30) == 1
    failed.wait_for(
        re.escape(
            f"gjproxy quickstart: cannot listen on {taken}: Address already in use"
            " (choose another with --admin HOST:PORT)"
        )
    )
    assert failed.log().count("cannot listen") == 1
    assert "shown once" not in failed.log()
    assert not (tmp_path / "gjproxy-quickstart" / "admin-password-hash").exists()

    moved = quickstart(tmp_path)
    moved.wait_for(r"password, shown once: \S+")  # the first password is still to come
    assert moved.stop() == 0


DEBIAN_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""What /etc/profile gives a new root login shell on Debian: README's command 1 adds nothing."""
LABEL = re.compile(r"^[A-Za-z][\w ,-]*:\s+")
"""``admin: ``, ``try:   ``: the label before a printed command."""
REMOTE_URL = re.compile(r"https?://(?!127\.|\[::1\]|localhost)[^\s'\"]+")


def printed_commands(output: str) -> list[str]:
    """Every line of the quickstart's output that is a command to paste: after an optional
    label, a gjproxy (by any path) with one of its subcommands, or a program of a Debian root
    shell's PATH with flags. Lines that only look like text are left alone."""
    subcommands = set(next(a for a in build_parser()._actions if a.choices).choices)
    commands = []
    for line in output.splitlines():
        text = LABEL.sub("", line.strip(), count=1)
        try:
            words = shlex.split(text)
        except ValueError:
            continue
        if not words:
            continue
        if words[1:3] == ["-m", "jproxy"]:
            words = ["gjproxy", *words[3:]]
        if Path(words[0]).name == "gjproxy":
            if len(words) > 1 and words[1] in subcommands:
                commands.append(text)
        elif shutil.which(words[0], path=DEBIAN_ROOT_PATH) and any(
            word.startswith("-") for word in words[1:]
        ):
            commands.append(text)
    return commands


def test_every_printed_command_works_in_a_new_shell(tmp_path, web):
    """README's command 1 installs gjproxy into .venv/bin only: every line the quickstart
    prints (admin, ping, curl, whatever is added) must work pasted into a new root login
    shell, whose PATH is Debian's, from another directory."""
    console_script = Path(sys.executable).parent / "gjproxy"
    assert console_script.exists(), "the package is not installed: README's command 2 does it"
    running = quickstart(tmp_path, program=(str(console_script),))
    running.wait_for(r"try: +curl")
    password = running.wait_for(r"password, shown once: (\S+)").group(1)
    commands = printed_commands(running.log())
    assert any(" admin " in command for command in commands), running.log()
    assert any(" ping " in command for command in commands), running.log()
    assert any(command.startswith("curl ") for command in commands), running.log()
    home = tmp_path / "home"
    home.mkdir()
    local_file = f"http://127.0.0.1:{web.server_port}/f65536"
    for command in commands:
        pasted = REMOTE_URL.sub(local_file, command)  # this machine stays off the internet
        result = subprocess.run(
            ["bash", "-lc", pasted],
            cwd=home,
            env={
                "HOME": str(home),
                # The user types the password at the prompt; here it comes from the variable
                # `gjproxy admin` reads first. PYTHONPATH: this checkout's code, as in every test.
                "GJPROXY_ADMIN_PASSWORD": password,
                "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            },
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=60,
        )
        assert result.returncode == 0, f"{pasted}\n{result.stdout}{result.stderr}"
        assert result.stdout, pasted
    assert running.stop() == 0
    assert "Traceback" not in running.log()
    assert _as_in_readme(running.log(), console_script, tmp_path) == readme_sample()


README = Path(__file__).parents[2] / "README.md"
README_CLONE = "/root/gjproxy"
DEFAULT_PORTS = {"socks": 1080, "server": 16384, "admin": 8080, "console": 9090}
README_TOKEN = "Tk9UQVJFQUxTRUNSRVQ"


def readme_sample() -> list[str]:
    """The quickstart's output as README's "Using it" shows it."""
    block = README.read_text().split("prints (the password and the token differ):", 1)[1]
    text = block.split("```text\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in text.splitlines()]


def _as_in_readme(log: str, console_script: Path, workdir: Path) -> list[str]:
    """The quickstart's printed lines (not its log lines) as they read in a clone at
    README_CLONE with the default ports and README's password."""
    printed = log.split("\ngjproxy is running.", 1)[1]
    lines = ["gjproxy is running." + printed.splitlines()[0]]
    lines += [line for line in printed.splitlines()[1:] if not re.match(r"\d{4}-\d\d-\d\d ", line)]
    text = "\n".join(line.strip() for line in lines)
    ports = {
        "socks": re.search(r"SOCKS5 proxy: 127\.0\.0\.1:(\d+)", text)[1],
        "server": re.search(r"--server 127\.0\.0\.1:(\d+)", text)[1],
        "admin": re.search(r"--port (\d+)", text)[1],
        "console": re.search(r"console: http://127\.0\.0\.1:(\d+)", text)[1],
    }
    for name, port in ports.items():
        text = re.sub(rf"(?<=[: ]){port}\b", str(DEFAULT_PORTS[name]), text)
    text = text.replace(str(console_script), f"{README_CLONE}/.venv/bin/gjproxy")
    text = text.replace(str(workdir), README_CLONE)
    text = re.sub(r"(password, shown once: )\S+", r"\1AbCdEfGhIjKlMnOp", text)
    text = re.sub(r"token=[\w-]+", f"token={README_TOKEN}", text)
    return text.splitlines()


def test_the_printed_command_names_how_this_gjproxy_runs() -> None:
    assert command_name("gjproxy") == "gjproxy"  # found on the PATH: it will be again
    assert command_name(".venv/bin/gjproxy") == os.path.abspath(".venv/bin/gjproxy")
    assert command_name("/opt/my tools/gjproxy") == "'/opt/my tools/gjproxy'"
    assert command_name("/src/jproxy/__main__.py") == f"{shlex.quote(sys.executable)} -m jproxy"
