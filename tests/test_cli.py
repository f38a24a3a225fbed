"""The command line, end to end: demo, serve and cat, as a user runs them (real processes)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import msgpack
import pytest

from fluentclient import EventTime, RecordRules, SyncClient
from fluentclient.server import ForwardServer

from .certs import Pki, server_context
from .peer_server import assert_peer_equal
from .subproc import child_env
from .waiting import wait_until

COMMAND = [sys.executable, "-m", "fluentclient"]
KEY = "cat shared key"
PEER_HOSTNAME = "node-peer.test"  # not ours: a peer refuses a client named like itself


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without FLUENT_* (a developer's own must not leak in)."""
    env = child_env({k: v for k, v in os.environ.items() if not k.startswith("FLUENT_")})
    env.update(extra)
    return env


def run_cat(*args: Any, data: bytes = b"", env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*COMMAND, "cat", *map(str, args)], input=data, capture_output=True,
                          env=clean_env() if env is None else env, timeout=timeout)


def to_server(server: ForwardServer) -> list[str]:
    return ["--host", server.host, "--port", str(server.port)]


def json_lines(records: Sequence[Any]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


def stderr_of(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode(errors="replace")


class Output:
    """What a process writes to a pipe or pty, read without blocking the test."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = b""
        self.taken = 0  # bytes already returned by line()

    def poll(self, timeout: float = 0) -> str:
        while select.select([self.fd], [], [], timeout)[0]:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # a pty whose other end closed
                break
            if not chunk:
                break
            self.data += chunk
            timeout = 0
        return self.data.decode(errors="replace")

    def line(self, timeout: float = 10) -> str:
        """The next whole line, or fail after ``timeout`` instead of hanging the suite."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.data[self.taken:]:
            left = deadline - time.monotonic()
            assert left > 0, f"no line in time; so far {self.data[self.taken:]!r}"
            self.poll(left)
        end = self.data.index(b"\n", self.taken) + 1
        line, self.taken = self.data[self.taken:end], end
        return line.decode()


# -- demo ------------------------------------------------------------------------------------


DEMO_MARK = "FLUENTCLIENT_DEMO_TEST"
LINUX_PROC = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")


def run_demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, "demo", *args], capture_output=True, encoding="utf-8",
                          errors="replace", timeout=180, env=env or clean_env())


def marked_processes(mark: str) -> list[int]:
    """Processes, the demo and any child it started, whose environment carries ``mark``:
    a child outlives its parent under another parent, but keeps its environment."""
    needle = f"{DEMO_MARK}={mark}\0".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:  # gone meanwhile, or not ours
            continue
        # A zombie's environment reads empty: it runs no more, which is what counts.
        if needle in environ:
            found.append(int(entry))
    return found


@pytest.mark.parametrize("progress", [[], ["--progress"]], ids=["quiet", "progress"])
def test_demo_checks_every_record(progress):
    result = run_demo("--records", "20000", *progress)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"^posted +20,000 in [\d.]+ s \([\d,]+ records/s", out, re.M), out
    # Arrived as many as posted: the line names no "of N" shortfall.
    assert re.search(r"^arrived +20,000 in [\d.]+ s \([\d,]+ records/s end to end\)$",
                     out, re.M), out
    assert re.search(r"^in order +yes: none repeated or overtaken$", out, re.M), out
    assert re.search(r"^intact +yes: every field as posted$", out, re.M), out
    assert re.search(r"^times +yes: every EventTime exact to the nanosecond$", out, re.M), out
    assert re.search(r"^client CPU [\d.]+ µs per record", out, re.M), out
    assert out.splitlines()[-1].startswith("OK: every record arrived once")
    assert "FAILED" not in out + result.stderr


def test_demo_progress_counts_what_the_server_took():
    """The status line gives the server's own count while records arrive."""
    result = run_demo("--records", "1500000", "--progress")
    assert result.returncode == 0, result.stdout + result.stderr
    status = [line for line in result.stderr.splitlines() if " at the server (" in line]
    assert status, result.stderr
    counts = [re.fullmatch(r"([\d,]+) posted, ([\d,]+) at the server \([\d,]+/s\), "
                           r"[\d,]+ held \([\d,]+ KiB\)", line) for line in status]
    assert all(counts), status
    arrived = [int(m[2].replace(",", "")) for m in counts if m]
    # Counted while it happens: some line shows records arrived before the end.
    assert any(0 < n < 1_500_000 for n in arrived), status


