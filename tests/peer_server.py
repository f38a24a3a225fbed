"""Run the Node interop peer (tests/peer/peer.js) from Python tests.

The peer is ``FluentServer`` from the npm package ``@fluent-org/logger`` 1.0.10: a
forward-protocol server written by other people, so it checks our client against an
independent decoder. :class:`NodePeer` starts it as a subprocess, reads the JSON lines it
prints and turns them back into Python values:

=====================================  =============================================
peer.js line value                      Python value
=====================================  =============================================
``{"$eventtime": [s, ns]}``             :class:`fluentclient.message.EventTime`
``{"$bin": base64}``                    ``bytes``
``{"$int": "decimal"}``                 ``int``
``{"$float": "-0.0"|"nan"|"inf"|...}``  ``float``
``{"$ext": [type, base64]}``            ``msgpack.ExtType``
``{"$date_ms": n}``                     :class:`JsDate`
``{"$map": {...}}``                     ``dict`` (a map whose only key starts with ``$``)
anything else                           itself, with containers converted recursively
=====================================  =============================================

JavaScript has one number type, and @msgpack/msgpack 2.x decodes 64-bit integers into it, so
what the peer sees differs from what was sent in two ways that :func:`assert_peer_equal`
accounts for: integers beyond 2**53 arrive rounded to the nearest double, and a float with an
integral value arrives as an ``int``.

pytest fixtures: ``node_peer`` (a started peer, closed after the test) and
``node_peer_factory`` (call it with :class:`NodePeer` keyword arguments, e.g. ``shared_key``).
Without node or without ``tests/peer/node_modules`` they skip, or fail when ``CI`` is set.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, NamedTuple

import msgpack
import pytest

from fluentclient.message import EventTime

PEER_DIR = Path(__file__).resolve().parent / "peer"
PEER_SCRIPT = PEER_DIR / "peer.js"
PEER_PACKAGE = "@fluent-org/logger"
PEER_PACKAGE_VERSION = "1.0.10"
INSTALL_HINT = "install it with: cd tests/peer && npm ci"

_STDERR_KEEP = 64 * 1024


class PeerEvent(NamedTuple):
    """One event as FluentServer decoded it; the fields of ``fluentclient.server.ReceivedEvent``."""

    tag: str
    time: Any  # EventTime, or int for integer seconds (float if a float time was sent)
    record: Any


class JsDate(NamedTuple):
    """A msgpack timestamp (ext -1) value, which @msgpack/msgpack turns into a JS Date (ms)."""

    ms: int


class PeerError(RuntimeError):
    """The peer could not be started or stopped working."""


def from_peer_json(value: Any) -> Any:
    """Undo peer.js's JSON conventions (see the module docstring)."""
    if isinstance(value, list):
        return [from_peer_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, inner),) = value.items()
        if key.startswith("$"):
            return _from_tagged(key, inner)
    return {k: from_peer_json(v) for k, v in value.items()}


_FLOAT_WORDS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "-0.0": -0.0}


def _from_tagged(key: str, inner: Any) -> Any:
    if key == "$bin":
        return base64.b64decode(inner, validate=True)
    if key == "$int":
        return int(inner)
    if key == "$float":
        return _FLOAT_WORDS[inner]
    if key == "$eventtime":
        seconds, nanoseconds = inner
        return EventTime(int(seconds), int(nanoseconds))
    if key == "$ext":
        code, data = inner
        return msgpack.ExtType(int(code), base64.b64decode(data, validate=True))
    if key == "$date_ms":
        return JsDate(int(inner))
    if key == "$map":
        return {k: from_peer_json(v) for k, v in inner.items()}
    raise ValueError(f"peer.js wrote an unknown tagged value {key!r}: {inner!r}")


# ------------------------------------------------------------------------------------------------
# Comparing what was posted with what the peer decoded.

_SAFE_INT = 2**53


def js_int(value: int) -> int:
    """``value`` as @msgpack/msgpack 2.x yields it: an integer beyond 2**53 becomes a double."""
    if -_SAFE_INT <= value <= _SAFE_INT:
        return value
    return int(float(value))


