"""DNS, sans-I/O: DoH messages and the TTL cache."""
