"""What a reload (SIGHUP) changes, sans I/O: the running settings against the file's new ones.

A command's settings are one dict (key -> value, as ``settings_from`` makes it). On SIGHUP the
whole config file is read and validated again into a fresh dict; ``plan`` compares it with the
settings in force and sorts every changed key into those the running process can take (a
callback is registered for them) and those that need a restart (listen addresses, workers,
anything without a callback), whose old value stays in force. ``describe`` turns a change into
the text of its log line, without showing secrets.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

SECRET = "(changed, not shown)"


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any


@dataclass(frozen=True)
class Plan:
    """A reload's outcome: ``apply`` can change while running, ``restart`` cannot."""

    apply: tuple[Change, ...]
    restart: tuple[Change, ...]

    def in_force(self, running: Mapping[str, Any]) -> dict[str, Any]:
        """The settings after the reload: the applied keys new, every other key as it was."""
        return {**running, **{change.key: change.new for change in self.apply}}


def plan(running: Mapping[str, Any], fresh: Mapping[str, Any], reloadable: Collection[str]) -> Plan:
    """Every key whose value differs, sorted into reloadable and restart-only, by key name."""
    changes = [
        Change(key, running.get(key), fresh.get(key))
        for key in sorted(running.keys() | fresh.keys())
        if running.get(key) != fresh.get(key)
    ]
    return Plan(
        tuple(change for change in changes if change.key in reloadable),
        tuple(change for change in changes if change.key not in reloadable),
    )


def value_text(value: Any) -> str:
    """A setting's value as the log shows it: ``HOST:PORT``, lists joined, empty as ``none``."""
    if value is None or value == "" or value == [] or value == ():
        return "none"
    if value is True or value is False:
        return "on" if value else "off"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        host, port = value
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(value, list | tuple):
        return ", ".join(value_text(item) for item in value)
    return str(value)


def describe(change: Change, label: str, secret: bool = False) -> str:
    """``label: OLD -> NEW``; a secret (a password table, an admin account) shows neither."""
    if secret:
        return f"{label}: {SECRET}"
    return f"{label}: {value_text(change.old)} -> {value_text(change.new)}"
