"""The embedded server's I/O thread: one selector loop, and the commands other threads send it."""

from __future__ import annotations

import logging
import selectors
import socket
import threading
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

from ._acks import AckSchedule
from ._faults import Faults
from ._listener import Listener
from ._record import Recorder
from ._session import Session, SessionContext, Settings

log = logging.getLogger("fluentclient.server")

_T = TypeVar("_T")


class CommandQueue:
    """Functions other threads hand to the I/O thread, and the socket pair that wakes it.

    A caller waits until its function has run there, so that when a fault switch returns its
    effect is in place, and no socket is ever closed under a ``select`` in another thread.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._lock = threading.Lock()
        self._pending: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._closed = False
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        # The I/O thread, once it runs; the lock guards the moment it appears.
        self.thread: threading.Thread | None = None

    def open_pipe(self) -> socket.socket:
        """Make the wake-up pair; the loop selects on the socket returned."""
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        return self._wake_r

    def close_pipe(self) -> None:
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._wake_r = self._wake_w = None

    def served_by(self, thread: threading.Thread) -> None:
        with self._lock:
            self.thread = thread

    def close(self) -> None:
        """Refuse every later command."""
        with self._lock:
            self._closed = True

    def wake(self) -> None:
        sock = self._wake_w
        if sock is None:
            return
        try:
            sock.send(b"\0")
        except OSError:
            pass  # full means a wake-up is pending already; closed means the loop is gone

    def drain(self) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def call(self, op: Callable[[], _T], need_started: bool = False) -> _T:
        """Run ``op`` on the I/O thread (here, before it exists) and return its result."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the server is closed")
            thread = self.thread
            if thread is None:
                if need_started:
                    raise RuntimeError("the server is not started")
                return op()  # no thread yet: only flags change
            if thread is threading.current_thread():
                inline = True
            else:
                inline = False
                future: Future[_T] = Future()
                self._pending.append((op, future))
        if inline:
            return op()
        self.wake()
        return future.result(timeout=self._timeout)

    def run_pending(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                op, future = self._pending.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(op())
            except Exception as exc:
                future.set_exception(exc)

    def fail_pending(self) -> None:
        """The loop is ending: close, and fail whatever nobody will run now."""
        with self._lock:
            self._closed = True
            pending = list(self._pending)
            self._pending.clear()
        for _, future in pending:
            if future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError("the server is closed"))


class ServerLoop:
    """The selector loop: accepts connections and hands socket events to their sessions.

    Besides :meth:`open`, :meth:`start_thread` and :meth:`request_stop`, every public
    method runs on the I/O thread, through the command queue (or before the thread starts).
    """

    def __init__(
        self,
        listener: Listener,
        commands: CommandQueue,
        settings: Settings,
        faults: Faults,
        recorder: Recorder,
    ) -> None:
        self._listener = listener
        self._commands = commands
        self._settings = settings
        self._faults = faults
        self._recorder = recorder
        self._sel: selectors.BaseSelector | None = None
        self._context: SessionContext | None = None
        self._sessions: set[Session] = set()
        self._held_acks = AckSchedule()
        self._next_id = 0
        self._stopping = False
        self.thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------

    def open(self) -> None:
        """Resolve, make the selector and bind; the caller calls :meth:`release` if it fails."""
        self._listener.resolve()
        self._sel = sel = selectors.DefaultSelector()
        self._context = SessionContext(
            self._settings, self._faults, self._recorder, self._held_acks, sel,
            self._sessions.discard,
        )
        sel.register(self._commands.open_pipe(), selectors.EVENT_READ, self._commands)
        # Bind even when refusing, so that an ephemeral port gets a number right away.
        self._open_listener()
        if self._faults.refusing:
            self._close_listener()

    def start_thread(self) -> None:
        thread = threading.Thread(target=self._run, name="fluentclient-server", daemon=True)
        self.thread = thread
        self._commands.served_by(thread)
        thread.start()

    def request_stop(self) -> None:
        self._stopping = True
        self._commands.wake()

    def release(self) -> None:
        self._listener.release()
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        self._commands.close_pipe()

    # -- what the fault switches do -----------------------------------------------------

    def stop(self) -> None:
        self._close_listener()
        for session in list(self._sessions):
            session.close()

    def restart(self) -> None:
        self._faults.refusing = False
        self._open_listener()

    def stall(self, on: bool) -> None:
        self._faults.stalled = on
        for session in list(self._sessions):
            session.stall_changed()

    def drop_after(self, n: int | None) -> None:
        # Connections already waiting in the backlog were made before the switch.
        self._accept_all()
        self._faults.drop_after = n

    def refuse(self, on: bool) -> None:
        self._faults.refusing = on
        if self._sel is None:
            return
        if on:
            self._accept_all()
            self._close_listener()
        else:
            self._open_listener()

    def blackhole(self, on: bool) -> None:
        if on == self._faults.blackholed:
            return
        self._faults.blackholed = on
        if self._sel is None or not self._listener.bound:
            return  # stopped or refusing: restart() or refuse(False) opens the hole
        if on:
            # Connections already waiting in the backlog were made before the switch.
            self._accept_all()
        self._close_listener()
        self._open_listener()

    # -- the I/O thread -----------------------------------------------------------------

    def _run(self) -> None:
        sel = self._sel
        assert sel is not None
        try:
            while not self._stopping:
                timeout = self._held_acks.send_due() if self._held_acks else 1.0
                for key, mask in sel.select(timeout=timeout):
                    data = key.data
                    if data is self._commands:
                        self._commands.drain()
                    elif data is self._listener:
                        self._accept_all()
                    else:
                        data.handle(mask)
                self._commands.run_pending()
        except Exception as exc:
            log.exception("the forward server thread failed")
            message = f"server thread failed: {exc!r}"
            log.warning("%s", message)
            self._recorder.error(message)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._commands.fail_pending()
        self._recorder.end()
        for session in list(self._sessions):
            session.close()
        self._close_listener()
        self.release()
        self._listener.remove_file()
        self._recorder.notify()
        log.info("forward server on %s closed", self._listener.describe())

    def _open_listener(self) -> None:
        if self._sel is not None:
            self._listener.open(self._sel, self._faults.blackholed)

    def _close_listener(self) -> None:
        self._listener.close(self._sel)

    def _accept_all(self) -> None:
        for sock, peer in self._listener.accept():
            self._adopt(sock, peer)

    def _adopt(self, sock: socket.socket, peer: Any) -> None:
        assert self._context is not None
        sock.setblocking(False)
        unix_path = self._listener.unix_path
        if unix_path is None:
            # Acks are tiny; without this, Nagle holds back an ack until the previous one
            # is acknowledged, which costs a delayed-ACK timeout per pipelined frame.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            where = f"{peer[0]}:{peer[1]}"
        else:
            where = unix_path
        self._next_id += 1
        context = self._settings.ssl_context
        if context is not None:
            sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        session = Session(sock, f"connection {self._next_id} ({where})", self._context)
        self._sessions.add(session)
        self._recorder.connection_opened()
        log.debug("%s accepted", session.name)
        session.start()