def peer_mismatch(sent: Any, got: Any, where: str = "record") -> str | None:
    """Why ``got`` (decoded by the peer) is not what ``sent`` becomes there, or ``None``.

    Exact except for what JavaScript cannot represent: integers are compared after
    :func:`js_int`, and an integral float may come back as an ``int`` (but -0.0 and NaN must
    come back as such).
    """
    if isinstance(sent, bool) or sent is None:
        if got is not sent:
            return f"{where}: sent {sent!r}, got {got!r}"
        return None
    if isinstance(sent, int):
        if isinstance(got, bool) or not isinstance(got, int) or got != js_int(sent):
            return f"{where}: sent int {sent!r} (JS sees {js_int(sent)!r}), got {got!r}"
        return None
    if isinstance(sent, float):
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            return f"{where}: sent float {sent!r}, got {got!r}"
        if math.isnan(sent):
            ok = isinstance(got, float) and math.isnan(got)
        elif isinstance(got, int):
            # JS prints integral doubles as integers; only -0.0 keeps a spelling of its own.
            is_negative_zero = sent == 0 and math.copysign(1.0, sent) < 0
            ok = sent.is_integer() and got == sent and not is_negative_zero
        else:
            ok = got == sent and math.copysign(1.0, got) == math.copysign(1.0, sent)
        return None if ok else f"{where}: sent float {sent!r}, got {got!r}"
    if isinstance(sent, str):
        return None if type(got) is str and got == sent else f"{where}: sent {sent!r}, got {got!r}"
    if isinstance(sent, (bytes, bytearray, memoryview)):
        if type(got) is bytes and got == bytes(sent):
            return None
        return f"{where}: sent bytes {bytes(sent)!r}, got {got!r}"
    if isinstance(sent, Mapping):
        if not isinstance(got, dict):
            return f"{where}: sent a map, got {got!r}"
        if set(got) != set(sent):
            return f"{where}: keys differ: sent {sorted(sent)!r}, got {sorted(got)!r}"
        for k, v in sent.items():
            problem = peer_mismatch(v, got[k], f"{where}[{k!r}]")
            if problem:
                return problem
        return None
    if isinstance(sent, (list, tuple)):
        if not isinstance(got, list) or len(got) != len(sent):
            return f"{where}: sent {sent!r}, got {got!r}"
        for i, (s, g) in enumerate(zip(sent, got)):
            problem = peer_mismatch(s, g, f"{where}[{i}]")
            if problem:
                return problem
        return None
    return f"{where}: don't know how the peer shows a {type(sent).__name__}"


def assert_peer_equal(sent: Any, got: Any, where: str = "record") -> None:
    problem = peer_mismatch(sent, got, where)
    assert problem is None, problem


# ------------------------------------------------------------------------------------------------


def peer_unavailable_reason(node: str = "node") -> str | None:
    """Why the peer cannot run here, or ``None`` when it can."""
    if shutil.which(node) is None:
        return f"{node!r} is not on PATH (the interop peer needs Node.js >= 18)"
    if not PEER_SCRIPT.is_file():
        return f"{PEER_SCRIPT} is missing"
    manifest = PEER_DIR / "node_modules" / PEER_PACKAGE / "package.json"
    if not manifest.is_file():
        return f"{PEER_PACKAGE} is not installed in {PEER_DIR}/node_modules; {INSTALL_HINT}"
    try:
        version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError) as exc:
        return f"cannot read {manifest}: {exc}"
    if version != PEER_PACKAGE_VERSION:
        return (
            f"{PEER_PACKAGE} {version} is installed, the tests pin {PEER_PACKAGE_VERSION}; "
            f"{INSTALL_HINT}"
        )
    return None


def require_peer() -> None:
    """Skip the calling test when the peer cannot run; fail instead when ``CI`` is set."""
    reason = peer_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"interop peer unavailable on CI: {reason}", pytrace=False)
    pytest.skip(f"interop peer unavailable: {reason}")


