"""gjproxy: a jProxy 3 tunnel proxy on gevent.

Everything outside ``jproxy.handlers`` and ``jproxy.commands`` is sans-I/O: protocol cores
that take bytes and return bytes and events, grouped by protocol (``tunnel``, ``socks``,
``admin``, ``dns``), the decisions that need no I/O (``policy``) and what is generated from
the schemas (``gen``). ``jproxy.handlers`` runs the cores on gevent sockets, grouped the same
way; ``jproxy.commands`` holds the subcommands of the ``gjproxy`` command line.
"""


def version() -> str:
    """The installed package's version; a source tree that was never installed says so."""
    # Imported here, not by every process that imports jproxy: importlib.metadata brings
    # email, zipfile, pathlib and csv (about 4 MB of RSS), which only --version and the
    # console's page need.
    from importlib import metadata

    try:
        return metadata.version("gjproxy")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"
