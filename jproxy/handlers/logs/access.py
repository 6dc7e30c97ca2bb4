"""The access log: one JSON object per line for every connection the server opens for someone.

A record is written when the connection is over (or failed), straight to the file: nothing is
queued in memory, so a burst of connections costs disk writes, never RAM. ``--access-log -``
writes to standard output; without ``--access-log`` the same lines go to the ``gjproxy.access``
logger. SIGHUP reopens the file, so logrotate can move it away and signal the server.
Everything is escaped by JSON (ASCII only), so a hostile host name cannot start a new line.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import operator
import os
import sys
from collections.abc import Callable
from typing import TextIO

from jproxy.handlers.logs.repeat_limit import ACCESS_LOGGER
from jproxy.tunnel.mux import Ending

log = logging.getLogger(__name__)
access_logger = logging.getLogger(ACCESS_LOGGER)

MAX_REASON = 300
"""A failure's reason is cut to this many characters: a line stays small whatever went wrong."""
FILE_MODE = 0o640


@dataclasses.dataclass(slots=True)
class AccessRecord:
    """One connection, as the log shows it; the handler fills it in as the connection goes."""

    service: str
    """``tunnel`` (a tunnel stream) or ``socks`` (the plain SOCKS5 port)"""
    user: str
    client: str
    """the address the user came from: the tunnel's or the SOCKS client's, ``HOST:PORT``"""
    target: str
    """``HOST:PORT`` as the client asked for it (a name stays a name)"""
    started: float
    """when the request arrived (seconds since the epoch)"""
    connected: str = ""
    """the address actually connected to, ``HOST:PORT``; empty when the connect failed"""
    status: str = ""
    """the connect status (``OK``, ``UNKNOWN_HOST``, ``NOT_ALLOWED``, ...)"""
    connect_ms: int = 0
    bytes_up: int = 0
    """payload bytes from the user to the target"""
    bytes_down: int = 0
    duration: float = 0.0
    """seconds from the request to the end"""
    ended: Ending | None = None
    """closed, reset, cut, idle, refused (by the egress policy) or failed (the connect); the
    line says its value"""
    reason: str = ""
    """why it failed, when it did"""
    transport: str = "tcp"
    """``tcp`` (a stream), ``udp`` (an association) or ``icmp`` (an echo)"""
    local_port: int = 0
    """UDP: the port the server bound for the association"""
    route: str = ""
    """the client's records: ``TUNNEL``, ``DIRECT`` or ``REJECT`` (absent on the server's)"""
    rule: str = ""
    """the client's records: the routing rule that decided"""

    def to_json(self) -> str:
        # Every field holds an immutable value: no need for ``dataclasses.asdict``, which
        # deep-copies each one.
        fields = dict(zip(_FIELDS, _VALUES(self), strict=True))
        started = fields.pop("started")
        fields["duration"] = round(self.duration, 3)
        fields["ended"] = "" if self.ended is None else self.ended.value
        fields["reason"] = self.reason[:MAX_REASON]
        if not self.route:  # a server's record: no routing
            del fields["route"], fields["rule"]
        when = datetime.datetime.fromtimestamp(started, datetime.UTC)
        return _ENCODER.encode({"time": when.isoformat(timespec="milliseconds"), **fields})


_FIELDS = tuple(field.name for field in dataclasses.fields(AccessRecord))
_VALUES = operator.attrgetter(*_FIELDS)
_ENCODER = json.JSONEncoder(separators=(",", ":"))
"""One encoder for every line (``json.dumps`` with options builds a new one per call)."""


class AccessLog:
    """Where records go: a file (``path``), standard output (``-``) or the logger (None)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._file: TextIO | None = None
        self._failing = False
        self.observer: Callable[[AccessRecord], None] | None = None
        """Also sees every record (the live console keeps the refused and failed ones)."""
        if path == "-":
            self._file = sys.stdout
        elif path:
            self._file = self._open(path)

    @staticmethod
    def _open(path: str) -> TextIO:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        return os.fdopen(fd, "a", encoding="ascii", buffering=1)

    def write(self, record: AccessRecord) -> None:
        if self.observer is not None:
            self.observer(record)
        line = record.to_json()
        if self._file is None:
            access_logger.info("%s", line)
            return
        try:
            self._file.write(line + "\n")
            self._file.flush()  # a pipe (standard output) is block-buffered otherwise
        except OSError as error:  # a full disk must not end the connection's greenlet
            if not self._failing:
                log.error("access log %s: cannot write: %s", self.path, error)
            self._failing = True
        else:
            self._failing = False

    def reopen(self) -> None:
        """Open the file again by its name (after logrotate moved it); stdout stays."""
        if not self.path or self.path == "-":
            return
        try:
            fresh = self._open(self.path)
        except OSError as error:
            log.error(
                "access log %s: cannot reopen, still writing the old one: %s", self.path, error
            )
            return
        old, self._file = self._file, fresh
        if old is not None:
            old.close()
        log.info("access log %s reopened", self.path)

    def move_to(self, path: str | None) -> None:
        """Write to ``path`` from now on (a reload changed ``--access-log``); OSError if it
        cannot be opened, and the log goes on where it was."""
        fresh = sys.stdout if path == "-" else self._open(path) if path else None
        old, self._file, self.path = self._file, fresh, path
        if old is not None and old is not sys.stdout:
            old.close()

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            self._file.close()
        self._file = None
