"""The JSON documents of the console API (docs/console.md), built from a ``Board``.

Two families: gjproxy's own (``/api/...``, what the page and ``gjproxy status`` read) and the
clash controller's (``/connections``, ``/traffic``, ``/version``), whose shapes are fixed by
the dashboards that read them: ports are strings, ``chains`` is always an array, ``start`` is
ISO 8601 and ``id`` goes unencoded into a ``DELETE`` path.
"""

from __future__ import annotations

import datetime
import ipaddress

from jproxy.config import host_port_text
from jproxy.console.board import Board, Connection, Note, Tunnel

PAGE_ROWS = 500
"""Connections in one snapshot of the page's stream: the busiest ones (the count says how
many are open in all)."""


def iso(wall: float) -> str:
    """Seconds since the epoch as ISO 8601 in UTC, with milliseconds."""
    moment = datetime.datetime.fromtimestamp(wall, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def connection(row: Connection, now: float) -> dict:
    return {
        "id": row.id,
        "network": row.network,
        "source": row.source,
        "destination": host_port_text((row.host, row.port)),
        "host": row.host,
        "port": row.port,
        "route": row.route,
        "rule": row.rule,
        "user": row.user,
        "tunnel": row.tunnel.id if row.tunnel is not None else "",
        "upload": row.up,
        "download": row.down,
        "upload_rate": round(row.up_rate),
        "download_rate": round(row.down_rate),
        "age": round(now - row.opened_at, 1),
        "start": iso(row.started),
    }


def tunnel(row: Tunnel, now: float) -> dict:
    return {
        "id": row.id,
        "server": row.server,
        "user": row.user,
        "dialect": row.dialect,
        "state": row.state,
        "since": iso(row.since_wall),
        "for": round(now - row.since, 1),
        "rtt_ms": None if row.rtt is None else round(row.rtt * 1000, 1),
        "channels": row.channels,
        "upload": row.up,
        "download": row.down,
        "upload_rate": round(row.up_rate),
        "download_rate": round(row.down_rate),
    }


def note(row: Note) -> dict:
    return {
        "time": iso(row.at),
        "kind": row.kind,
        "text": row.text,
        "user": row.user,
        "source": row.source,
        "target": row.target,
    }


def tunnels(board: Board, now: float) -> dict:
    return {"role": board.role, "tunnels": [tunnel(row, now) for row in board.tunnels.values()]}


def connections(board: Board, now: float, limit: int | None = None) -> dict:
    rows = board.busiest(limit) if limit is not None else list(board.connections.values())
    up, down = board.total
    return {
        "role": board.role,
        "open": len(board.connections) + board.unlisted,
        "unlisted": board.unlisted,
        "upload_total": up,
        "download_total": down,
        "connections": [connection(row, now) for row in rows],
    }


def notes(board: Board) -> dict:
    """Newest first."""
    return {"total": board.notes_total, "notes": [note(row) for row in reversed(board.notes)]}


def users(board: Board) -> list[dict]:
    """The server's users: their tunnels, open connections and refusals."""
    table: dict[str, dict] = {}

    def of(name: str) -> dict:
        return table.setdefault(
            name, {"user": name, "tunnels": [], "connections": 0, "refusals": 0}
        )

    for row in board.tunnels.values():
        of(row.user)["tunnels"].append(row.id)
    for row in board.connections.values():
        of(row.user)["connections"] += 1
    for row in board.notes:
        if row.kind == "refused" and row.user:
            of(row.user)["refusals"] += 1
    return sorted(table.values(), key=lambda entry: entry["user"])


def history(board: Board) -> list[list[float]]:
    """``[wall time, bytes/s up, bytes/s down]`` a second, oldest first."""
    return [[round(at, 3), round(up), round(down)] for at, up, down in board.history]


def snapshot(board: Board, now: float, version: str) -> dict:
    """One message of the page's stream: everything the page shows."""
    document = {
        "version": version,
        "role": board.role,
        "tunnels": tunnels(board, now)["tunnels"],
        "traffic": {"up": round(board.up_rate), "down": round(board.down_rate)},
        "history": history(board),
        **notes(board),
        **{
            key: value for key, value in connections(board, now, PAGE_ROWS).items() if key != "role"
        },
    }
    if board.role == "server":
        document["users"] = users(board)
    return document


# --- clash -----------------------------------------------------------------------------------


def clash_version(version: str) -> dict:
    return {"version": f"gjproxy {version}", "meta": False}


def clash_traffic(board: Board) -> dict:
    return {"up": round(board.up_rate), "down": round(board.down_rate)}


def clash_connection(row: Connection) -> dict:
    source_host, _, source_port = row.source.rpartition(":")
    chains = [row.route] if row.tunnel is None else [row.tunnel.server, row.route]
    return {
        "id": row.id,
        "upload": row.up,
        "download": row.down,
        "start": iso(row.started),
        "chains": chains,
        "rule": row.rule or row.route.upper(),
        "rulePayload": "",
        "metadata": {
            "network": row.network,
            "type": "SOCKS5",
            "host": row.host,
            "destinationIP": row.host if _is_address(row.host) else "",
            "destinationPort": str(row.port),
            "sourceIP": source_host.strip("[]"),
            "sourcePort": source_port,
            "dnsMode": "normal",
            "processPath": "",
            "specialProxy": "",
        },
    }


def clash_connections(board: Board) -> dict:
    up, down = board.total
    return {
        "downloadTotal": down,
        "uploadTotal": up,
        "connections": [clash_connection(row) for row in board.connections.values()],
    }


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
