"""Socket options both ends of a tunnel set, in one place."""

from __future__ import annotations

import errno
import os
import socket
import struct


def set_nodelay(sock: socket.socket) -> None:
    """Send small frames at once (a SOCKS reply, a window update) instead of batching them."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


NOTSENT_LOWAT = 128 * 1024
"""Unsent bytes the kernel may hold per socket: enough to keep a link busy between two sends
of ours, little enough that what we send next (a small request's answer among downloads)
does not wait behind megabytes already handed to the kernel. Our own queues, which serve
channels in turn, hold the rest."""


def keep_unsent_low(sock: socket.socket) -> None:
    """Set TCP_NOTSENT_LOWAT (Linux, macOS): the socket takes no more while ``NOTSENT_LOWAT``
    bytes wait unsent in the kernel."""
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if option is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, NOTSENT_LOWAT)
        except OSError:
            pass


def tune_tunnel_socket(sock: socket.socket) -> None:
    """No delay, little unsent in the kernel, and keepalive so the kernel notices a peer that
    vanished without a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    set_nodelay(sock)
    keep_unsent_low(sock)


_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY}


def connect(sock: socket.socket, address: tuple[str, int]) -> None:
    """``sock.connect(address)`` to an IP address within the socket's timeout (gevent's
    ``socket.timeout`` when it passes), in one connect and one SO_ERROR read: gevent's own
    connect also reads SO_ERROR before it starts and connects a second time after the wait."""
    error = raw_socket(sock).connect_ex(address)
    if error in _IN_PROGRESS:
        sock._wait(sock._write_event)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))


_LINGER_ZERO = struct.pack("ii", 1, 0)


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (SO_LINGER 0): the application sees ECONNRESET, never a
    clean EOF, when its stream ended abnormally."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    except OSError:
        pass
    close(sock)


def close(sock: socket.socket) -> None:
    """Close ``sock`` after stopping a read watcher started with a callback of our own
    (``read_watcher``): gevent's close would "cancel" it by throwing into the callback's
    ``__self__`` as if it were a waiting greenlet, and its hub would print the AttributeError."""
    watcher = getattr(sock, "_read_event", None)  # None once closed
    if watcher is not None and watcher.callback is not None:
        if not hasattr(getattr(watcher.callback, "__self__", None), "throw"):
            watcher.stop()
    sock.close()


def shutdown(sock: socket.socket, how: int) -> None:
    """``sock.shutdown(how)`` without gevent's cancelling of its watchers (see ``close``): a
    callback of our own on the read watcher is meant to see the EOF. Errors are ignored: the
    peer may be gone already."""
    try:
        raw_socket(sock).shutdown(how)
    except OSError:
        pass


def send_now(sock: socket.socket, data: bytes | memoryview) -> int:
    """Send what the socket takes without waiting (gevent's timeout 0); 0 when it takes none."""
    try:
        return sock.send(data, 0, 0.0)
    except BlockingIOError:
        return 0


def send_pieces_now(sock: socket.socket, pieces: list[bytes]) -> int:
    """Like ``send_now`` for several buffers in one syscall (sendmsg), without joining them."""
    try:
        return raw_socket(sock).sendmsg(pieces)
    except BlockingIOError:
        return 0


def send_all(sock: socket.socket, data: bytes | memoryview) -> None:
    """``sendall`` without gevent's per-call SO_SNDBUF lookup; waits (no timeout) while full."""
    view = memoryview(data)
    sent = sock.send(view)
    while sent < len(view):
        view = view[sent:]
        sent = sock.send(view)


def read_watcher(sock: socket.socket):
    """The libev read watcher gevent keeps for ``sock``, for a callback of our own: a second
    watcher would cost a syscall per socket (libev checks the descriptor). Stop it before the
    socket closes; a stopped watcher has no callback, so gevent's close leaves it alone."""
    return sock._read_event  # gevent's own attribute for it


def raw_socket(sock: socket.socket) -> socket.socket:
    """The non-blocking socket under a gevent socket: its calls raise ``BlockingIOError``
    instead of parking the greenlet, as a watcher callback in the hub needs."""
    return sock._sock  # gevent's own attribute for it
