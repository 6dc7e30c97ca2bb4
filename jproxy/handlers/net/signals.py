"""Signals as events of the gevent loop: SIGTERM and SIGINT stop, SIGHUP reloads the config."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Collection, Iterable

import gevent
from gevent.event import AsyncResult

from jproxy import reload
from jproxy.config import ConfigError
from jproxy.handlers.logs.access import AccessLog
from jproxy.reload import Plan

log = logging.getLogger("gjproxy.reload")


class Termination:
    """Catches SIGTERM and SIGINT from its creation on, so no signal meets the default action.

    Create it before announcing that the service is ready; ``wait`` blocks the calling
    greenlet until a signal arrives and returns the signal's name.
    """

    def __init__(self) -> None:
        self._received: AsyncResult = AsyncResult()
        self._handlers = [
            gevent.signal_handler(number, self._received.set, number.name)
            for number in (signal.SIGTERM, signal.SIGINT)
        ]

    def wait(self) -> str:
        try:
            return self._received.get()
        finally:
            for handler in self._handlers:
                handler.cancel()


class Reloader:
    """SIGHUP: read and check the whole config file again, apply what may change while running.

    ``load()`` returns the fresh settings or raises ``ConfigError``: a file with an error is
    refused whole and the settings in force stay. Each reloadable key has a callback
    (``on_change``), called with the new settings when any of its keys changed; a changed key
    without one needs a restart, and the log says so while its old value stays in force.
    ``every_time`` actions run on every SIGHUP (reread the users, reopen the access log). A
    callback that cannot apply its change raises ``ConfigError``: its keys keep their values.
    """

    def __init__(
        self,
        what: str,
        load: Callable[[], dict],
        running: dict,
        labels: Callable[[str], str],
        secrets: Collection[str] = (),
    ) -> None:
        self.what = what
        self.running = running
        self._load = load
        self._label = labels
        self._secrets = frozenset(secrets)
        self._callbacks: list[tuple[frozenset[str], Callable[[dict], None]]] = []
        self._always: list[Callable[[], None]] = []

    def on_change(self, keys: Iterable[str], apply: Callable[[dict], None]) -> None:
        self._callbacks.append((frozenset(keys), apply))

    def every_time(self, action: Callable[[], None]) -> None:
        self._always.append(action)

    def on_sighup(self) -> gevent.signal_handler:
        """Reload whenever the process gets SIGHUP; returns the handler (``.cancel()``)."""
        return gevent.signal_handler(signal.SIGHUP, self.reload)

    def reload(self) -> Plan | None:
        """One reload; the plan it followed, or None when the file was refused."""
        try:
            fresh = self._load()
        except ConfigError as error:
            log.error("SIGHUP: %s refused, the running config stays: %s", self.what, error)
            fresh = None
        for action in self._always:
            action()
        if fresh is None:
            return None
        reloadable = frozenset().union(*(keys for keys, _ in self._callbacks))
        plan = reload.plan(self.running, fresh, reloadable)
        applied = plan.in_force(self.running)
        for keys, apply in self._callbacks:
            changed = [change for change in plan.apply if change.key in keys]
            if not changed:
                continue
            try:
                apply(applied)
            except ConfigError as error:
                for change in changed:
                    applied[change.key] = change.old
                log.error("SIGHUP: %s; kept: %s", error, self._keys_text(changed))
                continue
            for change in changed:
                log.info("SIGHUP: %s", self._describe(change))
        for change in plan.restart:
            log.warning(
                "SIGHUP: %s needs a restart; %s stays in force until then",
                self._describe(change),
                "the old value" if change.key in self._secrets else reload.value_text(change.old),
            )
        if not plan.apply and not plan.restart:
            log.info("SIGHUP: %s reread, no setting changed", self.what)
        self.running = applied
        return plan

    def _describe(self, change: reload.Change) -> str:
        return reload.describe(change, self._label(change.key), change.key in self._secrets)

    def _keys_text(self, changes: list[reload.Change]) -> str:
        return ", ".join(self._label(change.key) for change in changes)


def access_log_mover(access_log: AccessLog, label: str) -> Callable[[dict], None]:
    """The ``on_change`` callback for ``access_log``: write to the new file from now on (one
    that cannot be opened keeps the old, with ``label`` in the error)."""

    def move(fresh: dict) -> None:
        try:
            access_log.move_to(fresh["access_log"] or None)
        except OSError as error:
            raise ConfigError(f"{label}: {error}") from None

    return move
