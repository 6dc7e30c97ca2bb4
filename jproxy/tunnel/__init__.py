"""jProxy 3 itself, sans-I/O: keys, handshake, ciphers, frames and the tunnel multiplexer."""
