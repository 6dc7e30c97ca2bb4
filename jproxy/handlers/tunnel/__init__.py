"""The tunnel on gevent: handshake, the per-tunnel driver, stream relays, both ends."""
