"""File descriptors of the server process: the raised limit at start, and an accept loop that
rides out running short of them (``jproxy.policy.fds`` says how the budget is kept)."""

from __future__ import annotations

import errno
import logging
import resource
import socket

import gevent
from gevent import socket as gsocket
from gevent.server import StreamServer

from jproxy.policy.fds import FdBudget, raised_soft_limit

log = logging.getLogger(__name__)

OUT_OF_FDS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_PAUSE = 0.1
"""Seconds between accept attempts while the process or the system is out of fds."""


def raise_fd_limit(max_tunnels: int) -> FdBudget:
    """Raise the soft RLIMIT_NOFILE to the hard limit, log the budget, and return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = raised_soft_limit(soft, hard, resource.RLIM_INFINITY)
    if wanted != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as error:
            log.warning("cannot raise the fd limit from %d to %d: %s", soft, wanted, error)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    budget = FdBudget.for_server(soft, max_tunnels)
    log.info(
        "file descriptors: limit %d (hard %s); streams may use %d, %d kept for listeners",
        soft,
        "unlimited" if hard == resource.RLIM_INFINITY else hard,
        budget.for_streams,
        budget.reserve,
    )
    return budget


class PausesWhenOutOfFds:
    """For a gevent server class: when ``accept`` fails for lack of fds, log one line, stop
    accepting for ``ACCEPT_PAUSE`` and try again (gevent's own loop prints a traceback for
    every failed accept)."""

    _failures = 0

    def do_read(self):
        try:
            accepted = super().do_read()
        except OSError as error:
            if error.errno not in OUT_OF_FDS:
                raise
            if not self._failures:
                log.warning("%s: cannot accept (%s), retrying", self, error)
            self._failures += 1
            self.stop_accepting()
            gevent.spawn_later(ACCEPT_PAUSE, self._resume)
            return None
        if accepted and self._failures:
            log.info("%s: accepting again after %d failed attempts", self, self._failures)
            self._failures = 0
        return accepted

    def _resume(self) -> None:
        if self.started:
            self.start_accepting()

    def __str__(self) -> str:
        host, port = self.address[:2]
        return f"listener {host}:{port}"


class Acceptor(PausesWhenOutOfFds, StreamServer):
    """gevent's StreamServer that rides out running short of fds."""

    reuse_port = False
    """Set in a worker of ``gjproxy server --workers N``: every listener of the process binds
    with SO_REUSEPORT, so the workers share each port and the kernel spreads connections."""

    @classmethod
    def get_listener(cls, address, backlog=None, family=None):
        if not cls.reuse_port:
            return super().get_listener(address, backlog, family)
        return reuse_port_listener(address, backlog or 128, family or socket.AF_INET)


def reuse_port_listener(address: tuple, backlog: int, family: int) -> gsocket.socket:
    """A listening socket on ``address`` that other processes may bind too (SO_REUSEPORT)."""
    sock = gsocket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
