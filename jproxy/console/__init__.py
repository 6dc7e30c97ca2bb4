"""What the live console knows: open connections, tunnels, notes and traffic (no I/O)."""