class NodePeer:
    """peer.js as a subprocess: FluentServer listening on 127.0.0.1.

    Keyword arguments map to peer.js flags; ``config`` (a dict) is passed as ``--config``.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        port: int = 0,
        shared_key: str | None = None,
        server_hostname: str | None = None,
        users: Mapping[str, str] | None = None,
        tls_cert: os.PathLike[str] | str | None = None,
        tls_key: os.PathLike[str] | str | None = None,
        tls_ca: os.PathLike[str] | str | None = None,
        tls_request_cert: bool = False,
        log_connections: bool = False,
        config: Mapping[str, Any] | None = None,
        node: str = "node",
        start_timeout: float = 20.0,
    ) -> None:
        args: list[str] = [node, str(PEER_SCRIPT)]
        if config is not None:
            args += ["--config", json.dumps(config)]
        if port:
            args += ["--port", str(port)]
        if shared_key is not None:
            args += ["--shared-key", shared_key]
        if server_hostname is not None:
            args += ["--server-hostname", server_hostname]
        for name, password in (users or {}).items():
            args += ["--user", f"{name}:{password}"]
        for flag, value in (("--tls-cert", tls_cert), ("--tls-key", tls_key), ("--tls-ca", tls_ca)):
            if value is not None:
                args += [flag, os.fspath(value)]
        if tls_request_cert:
            args.append("--tls-request-cert")
        if log_connections:
            args.append("--log-connections")
        self.args = args
        self.start_timeout = start_timeout
        self._port: int | None = None

        self._cond = threading.Condition()
        self._events: list[PeerEvent] = []
        self._connections: list[dict[str, Any]] = []
        self._bad_lines: list[str] = []
        self._stderr: deque[str] = deque()
        self._stderr_size = 0
        self._exited = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> NodePeer:
        if self._proc is not None:
            raise PeerError("peer already started")
        # stdin stays open and unused: peer.js exits when it reaches EOF, so the peer dies with us.
        self._proc = subprocess.Popen(
            self.args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(PEER_DIR),
        )
        for target, name in ((self._read_stdout, "stdout"), (self._read_stderr, "stderr")):
            t = threading.Thread(target=target, name=f"node-peer-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        deadline = time.monotonic() + self.start_timeout
        with self._cond:
            while self._port is None and not self._exited:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            port, exited = self._port, self._exited
        if port is None:
            self.close()
            what = "exited" if exited else f"did not listen within {self.start_timeout} s"
            raise PeerError(f"node peer {what}; stderr:\n{self.stderr_text}")
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the peer: close its stdin, then terminate and kill if it lingers."""
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for t in self._threads:
            t.join(timeout)

    def __enter__(self) -> NodePeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        """The port FluentServer listens on (127.0.0.1)."""
        if self._port is None:
            raise PeerError("the peer is not listening (not started?)")
        return self._port

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    # -- what arrived ------------------------------------------------------------------------

    @property
    def events(self) -> list[PeerEvent]:
        with self._cond:
            return list(self._events)

    @property
    def event_count(self) -> int:
        with self._cond:
            return len(self._events)

    @property
    def connections(self) -> list[dict[str, Any]]:
        """``{"connection": "open"|"close", "remote": ...}`` lines (with ``log_connections``)."""
        with self._cond:
            return list(self._connections)

    @property
    def bad_lines(self) -> list[str]:
        """stdout lines that were not understood; should stay empty."""
        with self._cond:
            return list(self._bad_lines)

    @property
    def stderr_text(self) -> str:
        with self._cond:
            return "".join(self._stderr)

    def clear(self) -> None:
        with self._cond:
            self._events.clear()
            self._connections.clear()

    def wait_for_events(self, n: int, timeout: float) -> bool:
        """True once at least ``n`` events arrived; False on timeout or if the peer exited."""
        return self.wait_until(lambda events: len(events) >= n, timeout)

    def wait_until(self, predicate: Callable[[Sequence[PeerEvent]], bool], timeout: float) -> bool:
        """Wait until ``predicate(events)`` holds (it is called with the lock held; don't keep
        the list). False on timeout, or as soon as the peer has exited without it holding."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self._events):
                left = deadline - time.monotonic()
                if left <= 0 or self._exited:
                    return False
                self._cond.wait(left)
            return True

    def describe(self) -> str:
        """State for assertion messages."""
        with self._cond:
            n = len(self._events)
            bad = list(self._bad_lines[:3])
        return (
            f"node peer on port {self._port}: {n} events, alive={self.alive}, "
            f"returncode={self.returncode}, bad lines={bad!r}, stderr={self.stderr_text[-2000:]!r}"
        )

    # -- reader threads ----------------------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            for raw in self._proc.stdout:
                self._handle_line(raw)
        finally:
            with self._cond:
                self._exited = True
                self._cond.notify_all()

    def _handle_line(self, raw: bytes) -> None:
        try:
            obj = json.loads(raw)
            if "listening" in obj:
                with self._cond:
                    self._port = int(obj["listening"])
                    self._cond.notify_all()
                return
            if "connection" in obj:
                with self._cond:
                    self._connections.append(obj)
                    self._cond.notify_all()
                return
            event = PeerEvent(
                obj["tag"], from_peer_json(obj["time"]), from_peer_json(obj["record"])
            )
        except (ValueError, KeyError, TypeError) as exc:
            with self._cond:
                self._bad_lines.append(f"{exc}: {raw[:200]!r}")
                self._cond.notify_all()
            return
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            text = raw.decode("utf-8", "replace")
            with self._cond:
                self._stderr.append(text)
                self._stderr_size += len(text)
                while self._stderr_size > _STDERR_KEEP and len(self._stderr) > 1:
                    self._stderr_size -= len(self._stderr.popleft())


# ------------------------------------------------------------------------------------------------
# pytest fixtures (tests/conftest.py imports these names)


@pytest.fixture
def node_peer() -> Iterator[NodePeer]:
    """A started plain-forward NodePeer on 127.0.0.1, closed after the test."""
    require_peer()
    with NodePeer() as peer:
        yield peer


@pytest.fixture
def node_peer_factory() -> Iterator[Callable[..., NodePeer]]:
    """``factory(**NodePeer kwargs)`` -> a started NodePeer; all are closed after the test."""
    require_peer()
    started: list[NodePeer] = []

    def factory(**kwargs: Any) -> NodePeer:
        peer = NodePeer(**kwargs)
        started.append(peer)
        return peer.start()

    try:
        yield factory
    finally:
        for peer in started:
            peer.close()
