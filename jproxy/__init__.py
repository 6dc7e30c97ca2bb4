"""gjproxy: a jProxy 3 tunnel proxy on gevent.

The modules directly in this package are sans-I/O protocol cores: they take bytes and return
bytes and events, and never touch a socket. ``jproxy.handlers`` runs them on gevent sockets;
``jproxy.commands`` holds the subcommands of the ``gjproxy`` command line.
"""
