"""The command line, end to end: demo and serve, as a user runs them."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys

from fluentclient import EventTime, SyncClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_checks_every_record():
    result = subprocess.run([sys.executable, "-m", "fluentclient", "demo", "--records", "20000"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "server received 20,000 records, in order: True" in result.stdout
    assert result.stdout.rstrip().endswith("OK")


def readline(stream, timeout: float = 10) -> str:
    """One line, or fail after ``timeout`` instead of hanging the suite."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no output in time"
    return stream.readline()


def test_serve_prints_events_as_json_lines():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fluentclient", "serve", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        assert "listening on" in readline(proc.stderr)
        with SyncClient("127.0.0.1", port) as client:
            client.post("cli.serve", {"msg": "héllo", "raw": b"\x00\xff"},
                        time=EventTime(1700000000, 42))
        line = json.loads(readline(proc.stdout))
        assert line == {"tag": "cli.serve", "time": 1700000000, "nanoseconds": 42,
                        "record": {"msg": "héllo", "raw": {"$bin": "AP8="}}}
    finally:
        proc.terminate()
        proc.wait(10)
