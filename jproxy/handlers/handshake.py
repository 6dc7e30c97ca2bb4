"""Run the handshake cores on a gevent socket, under one deadline for the whole exchange.

The client reads exactly the bytes its core still needs, so nothing after the login reply is
taken off the socket. The server reads in chunks and hands whatever followed the login hash
(a client may pipeline) to its caller, so one recv serves a client that sends hello and hash
together, and a refusal closes a socket with nothing left unread (no reset hides the reply).
"""

from __future__ import annotations

import logging
import socket

import gevent

from jproxy.handlers.keylog import KeyLog
from jproxy.handshake import ClientHandshake, LoginError, Phase, ServerHandshake
from jproxy.keys import ClientKey, UserDirectory
from jproxy.session import Session
from schemas.jproxy import Dialect

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a peer gets for the whole handshake and login, however it trickles its bytes."""

SERVER_READ_SIZE = 4096
"""Bytes the server reads at once during login: bounds what it can hold as pipelined."""


def _run(sock: socket.socket, core: ClientHandshake | ServerHandshake, read_size: int) -> bool:
    """Drive ``core`` until it finishes; False if the peer closed first.

    ``read_size`` 0 reads exactly what the core still needs.
    """
    while not core.finished:
        data = sock.recv(read_size or core.bytes_needed)
        if not data:
            return False
        reply = core.receive(data)
        if reply:
            sock.sendall(reply)
    return True


def client_login(
    sock: socket.socket,
    key: ClientKey,
    dialect: Dialect,
    timeout: float = HANDSHAKE_TIMEOUT,
    key_log: KeyLog | None = None,
) -> Session:
    """Log in on a connected socket; ``LoginError`` (message for the user) if that fails.

    Socket errors (``OSError``) pass through unchanged.
    """
    core = ClientHandshake(key, dialect)
    expired = LoginError(f"no complete login reply from the server within {timeout:g} s")
    with gevent.Timeout(timeout, expired):
        sock.sendall(core.start())
        if not _run(sock, core, read_size=0):
            raise LoginError("the server closed the connection during login")
    if key_log is not None:
        key_log.record(*core.key_log_entry)
    return core.session


def server_login(
    sock: socket.socket,
    peer: str,
    users: UserDirectory,
    allow_legacy: bool,
    timeout: float = HANDSHAKE_TIMEOUT,
    key_log: KeyLog | None = None,
) -> tuple[str, Session, bytes] | None:
    """Serve one client's handshake and login: ``(user name, session, pipelined)``.

    ``pipelined`` is what the client sent after its login hash (usually nothing): raw frame
    bytes to feed the session before anything else read from the socket. None when the client
    did not log in (refused, silent, too slow, gone); the reason is logged with ``peer`` and any
    refusal reply was sent. The caller closes the socket.
    """
    core = ServerHandshake(users, allow_legacy)
    deadline = gevent.Timeout(timeout)
    try:
        with deadline:
            completed = _run(sock, core, read_size=SERVER_READ_SIZE)
    except gevent.Timeout as error:
        if error is not deadline:
            raise
        log.info("%s: dropped: no complete login within %g s", peer, timeout)
        return None
    except OSError as error:
        log.info("%s: connection lost during login: %s", peer, error)
        return None
    if not completed:
        log.info("%s: closed the connection during login", peer)
        return None
    if core.phase is Phase.REFUSED:
        log.warning("%s: %s", peer, core.refusal)
        return None
    if key_log is not None:
        key_log.record(*core.key_log_entry)
    return core.user.user, core.session, core.leftover
