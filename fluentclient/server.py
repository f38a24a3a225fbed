"""An embedded forward-protocol server, for tests, demos and ``python -m fluentclient serve``.

:class:`ForwardServer` listens on TCP (``127.0.0.1`` and an ephemeral port by default) or on a
Unix stream socket, decodes every frame it receives in any of the four event modes, records
the events, and answers ``chunk`` options with acks, as fluentd and fluent-bit do. It also has
fault switches that act on the real sockets, so that a client can be tested against a server
that goes away, stops reading, resets connections in the middle of a frame, refuses
connections or never answers them at all.

All socket work happens in one background thread around a selector. The fault switches do
not touch sockets themselves: they hand a function to that thread and wait until it has run,
so when a switch returns its effect is already in place (no further reads after ``stall()``,
connects refused after ``refuse()``, and so on), and no socket is ever closed under the feet
of a ``select`` running in another thread.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import ssl
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Callable, NamedTuple, TypeVar

from . import handshake
from .framing import DecodedFrame, FrameError, Time, ack_for, decode_frame, new_unpacker

log = logging.getLogger("fluentclient.server")

_T = TypeVar("_T")

_READ_SIZE = 256 * 1024
# l_onoff=1, l_linger=0: close() then sends an RST and drops whatever was still queued.
_LINGER_RESET = struct.pack("ii", 1, 0)
# Selector keys carry one of these markers, or the _Conn of an accepted socket.
_LISTENER = "listener"
_WAKER = "waker"


class ReceivedEvent(NamedTuple):
    """One event as the server decoded it; ``time`` is an EventTime or an int as received."""

    tag: str
    time: Time
    record: Any


class _Conn:
    """An accepted socket and its decoding state. Used by the I/O thread only."""

    __slots__ = (
        "sock", "name", "unpacker", "budget", "out", "mask", "closed", "fed", "done",
        "tls_want", "nonce", "auth", "await_ping", "close_after_flush", "held_acks",
    )

    def __init__(self, sock: socket.socket, name: str, budget: int | None) -> None:
        self.sock = sock
        # While a TLS handshake is under way: the event it waits for, else 0.
        self.tls_want = 0
        # The handshake (server <security>): what HELO offered, and whether PING is due.
        self.nonce = b""
        self.auth = b""
        self.await_ping = False
        # Close once everything queued is written (a refused PONG, keepalive off).
        self.close_after_flush = False
        # Batches of acks waiting in the delay queue; a due close waits for them too.
        self.held_acks = 0
        self.name = name
        self.unpacker = new_unpacker()
        # Bytes this connection may still deliver before it is reset (drop_after).
        self.budget = budget
        self.out = bytearray()
        self.mask = 0
        self.closed = False
        self.fed = 0
        # Stream offset just past the last whole frame. The unpacker's own tell() cannot
        # stand in for it mid-frame: it also counts the bytes of a half-parsed object.
        self.done = 0


class ForwardServer:
    """A forward-protocol server running in a background thread.

    ``ForwardServer(host, port)`` listens on TCP (``port=0`` picks a free port, readable from
    :attr:`port` after :meth:`start`); ``ForwardServer(unix_path=...)`` listens on a Unix
    stream socket instead. ``on_event`` is called from the server thread with each
    :class:`ReceivedEvent`, after it has been recorded and before the frame's ack is written.
    ``close_with_reset=True`` ends every connection with an RST, as fluentd's in_forward does
    (its ``linger_timeout`` is 0), also after it has read everything up to the client's FIN.

    With ``shared_key`` the server runs the handshake as fluentd does; ``helo_as_str`` packs
    HELO as Fluent Bit does, and ``silent_key_refusal`` answers a wrong shared key or a
    malformed PING as Fluent Bit does: by closing the connection without a PONG.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        unix_path: str | os.PathLike[str] | None = None,
        on_event: Callable[[ReceivedEvent], None] | None = None,
        backlog: int = 128,
        shared_key: str | None = None,
        users: Mapping[str, str] | None = None,
        self_hostname: str = "server.test",
        ssl_context: ssl.SSLContext | None = None,
        keepalive: bool = True,
        helo_as_str: bool = False,
        close_with_reset: bool = False,
        silent_key_refusal: bool = False,
        control_timeout: float = 5.0,
    ) -> None:
        self._host = host
        self._port = port
        self._unix_path = os.fspath(unix_path) if unix_path is not None else None
        self._on_event = on_event
        self._backlog = backlog
        if users and shared_key is None:
            raise ValueError("users need a shared_key: the handshake carries both")
        self._shared_key = shared_key
        self._users = dict(users) if users else None
        self._self_hostname = self_hostname
        self._ssl_context = ssl_context
        self._keepalive = keepalive
        self._helo_as_str = helo_as_str
        self._close_with_reset = close_with_reset
        # Fluent Bit's way with a wrong shared key or a malformed PING: close, no PONG.
        self._silent_key_refusal = silent_key_refusal
        self._handshakes = 0
        self._auth_failures = 0
        self._control_timeout = control_timeout

        # The condition guards everything recorded; an RLock so that a wait_for predicate
        # may read the public properties, which take the same lock.
        self._cond = threading.Condition(threading.RLock())
        self._events: list[ReceivedEvent] = []
        self._frames: list[DecodedFrame] = []
        self._errors: list[str] = []
        self._bytes_received = 0
        self._connections_accepted = 0
        self._open_connections = 0
        self._acks_sent = 0
        self._started = False
        self._closed = False

        # Owned by the I/O thread once it runs.
        self._family = socket.AF_UNIX if self._unix_path is not None else socket.AF_INET
        self._bind_host = host
        self._sel: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._unix_bound = False
        self._conns: set[_Conn] = set()
        self._next_conn_id = 0
        self._stalled = False
        self._refusing = False
        # blackhole(): a backlog-0 listener whose accept queue one connection of our own
        # keeps full, so the kernel drops every new SYN unanswered.
        self._blackholed = False
        self._hole: list[socket.socket] = []
        self._drop_after: int | None = None
        # Ack faults: acks held back for a while, never sent, sent twice, or with a wrong id.
        self._ack_delay: float | None = None
        self._withhold_acks = False
        self._duplicate_acks = False
        self._garble_acks = False
        # (when due, connection, the acks packed, how many)
        self._delayed_acks: list[tuple[float, _Conn, bytes, int]] = []

        self._cmd_lock = threading.Lock()
        self._commands: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._loop_done = False
        self._stopping = False
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> ForwardServer:
        """Bind, listen and start the server thread. Raises OSError if the bind fails."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is closed")
            if self._started:
                raise RuntimeError("the server is already started")
            self._started = True
        try:
            if self._unix_path is None:
                info = socket.getaddrinfo(
                    self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
                )
                self._family = info[0][0]
                self._bind_host = str(info[0][4][0])
            self._sel = selectors.DefaultSelector()
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKER)
            # Bind even when refusing, so that an ephemeral port gets a number right away.
            self._open_listener()
            if self._refusing:
                self._close_listener()
        except BaseException:
            self._release_io()
            with self._cond:
                self._started = False
            raise
        thread = threading.Thread(target=self._run, name="fluentclient-server", daemon=True)
        self._thread = thread
        thread.start()
        log.info("forward server listening on %s", self._describe())
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and close every socket. Idempotent; waits at most ``timeout``."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake()
        if thread is threading.current_thread():
            return  # called from on_event: the loop ends as soon as the callback returns
        thread.join(timeout)
        if thread.is_alive():
            log.warning("the forward server thread did not stop within %.1f s", timeout)

    def __enter__(self) -> ForwardServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Start if needed, then block until :meth:`close` (or Ctrl-C); closes on the way out."""
        if not self._started:
            self.start()
        try:
            with self._cond:
                while not (self._closed or self._loop_done):
                    # Short waits so that the main thread still sees KeyboardInterrupt.
                    self._cond.wait(poll_interval)
        finally:
            self.close()

    # -- where it listens ---------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound TCP port (the same after stop/restart); 0 for a Unix socket."""
        return self._port if self._unix_path is None else 0

    @property
    def unix_path(self) -> str | None:
        return self._unix_path

    @property
    def address(self) -> tuple[str, int] | str:
        """What a client connects to: ``(host, port)`` or the Unix socket path."""
        if self._unix_path is not None:
            return self._unix_path
        return (self._host, self._port)

    @property
    def listening(self) -> bool:
        """Whether connects succeed now (False while stopped, refusing or black-holed)."""
        return self._listener is not None

    # -- what it received ---------------------------------------------------------------

    @property
    def events(self) -> list[ReceivedEvent]:
        """A copy of the events received so far, in arrival order."""
        with self._cond:
            return list(self._events)

    @property
    def frames(self) -> list[DecodedFrame]:
        with self._cond:
            return list(self._frames)

    @property
    def errors(self) -> list[str]:
        """Broken frames, and connections the peer closed in the middle of a frame."""
        with self._cond:
            return list(self._errors)

    @property
    def event_count(self) -> int:
        with self._cond:
            return len(self._events)

    @property
    def bytes_received(self) -> int:
        """Bytes read from connections (a drop_after cut never reads past its limit)."""
        with self._cond:
            return self._bytes_received

    @property
    def connections_accepted(self) -> int:
        with self._cond:
            return self._connections_accepted

    @property
    def open_connections(self) -> int:
        with self._cond:
            return self._open_connections

    @property
    def acks_sent(self) -> int:
        """Acks handed to the socket (a delayed ack counts once its delay is over)."""
        with self._cond:
            return self._acks_sent

    @property
    def handshakes(self) -> int:
        """Handshakes that ended with an accepted PING."""
        with self._cond:
            return self._handshakes

    @property
    def auth_failures(self) -> int:
        """PINGs refused (wrong key, user or password, malformed)."""
        with self._cond:
            return self._auth_failures

    def clear(self) -> None:
        """Forget everything recorded so far and reset the counters (open connections stay)."""
        with self._cond:
            self._events.clear()
            self._frames.clear()
            self._errors.clear()
            self._bytes_received = 0
            self._connections_accepted = 0
            self._acks_sent = 0
            self._handshakes = 0
            self._auth_failures = 0
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` is true or ``timeout`` passes; returns its last value.

        The predicate runs with the server's lock held each time something is recorded; it
        may read this server's properties but must not block. Waiting ends early, returning
        the predicate's value, when the server closes.
        """
        with self._cond:
            self._cond.wait_for(
                lambda: bool(predicate()) or self._closed or self._loop_done, timeout
            )
            return bool(predicate())

    def wait_for_events(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``n`` events were recorded (since the last clear)."""
        return self.wait_for(lambda: len(self._events) >= n, timeout)

    # -- fault switches -----------------------------------------------------------------

    def stop(self) -> None:
        """Close the listening socket and every connection; :attr:`port` keeps its value."""

        def op() -> None:
            self._close_listener()
            for conn in list(self._conns):
                self._close_conn(conn)

        self._control(op, need_started=True)

    def restart(self) -> None:
        """Listen again on the same port (or path); a no-op if already listening."""

        def op() -> None:
            self._refusing = False
            self._open_listener()

        self._control(op, need_started=True)

    def stall(self, on: bool = True) -> None:
        """While on, accept connections but never read from them; off resumes reading."""

        def op() -> None:
            self._stalled = on
            for conn in list(self._conns):
                self._update_interest(conn)
                if (
                    not on and not conn.closed and not conn.tls_want
                    and isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending()
                ):
                    # Decrypted bytes already inside the TLS layer: no select reports them.
                    self._read(conn)

        self._control(op)

    def delay_acks(self, seconds: float | None) -> None:
        """Write each ack ``seconds`` late (None: at once); reading goes on meanwhile."""

        def op() -> None:
            self._ack_delay = seconds

        self._control(op)

    def withhold_acks(self, on: bool = True) -> None:
        """Record events but never acknowledge them."""

        def op() -> None:
            self._withhold_acks = on

        self._control(op)

    def duplicate_acks(self, on: bool = True) -> None:
        """Send every ack twice, as a confused server might."""

        def op() -> None:
            self._duplicate_acks = on

        self._control(op)

    def garble_acks(self, on: bool = True) -> None:
        """Answer each chunk with an ack for a different id."""

        def op() -> None:
            self._garble_acks = on

        self._control(op)

    def drop_after(self, n: int | None) -> None:
        """Reset each connection accepted from now on once it has delivered ``n`` bytes.

        The server reads no further than ``n`` bytes, decodes the frames complete within
        them, then closes the connection with an RST. ``n=0`` resets right at accept.
        ``None`` turns it off for new connections; connections accepted earlier keep the
        limit they were given.
        """
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise ValueError(f"drop_after needs a byte count >= 0 or None, not {n!r}")

        def op() -> None:
            # Connections already waiting in the backlog were made before this call.
            self._accept_all()
            self._drop_after = n

        self._control(op)

    def refuse(self, on: bool = True) -> None:
        """While on, the listening socket is closed, so connects fail with ECONNREFUSED.

        Connections already made (including those still in the backlog) stay open.
        """

        def op() -> None:
            self._refusing = on
            if self._sel is None:
                return
            if on:
                self._accept_all()
                self._close_listener()
            else:
                self._open_listener()

        self._control(op)

    def blackhole(self, on: bool = True) -> None:
        """While on, connection attempts get no answer at all: ``connect()`` hangs.

        This is a server whose host vanished from the network, or a firewall that drops
        packets: no refusal, no reset, just silence until the client's own timeout. The
        port stays bound by a listener with a backlog of 0 whose accept queue is kept full
        by one connection the server makes to itself; Linux then drops every new SYN
        without a reply. Connections already made, including those waiting in the
        backlog, stay open and are served as before (combine with :meth:`stall` for
        silence there too). Off listens normally again; a client whose SYN is being
        retransmitted connects on its next try. TCP only: a full Unix socket backlog
        fails a connect at once with EAGAIN instead of hanging it.
        """
        if self._unix_path is not None:
            raise ValueError("blackhole() needs a TCP server: a Unix socket connect never hangs")

        def op() -> None:
            if on == self._blackholed:
                return
            self._blackholed = on
            if self._sel is None or (self._listener is None and not self._hole):
                return  # stopped or refusing: restart() or refuse(False) opens the hole
            if on:
                # Connections already waiting in the backlog were made before this call.
                self._accept_all()
            self._close_listener()
            self._open_listener()

        self._control(op)

    def _control(self, op: Callable[[], _T], need_started: bool = False) -> _T:
        with self._cmd_lock:
            if self._closed or self._loop_done:
                raise RuntimeError("the server is closed")
            thread = self._thread
            if thread is None:
                if need_started:
                    raise RuntimeError("the server is not started")
                return op()  # no thread yet: only flags change
            if thread is threading.current_thread():
                inline = True
            else:
                inline = False
                future: Future[_T] = Future()
                self._commands.append((op, future))
        if inline:
            return op()
        self._wake()
        return future.result(timeout=self._control_timeout)

    # -- the I/O thread -----------------------------------------------------------------

    def _run(self) -> None:
        sel = self._sel
        assert sel is not None
        try:
            while not self._stopping:
                timeout = self._send_due_acks() if self._delayed_acks else 1.0
                for key, mask in sel.select(timeout=timeout):
                    data = key.data
                    if data is _WAKER:
                        self._drain_wake()
                    elif data is _LISTENER:
                        self._accept_all()
                    elif data.tls_want and not data.closed:
                        self._continue_tls(data)
                    elif not data.closed:
                        if mask & selectors.EVENT_WRITE:
                            self._flush(data)
                        if mask & selectors.EVENT_READ and not data.closed:
                            self._read(data)
                self._run_commands()
        except Exception as exc:
            log.exception("the forward server thread failed")
            self._record_error(f"server thread failed: {exc!r}")
        finally:
            self._shutdown_io()

    def _run_commands(self) -> None:
        while True:
            with self._cmd_lock:
                if not self._commands:
                    return
                op, future = self._commands.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(op())
            except Exception as exc:
                future.set_exception(exc)

    def _shutdown_io(self) -> None:
        with self._cmd_lock:
            self._loop_done = True
            pending = list(self._commands)
            self._commands.clear()
        for _, future in pending:
            if future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError("the server is closed"))
        for conn in list(self._conns):
            self._close_conn(conn)
        self._close_listener()
        self._release_io()
        if self._unix_bound and self._unix_path is not None:
            self._unix_bound = False
            _remove_socket_file(self._unix_path)
        with self._cond:
            self._cond.notify_all()
        log.info("forward server on %s closed", self._describe())

    def _release_io(self) -> None:
        self._close_hole()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._wake_r = self._wake_w = None

    def _wake(self) -> None:
        sock = self._wake_w
        if sock is None:
            return
        try:
            sock.send(b"\0")
        except OSError:
            pass  # full means a wake-up is pending already; closed means the loop is gone

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _open_listener(self) -> None:
        if self._listener is not None or self._hole or self._sel is None:
            return
        if self._unix_path is not None:
            _remove_socket_file(self._unix_path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(self._unix_path)
            except BaseException:
                sock.close()
                raise
            self._unix_bound = True
        else:
            sock = self._bind_tcp()
            if self._blackholed:
                self._open_hole(sock)
                return
        sock.listen(self._backlog)
        sock.setblocking(False)
        self._sel.register(sock, selectors.EVENT_READ, _LISTENER)
        self._listener = sock
        with self._cond:
            self._cond.notify_all()

    def _bind_tcp(self) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            # Lets restart() and a new server bind while old connections sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._bind_host, self._port))
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
            filler.settimeout(self._control_timeout)
            filler.connect((host, self._port))
        except BaseException:
            self._close_hole()
            raise

    def _close_hole(self) -> None:
        hole, self._hole = self._hole, []
        for sock in hole:
            sock.close()

    def _close_listener(self) -> None:
        self._close_hole()
        sock = self._listener
        if sock is None:
            return
        self._listener = None
        if self._sel is not None:
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
        sock.close()
        with self._cond:
            self._cond.notify_all()

    def _accept_all(self) -> None:
        listener = self._listener
        while listener is not None:
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of descriptors and the like; the backlog keeps the peer waiting.
                log.warning("accept failed: %s", exc)
                return
            self._adopt(sock, peer)

    def _adopt(self, sock: socket.socket, peer: Any) -> None:
        sock.setblocking(False)
        if self._unix_path is None:
            # Acks are tiny; without this, Nagle holds back an ack until the previous one
            # is acknowledged, which costs a delayed-ACK timeout per pipelined frame.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            where = f"{peer[0]}:{peer[1]}"
        else:
            where = self._unix_path
        self._next_conn_id += 1
        if self._ssl_context is not None:
            sock = self._ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        conn = _Conn(sock, f"connection {self._next_conn_id} ({where})", self._drop_after)
        if self._ssl_context is not None:
            conn.tls_want = selectors.EVENT_READ
        self._conns.add(conn)
        with self._cond:
            self._connections_accepted += 1
            self._open_connections += 1
            self._cond.notify_all()
        log.debug("%s accepted", conn.name)
        if conn.budget == 0:
            self._close_conn(conn, reset=True)
        elif conn.tls_want:
            self._continue_tls(conn)
        else:
            self._begin(conn)

    def _continue_tls(self, conn: _Conn) -> None:
        """Drive a non-blocking TLS handshake; a slow client never holds up the others."""
        assert isinstance(conn.sock, ssl.SSLSocket)
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            conn.tls_want = selectors.EVENT_READ
        except ssl.SSLWantWriteError:
            conn.tls_want = selectors.EVENT_WRITE
        except (ssl.SSLError, OSError) as exc:
            self._record_error(f"{conn.name}: TLS handshake failed: {_short(str(exc))}")
            self._close_conn(conn)
            return
        else:
            conn.tls_want = 0
            self._begin(conn)
            return
        self._update_interest(conn)

    def _begin(self, conn: _Conn) -> None:
        """The connection is ready: with security on, the server speaks first (HELO)."""
        if self._shared_key is not None:
            conn.nonce = os.urandom(16)
            # Both real servers offer an auth salt even without users.
            conn.auth = os.urandom(16)
            conn.await_ping = True
            conn.out += handshake.build_helo(
                conn.nonce, conn.auth, self._keepalive, as_str=self._helo_as_str
            )
            self._flush(conn)
        else:
            self._update_interest(conn)
        if isinstance(conn.sock, ssl.SSLSocket) and not conn.closed:
            # Bytes that came with the TLS handshake are decrypted already: the selector
            # will not report them.
            self._read(conn)

    def _update_interest(self, conn: _Conn) -> None:
        if conn.closed or self._sel is None:
            return
        if conn.tls_want:
            want = conn.tls_want
        else:
            want = 0 if self._stalled else selectors.EVENT_READ
            if conn.out:
                want |= selectors.EVENT_WRITE
        if want == conn.mask:
            return
        # A selector will not hold a socket with no events, so a stalled and idle
        # connection leaves it until it has something to do again.
        if conn.mask == 0:
            self._sel.register(conn.sock, want, conn)
        elif want == 0:
            self._sel.unregister(conn.sock)
        else:
            self._sel.modify(conn.sock, want, conn)
        conn.mask = want

    def _close_conn(self, conn: _Conn, reset: bool = False) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.mask and self._sel is not None:
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        conn.mask = 0
        if reset or self._close_with_reset:
            try:
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        elif isinstance(conn.sock, ssl.SSLSocket) and not conn.tls_want:
            # Best effort close_notify, so that the peer reads a clean end of stream; the
            # socket is non-blocking, so this never waits for the peer's answer.
            try:
                conn.sock.unwrap()
            except (OSError, ValueError):
                pass
        conn.sock.close()
        self._conns.discard(conn)
        with self._cond:
            self._open_connections -= 1
            self._cond.notify_all()
        log.debug("%s closed%s", conn.name, " with a reset" if reset else "")

    def _peer_gone(self, conn: _Conn, why: str) -> None:
        pending = conn.fed - conn.done
        if pending:
            self._record_error(
                f"{conn.name}: {why} in the middle of a frame ({pending} bytes undecoded)"
            )
        self._close_conn(conn)

    def _read(self, conn: _Conn) -> None:
        if self._stalled:
            return
        size = _READ_SIZE if conn.budget is None else min(_READ_SIZE, conn.budget)
        try:
            data = conn.sock.recv(size)
            if isinstance(conn.sock, ssl.SSLSocket):
                # TLS may hold more decrypted bytes than one read returned.
                while conn.sock.pending() and len(data) < size:
                    data += conn.sock.recv(min(conn.sock.pending(), size - len(data)))
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError as exc:
            self._peer_gone(conn, f"read failed ({exc})")
            return
        if not data:
            self._peer_gone(conn, "closed by the peer")
            return
        self._feed(conn, data)
        if conn.budget is not None and not conn.closed:
            conn.budget -= len(data)
            if conn.budget <= 0:
                self._close_conn(conn, reset=True)

    def _feed(self, conn: _Conn, data: bytes) -> None:
        conn.fed += len(data)
        decoded: list[DecodedFrame] = []
        failure: str | None = None
        unpacker = conn.unpacker
        try:
            unpacker.feed(data)
            for obj in unpacker:
                conn.done = unpacker.tell()
                if conn.close_after_flush:
                    break  # refused, or keepalive off and its one frame taken
                if conn.await_ping:
                    self._answer_ping(conn, obj)
                    continue
                decoded.append(_checked_frame(obj))
                if not self._keepalive:
                    conn.close_after_flush = True
        except Exception as exc:
            failure = f"{conn.name}: broken frame: {_short(repr(exc))}"
        # Frames decoded before a broken one still count and get their acks, as in fluentd.
        events = [
            ReceivedEvent(frame.tag, t, record) for frame in decoded for t, record in frame.entries
        ]
        acks = self._acks_for(decoded)
        delay = self._ack_delay
        with self._cond:
            self._bytes_received += len(data)
            if decoded:
                self._frames.extend(decoded)
                self._events.extend(events)
                if not delay:
                    self._acks_sent += len(acks)  # delayed ones count once written
            if failure is not None:
                self._errors.append(failure)
            self._cond.notify_all()
        if failure is not None:
            log.warning("%s", failure)
        if self._on_event is not None:
            for event in events:
                try:
                    self._on_event(event)
                except Exception:
                    log.exception("on_event callback failed")
        if (conn.out or conn.close_after_flush) and not acks:
            # A PONG, a HELO that waited for the TLS handshake, or a close that is due.
            self._flush(conn)
        if acks:
            if delay:
                conn.held_acks += 1
                self._delayed_acks.append(
                    (time.monotonic() + delay, conn, b"".join(acks), len(acks))
                )
            else:
                conn.out += b"".join(acks)
                self._flush(conn)
        if failure is not None:
            self._close_conn(conn)

    def _answer_ping(self, conn: _Conn, obj: Any) -> None:
        assert self._shared_key is not None
        ok, reason, pong = handshake.check_ping(
            obj, nonce=conn.nonce, auth=conn.auth, shared_key=self._shared_key,
            users=self._users, server_hostname=self._self_hostname,
        )
        conn.await_ping = False
        # Fluent Bit answers a bad user with a PONG, but anything wrong before that with
        # a bare close.
        if ok or not self._silent_key_refusal or reason == "username/password mismatch":
            conn.out += pong
        with self._cond:
            if ok:
                self._handshakes += 1
            else:
                self._auth_failures += 1
            self._cond.notify_all()
        if not ok:
            log.info("%s refused: %s", conn.name, reason)
            conn.close_after_flush = True

    def _acks_for(self, decoded: list[DecodedFrame]) -> list[bytes]:
        if self._withhold_acks:
            return []
        acks = []
        for frame in decoded:
            chunk = frame.options.get("chunk")
            if chunk is None:
                continue
            ack = ack_for(f"{chunk}-not-this-one" if self._garble_acks else chunk)
            acks.append(ack)
            if self._duplicate_acks:
                acks.append(ack)
        return acks

    def _send_due_acks(self) -> float:
        """Write delayed acks that are due; the seconds until the next one (or 1)."""
        now = time.monotonic()
        waiting = []
        for item in self._delayed_acks:
            due, conn, data, count = item
            if due > now:
                waiting.append(item)
            elif not conn.closed:
                conn.held_acks -= 1
                conn.out += data
                with self._cond:
                    self._acks_sent += count
                    self._cond.notify_all()
                self._flush(conn)
        self._delayed_acks = waiting
        return min((item[0] - now for item in waiting), default=1.0)

    def _flush(self, conn: _Conn) -> None:
        while conn.out and not conn.closed:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                    ssl.SSLWantWriteError):
                break
            except OSError as exc:
                self._peer_gone(conn, f"write failed ({exc})")
                return
            del conn.out[:sent]
        if conn.close_after_flush and not conn.out and not conn.held_acks and not conn.closed:
            self._close_conn(conn)
            return
        self._update_interest(conn)

    def _record_error(self, message: str) -> None:
        log.warning("%s", message)
        with self._cond:
            self._errors.append(message)
            self._cond.notify_all()

    def _describe(self) -> str:
        if self._unix_path is not None:
            return self._unix_path
        return f"{self._host}:{self._port}"


def _checked_frame(obj: Any) -> DecodedFrame:
    """decode_frame, plus a check that ``size`` (when given) matches the entries found.

    No real server enforces ``size``, but fluentd trusts it for its counts, and it is the
    only thing that reveals a PackedForward payload cut short at an entry boundary or in
    the middle of one: the entry stream has no end marker, so decoding just stops early.
    """
    frame = decode_frame(obj)
    size = frame.options.get("size")
    if isinstance(size, int) and not isinstance(size, bool) and size != len(frame.entries):
        raise FrameError(f"option size={size} but the frame holds {len(frame.entries)} entries")
    return frame


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _remove_socket_file(path: str) -> None:
    """Remove a Unix socket left at ``path``; any other kind of file is left alone."""
    if path.startswith("\0"):
        return  # Linux abstract namespace: nothing on disk
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
