"""Every subcommand's parser describes itself and each option's default."""

from __future__ import annotations

import argparse

import pytest

from jproxy.cli import build_parser


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [subparsers] = [action for action in parser._actions if action.dest == "command"]
    return {"gjproxy": parser, **subparsers.choices}


@pytest.mark.parametrize("name", sorted(subcommand_parsers()))
def test_every_command_has_a_description_and_every_option_its_default(name):
    parser = subcommand_parsers()[name]
    assert parser.description, f"{name} has no description"
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        assert "(default: " in (action.help or ""), f"{name} {action.option_strings[0]}"
