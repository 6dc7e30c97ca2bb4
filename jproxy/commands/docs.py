"""``gjproxy docs``: write docs/protocol.md from the schemas, docs/cli.md from the parsers, and
docs/admin.md's tables from the admin schema, command and metrics."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

from jproxy.metrics import Counters
from jproxy.tuning import RelayTuning
from jproxy.tunnel.balance import Balancer
from schemas.admin import METHOD_DOCS

DEFAULT_OUT = Path("docs/protocol.md")
DEFAULT_CLI_OUT = Path("docs/cli.md")
DEFAULT_ADMIN_DOCS = Path("docs/admin.md")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "docs",
        help="write the protocol description and the command line reference",
        description="Write docs/protocol.md, the byte layouts of every packet, generated from"
        " the construct schemas in schemas/ (the one definition of each layout),"
        " docs/cli.md, this command line's reference, generated from its argument parsers, and"
        " the tables of docs/admin.md (admin methods, Prometheus metrics) from the code.",
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        type=Path,
        default=DEFAULT_OUT,
        help=f"where to write the protocol (default: {DEFAULT_OUT}, relative to the current"
        " directory)",
    )
    parser.add_argument(
        "--cli-out",
        metavar="FILE",
        type=Path,
        default=DEFAULT_CLI_OUT,
        help=f"where to write the command line reference (default: {DEFAULT_CLI_OUT})",
    )
    parser.add_argument(
        "--admin-docs",
        metavar="FILE",
        type=Path,
        default=DEFAULT_ADMIN_DOCS,
        help="the admin protocol's page, whose method and metric tables are filled in place"
        f" (default: {DEFAULT_ADMIN_DOCS}; skipped when it is not there)",
    )
    parser.set_defaults(handler=handler)


def handler(args: argparse.Namespace) -> int:
    # Imported here, as in admin_parts: every gjproxy process builds this command's parser,
    # and only `gjproxy docs` needs the generators (a few MB of a server's memory).
    from jproxy.gen import admin_docs as admindocs
    from jproxy.gen import cli_docs as clidocs
    from jproxy.gen import protocol_docs as docs

    for out, text in ((args.out, docs.render()), (args.cli_out, clidocs.render(args.command_line))):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}")
    if args.admin_docs.exists():
        text = args.admin_docs.read_text(encoding="utf-8")
        args.admin_docs.write_text(admindocs.fill(text, admin_parts()), encoding="utf-8")
        print(f"wrote {args.admin_docs}")
    else:
        print(f"skipped {args.admin_docs}: not there (its tables are filled in place)")
    return 0


def admin_parts() -> dict[str, str]:
    """docs/admin.md's generated parts, from the schema, the command and the collectors."""
    # Imported here: prometheus_client is loaded only by the commands that serve metrics.
    from jproxy.commands.admin import COMMAND_DOCS
    from jproxy.gen import admin_docs as admindocs
    from jproxy.handlers.admin.prometheus import ClientCollector, CountersCollector

    # What the client's collector reads of a TunnelPool: one that has not connected yet, its
    # server a placeholder that the table shows as HOST:PORT, one round trip measured (so
    # that its row is shown).
    balancer = Balancer(["HOST:PORT"])
    balancer.rtt_sample(0, 0.001, 0.0)
    client = SimpleNamespace(
        counters=Counters(),
        up=False,
        server=("HOST", "PORT"),
        server_number=1,
        balancer=balancer,
        tunnel_rows=lambda: [("HOST:PORT", 1, None)],
    )
    return {
        "method-range": admindocs.method_range(),
        "methods": admindocs.method_table(METHOD_DOCS),
        "invalid-method": admindocs.invalid_method(),
        "commands": admindocs.command_table(COMMAND_DOCS),
        "metrics": admindocs.metric_table(CountersCollector(Counters(), RelayTuning()).collect()),
        "client-metrics": admindocs.metric_table(ClientCollector(client).collect()),
    }
