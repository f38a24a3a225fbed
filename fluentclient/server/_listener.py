"""The embedded server's listening socket: TCP or Unix, answering or black-holed."""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import stat
from collections.abc import Iterator
from typing import Any, Callable

log = logging.getLogger("fluentclient.server")


class Listener:
    """Binds, listens, accepts and closes; remembers its port across stop and restart.

    Used by the I/O thread once it runs. ``on_change`` is called whenever the server starts or
    stops listening, so that a thread waiting for :attr:`listening` wakes up.
    """

    def __init__(
        self,
        host: str,
        port: int,
        unix_path: str | None,
        *,
        backlog: int,
        connect_timeout: float,
        on_change: Callable[[], None],
    ) -> None:
        self._host = host
        self._port = port
        self._unix_path = unix_path
        self._backlog = backlog
        self._connect_timeout = connect_timeout
        self._on_change = on_change
        self._family = socket.AF_UNIX if unix_path is not None else socket.AF_INET
        self._bind_host = host
        self._sock: socket.socket | None = None
        # While black-holed: a backlog-0 listener and one connection of our own that keeps
        # its accept queue full, so the kernel drops every new SYN unanswered.
        self._hole: list[socket.socket] = []
        self._unix_bound = False

    @property
    def port(self) -> int:
        return self._port

    @property
    def unix_path(self) -> str | None:
        return self._unix_path

    @property
    def listening(self) -> bool:
        return self._sock is not None

    @property
    def bound(self) -> bool:
        """Whether the port is held, listening or black-holed."""
        return self._sock is not None or bool(self._hole)

    def resolve(self) -> None:
        """Pick the address family and the address to bind for a TCP host name."""
        if self._unix_path is not None:
            return
        info = socket.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        self._family = info[0][0]
        self._bind_host = str(info[0][4][0])

    def open(self, sel: selectors.BaseSelector, blackholed: bool) -> None:
        """Listen (or open the black hole); a no-op while the port is held already."""
        if self.bound:
            return
        if self._unix_path is not None:
            remove_socket_file(self._unix_path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(self._unix_path)
            except OSError as exc:
                sock.close()
                raise _bind_failed(self._unix_path, exc, "give another unix_path") from exc
            except BaseException:
                sock.close()
                raise
            self._unix_bound = True
        else:
            sock = self._bind_tcp()
            if blackholed:
                self._open_hole(sock)
                return
        sock.listen(self._backlog)
        sock.setblocking(False)
        # The selector key carries this object, so that the loop knows a listener's event.
        sel.register(sock, selectors.EVENT_READ, self)
        self._sock = sock
        self._on_change()

    def close(self, sel: selectors.BaseSelector | None) -> None:
        self._close_hole()
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        if sel is not None:
            try:
                sel.unregister(sock)
            except (KeyError, ValueError):
                pass
        sock.close()
        self._on_change()

    def release(self) -> None:
        """Close whatever is held, without a selector: that is being closed too."""
        self._close_hole()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def remove_file(self) -> None:
        """Take away the Unix socket file this listener bound, once the server is done."""
        if self._unix_bound and self._unix_path is not None:
            self._unix_bound = False
            remove_socket_file(self._unix_path)

    def accept(self) -> Iterator[tuple[socket.socket, Any]]:
        """The connections waiting in the backlog, until it is empty."""
        sock = self._sock
        while sock is not None:
            try:
                yield sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of descriptors and the like; the backlog keeps the peer waiting.
                log.warning("accept failed: %s", exc)
                return

    def describe(self) -> str:
        if self._unix_path is not None:
            return self._unix_path
        return f"{self._host}:{self._port}"

    def _bind_tcp(self) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            # Lets restart() and a new server bind while old connections sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._bind_host, self._port))
        except OSError as exc:
            sock.close()
            raise _bind_failed(f"{self._host}:{self._port}", exc,
                               "choose another port (0 picks a free one)") from exc
        except BaseException:
            sock.close()
            raise
        self._port = int(sock.getsockname()[1])
        return sock

    def _open_hole(self, sock: socket.socket) -> None:
        """Listen with a backlog of 0 and fill that backlog: later SYNs go unanswered."""
        filler = socket.socket(self._family, socket.SOCK_STREAM)
        self._hole = [sock, filler]
        try:
            sock.listen(0)
            host = self._bind_host
            if host in ("0.0.0.0", ""):
                host = "127.0.0.1"
            elif host == "::":
                host = "::1"
            # The kernel completes this handshake itself; nobody ever accepts it.
            filler.settimeout(self._connect_timeout)
            filler.connect((host, self._port))
        except BaseException:
            self._close_hole()
            raise

    def _close_hole(self) -> None:
        hole, self._hole = self._hole, []
        for sock in hole:
            sock.close()


def remove_socket_file(path: str) -> None:
    """Remove a Unix socket left at ``path``; any other kind of file is left alone."""
    if path.startswith("\0"):
        return  # Linux abstract namespace: nothing on disk
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


class _BindError(OSError):
    """An OSError whose text is the whole message, without the "[Errno 98]" in front."""

    def __str__(self) -> str:
        return str(self.strerror)


def _bind_failed(where: str, exc: OSError, other: str) -> OSError:
    """The bind error with the address in it: the system's own text names none. The errno
    stays, for callers that look at it."""
    text = f"cannot listen on {where}: {exc.strerror or exc}"
    if exc.errno == errno.EADDRINUSE:
        text += f" (another process listens there: stop it, or {other})"
    elif exc.errno == errno.EADDRNOTAVAIL:
        text += " (no interface of this machine has that address: check the host)"
    elif exc.errno == errno.EACCES:
        text += " (not allowed: ports below 1024 need privileges)"
    return _BindError(exc.errno, text)
