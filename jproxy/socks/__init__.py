"""SOCKS, sans-I/O: the SOCKS5 state machine and the SOCKS UDP association."""
