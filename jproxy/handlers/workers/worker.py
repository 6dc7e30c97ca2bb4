"""One worker of ``gjproxy server --workers N``: the ordinary server, with these differences.

Its listeners bind with SO_REUSEPORT on the ports the parent reserved (the kernel spreads new
connections over the workers); it serves no admin listener and no metrics page (the parent
does, for all) and no console (it would show one process); its tunnel limits and relay buffer
size are the shared ones; its log lines name it. The parent passes all this in
``WORKER_VARIABLE``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import gevent

from jproxy.handlers.net.descriptors import Acceptor
from jproxy.handlers.workers.shared import CounterExport, SharedTable, SharedTunnelSlots
from jproxy.metrics import Counters
from jproxy.tuning import RelayTuning

WORKER_VARIABLE = "GJPROXY_WORKER"
METRICS_FOLDER = "metrics"
TABLE_FILE = "table"


@dataclass
class WorkerRole:
    index: int
    """From 0; logs say ``worker index+1``."""
    workers: int
    folder: Path
    listen: tuple[str, int]
    socks: tuple[str, int] | None
    parent_ports: list[tuple[str, int]]
    """The parent's admin and metrics ports: this host's own ports, denied as egress too."""

    def to_environment(self) -> dict[str, str]:
        text = json.dumps(
            {
                "index": self.index,
                "workers": self.workers,
                "folder": str(self.folder),
                "listen": self.listen,
                "socks": self.socks,
                "parent_ports": self.parent_ports,
            }
        )
        return {WORKER_VARIABLE: text, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_folder)}

    @property
    def metrics_folder(self) -> Path:
        return self.folder / METRICS_FOLDER

    def adapt(self, settings: dict) -> None:
        """The settings of this worker: the reserved ports, no admin, no metrics page."""
        settings["listen"] = self.listen
        settings["socks"] = self.socks or ""
        settings["admin_credentials"] = None
        settings["metrics"] = ""
        settings["console"] = ""  # one process's view: the parent says it is not served
        Acceptor.reuse_port = True

    def begin(self) -> None:
        """First thing: every log line of this process says which worker wrote it, and a
        SIGHUP passed on before the server's handler is in place is ignored, not fatal."""
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        prefix = f"%(asctime)s %(levelname)s worker {self.index + 1} %(name)s: %(message)s"
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(prefix))

    def slots(self, max_tunnels: int, max_per_user: int) -> SharedTunnelSlots:
        table = SharedTable(self.folder / TABLE_FILE, self.workers)
        return SharedTunnelSlots(max_tunnels, max_per_user, table, self.index)

    def share(self, counters: Counters, tuning: RelayTuning, slots: SharedTunnelSlots) -> None:
        """Mirror the counters for the parent and follow its buffer size, in a greenlet."""
        gevent.spawn(CounterExport(counters, tuning, slots.table).run)


def worker_role(environ=os.environ) -> WorkerRole | None:
    """This process's role when the parent of ``--workers`` started it, else None."""
    text = environ.get(WORKER_VARIABLE)
    if not text:
        return None
    fields = json.loads(text)
    return WorkerRole(
        index=fields["index"],
        workers=fields["workers"],
        folder=Path(fields["folder"]),
        listen=tuple(fields["listen"]),
        socks=tuple(fields["socks"]) if fields["socks"] else None,
        parent_ports=[tuple(port) for port in fields["parent_ports"]],
    )
