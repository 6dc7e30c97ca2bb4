"""Logging on gevent: the repeat limiter and the JSON access log."""
