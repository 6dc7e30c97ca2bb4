"""Run the handshake cores on a gevent socket, under one deadline for the whole exchange.

The client reads exactly the bytes its core still needs, so nothing after the login reply is
taken off the socket. The server reads in chunks and hands whatever followed the login hash
(a client may pipeline) to its caller, so one recv serves a client that sends hello and hash
together, and a refusal closes a socket with nothing left unread (no reset hides the reply).

The login hash travels in clear, so a 3.1 client's first frame (a keep-alive ping, sent by
``client_login``) proves that it holds the key; the server waits for it within the same
deadline before it counts the tunnel as logged in (``LoginProof``). A 3.0 login can prove
itself only with the first frame its client chooses to send (``prove``).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

import gevent

from jproxy.handlers.tunnel.keylog import KeyLog
from jproxy.policy.admission import GREETED, KNOWN, SILENT
from jproxy.tunnel.handshake import ClientHandshake, LoginProof, Phase, ServerHandshake
from jproxy.tunnel.keys import ClientKey, UserDirectory
from jproxy.tunnel.mux import PING
from jproxy.tunnel.session import Session
from schemas import WireError
from schemas.jproxy import Dialect

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a peer gets for the whole handshake and login, however it trickles its bytes."""

SERVER_READ_SIZE = 4096
"""Bytes the server reads at once during login: bounds what it can hold as pipelined."""


def _run(
    sock: socket.socket,
    core: ClientHandshake | ServerHandshake,
    read_size: int,
    on_phase: Callable[[Phase], None] | None = None,
) -> bool:
    """Drive ``core`` until it finishes; False if the peer closed first.

    ``read_size`` 0 reads exactly what the core still needs; ``on_phase`` hears the phase
    after each read.
    """
    while not core.finished:
        data = sock.recv(read_size or core.bytes_needed)
        if not data:
            return False
        reply = core.receive(data)
        if on_phase is not None:
            on_phase(core.phase)
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
    deadline = gevent.Timeout(timeout)
    try:
        with deadline:
            sock.sendall(core.start())
            try:
                completed = _run(sock, core, read_size=0)
            except ConnectionResetError:
                # A TLS server, for one, resets a connection whose first bytes are no TLS.
                raise core.closed("reset") from None
            if not completed:
                raise core.closed()
            session = core.session
            if dialect is Dialect.SECURE_3_1:
                # The first frame proves to the server that we could unwrap the session key.
                sock.sendall(session.seal(PING))  # the core counts it as its first ping
    except gevent.Timeout as error:
        if error is not deadline:
            raise
        raise core.no_reply(timeout) from None
    if key_log is not None:
        key_log.record(*core.key_log_entry)
    return session


@dataclass
class ServerLogin:
    """A login the server answered: ``proof.received`` are the session's first bytes."""

    user: str
    session: Session
    proof: LoginProof

    @property
    def proven(self) -> bool:
        return self.proof.proven


_STAGES = {Phase.LOGIN: GREETED, Phase.DONE: KNOWN}
"""The pre-login stage a server handshake reached once it waits for the login (the hello was
well-formed) or is done (a known user's login)."""


def server_login(
    sock: socket.socket,
    peer: str,
    users: UserDirectory,
    allow_legacy: bool,
    timeout: float = HANDSHAKE_TIMEOUT,
    key_log: KeyLog | None = None,
    progressed: Callable[[int], None] | None = None,
) -> ServerLogin | None:
    """Serve one client's handshake and login, and in 3.1 wait for its proof of the key.
    ``progressed`` hears how far the client got (``jproxy.policy.admission`` stages: a
    well-formed hello, a known user's login) for the pre-login budget.

    Everything, including a 3.1 client's first frame, must arrive within ``timeout``. A 3.0
    login comes back unproven unless its first frame came along (``prove`` waits for it).
    None when the client did not log in (refused, silent, too slow, gone, no proof); the
    reason is logged with ``peer`` and any refusal reply was sent. The caller closes the socket.
    """
    core = ServerHandshake(users, allow_legacy)
    on_phase = None
    if progressed is not None:
        on_phase = lambda phase: progressed(_STAGES.get(phase, SILENT))  # noqa: E731
    deadline = gevent.Timeout(timeout)
    try:
        with deadline:
            completed = _run(sock, core, read_size=SERVER_READ_SIZE, on_phase=on_phase)
            if completed and core.phase is Phase.DONE:
                login = ServerLogin(core.user.user, core.session, core.proof)
                if core.leftover:
                    login.proof.receive(core.leftover)
                if core.dialect is Dialect.SECURE_3_1 and not _await_proof(sock, login.proof):
                    log.info("%s: closed the connection before proving its key", peer)
                    return None
    except gevent.Timeout as error:
        if error is not deadline:
            raise
        what = "proof of the key" if core.phase is Phase.DONE else "login"
        log.info("%s: dropped: no complete %s within %g s", peer, what, timeout)
        return None
    except OSError as error:
        log.info("%s: connection lost during login: %s", peer, error)
        return None
    except WireError as error:
        log.warning("%s: %s logged in without the key: %s", peer, core.user.user, error)
        return None
    if not completed:
        log.info("%s: closed the connection during login", peer)
        return None
    if core.phase is Phase.REFUSED:
        log.warning("%s: %s", peer, core.refusal)
        return None
    if key_log is not None:
        key_log.record(*core.key_log_entry)
    return login


def prove(sock: socket.socket, peer: str, login: ServerLogin, timeout: float | None) -> bool:
    """Wait up to ``timeout`` (None: as long as the peer stays) for the first frame of an
    unproven (3.0) login; False: close it."""
    deadline = gevent.Timeout(timeout)
    try:
        with deadline:
            if _await_proof(sock, login.proof):
                return True
            log.info("%s: %s closed the tunnel before its first frame", peer, login.user)
    except gevent.Timeout as error:
        if error is not deadline:
            raise
        log.info("%s: %s sent no frame within %g s", peer, login.user, timeout)
    except OSError as error:
        log.info("%s: %s: connection lost: %s", peer, login.user, error)
    except WireError as error:
        log.warning("%s: %s logged in without the key: %s", peer, login.user, error)
    return False


def _await_proof(sock: socket.socket, proof: LoginProof) -> bool:
    """Read until ``proof`` is complete; False if the peer closed first."""
    while not proof.proven:
        data = sock.recv(SERVER_READ_SIZE)
        if not data:
            return False
        proof.receive(data)
    return True
