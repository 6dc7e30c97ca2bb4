"""Password checks of a listener, throttled: the admin port and the plain SOCKS port share it.

Attempts are keyed by (origin, user name), where the origin is where the guesses really come
from: the peer's address, or, for a connection the server itself opened for a tunnel or
plain SOCKS user (``Origins``), that user and their address. One attempt per key runs at a
time, after the ``LoginThrottle`` delay its failures earned, so parallel connections guess no
faster than one, and guesses from one origin never delay a login from another that has not
failed. scrypt runs in a small thread pool, off the event loop. A password already proven in
this process (``remembered``) passes at once, without waiting behind anyone's guesses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import gevent
from gevent.lock import Semaphore
from gevent.threadpool import ThreadPool

from jproxy.policy.passwords import LoginThrottle

log = logging.getLogger(__name__)

HASHING_THREADS = 2

Check = Callable[[bytes, bytes], bool]


class _Turns:
    """One login attempt at a time for one key; forgotten when nobody waits."""

    def __init__(self) -> None:
        self.lock = Semaphore(1)
        self.users = 0


class ThrottledLogins:
    """``check(origin, user, password)`` for the listener called ``name``."""

    def __init__(
        self,
        name: str,
        check: Check,
        throttle: LoginThrottle,
        deadline: float,
        *,
        remembered: Check | None = None,
    ) -> None:
        self.name = name
        self.throttle = throttle
        self._check = check
        self._remembered = remembered
        self._deadline = deadline
        self._attempts: dict[tuple[str, bytes], _Turns] = {}
        self._hashing = ThreadPool(HASHING_THREADS)

    def check(self, origin: str, user: bytes, password: bytes) -> bool:
        """Whether the credentials hold; waits its turn and its delay first (within
        ``deadline`` for the turn: past it, refused)."""
        if self._remembered is not None and self._remembered(user, password):
            return True
        key = (origin, user)
        turns = self._attempts.setdefault(key, _Turns())
        turns.users += 1
        try:
            if not turns.lock.acquire(timeout=self._deadline):
                log.warning("%s: too many parallel logins from %s, refused one", self.name, origin)
                return False
            try:
                gevent.sleep(self.throttle.delay(key))
                accepted = self._hashing.apply(self._check, (user, password))
                if accepted:
                    self.throttle.succeeded(key)
                else:
                    self.throttle.failed(key)
                return accepted
            finally:
                turns.lock.release()
        finally:
            turns.users -= 1
            if not turns.users:
                del self._attempts[key]

    def stop(self) -> None:
        self._hashing.kill()
