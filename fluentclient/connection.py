"""One socket's life: connect, write with a deadline, notice the peer leaving, close.

A :class:`Connection` is driven by a single thread (the writer, or the caller of the sync
client). The one exception is :meth:`Connection.abort`, which another thread may call to
break a connect or a write that is stuck past a shutdown deadline: ``shutdown(2)`` wakes a
thread blocked on the socket, where ``close(2)`` would not.

The connection also reports how many of the bytes it was given the peer has taken
(:meth:`Connection.confirmed_offset`). On Linux the kernel tells how many written bytes
are still in its send queue (``SIOCOUTQ``); everything before that point reached the
peer's kernel, and for a Unix socket it was even read by the server. Frames after that
point can be sent again whole on the next connection instead of being given up.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import sys
import time
from typing import Union

from .errors import FluentConnectionError, FluentTimeoutError

Address = Union[tuple[str, int], str]

_SIOCOUTQ = 0x5411  # the same number as TIOCOUTQ on Linux
_TCP_ESTABLISHED = 1
_HAS_OUTQ = sys.platform.startswith("linux")


class SendError(FluentConnectionError):
    """A write failed after ``written`` bytes of the data had gone into the socket."""

    def __init__(self, message: str, written: int) -> None:
        super().__init__(message)
        self.written = written


def describe(address: Address) -> str:
    return address if isinstance(address, str) else f"{address[0]}:{address[1]}"


class Connection:
    """A connected stream socket to a forward server (TCP or Unix)."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.sock: socket.socket | None = None
        self.bytes_written = 0
        self._aborted = False
        self._unix = isinstance(address, str)

    # -- life cycle ---------------------------------------------------------------------

    def connect(self, deadline: float) -> None:
        """Connect before the monotonic ``deadline`` or raise a FluentError."""
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            raise FluentTimeoutError(f"no time left to connect to {describe(self.address)}")
        if self._unix:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            assert not isinstance(self.address, str)
            sock = self._tcp_socket(self.address)
        # Published before connecting so that abort() can break the connect.
        self.sock = sock
        if self._aborted:
            sock.close()
            raise FluentConnectionError("connection aborted")
        try:
            sock.settimeout(timeout)
            sock.connect(self.address)
        except socket.timeout as exc:
            self.close()
            raise FluentTimeoutError(
                f"connecting to {describe(self.address)} timed out"
            ) from exc
        except OSError as exc:
            self.close()
            raise FluentConnectionError(
                f"cannot connect to {describe(self.address)}: {exc.strerror or exc}"
            ) from exc

    @staticmethod
    def _tcp_socket(address: tuple[str, int]) -> socket.socket:
        host, port = address
        # Resolve here rather than in connect() so that resolution shares the deadline
        # budget of the caller only once per connection.
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family = infos[0][0] if infos else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return sock

    def abort(self) -> None:
        """Break a blocked connect or send from another thread."""
        self._aborted = True
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def close_gracefully(self, deadline: float) -> bool:
        """Half-close, then wait for the server to close too.

        A server closes its side with a FIN only after it has read everything before
        ours, so True confirms that the server consumed every byte written. A reset
        proves nothing: fluentd answers every close with one (SO_LINGER 0), but so does
        any server that gives up with our bytes unread, and the two look the same here.
        """
        sock = self.sock
        if sock is None:
            return False
        if self.peer_closed():
            # Closed or reset before our FIN: the server may have dropped unread bytes.
            self.close()
            return False
        try:
            sock.shutdown(socket.SHUT_WR)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                sock.settimeout(remaining)
                if not sock.recv(4096):
                    return True
        except OSError:
            return False
        finally:
            self.close()

    # -- I/O ----------------------------------------------------------------------------

    def send(self, data: bytes | memoryview, deadline: float) -> None:
        """Write all of ``data`` before ``deadline`` or raise :class:`SendError`."""
        sock = self.sock
        if sock is None:
            raise SendError("not connected", 0)
        view = memoryview(data)
        total = len(view)
        sent = 0
        try:
            while sent < total:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout("timed out")
                sock.settimeout(remaining)
                sent += sock.send(view[sent:])
        except socket.timeout as exc:
            self.bytes_written += sent
            raise SendError(
                f"writing to {describe(self.address)} timed out after {sent} of {total} bytes",
                sent,
            ) from exc
        except OSError as exc:
            self.bytes_written += sent
            raise SendError(
                f"writing to {describe(self.address)} failed: {exc.strerror or exc}", sent
            ) from exc
        self.bytes_written += sent

    def peer_closed(self) -> bool:
        """Whether the server has closed or reset the connection.

        Without acks a server never writes to us, so anything readable is an EOF, a reset
        or a protocol error: either way the connection must not take more frames.
        """
        sock = self.sock
        if sock is None:
            return True
        try:
            # A socket with a timeout would wait for data here; this must only look.
            sock.settimeout(0.0)
            data = sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        del data  # EOF or bytes we never asked for: the connection is done either way
        return True

    @property
    def can_confirm(self) -> bool:
        """Whether :meth:`confirmed_offset` can ever know anything on this platform."""
        return _HAS_OUTQ

    def confirmed_offset(self) -> int | None:
        """How many of the bytes written so far the peer has taken, or None if unknown now."""
        sock = self.sock
        if sock is None or not _HAS_OUTQ:
            return None
        try:
            buf = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
            (queued,) = struct.unpack("i", buf)
            if not self._unix:
                # After a reset the kernel empties the send queue, and an empty queue would
                # read as "all taken": trust the number only on an established connection.
                state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
                if state != _TCP_ESTABLISHED:
                    return None
        except OSError:
            return None
        return self.bytes_written - int(queued)
