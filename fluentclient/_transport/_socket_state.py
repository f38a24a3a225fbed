"""What the kernel tells about a connected socket without reading from it.

Two questions, both answered without waiting: has the server said anything (a reply, its
FIN, a reset), and how far has it taken our bytes. For the second, Linux tells how many
written bytes are still in the send queue (``SIOCOUTQ``): everything before that point
reached the peer's kernel, and for a Unix socket it was even read by the server. Its
``TCP_INFO`` also counts the bytes the peer's TCP acknowledged, which survives a reset.
Under TLS the queue holds encrypted records, not our bytes, so neither count applies.
"""

from __future__ import annotations

import fcntl
import functools
import select
import socket
import struct
import sys
from typing import Any, Callable

_SIOCOUTQ = 0x5411  # the same number as TIOCOUTQ on Linux
_TCP_ESTABLISHED = 1
_TCP_CLOSE = 7
# struct tcp_info: 8 one-byte fields, 24 u32, then u64 pacing_rate, max_pacing_rate and
# bytes_acked (Linux 4.2 and later).
_BYTES_ACKED_AT = 8 + 24 * 4 + 2 * 8
_TCP_INFO_SIZE = 256
HAS_OUTQ = sys.platform.startswith("linux")
# What epoll(7) or poll(2) reports when the server said anything: bytes, its FIN (RDHUP
# where the platform has it), urgent data; errors and hang-ups are always reported.
_EPOLL_SAID = select.EPOLLIN | select.EPOLLPRI | select.EPOLLRDHUP \
    if hasattr(select, "epoll") else 0
_POLL_SAID = select.POLLIN | select.POLLPRI | getattr(select, "POLLRDHUP", 0) \
    if hasattr(select, "poll") else 0

Asker = Callable[[], list[Any]]


def said_asker(sock: socket.socket) -> tuple[Asker, select.epoll | None]:
    """A call that returns the events waiting on ``sock``, without waiting: an empty list
    when the server said nothing; and the epoll instance it holds, for the caller to close.

    epoll where there is one (a call costs half of poll's, which copies its descriptor
    list in and out each time).
    """
    if _EPOLL_SAID:
        epoll = select.epoll()
        epoll.register(sock.fileno(), _EPOLL_SAID)
        return functools.partial(epoll.poll, 0, 1), epoll
    if _POLL_SAID:
        poller = select.poll()
        poller.register(sock, _POLL_SAID)
        return functools.partial(poller.poll, 0), None

    def ask() -> list[Any]:  # no poll(2) either: says "something", so look
        return [True]

    return ask, None


def tcp_info(sock: socket.socket) -> bytes | None:
    """The kernel's TCP_INFO for a plain TCP socket on Linux, with bytes_acked in it (Linux
    4.2 and later); None otherwise."""
    if not HAS_OUTQ:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    return info if len(info) >= _BYTES_ACKED_AT + 8 else None


def acked_in(info: bytes, written: int) -> int:
    """The bytes the peer's TCP acknowledged, per ``info``, of the ``written`` so far."""
    (acked,) = struct.unpack_from("=Q", info, _BYTES_ACKED_AT)
    return min(int(acked), written)


def closed_in(info: bytes) -> bool:
    """Whether ``info`` shows a connection that can deliver nothing more."""
    return info[0] == _TCP_CLOSE


def still_queued(sock: socket.socket, *, tcp: bool) -> int | None:
    """The bytes written that are still in the send queue (Linux), or None if unknown now."""
    try:
        buf = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
        (queued,) = struct.unpack("i", buf)
        if tcp:
            # After a reset the kernel empties the send queue, and an empty queue would
            # read as "all taken": trust the number only on an established connection.
            state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
            if state != _TCP_ESTABLISHED:
                return None
    except OSError:
        return None
    return int(queued)
