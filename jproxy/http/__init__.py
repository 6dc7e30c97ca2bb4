"""HTTP, sans-I/O: the client port's HTTP proxy (on h11)."""
