"""One connection to the embedded server: TLS, the forward handshake, frames, acks, closing."""

from __future__ import annotations

import fcntl
import logging
import os
import selectors
import socket
import ssl
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from .._decoding import DecodedFrame, FrameError, decode_frame, new_unpacker
from .._transport import _handshake as handshake
from .._words import count
from ._acks import AckSchedule, acks_for
from ._faults import Faults
from ._record import ReceivedEvent, Recorder

log = logging.getLogger("fluentclient.server")

_READ_SIZE = 256 * 1024
# l_onoff=1, l_linger=0: close() then sends an RST and drops whatever was still queued.
_LINGER_RESET = struct.pack("ii", 1, 0)
_SIOCINQ = 0x541B  # FIONREAD
# A TLS record of type handshake (22), major version 3: how every ClientHello begins. No
# forward frame does: 0x16 is the msgpack integer 22, never a frame's array.
_TLS_HANDSHAKE = b"\x16\x03"
# What OpenSSL says when a client's first bytes are not TLS at all.
_NOT_TLS_REASONS = frozenset({
    "WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST",
    "UNKNOWN_PROTOCOL", "UNEXPECTED_RECORD",
})


@dataclass(frozen=True)
class Settings:
    """How the server speaks the protocol: fixed when it is made."""

    shared_key: str | None
    users: Mapping[str, str] | None
    self_hostname: str
    ssl_context: ssl.SSLContext | None
    keepalive: bool
    helo_as_str: bool
    on_event: Callable[[ReceivedEvent], None] | None


@dataclass(frozen=True)
class SessionContext:
    """What every session of one server shares with the loop that runs it."""

    settings: Settings
    faults: Faults
    recorder: Recorder
    held_acks: AckSchedule
    selector: selectors.BaseSelector
    # Called once a session has closed, so that the loop lets go of it.
    forget: Callable[[Session], None]
    # The TLS mismatches already logged at warning level (see _mismatch): a client that
    # keeps retrying is told about once, not at every connection.
    told: set[str] = field(default_factory=set)


