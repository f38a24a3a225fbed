"""One socket's life: connect (TLS, handshake), write with a deadline, read replies, close.

The steps of opening are in ``_opening``; what the server says is decoded, and whether it
ended the connection kept, by the connection's :class:`~fluentclient._transport._replies.Replies`.

A :class:`Connection` is driven by a single thread (the writer, or the caller of the sync
client). The one exception is :meth:`Connection.abort`, which another thread may call to
break a connect or a write that is stuck past a shutdown deadline: ``shutdown(2)`` wakes a
thread blocked on the socket, where ``close(2)`` would not.

The connection also reports how many of the bytes it was given the peer has taken
(:meth:`Connection.confirmed_offset`, as the kernel counts them: see ``_socket_state``).
Frames after that point can be sent again whole on the next connection instead of being
given up.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import time
from typing import Any, Callable, Union

from ..errors import AuthenticationError, FluentConnectionError, FluentTimeoutError
from . import _connect_failures as failures
from . import _opening as opening
from . import _socket_state as state
from ._opening import NO_SECURITY, Security
from ._replies import ConnectionLost, Replies

Address = Union[tuple[str, int], str]

# l_onoff=1, l_linger=0: close() sends a reset and drops what is still queued.
_LINGER_RESET = struct.pack("ii", 1, 0)


class SendError(FluentConnectionError):
    """A write failed after ``written`` bytes of the data had gone into the socket."""

    def __init__(self, message: str, written: int) -> None:
        super().__init__(message)
        self.written = written


def describe(address: Address) -> str:
    return address if isinstance(address, str) else f"{address[0]}:{address[1]}"


class Connection:
    """A connected stream socket to a forward server (TCP or Unix)."""

    def __init__(
        self,
        address: Address,
        security: Security = NO_SECURITY,
        *,
        resolved: list[tuple[Any, Any]] | None = None,
    ) -> None:
        self.address = address
        self.security = security
        self.sock: socket.socket | None = None
        self.bytes_written = 0
        # False when the server's HELO said it closes after one event frame.
        self.keepalive = True
        self.server_hostname: str | None = None
        self._aborted = False
        self._unix = isinstance(address, str)
        self._tls = security.ssl_context is not None
        self._resolved = resolved
        # What the server says, and whether it closed its side: the reading side owns it.
        self.replies = Replies(describe(address), tls=self._tls, unix=self._unix)
        # Asks the kernel, without waiting, whether the server said anything (see
        # quiet()): made on first use, with the epoll instance it may hold.
        self._ask: Callable[[], list[Any]] | None = None
        self._epoll: select.epoll | None = None

    # -- life cycle ---------------------------------------------------------------------

    def connect(self, deadline: float) -> None:
        """Connect, then TLS and handshake if configured, all before ``deadline``."""
        where = describe(self.address)
        if deadline - time.monotonic() <= 0:
            raise FluentTimeoutError(f"no time left to connect to {where}")
        try:
            targets = [(socket.AF_UNIX, self.address)] if self._unix else self.resolve()
            for i, (family, target) in enumerate(targets):
                try:
                    self._connect_socket(family, target, deadline)
                    break
                except (ConnectionRefusedError, OSError) as exc:
                    # Try the host's next address (its IPv4 one after a refused IPv6
                    # one, say) while time is left; the last failure is the one raised.
                    last = i == len(targets) - 1
                    if last or isinstance(exc, socket.timeout) or self._aborted:
                        raise
                    self.close()
            if self._tls:
                try:
                    self._start_tls(deadline)
                except OSError as exc:
                    failure = failures.tls_start_failure(where, exc)
                    if failure is None:
                        raise
                    raise failure from exc
            if self.security.shared_key is not None:
                self.keepalive, self.server_hostname = opening.shake_hands(
                    self.security, self.read_object, self.send, deadline
                )
            elif self.wait_readable(0.0):
                # A server that wants the handshake speaks first; one that does not
                # says nothing until a frame comes. Whatever is here already is looked
                # at now, so the first frame is not thrown at a server that discards it.
                self.replies.refuse_if_helo(self.read_available())
                if self.replies.lost_error is not None:
                    raise self.replies.lost_error  # a TLS alert, say: classified below
        except AuthenticationError as exc:
            self.close()
            if str(exc).startswith(where):
                raise
            raise AuthenticationError(f"{where}: {exc}") from exc
        except (FluentConnectionError, FluentTimeoutError):
            # Ours already say what failed (a FluentTimeoutError is a socket.timeout too).
            self.close()
            raise
        except OSError as exc:
            self.close()
            host = self.address if isinstance(self.address, str) else self.address[0]
            raise failures.connect_failure(where, host, exc) from exc

    def _connect_socket(self, family: int, target: Any, deadline: float) -> None:
        sock = opening.stream_socket(family, tcp=not self._unix)
        # Published before connecting so that abort() can break the connect.
        self.sock = sock
        if self._aborted:
            raise FluentConnectionError("connection aborted")
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.connect(target)

    def resolve(self) -> list[tuple[Any, Any]]:
        """Every (family, socket address) of the host, in the resolver's order (looked up
        once if given)."""
        if self._resolved is None:
            assert not isinstance(self.address, str)
            self._resolved = opening.addresses(*self.address)
        return self._resolved

    def _start_tls(self, deadline: float) -> None:
        assert self.sock is not None
        host = None if isinstance(self.address, str) else self.address[0]
        # Published before the TLS handshake so that abort() can break it.
        tls = self.sock = opening.wrap_tls(self.sock, self.security, host)
        tls.settimeout(max(0.001, deadline - time.monotonic()))
        tls.do_handshake()

    def abort(self, *, discard: bool = True) -> None:
        """Break a blocked connect or send from another thread.

        ``discard``: what is still in our kernel's send queue will be reported unsent, so
        it must not arrive: with a zero linger the close that follows resets the
        connection and drops that queue, where a plain close would keep sending it in
        the background. Without it the queue is delivered, ahead of our FIN.
        """
        self._aborted = True
        sock = self.sock
        if sock is not None:
            try:
                if discard and not self._unix:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def reset(self) -> None:
        """Close with a reset: our kernel discards what it still holds of our bytes
        instead of delivering it after we have moved on to another connection.

        Bytes it sent before may still arrive; the caller counts those frames as possibly
        lost. A Unix socket has no such queue: what was written is in the server's
        already, so there this is a plain close.
        """
        sock = self.sock
        if sock is not None and not self._unix:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        self.close()

    def half_close(self) -> bool:
        """Send our FIN after the bytes written, keeping the socket open for reading;
        whether that was done. TLS has no half-close (a close_notify would end the
        session both ways): there nothing is sent and the caller only stops writing."""
        sock = self.sock
        if sock is None or self._tls:
            return False
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        return True

    def close(self) -> None:
        self._ask = None
        epoll, self._epoll = self._epoll, None
        if epoll is not None:
            epoll.close()
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    # -- reading what the server says (decoded by ``replies``) ----------------------------

    def read_object(self, deadline: float) -> Any:
        """The next msgpack object from the server, waiting until ``deadline``."""
        return self.replies.read_object(self.sock, deadline, self.bytes_written)

    def read_available(self) -> list[Any]:
        """Whatever objects the server has sent so far, without waiting (see
        :meth:`Replies.read_available`)."""
        return self.replies.read_available(self.sock, self.bytes_written)

    def wait_readable(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for something to read (a reply, or the server's close)."""
        return self.replies.wait_readable(self.sock, timeout)

    def can_read_whole(self) -> bool:
        """Whether what ``peer_closed`` found is still there to read (it reads a byte of a
        TLS stream rather than peeking)."""
        return not self._tls

    def close_gracefully(self, deadline: float) -> tuple[bool, list[Any]]:
        """Half-close, then read until the server closes too.

        Returns whether it closed cleanly, and the replies (acks) read meanwhile. A server
        closes its side with a FIN only after it has read everything before ours, so a
        clean close confirms that the server consumed every byte written. A reset proves
        nothing: fluentd answers every close with one (SO_LINGER 0), but so does any server
        that gives up with our bytes unread, and the two look the same here. Acks prove
        more than either, which is why they are collected up to the very end.
        """
        replies: list[Any] = []
        try:
            if self.sock is None:
                return False, replies
            replies += self.read_available()
            if self.replies.eof:
                # Closed or reset before our FIN: the server may have dropped unread bytes.
                return False, replies
            self.sock.shutdown(socket.SHUT_WR)
            return self.replies.read_to_end(self.sock, deadline, replies), replies
        except (OSError, ConnectionLost):
            return False, replies
        finally:
            self.close()

    # -- I/O ----------------------------------------------------------------------------

    def send(self, data: bytes | memoryview, deadline: float, *, start: int = 0) -> None:
        """Write all of ``data`` before ``deadline`` or raise :class:`SendError`.

        ``start``: that many bytes of ``data`` are out already (see :meth:`send_at_once`);
        the rest follows, and an error counts them among those written.
        """
        sock = self.sock
        if sock is None:
            raise SendError("not connected", start)
        view = memoryview(data)
        total = len(view)
        sent = start
        try:
            while sent < total:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout("timed out")
                sock.settimeout(remaining)
                sent += sock.send(view[sent:])
        except socket.timeout as exc:
            self.bytes_written += sent - start
            raise SendError(
                f"writing to {describe(self.address)} timed out after {sent} of {total} bytes",
                sent,
            ) from exc
        except OSError as exc:
            self.bytes_written += sent - start
            raise SendError(
                f"writing to {describe(self.address)} failed: {exc.strerror or exc}", sent
            ) from exc
        self.bytes_written += sent - start

    def send_at_once(self, data: bytes) -> int:
        """Write what the kernel takes of ``data`` now, without waiting: how many bytes
        that was, 0 if none (its send buffer is full); :class:`SendError` if the
        connection failed before any went.

        The usual small frame goes whole, in one send(2): a socket with a timeout would
        have CPython poll(2) before it, and setting the timeout costs an ioctl(2), so the
        clock and the deadline are left to :meth:`send`, for whatever is left. Under TLS
        nothing is written here: a TLS write that cannot finish must be repeated with the
        same bytes, which :meth:`send` does.
        """
        sock = self.sock
        if sock is None or self._tls:
            return 0
        try:
            if sock.gettimeout() != 0.0:
                sock.settimeout(0.0)
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            raise SendError(
                f"writing to {describe(self.address)} failed: {exc.strerror or exc}", 0
            ) from exc
        self.bytes_written += sent
        return sent

    def send_if_quiet(self, data: bytes) -> int:
        """The usual write of a SyncClient, in two system calls: if the server has said
        nothing (see :meth:`quiet`), what the kernel takes of ``data`` at once.

        Returns how many bytes went, or -1 when nothing was written: the server said
        something, the kernel took none, the write failed, or this is TLS. After -1 the
        caller takes the whole path (:meth:`peer_closed`, :meth:`send`), which tells
        those apart and writes again if it should.
        """
        sock = self.sock
        if sock is None or self._tls:
            return -1
        ask = self._ask or self._asker(sock)
        try:
            if ask():
                return -1
            if sock.gettimeout() != 0.0:
                sock.settimeout(0.0)
            sent = sock.send(data)
        except OSError:
            return -1
        self.bytes_written += sent
        return sent if sent else -1

    def quiet(self) -> bool:
        """Whether the server has said nothing we have not read: no reply, no FIN, no
        reset. One poll(2) that never waits; False when it cannot tell."""
        sock = self.sock
        if sock is None or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            return False  # TLS: OpenSSL may hold bytes the kernel already gave it
        try:
            return not (self._ask or self._asker(sock))()
        except OSError:
            return False

    def _asker(self, sock: socket.socket) -> Callable[[], list[Any]]:
        ask, self._epoll = state.said_asker(sock)
        self._ask = ask
        return ask

    def peer_closed(self) -> bool:
        """Whether the server has closed or reset the connection.

        Without acks a server never writes to us, so anything readable is an EOF, a reset
        or a protocol error: either way the connection must not take more frames.
        """
        if self.quiet():
            return False  # the usual answer, in one system call rather than three
        sock = self.sock
        if sock is None:
            return True
        try:
            # A socket with a timeout would wait for data here; this must only look.
            sock.settimeout(0.0)
            # TLS sockets take no flags; reading a byte is fine since any data at all
            # means the connection is done.
            data = sock.recv(1) if self._tls else sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return False
        except OSError:
            return True
        del data  # EOF or bytes we never asked for: the connection is done either way
        return True

    @property
    def can_confirm(self) -> bool:
        """Whether :meth:`confirmed_offset` can ever know anything here."""
        return state.HAS_OUTQ and not self._tls

    def acked_offset(self) -> int | None:
        """How many bytes written so far the peer's TCP acknowledged (Linux ``TCP_INFO``).

        Unlike :meth:`confirmed_offset` this survives a reset, which empties the send
        queue: it tells which frames reached the peer before the connection died.
        """
        info = self._tcp_info()
        return None if info is None else state.acked_in(info, self.bytes_written)

    def _tcp_info(self) -> bytes | None:
        sock = self.sock
        if sock is None or self._unix or self._tls:
            return None
        return state.tcp_info(sock)

    def dead_offset(self) -> int | None:
        """Once the connection can deliver nothing more, how far the peer's TCP acknowledged
        our bytes; None while it may still deliver some, or when that cannot be known.

        A connection the peer reset (its process exited with our bytes unread, or it
        closed and then got more) is done on both sides: our kernel dropped its send queue
        and the peer's socket is gone, so a byte past this offset can never arrive and may
        be written again on another connection. Known on Linux for plain TCP only: a Unix
        socket's bytes are in the server's queue as soon as written, and under TLS the
        count is of encrypted records. A connection we aborted is never trusted (its end is
        our doing, not proof that the server stopped reading).
        """
        info = None if self._aborted else self._tcp_info()
        if info is None or not state.closed_in(info):
            return None
        return state.acked_in(info, self.bytes_written)

    def confirmed_offset(self) -> int | None:
        """How many of the bytes written so far the peer has taken, or None if unknown now."""
        sock = self.sock
        if sock is None or not self.can_confirm:
            return None
        queued = state.still_queued(sock, tcp=not self._unix)
        return None if queued is None else self.bytes_written - queued
