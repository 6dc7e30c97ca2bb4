"""Subcommands of ``gjproxy``: each module defines ``register(subparsers)``.

``register`` adds one subparser and sets ``handler`` (a function taking the parsed arguments
and returning the exit status) as its default.
"""