class Session:
    """An accepted socket and the protocol spoken on it. Used by the I/O thread only."""

    __slots__ = (
        "sock", "name", "closed", "tls_want", "_env", "_unpacker", "_budget", "_out", "_mask",
        "_fed", "_done", "_nonce", "_auth", "_await_ping", "_close_after_flush", "_held",
    )

    def __init__(self, sock: socket.socket, name: str, env: SessionContext) -> None:
        self.sock = sock
        self.name = name
        self.closed = False
        # While a TLS handshake is under way: the event it waits for, else 0.
        self.tls_want = selectors.EVENT_READ if isinstance(sock, ssl.SSLSocket) else 0
        self._env = env
        self._unpacker = new_unpacker()
        # Bytes this connection may still deliver before it is reset; drop_after() changes
        # only the budget of connections accepted after it.
        self._budget = env.faults.drop_after
        self._out = bytearray()
        self._mask = 0
        self._fed = 0
        # Stream offset just past the last whole frame. The unpacker's own tell() cannot
        # stand in for it mid-frame: it also counts the bytes of a half-parsed object.
        self._done = 0
        # The handshake (server <security>): what HELO offered, and whether PING is due.
        self._nonce = b""
        self._auth = b""
        self._await_ping = False
        # Close once everything queued is written (a refused PONG, keepalive off).
        self._close_after_flush = False
        # Batches of acks waiting in the delay queue; a due close waits for them too.
        self._held = 0

    def start(self) -> None:
        if self._budget == 0:
            self.close(reset=True)
        elif self.tls_want:
            self._continue_tls()
        else:
            self._begin()

    def handle(self, mask: int) -> None:
        """The selector reported ``mask`` for this socket."""
        if self.closed:
            return
        if self.tls_want:
            self._continue_tls()
            return
        if mask & selectors.EVENT_WRITE:
            self._flush()
        if mask & selectors.EVENT_READ and not self.closed:
            self._read()

    def stall_changed(self) -> None:
        self._update_interest()
        if (
            not self._env.faults.stalled and not self.closed and not self.tls_want
            and isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
        ):
            # Decrypted bytes already inside the TLS layer: no select reports them.
            self._read()

    def write_held_acks(self, data: bytes, count: int) -> None:
        """A batch of delayed acks fell due; a closed connection lets them go."""
        if self.closed:
            return
        self._held -= 1
        self._out += data
        self._env.recorder.acks_written(count)
        self._flush()

    def close(self, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if self._mask:
            try:
                self._env.selector.unregister(self.sock)
            except (KeyError, ValueError):
                pass
        self._mask = 0
        unread = _unread(self.sock)
        if reset or self._env.faults.close_with_reset:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass
        elif isinstance(self.sock, ssl.SSLSocket) and not self.tls_want:
            # Best effort close_notify, so that the peer reads a clean end of stream; the
            # socket is non-blocking, so this never waits for the peer's answer.
            try:
                self.sock.unwrap()
            except (OSError, ValueError):
                pass
        self.sock.close()
        self._env.forget(self)
        self._env.recorder.connection_closed(unread)
        log.debug("%s closed%s", self.name, " with a reset" if reset else "")

    # -- connecting ---------------------------------------------------------------------

    def _continue_tls(self) -> None:
        """Drive a non-blocking TLS handshake; a slow client never holds up the others."""
        assert isinstance(self.sock, ssl.SSLSocket)
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.tls_want = selectors.EVENT_READ
        except ssl.SSLWantWriteError:
            self.tls_want = selectors.EVENT_WRITE
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None)
            if reason in _NOT_TLS_REASONS:
                self._mismatch("plain", f"{self.name}: TLS handshake failed: the client did "
                               f"not start one ({reason}): it probably speaks the plain "
                               "forward protocol; set tls=True on the client, or serve "
                               "without TLS")
            else:
                self._record_error(f"{self.name}: TLS handshake failed: {_short(str(exc))}")
            self.close()
            return
        else:
            self.tls_want = 0
            self._begin()
            return
        self._update_interest()

    def _begin(self) -> None:
        """The connection is ready: with security on, the server speaks first (HELO)."""
        settings = self._env.settings
        if settings.shared_key is not None:
            self._nonce = os.urandom(16)
            # Both real servers offer an auth salt even without users.
            self._auth = os.urandom(16)
            self._await_ping = True
            self._out += handshake.build_helo(
                self._nonce, self._auth, settings.keepalive, as_str=settings.helo_as_str
            )
            self._flush()
        else:
            self._update_interest()
        if isinstance(self.sock, ssl.SSLSocket) and not self.closed:
            # Bytes that came with the TLS handshake are decrypted already: the selector
            # will not report them.
            self._read()

    def _answer_ping(self, obj: Any) -> None:
        settings = self._env.settings
        assert settings.shared_key is not None
        ok, reason, pong = handshake.check_ping(
            obj, nonce=self._nonce, auth=self._auth, shared_key=settings.shared_key,
            users=settings.users, server_hostname=settings.self_hostname,
        )
        self._await_ping = False
        # Fluent Bit answers a bad user with a PONG, but anything wrong before that with
        # a bare close.
        silent = self._env.faults.silent_key_refusal
        if ok or not silent or reason == "username/password mismatch":
            self._out += pong
        self._env.recorder.handshake(ok)
        if not ok:
            log.info("%s refused: %s", self.name, reason)
            self._close_after_flush = True

    # -- reading ------------------------------------------------------------------------

    def _read(self) -> None:
        if self._env.faults.stalled:
            return
        size = _READ_SIZE if self._budget is None else min(_READ_SIZE, self._budget)
        sock = self.sock
        try:
            data = sock.recv(size)
            if isinstance(sock, ssl.SSLSocket):
                # TLS may hold more decrypted bytes than one read returned.
                while sock.pending() and len(data) < size:
                    data += sock.recv(min(sock.pending(), size - len(data)))
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError as exc:
            self._peer_gone(f"read failed ({exc})")
            return
        if not data:
            self._peer_gone("closed by the peer")
            return
        self._feed(data)
        if self._budget is not None and not self.closed:
            self._budget -= len(data)
            if self._budget <= 0:
                self.close(reset=True)

    def _feed(self, data: bytes) -> None:
        if not self._fed and data[:2] == _TLS_HANDSHAKE and not isinstance(self.sock,
                                                                           ssl.SSLSocket):
            # A TLS ClientHello on a plain port: not a broken frame to report in msgpack
            # terms, but a setting to change on one side or the other.
            self._fed += len(data)
            self._mismatch("tls", f"{self.name}: the client began a TLS handshake, but this "
                           "server does not speak TLS: set tls=False on the client, or give "
                           "the server a certificate (ssl_context=, or fluentclient serve "
                           "--tls-cert and --tls-key)")
            self.close()
            return
        self._fed += len(data)
        decoded: list[DecodedFrame] = []
        failure: str | None = None
        unpacker = self._unpacker
        try:
            unpacker.feed(data)
            for obj in unpacker:
                self._done = unpacker.tell()
                if self._close_after_flush:
                    break  # refused, or keepalive off and its one frame taken
                if self._await_ping:
                    self._answer_ping(obj)
                    continue
                decoded.append(_checked_frame(obj))
                if not self._env.settings.keepalive:
                    self._close_after_flush = True
        except Exception as exc:
            failure = f"{self.name}: broken frame: {_short(repr(exc))}"
        # Frames decoded before a broken one still count and get their acks, as in fluentd.
        events = [
            ReceivedEvent(frame.tag, t, record) for frame in decoded for t, record in frame.entries
        ]
        faults = self._env.faults
        acks = acks_for(decoded, faults)
        delay = faults.ack_delay
        # Delayed acks count once they are written.
        self._env.recorder.received(len(data), decoded, events, 0 if delay else len(acks), failure)
        if failure is not None:
            log.warning("%s", failure)
        on_event = self._env.settings.on_event
        if on_event is not None:
            for event in events:
                try:
                    on_event(event)
                except Exception:
                    log.exception("on_event callback failed")
        if (self._out or self._close_after_flush) and not acks:
            # A PONG, a HELO that waited for the TLS handshake, or a close that is due.
            self._flush()
        if acks:
            if delay:
                self._held += 1
                self._env.held_acks.hold(delay, self.write_held_acks, b"".join(acks),
                                         len(acks))
            else:
                self._out += b"".join(acks)
                self._flush()
        if failure is not None:
            self.close()

    def _peer_gone(self, why: str) -> None:
        pending = self._fed - self._done
        if pending:
            self._record_error(
                f"{self.name}: {why} in the middle of a frame ({count(pending, 'byte')} undecoded)"
            )
        self.close()

    # -- writing ------------------------------------------------------------------------

    def _flush(self) -> None:
        while self._out and not self.closed:
            try:
                sent = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                    ssl.SSLWantWriteError):
                break
            except OSError as exc:
                self._peer_gone(f"write failed ({exc})")
                return
            del self._out[:sent]
        if self._close_after_flush and not self._out and not self._held and not self.closed:
            self.close()
            return
        self._update_interest()

    def _update_interest(self) -> None:
        if self.closed:
            return
        if self.tls_want:
            want = self.tls_want
        else:
            want = 0 if self._env.faults.stalled else selectors.EVENT_READ
            if self._out:
                want |= selectors.EVENT_WRITE
        if want == self._mask:
            return
        # A selector will not hold a socket with no events, so a stalled and idle
        # connection leaves it until it has something to do again.
        sel = self._env.selector
        if self._mask == 0:
            sel.register(self.sock, want, self)
        elif want == 0:
            sel.unregister(self.sock)
        else:
            sel.modify(self.sock, want, self)
        self._mask = want

    def _mismatch(self, kind: str, message: str) -> None:
        """A client and this server disagree on TLS: recorded every time, but logged at
        warning level once per kind, then at debug level (a client retries for as long as
        it runs)."""
        self._env.recorder.error(message)
        if kind in self._env.told:
            log.debug("%s", message)
        else:
            self._env.told.add(kind)
            log.warning("%s (said once; later connections like it are logged at debug "
                        "level)", message)

    def _record_error(self, message: str) -> None:
        log.warning("%s", message)
        self._env.recorder.error(message)


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


def _unread(sock: socket.socket) -> int:
    """Bytes the kernel took for this socket that the server never read (Linux's
    SIOCINQ): a close with any discards them, and the client's TCP saw them acknowledged."""
    if isinstance(sock, ssl.SSLSocket) or not hasattr(fcntl, "ioctl"):
        return 0
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCINQ, b"\0\0\0\0"))[0])
    except OSError:
        return 0


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
