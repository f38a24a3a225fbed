"""A reader or writer thread must survive what users and the disk do, and a client whose
thread died anyway must stop claiming success."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from fluentclient import BufferedClient, Buffering, RecordRules
from fluentclient._spool import Spool
from fluentclient.framing import EntryPacker
from fluentclient.message import Message
from fluentclient.server import ForwardServer

from .conftest import FAST_BACKOFF
from .waiting import wait_until


def client_for(server: ForwardServer, **kwargs) -> BufferedClient:
    kwargs.setdefault("backoff", FAST_BACKOFF)
    return BufferedClient(server.host, server.port, at_exit=False, **kwargs)


def ids(server: ForwardServer) -> list[int]:
    return [e.record["i"] for e in server.events if "i" in e.record]




def thread_failures(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "thread failed" in r.getMessage()]


def test_a_cancelled_ack_future_of_a_dropped_record_does_not_kill_the_reader(
    fluent_server, caplog
):
    with client_for(fluent_server, require_ack=True) as client:
        assert client.post("t", {"i": -1})
        # The reader cannot take the queue while we hold its lock: the future is
        # cancelled (as wait_for over wrap_future does on timeout) before the drop.
        with client._reader.pop_lock:
            fut = client.post("t", {"x": object()}, ack=True)
            assert fut.cancel()
        for i in range(100):
            assert client.post("t", {"i": i})
        assert client.flush(timeout=10)
        assert fluent_server.wait_for_events(101, timeout=10)
        assert client.stats().dropped == {"unserializable": 1}
    assert sorted(ids(fluent_server)) == [-1, *range(100)]
    assert thread_failures(caplog) == []


def test_an_on_error_callback_raising_does_not_kill_the_reader(fluent_server, caplog):
    def on_error(err, msg):
        raise SystemExit("from a callback")

    with client_for(fluent_server, on_error=on_error) as client:
        assert client.post("t", {"x": object()})
        for i in range(10):
            assert client.post("t", {"i": i})
        assert client.flush(timeout=10)
        assert fluent_server.wait_for_events(10, timeout=10)
    assert thread_failures(caplog) == []
    assert any("on_error callback raised" in r.getMessage() for r in caplog.records)


def test_a_default_hook_raising_systemexit_drops_only_its_record(fluent_server, caplog):
    def default(obj):
        raise SystemExit("from default=")

    with client_for(fluent_server, records=RecordRules(default=default)) as client:
        assert client.post("t", {"x": object()})
        for i in range(10):
            assert client.post("t", {"i": i})
        assert client.flush(timeout=10)
        assert fluent_server.wait_for_events(10, timeout=10)
        assert client.stats().dropped == {"unserializable": 1}
    assert thread_failures(caplog) == []


def test_a_dead_reader_makes_post_and_flush_fail(fluent_server, caplog):
    client = client_for(fluent_server)
    assert client.post("t", {"i": 0})
    assert client.flush(timeout=10)

    def broken(batch):
        raise RuntimeError("a bug")

    client._reader._append = broken  # type: ignore[method-assign]
    client.post("t", {"i": 1})
    assert wait_until(lambda: not client._reader.thread.is_alive())
    started = time.monotonic()
    assert client.flush(timeout=30) is False
    assert time.monotonic() - started < 10
    assert client.post("t", {"i": 2}) is False
    assert client.stats().dropped.get("closed") == 1
    report = client.shutdown(timeout=2)
    assert report.failure is not None and "reader" in report.failure
    assert thread_failures(caplog)


def test_a_dead_writer_makes_post_and_flush_fail(fluent_server, caplog):
    client = client_for(fluent_server)
    assert client.post("t", {"i": 0})
    assert client.flush(timeout=10)

    def broken(frames):
        raise RuntimeError("a bug")

    client._writer._write = broken  # type: ignore[method-assign]
    client.post("t", {"i": 1})
    assert wait_until(lambda: not client._writer.thread.is_alive())
    started = time.monotonic()
    assert client.flush(timeout=30) is False
    assert time.monotonic() - started < 10
    assert client.post("t", {"i": 2}) is False
    report = client.shutdown(timeout=2)
    assert report.failure is not None and "writer" in report.failure
    assert not report.complete


def _leave_orphan(spool_dir: Path, n: int) -> str:
    pack = EntryPacker().pack
    left = Spool(str(spool_dir), limit=64 << 20)
    for start in range(0, n, 100):
        entries = b"".join(
            pack(Message("t", {"i": i, "pad": "p" * 100}, 1_700_000_000 * 10**9))
            for i in range(start, min(n, start + 100))
        )
        left.append(start, [("t", entries)], min(100, n - start))
    left.close(keep=True)
    return left.owner


def test_a_foreign_file_named_like_a_segment_is_skipped(tmp_path, fluent_server, caplog):
    owner = _leave_orphan(tmp_path, 3000)
    stray = tmp_path / f"{owner}-00000000x.spool"
    stray.write_bytes(b"not ours")
    # Replay cut short by shutdown: the server is down and the buffer is small.
    fluent_server.refuse()
    client = client_for(fluent_server, buffering=Buffering(spool_dir=tmp_path, limit=16 * 1024))
    assert wait_until(lambda: client.stats().replayed > 0)
    client.shutdown(timeout=0.5)
    assert not client._reader.thread.is_alive()
    assert thread_failures(caplog) == []
    fluent_server.refuse(False)
    with client_for(fluent_server, buffering=Buffering(spool_dir=tmp_path)) as again:
        for i in range(3000, 3100):
            assert again.post("t", {"i": i})
        assert fluent_server.wait_for(lambda: len(set(ids(fluent_server))) >= 3100, timeout=20)
        assert again.flush(timeout=10)
    report = again.shutdown()
    assert sorted(set(ids(fluent_server))) == list(range(3100))
    assert report.sent >= 100 and not report.timed_out and report.possibly_lost == 0
    assert thread_failures(caplog) == []
    assert stray.exists()


def test_a_spool_directory_gone_at_rollover_degrades_to_memory(
    tmp_path, fluent_server, caplog
):
    spool_dir = tmp_path / "spool"
    # Segments of 256 KiB (a spool_limit of 2 MiB): 2000 records of 200 bytes roll over.
    with client_for(fluent_server,
                    buffering=Buffering(spool_dir=spool_dir, spool_limit=2 << 20,
                                        limit=1 << 20)) as client:
        for i in range(10):
            assert client.post("t", {"i": i})
        assert client.flush(timeout=10)
        shutil.rmtree(spool_dir)
        # Well past one segment: the spool must open a new one, and cannot.
        for i in range(10, 2010):
            assert client.post("t", {"i": i, "pad": "p" * 200})
        assert client.flush(timeout=20)
        assert fluent_server.wait_for_events(2010, timeout=20)
        assert client._reader.thread.is_alive() and client._writer.thread.is_alive()
        assert client.post("t", {"i": 2010})
        assert client.flush(timeout=10)
    report = client.shutdown()
    assert sorted(ids(fluent_server)) == list(range(2011))
    assert report.complete and report.sent == 2011
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "spool" in errors[0].getMessage(), errors
    assert thread_failures(caplog) == []
    assert not os.path.exists(spool_dir) or os.path.isdir(spool_dir)
