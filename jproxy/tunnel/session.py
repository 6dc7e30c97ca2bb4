"""The encrypted frame layer of one tunnel after login, sans-I/O: messages <-> frame bytes.

``seal`` turns one message into one frame to send; ``feed`` takes whatever bytes the socket
gave and returns the messages of every frame they complete. Frames are opened straight out of
the caller's bytes, every whole frame of a receive in one call of the opener's loop; only the
start of a frame whose end has not arrived yet is kept, so the buffer never holds more than
one frame.
"""

from __future__ import annotations

import enum

from jproxy.tunnel.crypto import MAX_MESSAGE, FrameError, frame_ciphers
from schemas.fast import FRAME_HEADER
from schemas.jproxy import Dialect, Direction

__all__ = ["FrameError", "Role", "Session"]

_HEADER_SIZE = FRAME_HEADER.size
_BODY_LENGTHS = FRAME_HEADER.body_lengths


class Role(enum.Enum):
    """Which end of the tunnel a session is: it picks the direction of each nonce counter."""

    CLIENT = "client"
    SERVER = "server"


_SENDING = {Role.CLIENT: Direction.CLIENT_TO_SERVER, Role.SERVER: Direction.SERVER_TO_CLIENT}


class Session:
    """Seals outgoing messages and opens incoming frames of one tunnel, in one dialect."""

    def __init__(self, dialect: Dialect, key: bytes, role: Role) -> None:
        self.dialect = dialect
        self.max_message = MAX_MESSAGE[dialect]
        self._sealer, self._opener = frame_ciphers(dialect, key, _SENDING[role])
        self._partial = bytearray()
        self._open_frames = self._opener.open_frames

    def seal(self, message: bytes) -> bytes:
        """One whole frame carrying ``message`` (at most ``max_message`` bytes)."""
        return self._sealer.seal(message)

    def seal_all(self, messages: list[bytes]) -> bytes | bytearray:
        """The frames of ``messages`` in order, as one piece to send (fewer copies and calls
        than sealing each)."""
        return self._sealer.seal_all(messages)

    def feed(self, data: bytes) -> list[bytes]:
        """The messages of every frame that ``data`` completes.

        ``FrameError`` on a bad frame; the session is then unusable and the tunnel must close.
        """
        messages: list[bytes] = []
        view = memoryview(data)
        if self._partial:
            view = view[self._complete_partial(view, messages) :]
            if self._partial:
                return messages
        opened = self._open_frames(view, messages)
        self._partial += view[opened:]
        return messages

    @property
    def buffered(self) -> int:
        """Bytes held of a frame whose end has not arrived (less than one frame)."""
        return len(self._partial)

    def finish(self) -> None:
        """Call when the peer's stream ended: ``FrameError`` if it ended inside a frame."""
        if self._partial:
            raise FrameError(f"stream ended {self.buffered} bytes into a frame")

    def _complete_partial(self, view: memoryview, messages: list[bytes]) -> int:
        """Move bytes of ``view`` to the partial frame, open it once whole; returns bytes taken."""
        partial = self._partial
        taken = min(len(view), max(0, _HEADER_SIZE - len(partial)))
        partial += view[:taken]
        if len(partial) < _HEADER_SIZE:
            return taken
        missing = _HEADER_SIZE + _BODY_LENGTHS[partial[0]] - len(partial)
        more = min(missing, len(view) - taken)
        partial += view[taken : taken + more]
        if more == missing:
            frame = memoryview(bytes(partial))
            partial.clear()
            self._open_frames(frame, messages)
        return taken + more
