"""SOCKS ports on gevent: the client's port, UDP relays and the server's plain port."""