def test_demo_checks_can_fail():
    """The server side's checks are not a formality: each kind of damage is caught."""
    from fluentclient.cli._demo import RECORD, Check, Run, expected_time, summary
    from fluentclient.server import ReceivedEvent
    from fluentclient.stats import ShutdownReport

    base = 1_700_000_000_123_456_789
    check = Check(base)
    for record, when in [
        ({**RECORD, "seq": 0}, expected_time(base, 0)),
        ({**RECORD, "seq": 2}, expected_time(base, 2)),  # 1 missing
        ({**RECORD, "seq": 2}, expected_time(base, 2)),  # repeated
        ({**RECORD, "seq": 3, "level": "debug"}, expected_time(base, 3)),
        ({**RECORD, "seq": 4}, EventTime.from_ns(base + 4 * 1_001 + 1)),  # 1 ns off
    ]:
        check.take(ReceivedEvent("demo.access", when, record))
    verdict = check.verdict()
    assert (verdict["arrived"], verdict["out_of_order"], verdict["altered"],
            verdict["wrong_time"]) == (5, 1, 1, 1)
    run = Run()
    run.post_seconds, run.total_seconds, run.cpu_seconds = 1.0, 1.0, 0.1
    run.report = ShutdownReport(sent=6, unsent_records=0, unsent_bytes=0, possibly_lost=0,
                                dropped={}, timed_out=False)
    lines, problems = summary(6, run, verdict)
    assert "arrived    5 of 6 in" in lines[1]
    # One record is "1 record" (the plural helper), never "1 records".
    assert all(line.endswith("NO: 1 record") for line in lines[2:5]), lines
    assert problems[0] == "5 of 6 records arrived", problems
    assert any("arrived with seq 2 after 2" in p for p in problems), problems


def test_demo_fails_clearly_when_its_server_cannot_start(monkeypatch, capsys):
    from fluentclient.cli import _demo

    monkeypatch.setattr(_demo, "_BOOT", "import sys; sys.exit(3)")
    assert _demo.demo(1000, progress=False) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("demo: FAILED: the server process ended (exit status 3) before it "
                           "could listen"), err


@LINUX_PROC
def test_demo_leaves_no_process_behind():
    mark = uuid.uuid4().hex
    result = run_demo("--records", "20000", env=clean_env(**{DEMO_MARK: mark}))
    assert result.returncode == 0, result.stdout + result.stderr
    assert wait_until(lambda: not marked_processes(mark), timeout=30), marked_processes(mark)


