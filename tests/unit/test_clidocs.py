"""docs/cli.md is generated from the argument parsers and kept in step with them."""

from __future__ import annotations

import argparse
from pathlib import Path

from jproxy.cli import build_parser
from jproxy.gen import cli_docs as clidocs

COMMITTED = Path(__file__).parents[2] / "docs" / "cli.md"


def test_committed_cli_reference_matches_the_parsers() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == clidocs.render(build_parser()), (
        "docs/cli.md is out of date with the command line: run `gjproxy docs` and commit it"
    )


def test_every_command_and_every_option_is_in_the_reference() -> None:
    parser = build_parser()
    text = clidocs.render(parser)
    [commands] = [action for action in parser._actions if action.dest == "command"]
    for name, subparser in commands.choices.items():
        section = text.split(f"## `gjproxy {name}`\n", 1)[1].split("\n## ", 1)[0]
        assert subparser.description in section
        for action in subparser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                flags = ", ".join(action.option_strings)
                assert f"- `{flags}" in section, (name, action.dest)
                assert action.help in section
