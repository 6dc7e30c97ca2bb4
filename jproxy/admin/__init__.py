"""The admin protocol, sans-I/O: both sides of one exchange."""
