"""The servers users run, fluentd and Fluent Bit, started unmodified for our tests.

Each runs from the project's sibling ``shared/peers`` folder (``FLUENTCLIENT_PEERS``
overrides it) on a free loopback port, with a configuration the test writes, and stores
every event it receives in a file that ``events()`` reads back as ``(tag, time_ns, record)``.

In CI (``CI`` set) a missing server is a failure, never a skip: these tests exist to prove
the client against reality.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(os.environ.get("FLUENTCLIENT_PEERS", ROOT.parent / "shared" / "peers"))
FLUENTD_DIR = PEERS / "fluentd"
FLUENT_BIT = PEERS / "fluent-bit" / "bin" / "fluent-bit"

# Starting Ruby and loading fluentd takes about 2 s on a quiet machine; a loaded one is slower.
START_TIMEOUT = 60.0

Event = tuple[str, int, dict[str, Any]]


def require(what: str, present: bool) -> None:
    """Skip where a server is missing, except in CI, where that is a failure."""
    if present:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not available; .ci/run installs it")
    pytest.skip(f"{what} is not available here")


def fluentd_available() -> bool:
    return (FLUENTD_DIR / "bin" / "fluentd").exists() and shutil.which("ruby") is not None


def fluent_bit_available() -> bool:
    return FLUENT_BIT.exists() and os.access(FLUENT_BIT, os.X_OK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def unread_bytes(port: int) -> int:
    """Bytes the kernel holds, taken from clients and not yet read, on the connections of
    a server listening on ``port`` (Linux's /proc/net/tcp receive queues). A server that
    exits discards them; the client's TCP saw them acknowledged."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, queues = fields[1], fields[3], fields[4]
            if state != "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                total += int(queues.split(":")[1], 16)
    return total


class UnreadWatch:
    """The most the server on ``port`` held unread at once while the watch ran, sampled
    every millisecond or so: a bound on what a server stopping now can take away."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.most = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.most = max(self.most, unread_bytes(self.port))
            self._done.wait(0.001)

    def __enter__(self) -> UnreadWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


@dataclass
class Security:
    """The forward handshake's settings, the same for either server."""

    shared_key: str
    self_hostname: str = "server.test"
    users: dict[str, str] = field(default_factory=dict)


@dataclass
class Tls:
    cert: Path
    key: Path
    ca: Path | None = None  # with it, clients must present a certificate signed by it


class RealServer:
    """One server process; ``restart()`` keeps its port and its stored events."""

    name = "server"

    def __init__(self, workdir: Path, *, port: int | None = None,
                 security: Security | None = None, tls: Tls | None = None,
                 durable: bool = False) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.security = security
        self.tls = tls
        # Keep what was acknowledged in files, so that it survives a kill -9: an ack from
        # a server with a memory buffer only means "in its memory".
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "server.log"
        self.out_dir = workdir / "out"
        self.starts = 0

    # -- life ------------------------------------------------------------------------------

    def start(self) -> RealServer:
        config = self.workdir / "server.conf"
        config.write_text(self.config())
        self.starts += 1
        self._log = open(self.workdir / f"stdout.{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(self.command(config), stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=self.workdir)
        try:
            wait_until(self.ready, START_TIMEOUT, f"{self.name} to start")
        except AssertionError:
            self.kill()
            raise AssertionError(f"{self.name} did not start:\n{self.log_tail()}") from None
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop gracefully (SIGTERM): the server flushes what it holds."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        self._end(signal.SIGKILL, 30.0)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _end(self, sig: int, timeout: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._log.close()

    def __enter__(self) -> RealServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        text = ""
        for path in sorted(self.workdir.glob("*.log")):
            text += f"--- {path.name}\n" + "\n".join(
                path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    # -- what arrived ----------------------------------------------------------------------

    def events(self, tag: str | None = None) -> list[Event]:
        found: list[Event] = []
        if self.out_dir.exists():
            for path in sorted(self.out_dir.iterdir()):
                if path.is_file():
                    found.extend(self.parse(path.read_bytes()))
        return [e for e in found if tag is None or e[0] == tag]

    def wait_for(self, count: int, tag: str | None = None, timeout: float = 60.0) -> list[Event]:
        """Wait until at least ``count`` events (of ``tag``) are stored; they are returned."""
        got: list[Event] = []

        def enough() -> bool:
            nonlocal got
            got = self.events(tag)
            return len(got) >= count

        try:
            wait_until(enough, timeout, f"{count} events at {self.name}")
        except AssertionError:
            raise AssertionError(
                f"{self.name} stored {len(got)} of {count} events\n{self.log_tail()}") from None
        return got

    def records(self, tag: str | None = None) -> list[dict[str, Any]]:
        return [record for _, _, record in self.events(tag)]

    # -- per server ------------------------------------------------------------------------

    def command(self, config: Path) -> list[str]:
        raise NotImplementedError

    def config(self) -> str:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def parse(self, data: bytes) -> Iterator[Event]:
        raise NotImplementedError


class Fluentd(RealServer):
    """fluentd v1.14.4, single process, every event stored as a JSON line."""

    name = "fluentd"

    def __init__(self, workdir: Path, *, options: str = "", **kwargs: Any) -> None:
        super().__init__(workdir, **kwargs)
        self.options = options  # extra lines inside <source>

    def command(self, config: Path) -> list[str]:
        return ["ruby", "-I", str(FLUENTD_DIR / "lib"), str(FLUENTD_DIR / "bin" / "fluentd"),
                "-c", str(config), "--no-supervisor", "-o", str(self.log_path)]

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"fluentd exited with {self.proc.returncode}")
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return False
        # The log is appended to across restarts: count the starts.
        return text.count("fluentd worker is now running") >= self.starts

    def config(self) -> str:
        source = ["bind 127.0.0.1", f"port {self.port}"]
        if self.options:
            source.append(textwrap.dedent(self.options).strip())
        if self.tls is not None:
            source.append("<transport tls>")
            source.append(f"  cert_path {self.tls.cert}")
            source.append(f"  private_key_path {self.tls.key}")
            if self.tls.ca is not None:
                source.append("  client_cert_auth true")
                source.append(f"  ca_path {self.tls.ca}")
            source.append("</transport>")
        if self.security is not None:
            sec = self.security
            source.append("<security>")
            source.append(f"  self_hostname {sec.self_hostname}")
            source.append(f"  shared_key {sec.shared_key}")
            if sec.users:
                source.append("  user_auth true")
                for user, password in sec.users.items():
                    source.append(f"  <user>\n    username {user}\n    password {password}\n"
                                  "  </user>")
            source.append("</security>")
        body = "\n".join("  " + line for line in "\n".join(source).splitlines())
        buffer = (f"@type file\n    path {self.workdir / 'buffer'}" if self.durable
                  else "@type memory")
        return f"""\
<source>
  @type forward
{body}
</source>
<match **>
  @type file
  path {self.out_dir}/events
  append true
  <inject>
    tag_key __tag
    time_key __time_ns
    time_type unixtime_nanos
  </inject>
  <format>
    @type json
  </format>
  <buffer []>
    {buffer}
    flush_mode interval
    flush_interval 0.1
    # Its flush threads look for due chunks once a second by default.
    flush_thread_interval 0.05
    flush_thread_burst_interval 0.05
  </buffer>
</match>
"""

    def parse(self, data: bytes) -> Iterator[Event]:
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            tag = record.pop("__tag")
            time_ns = int(record.pop("__time_ns"))
            yield tag, time_ns, record


# Fluent Bit's file output without a format: "TAG: [SEC.NSEC, {record as JSON}]".
_FLUENT_BIT_LINE = re.compile(rb"^(?P<tag>[^:]+): \[(?P<sec>\d+)\.(?P<nsec>\d{9}), (?P<rec>.*)\]$")


class FluentBit(RealServer):
    """Fluent Bit v4.2.8 with a forward input and a file output."""

    name = "fluent-bit"

    def command(self, config: Path) -> list[str]:
        return [str(FLUENT_BIT), "-c", str(config)]

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"Fluent Bit exited with {self.proc.returncode}")
        return self.accepts()

    def config(self) -> str:
        lines = [
            "[SERVICE]", "    flush 0.1", "    grace 2", "    log_level info",
            f"    log_file {self.log_path}",
        ]
        if self.durable:
            # This build has no storage_backlog plugin, which filesystem storage needs.
            raise NotImplementedError("Fluent Bit here buffers in memory only")
        lines += ["[INPUT]", "    name forward", "    listen 127.0.0.1", f"    port {self.port}"]
        if self.security is not None:
            lines.append(f"    shared_key {self.security.shared_key}")
            lines.append(f"    self_hostname {self.security.self_hostname}")
            for user, password in self.security.users.items():
                lines.append(f"    security.users {user} {password}")
        if self.tls is not None:
            lines += ["    tls on", "    tls.verify off", f"    tls.crt_file {self.tls.cert}",
                      f"    tls.key_file {self.tls.key}"]
        lines += ["[OUTPUT]", "    name file", "    match *", f"    path {self.out_dir}",
                  "    file events.log", "    mkdir true"]
        return "\n".join(lines) + "\n"

    def parse(self, data: bytes) -> Iterator[Event]:
        for line in data.splitlines():
            match = _FLUENT_BIT_LINE.match(line)
            if match is None:
                continue
            try:
                record = json.loads(match["rec"])
            except ValueError:
                continue
            time_ns = int(match["sec"]) * 10**9 + int(match["nsec"])
            yield match["tag"].decode(), time_ns, record


KINDS: dict[str, type[RealServer]] = {"fluentd": Fluentd, "fluent-bit": FluentBit}
AVAILABLE: dict[str, Callable[[], bool]] = {
    "fluentd": fluentd_available, "fluent-bit": fluent_bit_available,
}


@pytest.fixture(params=["fluentd", "fluent-bit"])
def real_server_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    require(kind, AVAILABLE[kind]())
    return kind


@pytest.fixture
def real_server_factory(tmp_path: Path) -> Iterator[Callable[..., RealServer]]:
    """``factory(kind, **options)`` starts a server; all are stopped after the test."""
    started: list[RealServer] = []

    def make(kind: str, **options: Any) -> RealServer:
        require(kind, AVAILABLE[kind]())
        server = KINDS[kind](tmp_path / f"{kind}-{len(started)}", **options)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.kill()


@pytest.fixture
def real_server(real_server_kind: str, real_server_factory: Callable[..., RealServer]
                ) -> RealServer:
    """A plain server of each kind (the test runs once per kind)."""
    return real_server_factory(real_server_kind)
