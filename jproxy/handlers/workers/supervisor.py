"""The parent of ``gjproxy server --workers N``: starts the workers and keeps them running.

- Ports: it binds the tunnel port (and the plain SOCKS port) first with SO_REUSEPORT, without
  listening, so that a port 0 becomes one concrete port for every worker and stays reserved
  while a worker restarts; each worker then listens on it with SO_REUSEPORT itself.
- Workers are the same command line again (``sys.argv``), each told its role in the
  environment (``jproxy.handlers.workers.worker``). One that dies is started again after a
  backoff that grows while it keeps dying young.
- SIGHUP is passed on to every worker (users reloaded, access log reopened); SIGTERM and
  SIGINT too, and each worker drains its streams within ``--grace`` before it exits.
- The admin listener and the Prometheus page are the parent's, serving the workers' counters
  summed (``jproxy.handlers.workers.shared``).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import gevent
from gevent import subprocess as gsubprocess
from gevent.event import Event

from jproxy.config import ListenError, listening
from jproxy.handlers.net.signals import Termination
from jproxy.handlers.workers.shared import (
    EXPORT_INTERVAL,
    SharedTable,
    SharedTuning,
    summed_counters,
)
from jproxy.handlers.workers.worker import TABLE_FILE, WorkerRole
from jproxy.metrics import Counters
from jproxy.policy.backoff import retry_delay

log = logging.getLogger("gjproxy.server")

STABLE_AFTER = 10.0
"""A worker that ran this long before it died is restarted at once (its backoff starts over)."""
STOP_MARGIN = 10.0
"""Seconds past the grace time that workers get to exit after SIGTERM; then SIGKILL."""


def reserve(address: tuple[str, int]) -> socket.socket:
    """Bind ``address`` with SO_REUSEPORT without listening: the port is ours, and only the
    workers' listening sockets on it get connections."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


class Worker:
    """One worker's process, started again whenever it dies (until ``stop``)."""

    def __init__(self, role: WorkerRole, command: list[str], table: SharedTable) -> None:
        self.role, self.command, self.table = role, command, table
        self.number = role.index + 1
        self.process: gsubprocess.Popen | None = None
        self.stopping = Event()
        self._failures = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            self.process = gsubprocess.Popen(
                self.command,
                env={**os.environ, **self.role.to_environment()},
                stdin=subprocess.DEVNULL,
            )
            pid = self.process.pid
            log.info("worker %d started (pid %d)", self.number, pid)
            status = self.process.wait()
            self._forget(pid)
            if self.stopping.is_set():
                log.info("worker %d (pid %d) stopped with status %d", self.number, pid, status)
                return
            lived = time.monotonic() - started
            self._failures = 1 if lived >= STABLE_AFTER else self._failures + 1
            delay = retry_delay(self._failures, random.random())
            log.warning(
                "worker %d (pid %d) ended with status %d after %.1fs; restarting in %.1fs",
                self.number,
                pid,
                status,
                lived,
                delay,
            )
            self.stopping.wait(delay)

    def _forget(self, pid: int) -> None:
        """A dead worker's gauges (open now) and tunnel slots go with it."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self.role.metrics_folder))
        self.table.clear(self.role.index)

    def stop(self) -> None:
        """No more restarts; SIGTERM to the running process (it drains, then exits)."""
        self.stopping.set()
        self.signal(signal.SIGTERM)

    def signal(self, number: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(number)


def supervise(settings: dict, workers: int, grace: float, termination: Termination) -> int:
    """Run ``workers`` worker processes until SIGTERM or SIGINT; the exit status."""
    folder = Path(tempfile.mkdtemp(prefix="gjproxy-workers-"))
    placeholders: list[socket.socket] = []
    services: list = []
    try:
        try:
            ports = {}
            for key, flag in (("listen", "--listen"), ("socks", "--socks")):
                if settings[key]:
                    sock = listening(flag, settings[key], partial(reserve, settings[key]))
                    placeholders.append(sock)
                    ports[key] = sock.getsockname()[:2]
            table = SharedTable(folder / TABLE_FILE, workers)
            counters = Counters()
            tuning = SharedTuning(table)
            services = _parent_services(settings, counters, tuning)
        except ListenError as error:
            sys.stderr.write(f"gjproxy server: {error}\n")
            return 1
        (folder / "metrics").mkdir()
        command = [sys.executable, "-m", "jproxy", *sys.argv[1:]]
        parent_ports = [service.address[:2] for service in services]
        crew = [
            Worker(
                WorkerRole(
                    index, workers, folder, ports["listen"], ports.get("socks"), parent_ports
                ),
                command,
                table,
            )
            for index in range(workers)
        ]
        sighup = gevent.signal_handler(signal.SIGHUP, _pass_on, crew, signal.SIGHUP)
        if settings["console"]:
            log.warning("--console is not served with --workers %d: it shows one process", workers)
        log.info("starting %d workers", workers)
        runners = [gevent.spawn(worker.run) for worker in crew]
        refresher = gevent.spawn(_refresh, str(folder / "metrics"), counters)
        name = termination.wait()
        log.info("%s: passing it on to %d workers", name, workers)
        sighup.cancel()
        for worker in crew:
            worker.stop()
        if not gevent.joinall(runners, timeout=grace + STOP_MARGIN, raise_error=False) or any(
            not runner.dead for runner in runners
        ):
            for worker in crew:
                worker.signal(signal.SIGKILL)
            gevent.joinall(runners, timeout=5)
        refresher.kill()
        return 0
    finally:
        for service in services:
            service.stop()
        for sock in placeholders:
            sock.close()
        shutil.rmtree(folder, ignore_errors=True)


def _pass_on(crew: list[Worker], number: int) -> None:
    log.info("%s: passing it on to %d workers", signal.Signals(number).name, len(crew))
    for worker in crew:
        worker.signal(number)


def _refresh(path: str, counters: Counters) -> None:
    while True:
        try:
            summed_counters(path, counters)
        except (OSError, ValueError, struct.error) as error:  # a file being written now
            log.debug("reading the workers' counters: %s", error)
        gevent.sleep(EXPORT_INTERVAL)


def _parent_services(settings: dict, counters: Counters, tuning: SharedTuning) -> list:
    """The admin listener and the Prometheus page, for every worker at once."""
    services = []
    try:
        if settings["admin_credentials"] is not None:
            from jproxy.handlers.admin.listener import serve_admin

            admin = partial(
                serve_admin, settings["admin"], settings["admin_credentials"], counters, tuning
            )
            services.append(listening("--admin", settings["admin"], admin))
        if settings["metrics"]:
            from jproxy.handlers.admin.prometheus import serve_metrics

            metrics = partial(serve_metrics, settings["metrics"], counters, tuning)
            services.append(listening("--metrics", settings["metrics"], metrics))
    except ListenError:
        for service in services:
            service.stop()
        raise
    return services