@LINUX_PROC
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sigkill"])
def test_demo_stopped_in_the_middle_leaves_no_process_behind(how):
    """Ctrl-C (SIGINT to the whole foreground group, as a terminal sends it), SIGTERM,
    or SIGKILL, in the middle of posting: the server process goes too."""
    mark = uuid.uuid4().hex
    proc = subprocess.Popen([*COMMAND, "demo", "--records", "100000000", "--progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=clean_env(**{DEMO_MARK: mark}), start_new_session=True)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        err = Output(proc.stderr.fileno())
        # Posting is under way once the server has counted records.
        line = err.line(timeout=60)
        while " at the server (" not in line or line.startswith("0 posted"):
            line = err.line(timeout=60)
        assert wait_until(lambda: len(marked_processes(mark)) == 2, timeout=30), \
            marked_processes(mark)  # the demo and its server: the check sees both
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        elif how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            proc.kill()
        code = proc.wait(60)
        text = err.poll()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    if how == "sigkill":
        assert code == -signal.SIGKILL
    else:
        assert code == 130, text
        assert text.rstrip().splitlines()[-1] == "demo: interrupted; the server process is stopped"
        assert "Traceback" not in text
    assert wait_until(lambda: not marked_processes(mark), timeout=30), marked_processes(mark)


# -- serve -----------------------------------------------------------------------------------


@contextmanager
def serve(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[Output, int]]:
    """``serve --port 0 ARGS`` in a subprocess; yields its stdout and the port it took."""
    proc = subprocess.Popen([*COMMAND, "serve", "--port", "0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env or clean_env())
    try:
        assert proc.stderr is not None and proc.stdout is not None
        line = Output(proc.stderr.fileno()).line()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, line
        yield Output(proc.stdout.fileno()), int(match[1])
    finally:
        proc.terminate()
        proc.wait(10)


def test_serve_prints_events_as_json_lines():
    port = free_port()
    proc = subprocess.Popen(
        [*COMMAND, "serve", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        assert "listening on" in Output(proc.stderr.fileno()).line()
        # "keep": the bytes go as bin, which is what this shows the server printing.
        with SyncClient("127.0.0.1", port, records=RecordRules(non_utf8_bytes="keep")) as client:
            client.post("cli.serve", {"msg": "héllo", "raw": b"\x00\xff"},
                        time=EventTime(1700000000, 42))
        line = json.loads(Output(proc.stdout.fileno()).line())
        assert line == {"tag": "cli.serve", "time": 1700000000, "nanoseconds": 42,
                        "record": {"msg": "héllo", "raw": {"$bin": "AP8="}}}
    finally:
        proc.terminate()
        proc.wait(10)


def test_serve_with_key_user_and_tls_takes_records_from_cat(pki: Pki):
    with serve("--shared-key", KEY, "--username", "ops", "--password", "pw 1",
               "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)) as (out, port):
        env = clean_env(FLUENT_PORT=str(port), FLUENT_SHARED_KEY=KEY, FLUENT_USERNAME="ops",
                        FLUENT_PASSWORD="pw 1", FLUENT_TLS_CA_FILE=str(pki.ca_file))
        result = run_cat("cli.secure", data=json_lines([{"n": 1}, {"n": 2}]), env=env)
        assert result.returncode == 0, stderr_of(result)
        got = [json.loads(out.line()) for _ in range(2)]
        assert [(e["tag"], e["record"]) for e in got] == [("cli.secure", {"n": 1}),
                                                          ("cli.secure", {"n": 2})]
        # The wrong password is refused by the server, and cat says nothing was delivered.
        wrong = dict(env, FLUENT_PASSWORD="nope")
        result = run_cat("cli.secure", "--timeout", "0.5", data=json_lines([{"n": 3}]), env=wrong)
        assert result.returncode == 1, stderr_of(result)
        assert "unsent 1" in stderr_of(result)


def test_serve_takes_its_key_from_the_environment_like_cat():
    env = clean_env(FLUENT_SHARED_KEY=KEY)
    with serve(env=env) as (out, port):
        wrong = run_cat("cli.envkey", "--port", port, "--shared-key", "wrong", "--timeout",
                        "0.5", data=json_lines([{"n": 0}]), env=env)
        assert wrong.returncode == 1, stderr_of(wrong)
        result = run_cat("cli.envkey", "--port", port, data=json_lines([{"n": 1}]), env=env)
        assert result.returncode == 0, stderr_of(result)
        assert json.loads(out.line())["record"] == {"n": 1}


def test_serve_refuses_a_user_without_a_shared_key():
    result = subprocess.run([*COMMAND, "serve", "--port", "0", "--username", "ops"],
                            capture_output=True, text=True, timeout=30, env=clean_env())
    assert result.returncode == 2
    assert "--username needs --shared-key" in result.stderr


def test_serve_on_a_port_in_use_names_the_address_and_what_to_do():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([*COMMAND, "serve", "--port", str(port)],
                                capture_output=True, text=True, timeout=30, env=clean_env())
    assert result.returncode == 2
    assert result.stderr == (
        f"fluentclient serve: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(another process listens there: stop it, or choose another port (0 picks a free "
        "one))\n")


# -- cat: input ------------------------------------------------------------------------------


RECORDS = [
    {"i": i, "msg": f"line {i} ünïcødé 😀", "nested": {"list": [1, 2.5, None, True]}}
    for i in range(2000)
]


def test_cat_posts_json_lines_in_order(fluent_server):
    result = run_cat("cli.json", *to_server(fluent_server), data=json_lines(RECORDS))
    assert result.returncode == 0, stderr_of(result)
    assert fluent_server.wait_for_events(len(RECORDS), timeout=10)
    assert [e.record for e in fluent_server.events] == RECORDS
    assert {e.tag for e in fluent_server.events} == {"cli.json"}
    assert stderr_of(result).strip() == (
        "cat: read 2,000 records; sent 2,000; dropped 0; unsent 0; possibly lost 0"
    )


def test_cat_reports_bad_lines_with_their_number_and_goes_on(fluent_server):
    data = b"\n".join([
        b'{"good": 1}',
        b"not json",
        b"[1, 2]",
        b"",  # blank: skipped silently
        b'{"good": 2}',
        b'{"cut": ',
        b'{"bad utf-8": "\xff\xfe"}',
        b'"a string"',
        b"null",
        b'{"good": 3}',
    ]) + b"\n"
    result = run_cat("cli.bad", *to_server(fluent_server), data=data)
    err = stderr_of(result)
    assert result.returncode == 3, err  # everything good was delivered, some input was not
    assert fluent_server.wait_for_events(3, timeout=10)
    assert [e.record for e in fluent_server.events] == [{"good": 1}, {"good": 2}, {"good": 3}]
    for expected in ("line 2 skipped: not JSON", "line 3 skipped: expected a JSON object, "
                     "got an array", "line 6 skipped: not JSON", "line 7 skipped: not UTF-8",
                     "line 8 skipped: expected a JSON object, got a string",
                     "line 9 skipped: expected a JSON object, got null",
                     "read 3 records (6 skipped as bad input); sent 3"):
        assert expected in err, err
    assert "line 4" not in err


def test_cat_takes_the_event_time_from_a_field(fluent_server):
    records = [
        {"n": 0, "t": 1700000000},
        {"n": 1, "t": 1700000000.25},
        {"n": 2, "t": "1700000001"},
        {"n": 3, "t": "2024-01-02T03:04:05.123456789Z"},
        {"n": 4, "t": "2024-01-02 08:34:05+05:30"},
        {"n": 5, "t": "2024-01-01T00:00:00"},  # no offset: local time (EST below)
        {"n": 6},  # no time field: now
        {"n": 7, "t": "yesterday"},
        {"n": 8, "t": True},
        {"n": 9, "t": 2**40},  # past 2106
    ]
    started = time.time()
    env = clean_env(TZ="EST+5")
    result = run_cat("cli.time", *to_server(fluent_server), "--time-key", "t",
                     data=json_lines(records), env=env)
    err = stderr_of(result)
    assert result.returncode == 3, err
    assert fluent_server.wait_for_events(7, timeout=10)
    got = {e.record["n"]: e for e in fluent_server.events}
    assert sorted(got) == list(range(7))
    assert all("t" not in e.record for e in got.values())  # taken out of the record
    assert got[0].time == EventTime(1700000000, 0)
    assert got[1].time == EventTime(1700000000, 250_000_000)
    assert got[2].time == EventTime(1700000001, 0)
    assert got[3].time == EventTime(1704164645, 123456789)
    assert got[4].time == EventTime(1704164645, 0)
    assert got[5].time == EventTime(1704085200, 0)
    assert started - 1 <= got[6].time.seconds <= time.time() + 1
    assert "line 8 skipped: bad time in 't': 'yesterday' is neither" in err
    assert "line 9 skipped: bad time in 't': a boolean is not a time" in err
    assert "line 10 skipped: bad time in 't'" in err and "1970-2106" in err


def test_cat_can_keep_the_time_field(fluent_server):
    result = run_cat("cli.keep", *to_server(fluent_server), "--time-key", "when",
                     "--keep-time-key", data=json_lines([{"when": 1700000000, "x": 1}]))
    assert result.returncode == 0, stderr_of(result)
    assert fluent_server.wait_for_events(1, timeout=10)
    (event,) = fluent_server.events
    assert event.record == {"when": 1700000000, "x": 1}
    assert event.time == EventTime(1700000000, 0)


def test_cat_reads_a_msgpack_stream(fluent_server):
    event_time = msgpack.ExtType(0, struct.pack(">II", 1700000000, 7))
    objects = [
        {"raw": b"\x00\xff", "big": 2**64 - 1, "nested": {"a": [1, None]}},
        [1, 2],  # not a map
        {"at": event_time, "n": 2},
        {"at": msgpack.Timestamp(1700000001, 9), "n": 3},
        {"at": 1700000002.5, "n": 4},
    ]
    data = b"".join(msgpack.packb(o, use_bin_type=True, datetime=False) for o in objects)
    data += msgpack.packb({"cut": "x" * 10})[:-3]  # the input ends inside an object
    result = run_cat("cli.mp", *to_server(fluent_server), "--format", "msgpack",
                     "--time-key", "at", data=data)
    err = stderr_of(result)
    assert result.returncode == 3, err
    assert fluent_server.wait_for_events(4, timeout=10)
    events = fluent_server.events
    # Bytes that are not UTF-8 are sent as text by the client's default rules.
    assert events[0].record == {**objects[0], "raw": "\x00\\xff"}
    assert [(e.record, e.time) for e in events[1:]] == [
        ({"n": 2}, EventTime(1700000000, 7)),
        ({"n": 3}, EventTime(1700000001, 9)),
        ({"n": 4}, EventTime(1700000002, 500_000_000)),
    ]
    assert "object 2 skipped: expected a map, got an array" in err
    assert "object 6 skipped: the input ends in the middle of it" in err


def test_cat_stops_at_corrupt_msgpack_and_still_delivers_what_came_before(fluent_server):
    data = msgpack.packb({"n": 1}) + b"\xc1" + msgpack.packb({"n": 2})
    result = run_cat("cli.mpbad", *to_server(fluent_server), "--format", "msgpack", data=data)
    err = stderr_of(result)
    assert result.returncode == 3, err
    assert "object 2 skipped: not msgpack at byte 4" in err
    assert fluent_server.wait_for_events(1, timeout=10)
    assert [e.record for e in fluent_server.events] == [{"n": 1}]


# -- cat: delivery ---------------------------------------------------------------------------


def test_cat_with_acks(fluent_server):
    result = run_cat("cli.ack", *to_server(fluent_server), "--ack", data=json_lines(RECORDS))
    assert result.returncode == 0, stderr_of(result)
    assert fluent_server.wait_for_events(len(RECORDS), timeout=10)
    assert fluent_server.acks_sent == len(fluent_server.frames) >= 1
    assert [e.record for e in fluent_server.events] == RECORDS


def test_cat_exits_non_zero_when_acks_never_come(fluent_server):
    fluent_server.withhold_acks(True)
    result = run_cat("cli.noack", *to_server(fluent_server), "--ack", "--timeout", "0.5",
                     data=json_lines(RECORDS[:10]))
    assert result.returncode == 1, stderr_of(result)
    assert "sent 0; dropped 0; unsent 10" in stderr_of(result)


@pytest.mark.parametrize("sync", [False, True], ids=["buffered", "sync"])
def test_cat_exits_non_zero_when_the_server_is_absent(sync):
    flags = ["--sync"] if sync else []
    result = run_cat("cli.absent", "--port", free_port(), "--timeout", "0.5", *flags,
                     data=json_lines([{"n": 1}, {"n": 2}]))
    err = stderr_of(result)
    assert result.returncode == 1, err
    if sync:
        assert "line 1: not delivered: cannot connect" in err
        assert "line 2: not delivered" in err and "failed 2" in err
    else:
        assert "sent 0; dropped 0; unsent 2" in err


WAITING = re.compile(r"cat: waiting up to ([\d.]+) s (.*?): (.*); --timeout SECONDS changes "
                     r"this limit$", re.M)


def test_cat_says_what_it_waits_for_when_the_server_is_absent():
    port = free_port()
    result = run_cat("cli.absent", "--port", port, "--timeout", "2",
                     data=json_lines([{"n": 1}, {"n": 2}]))
    err = stderr_of(result)
    assert result.returncode == 1, err
    (wait,) = WAITING.findall(err)  # said once
    seconds, purpose, reason = wait
    assert 0 < float(seconds) <= 2
    assert purpose == "to deliver 2 records"
    assert reason.startswith(f"connecting to 127.0.0.1:{port} (last failure: "), reason
    assert "refused" in reason.lower(), reason
    # Said while waiting, before the summary that ends the wait.
    assert err.index("cat: waiting") < err.index("cat: read 2 records")


def test_cat_says_when_a_connected_server_does_not_read(fluent_server):
    fluent_server.stall()
    result = run_cat("cli.stalled", *to_server(fluent_server), "--timeout", "2",
                     data=json_lines([{"n": 1}]))
    err = stderr_of(result)
    assert result.returncode == 1, err
    (wait,) = WAITING.findall(err)
    assert wait[1:] == ("to deliver 1 record",
                        f"connected to 127.0.0.1:{fluent_server.port}, waiting for it to read "
                        "and confirm them"), err


@pytest.mark.parametrize("flags", [[], ["--ack"], ["--sync"]], ids=["plain", "ack", "sync"])
def test_a_healthy_cat_does_not_talk_of_waiting(fluent_server, flags):
    result = run_cat("cli.healthy", *to_server(fluent_server), *flags,
                     data=json_lines(RECORDS[:200]))
    err = stderr_of(result)
    assert result.returncode == 0, err
    assert "waiting" not in err
    assert err.count("\n") == 1 and err.startswith("cat: read 200 records"), err


def test_cat_sync_sends_each_record_as_it_comes(fluent_server):
    result = run_cat("cli.sync", *to_server(fluent_server), "--sync", "--ack",
                     data=json_lines(RECORDS[:50]))
    assert result.returncode == 0, stderr_of(result)
    assert fluent_server.wait_for_events(50, timeout=10)
    assert len(fluent_server.frames) == 50 == fluent_server.acks_sent
    assert "sent 50; failed 0" in stderr_of(result)


def test_cat_with_a_shared_key_and_users():
    with ForwardServer(shared_key=KEY, users={"ops": "pw"}) as server:
        result = run_cat("cli.key", *to_server(server), "--shared-key", KEY, "--username", "ops",
                         "--password", "pw", data=json_lines([{"n": 1}]))
        assert result.returncode == 0, stderr_of(result)
        assert server.wait_for_events(1, timeout=10)
        result = run_cat("cli.key", *to_server(server), "--shared-key", "wrong", "--timeout",
                         "0.5", data=json_lines([{"n": 2}]))
        assert result.returncode == 1, stderr_of(result)
        assert "shared_key mismatch" in stderr_of(result)
        assert [e.record for e in server.events] == [{"n": 1}]
        assert server.auth_failures >= 1


def test_cat_over_tls_and_mutual_tls(pki: Pki):
    data = json_lines([{"n": 1}])
    ca = ["--tls-ca-file", pki.ca_file]
    with ForwardServer(ssl_context=server_context(pki)) as server:
        assert run_cat("cli.tls", *to_server(server), *ca, data=data).returncode == 0
        no_ca = run_cat("cli.tls", *to_server(server), "--tls", "--timeout", "0.5", data=data)
        assert no_ca.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in stderr_of(no_ca)
        unverified = run_cat("cli.tls", *to_server(server), "--tls", "--no-tls-verify",
                             data=data)
        assert unverified.returncode == 0, stderr_of(unverified)
        wrong_name = run_cat("cli.tls", *to_server(server), *ca, "--tls-server-name",
                             "other.test", "--timeout", "0.5", data=data)
        assert wrong_name.returncode == 1
        assert server.wait_for_events(2, timeout=10)
        assert server.event_count == 2
    with ForwardServer(ssl_context=server_context(pki, require_client_cert=True)) as server:
        result = run_cat("cli.mtls", *to_server(server), *ca, "--tls-cert-file",
                         pki.client_cert, "--tls-key-file", pki.client_key, "--ack",
                         "--compress", "gzip", data=json_lines(RECORDS))
        assert result.returncode == 0, stderr_of(result)
        assert server.wait_for_events(len(RECORDS), timeout=10)
        assert {f.mode for f in server.frames} == {"CompressedPackedForward"}


def test_cat_takes_its_defaults_from_the_environment(fluent_server):
    env = clean_env(FLUENT_HOST=fluent_server.host, FLUENT_PORT=str(fluent_server.port),
                    FLUENT_TAG_PREFIX="env", FLUENT_REQUIRE_ACK="true", FLUENT_COMPRESS="gzip")
    result = run_cat("cli.env", data=json_lines([{"n": 1}]), env=env)
    assert result.returncode == 0, stderr_of(result)
    assert fluent_server.wait_for_events(1, timeout=10)
    (event,) = fluent_server.events
    assert event.tag == "env.cli.env"
    assert fluent_server.frames[0].mode == "CompressedPackedForward"
    assert fluent_server.acks_sent == 1
    # The command line wins: --port replaces the environment's server list.
    env = clean_env(FLUENT_SERVERS=f"127.0.0.1:{free_port()}")
    result = run_cat("cli.flag", "--port", fluent_server.port, data=json_lines([{"n": 2}]),
                     env=env)
    assert result.returncode == 0, stderr_of(result)
    assert fluent_server.wait_for_events(2, timeout=10)


def test_cat_to_a_unix_socket(tmp_path):
    path = str(tmp_path / "fluent.sock")
    with ForwardServer(unix_path=path) as server:
        by_flag = run_cat("cli.unix", "--unix-path", path, data=json_lines([{"n": 1}]))
        assert by_flag.returncode == 0, stderr_of(by_flag)
        by_env = run_cat("cli.unix", data=json_lines([{"n": 2}]),
                         env=clean_env(FLUENT_UNIX_PATH=path))
        assert by_env.returncode == 0, stderr_of(by_env)
        assert server.wait_for_events(2, timeout=10)
        assert [e.record for e in server.events] == [{"n": 1}, {"n": 2}]


@pytest.mark.parametrize(
    "env, args, message",
    [
        ({"FLUENT_PORT": "http"}, [], "FLUENT_PORT: expected a port number"),
        ({"FLUENT_TLS": "sometimes"}, [], "FLUENT_TLS: expected true/false"),
        ({}, ["--tls-ca-file", "/no/such/ca.pem"], "No such file"),
    ],
)
def test_cat_configuration_errors_exit_2_naming_the_setting(env, args, message):
    result = run_cat("cli.conf", *args, data=b"{}\n", env=clean_env(**env))
    assert result.returncode == 2
    assert message in stderr_of(result)


def test_cat_refuses_a_bad_tag():
    result = run_cat("not a tag", data=b"{}\n")
    assert result.returncode == 2
    assert "TAG: 'not a tag' is not dot-separated parts" in stderr_of(result)


def test_cat_sends_what_it_read_when_terminated(fluent_server):
    proc = subprocess.Popen([*COMMAND, "cat", "cli.term", *to_server(fluent_server)],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    try:
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(json_lines(RECORDS[:100]))
        proc.stdin.flush()
        # Records leave within the flush interval while stdin stays open.
        assert fluent_server.wait_for_events(100, timeout=10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 130
        err = proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait(10)
    assert "cat: interrupted; sending what was read" in err
    assert "read 100 records; sent 100" in err


# -- cat: progress ---------------------------------------------------------------------------


def feed_until(proc: subprocess.Popen, done, timeout: float = 15) -> None:
    """Write records to ``proc`` a few at a time until ``done()``, within ``timeout``."""
    assert proc.stdin is not None
    deadline = time.monotonic() + timeout
    n = 0
    while not done():
        assert time.monotonic() < deadline, "condition not met in time"
        proc.stdin.write(json_lines([{"n": n}]))
        proc.stdin.flush()
        n += 1
        time.sleep(0.02)  # a slow producer: the point of this test is a long run


def test_progress_is_shown_with_the_flag_and_not_without(fluent_server):
    procs = {
        flag: subprocess.Popen([*COMMAND, "cat", f"cli.p{i}", *to_server(fluent_server), *flag],
                               stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
        for i, flag in enumerate([("--progress",), ()])
    }
    try:
        shown = Output(procs[("--progress",)].stderr.fileno())
        quiet = Output(procs[()].stderr.fileno())

        def two_status_lines() -> bool:
            # Both get the same input at the same pace, for the same time.
            procs[()].stdin.write(b'{"other": 1}\n')
            procs[()].stdin.flush()
            return shown.poll().count(" sent (") >= 2

        feed_until(procs[("--progress",)], two_status_lines)
        for proc in procs.values():
            proc.stdin.close()
            assert proc.wait(10) == 0
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(10)
    status = [line for line in shown.poll().splitlines() if " sent (" in line]
    assert re.fullmatch(r"[\d,]+ read, [\d,]+ sent \([\d,]+/s\), [\d,]+ buffered "
                        r"\([\d,]+ KiB\), 0 dropped", status[0]), status
    assert "\x1b" not in shown.data.decode()  # not a terminal: plain lines
    quiet_text = quiet.poll()
    assert " sent (" not in quiet_text
    assert quiet_text.startswith("cat: read ")


def test_progress_on_a_terminal_redraws_one_line(fluent_server):
    master, slave = pty.openpty()
    proc = subprocess.Popen([*COMMAND, "cat", "cli.tty", *to_server(fluent_server)],
                            stdin=subprocess.PIPE, stderr=slave, env=clean_env())
    os.close(slave)
    try:
        tty = Output(master)
        feed_until(proc, lambda: tty.poll().count("\r\x1b[K") >= 2)
        proc.stdin.close()
        assert proc.wait(10) == 0
        text = tty.poll()
    finally:
        proc.kill()
        proc.wait(10)
        os.close(master)
    assert re.search(r"\r\x1b\[K[\d,]+ read, [\d,]+ sent \([\d,]+/s\)", text), text
    # The summary replaces the status line rather than following it on the same line.
    assert re.search(r"\r\x1b\[Kcat: read [\d,]+ records; sent", text), text


# -- cat against the Node peer (an implementation we did not write) --------------------------


@pytest.mark.peer
def test_cat_against_the_node_peer(node_peer_factory):
    records = [{"i": i, "text": "ünï", "raw": None, "f": 0.5} for i in range(300)]
    peer = node_peer_factory()
    plain = run_cat("cli.peer", "--port", peer.port, "--time-key", "at",
                    data=json_lines([dict(r, at=1700000000 + r["i"]) for r in records]))
    assert plain.returncode == 0, stderr_of(plain)
    assert peer.wait_for_events(len(records), timeout=20), peer.describe()
    events = peer.events
    assert [e.time for e in events] == [EventTime(1700000000 + i, 0) for i in range(300)]
    for record, event in zip(records, events):
        assert event.tag == "cli.peer"
        assert_peer_equal(record, event.record)

    secure = node_peer_factory(shared_key=KEY, server_hostname=PEER_HOSTNAME)
    data = b"".join(msgpack.packb(r) for r in records)
    result = run_cat("cli.peer.mp", "--port", secure.port, "--format", "msgpack", "--ack",
                     "--shared-key", KEY, data=data)
    assert result.returncode == 0, stderr_of(result)
    assert secure.wait_for_events(len(records), timeout=20), secure.describe()
    for record, event in zip(records, secure.events):
        assert_peer_equal(record, event.record)


def test_cat_waits_for_a_slow_server_instead_of_dropping(fluent_server):
    """An input several times the buffer, to a server that acknowledges each frame late:
    cat holds back rather than drop, and everything arrives in order."""
    fluent_server.delay_acks(0.5)
    n = 60_000
    data = json_lines([{"i": i, "pad": "p" * 200} for i in range(n)])
    result = run_cat("cli.slow", *to_server(fluent_server), "--ack", data=data)
    assert result.returncode == 0, stderr_of(result)
    assert f"sent {n:,}; dropped 0" in stderr_of(result)
    assert fluent_server.wait_for_events(n, timeout=20)
    assert [e.record["i"] for e in fluent_server.events] == list(range(n))


# -- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["cat"], ["serve"], ["demo"]],
                         ids=["main", "cat", "serve", "demo"])
def test_help_is_plain_terminal_text(command):
    result = subprocess.run([*COMMAND, *command, "--help"], capture_output=True, text=True,
                            timeout=60, env=clean_env(COLUMNS="80"))
    text = result.stdout
    assert result.returncode == 0, result.stderr
    assert text.startswith("usage: fluentclient")
    assert "``" not in text
    assert not re.search(r":[a-z]+:`", text), text  # :mod:`...`, :class:`...` and the like
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "examples:" in text


def test_cat_help_lists_every_environment_variable():
    from fluentclient.config import VARIABLES

    result = subprocess.run([*COMMAND, "cat", "--help"], capture_output=True, text=True,
                            timeout=60, env=clean_env(COLUMNS="80"))
    for suffix in VARIABLES:
        assert re.search(rf"^  FLUENT_{suffix} ", result.stdout, re.M), suffix
    assert "exit status:" in result.stdout
