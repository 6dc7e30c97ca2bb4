"""Settings that an operator may change while the server runs."""

from __future__ import annotations

from dataclasses import dataclass

MIN_BUFFER_SIZE = 512
MAX_BUFFER_SIZE = 1 << 20
DEFAULT_BUFFER_SIZE = 65536


@dataclass
class RelayTuning:
    """How many bytes a relay reads from a socket at once; relays read it before every recv."""

    buffer_size: int = DEFAULT_BUFFER_SIZE

    def set_buffer_size(self, size: int) -> int:
        if not MIN_BUFFER_SIZE <= size <= MAX_BUFFER_SIZE:
            raise ValueError(f"buffer size must be {MIN_BUFFER_SIZE}..{MAX_BUFFER_SIZE}")
        self.buffer_size = size
        return size
