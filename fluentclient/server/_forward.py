"""ForwardServer: the embedded server's public face, its life cycle and its fault switches.

The socket work is done by the loop (see ``_loop``); each switch hands it a function and
waits until that has run.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Callable

from .._decoding import DecodedFrame
from ._faults import Faults
from ._listener import Listener
from ._loop import CommandQueue, ServerLoop
from ._record import ReceivedEvent, Recorder
from ._session import Settings

log = logging.getLogger("fluentclient.server")


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
        if users and shared_key is None:
            raise ValueError("users need a shared_key: the handshake carries both")
        self._host = host
        self._unix_path = os.fspath(unix_path) if unix_path is not None else None
        self._faults = Faults(
            close_with_reset=close_with_reset, silent_key_refusal=silent_key_refusal
        )
        self._recorder = Recorder()
        self._listener = Listener(
            host, port, self._unix_path, backlog=backlog, connect_timeout=control_timeout,
            on_change=self._recorder.notify,
        )
        self._commands = CommandQueue(control_timeout)
        settings = Settings(
            shared_key=shared_key, users=dict(users) if users else None,
            self_hostname=self_hostname, ssl_context=ssl_context, keepalive=keepalive,
            helo_as_str=helo_as_str, on_event=on_event,
        )
        self._loop = ServerLoop(
            self._listener, self._commands, settings, self._faults, self._recorder
        )
        self._life_lock = threading.Lock()
        self._started = False
        self._closed = False

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> ForwardServer:
        """Bind, listen and start the server thread. Raises OSError if the bind fails."""
        with self._life_lock:
            if self._closed:
                raise RuntimeError("the server is closed")
            if self._started:
                raise RuntimeError("the server is already started")
            self._started = True
        try:
            self._loop.open()
        except BaseException:
            self._loop.release()
            with self._life_lock:
                self._started = False
            raise
        self._loop.start_thread()
        log.info("forward server listening on %s", self._listener.describe())
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and close every socket. Idempotent; waits at most ``timeout``."""
        with self._life_lock:
            if self._closed:
                return
            self._closed = True
        self._commands.close()
        self._recorder.end()
        thread = self._loop.thread
        if thread is None:
            return
        self._loop.request_stop()
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
            # Short waits so that the main thread still sees KeyboardInterrupt.
            while not self._recorder.wait_for(lambda: self._recorder.ended, poll_interval):
                pass
        finally:
            self.close()

    # -- where it listens ---------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound TCP port (the same after stop/restart); 0 for a Unix socket."""
        return self._listener.port if self._unix_path is None else 0

    @property
    def unix_path(self) -> str | None:
        return self._unix_path

    @property
    def address(self) -> tuple[str, int] | str:
        """What a client connects to: ``(host, port)`` or the Unix socket path."""
        if self._unix_path is not None:
            return self._unix_path
        return (self._host, self._listener.port)

    @property
    def listening(self) -> bool:
        """Whether connects succeed now (False while stopped, refusing or black-holed)."""
        return self._listener.listening

    # -- what it received ---------------------------------------------------------------

    @property
    def events(self) -> list[ReceivedEvent]:
        """A copy of the events received so far, in arrival order."""
        return self._recorder.events

    @property
    def frames(self) -> list[DecodedFrame]:
        return self._recorder.frames

    @property
    def errors(self) -> list[str]:
        """Broken frames, and connections the peer closed in the middle of a frame."""
        return self._recorder.errors

    @property
    def event_count(self) -> int:
        return self._recorder.event_count

    @property
    def bytes_received(self) -> int:
        """Bytes read from connections (a drop_after cut never reads past its limit)."""
        return self._recorder.bytes_received

    @property
    def bytes_unread(self) -> int:
        """Bytes connections had taken but the server never read when it closed them (as
        a stopping server discards them; Linux only, 0 elsewhere). The client's TCP saw
        them acknowledged, so no client can tell that they were lost until told."""
        return self._recorder.bytes_unread

    @property
    def connections_accepted(self) -> int:
        return self._recorder.connections_accepted

    @property
    def open_connections(self) -> int:
        return self._recorder.open_connections

    @property
    def acks_sent(self) -> int:
        """Acks handed to the socket (a delayed ack counts once its delay is over)."""
        return self._recorder.acks_sent

    @property
    def handshakes(self) -> int:
        """Handshakes that ended with an accepted PING."""
        return self._recorder.handshakes

    @property
    def auth_failures(self) -> int:
        """PINGs refused (wrong key, user or password, malformed)."""
        return self._recorder.auth_failures

    def clear(self) -> None:
        """Forget everything recorded so far and reset the counters (open connections stay)."""
        self._recorder.clear()

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` is true or ``timeout`` passes; returns its last value.

        The predicate runs with the server's lock held each time something is recorded; it
        may read this server's properties but must not block. Waiting ends early, returning
        the predicate's value, when the server closes.
        """
        return self._recorder.wait_for(predicate, timeout)

    def wait_for_events(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``n`` events were recorded (since the last clear)."""
        return self.wait_for(lambda: self._recorder.event_count >= n, timeout)

    # -- fault switches (see Faults for what each imitates) -----------------------------

    def stop(self) -> None:
        """Close the listening socket and every connection; :attr:`port` keeps its value."""
        self._commands.call(self._loop.stop, need_started=True)

    def restart(self) -> None:
        """Listen again on the same port (or path); a no-op if already listening."""
        self._commands.call(self._loop.restart, need_started=True)

    def stall(self, on: bool = True) -> None:
        """While on, accept connections but never read from them; off resumes reading."""
        self._commands.call(lambda: self._loop.stall(on))

    def delay_acks(self, seconds: float | None) -> None:
        """Write each ack ``seconds`` late (None: at once); reading goes on meanwhile."""

        def op() -> None:
            self._faults.ack_delay = seconds

        self._commands.call(op)

    def withhold_acks(self, on: bool = True) -> None:
        """Record events but never acknowledge them."""

        def op() -> None:
            self._faults.withhold_acks = on

        self._commands.call(op)

    def duplicate_acks(self, on: bool = True) -> None:
        """Send every ack twice, as a confused server might."""

        def op() -> None:
            self._faults.duplicate_acks = on

        self._commands.call(op)

    def garble_acks(self, on: bool = True) -> None:
        """Answer each chunk with an ack for a different id."""

        def op() -> None:
            self._faults.garble_acks = on

        self._commands.call(op)

    def drop_after(self, n: int | None) -> None:
        """Reset each connection accepted from now on once it has delivered ``n`` bytes.

        The server reads no further than ``n`` bytes, decodes the frames complete within
        them, then closes the connection with an RST. ``n=0`` resets right at accept.
        ``None`` turns it off for new connections; connections accepted earlier keep the
        limit they were given.
        """
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise ValueError(f"drop_after needs a byte count >= 0 or None, not {n!r}")
        self._commands.call(lambda: self._loop.drop_after(n))

    def refuse(self, on: bool = True) -> None:
        """While on, the listening socket is closed, so connects fail with ECONNREFUSED.

        Connections already made (including those still in the backlog) stay open.
        """
        self._commands.call(lambda: self._loop.refuse(on))

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
        self._commands.call(lambda: self._loop.blackhole(on))
