"""SOCKS, sans-I/O: the SOCKS5 and SOCKS4/4a state machines and the SOCKS UDP association."""
