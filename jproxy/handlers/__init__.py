"""Thin gevent greenlets that run the protocol cores of ``jproxy`` on real sockets."""
