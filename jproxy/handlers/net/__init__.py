"""Plumbing every listener and dialer shares: sockets, fds, the dialer, signals, heap."""
