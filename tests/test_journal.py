"""The journal owns the spool's I/O: its failures degrade, are counted and logged, and
its file work never runs on a caller's thread."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

from fluentclient import BufferedClient, Buffering
from fluentclient._spool import Spool
from fluentclient.framing import EntryPacker
from fluentclient.message import Message
from fluentclient.server import ForwardServer

from .conftest import FAST_BACKOFF
from .subproc import child_env
from .waiting import wait_until


def client_for(server: ForwardServer, **kwargs: Any) -> BufferedClient:
    kwargs.setdefault("backoff", FAST_BACKOFF)
    return BufferedClient(server.host, server.port, at_exit=False, **kwargs)


def ids(server: ForwardServer) -> list[int]:
    return [e.record["i"] for e in server.events if "i" in e.record]




def leave_orphan(spool_dir: Path, n: int, *, per_block: int = 100) -> Spool:
    """Files as a killed process leaves them: records 0..n-1, none done."""
    pack = EntryPacker().pack
    left = Spool(str(spool_dir), limit=64 << 20)
    for start in range(0, n, per_block):
        count = min(per_block, n - start)
        entries = b"".join(
            pack(Message("t", {"i": i, "pad": "p" * 100}, 1_700_000_000 * 10**9))
            for i in range(start, start + count)
        )
        left.append(start, [("t", entries)], count)
    left.close(keep=True)
    return left


def segments(spool_dir: Path, owner: str) -> list[Path]:
    return sorted(spool_dir.glob(f"{owner}-*.spool"))


def warnings_about(caplog: Any, word: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and word in r.getMessage()]


# -- no file I/O on a caller's thread ------------------------------------------------------

# Audit events a spool raises when it opens, renames, deletes or lists files. os.write
# and os.fsync raise none; every block they write goes to a segment that "open" made.
_FILE_EVENTS = frozenset({
    "open", "os.remove", "os.rename", "os.listdir", "os.scandir", "os.mkdir", "os.truncate",
    "os.chmod", "shutil.rmtree",
})
_audit: dict[str, Any] = {"thread": None, "seen": []}


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event in _FILE_EVENTS and threading.get_ident() == _audit["thread"]:
        _audit["seen"].append((event, args[0] if args else None))


_hook_installed = False


def _watch_thread(ident: int | None) -> list[tuple[str, Any]]:
    global _hook_installed
    if not _hook_installed:
        # An audit hook cannot be removed: it stays, idle, for the rest of the session.
        sys.addaudithook(_hook)
        _hook_installed = True
    _audit["seen"] = []
    _audit["thread"] = ident
    return _audit["seen"]  # type: ignore[no-any-return]


def test_drop_oldest_with_a_spool_does_no_file_io_on_the_posting_thread(
    tmp_path, fluent_server
):
    # No server to take anything: the buffer fills and stays full, so posting evicts.
    fluent_server.refuse()
    spool_dir = tmp_path / "spool"
    # A spool_limit of 256 KiB makes segments of 64 KiB: many are finished and deleted.
    client = client_for(fluent_server,
                        buffering=Buffering(spool_dir=spool_dir, limit=64 * 1024,
                                            spool_limit=256 * 1024, overflow="drop_oldest"))
    try:
        assert client.post("t", {"i": -1}, sync_append=True)
        seen = _watch_thread(threading.get_ident())
        try:
            for i in range(6000):
                # Every third record waits until it is buffered: the buffer is then full
                # and the queue empty, and the next two posts evict buffered frames on
                # this thread (not only records still queued), finishing segments.
                assert client.post("t", {"i": i, "pad": "x" * 180}, sync_append=i % 3 == 2)
        finally:
            _watch_thread(None)
        assert client.stats().dropped.get("evicted", 0) > 0
        assert seen == [], seen[:5]
        # The reader does the file work instead: it deletes the finished segments.
        assert wait_until(lambda: len(list(spool_dir.glob("*.spool"))) <= 2)
    finally:
        fluent_server.refuse(False)
        client.close()


# -- writes that fail ----------------------------------------------------------------------

_FULL_DISK_CHILD = textwrap.dedent(
    """
    import json, logging, resource, signal, sys
    from fluentclient import Backoff, BufferedClient, Buffering
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    port, spool = int(sys.argv[1]), sys.argv[2]
    # Writes past 256 KiB fail with EFBIG (a full disk, as the writer sees it) rather than
    # killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))
    client = BufferedClient("127.0.0.1", port, at_exit=False,
                            buffering=Buffering(spool_dir=spool, spool_limit=8 << 20,
                                                limit=1 << 20),
                            backoff=Backoff(initial=0.01, maximum=0.05))
    for i in range(3000):
        assert client.post("t", {"i": i, "pad": "d" * 800})
        if i % 500 == 499:
            assert client.flush(timeout=30)
    assert client.flush(timeout=30)
    report = client.shutdown(timeout=30)
    j = client.stats().journal
    print(json.dumps({"sent": report.sent, "complete": report.complete,
                      "broken": j.broken, "errors": j.errors, "last_error": j.last_error}))
    """
)


def test_a_full_disk_breaks_the_journal_and_records_still_arrive(tmp_path, fluent_server):
    spool_dir = tmp_path / "spool"
    proc = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_CHILD, str(fluent_server.port), str(spool_dir)],
        capture_output=True, text=True, timeout=120, env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["sent"] == 3000 and out["complete"], out
    assert out["broken"] and out["errors"] == 1, out
    assert "File too large" in out["last_error"] or "short write" in out["last_error"], out
    assert sorted(ids(fluent_server)) == list(range(3000))
    # Said once, at ERROR.
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "spool" in errors[0], proc.stderr


def test_a_directory_removed_at_rollover_shows_in_stats(tmp_path, fluent_server, caplog):
    spool_dir = tmp_path / "spool"
    with client_for(fluent_server,
                    buffering=Buffering(spool_dir=spool_dir, spool_limit=2 << 20,
                                        limit=1 << 20)) as client:
        assert client.post("t", {"i": 0})
        assert client.flush(timeout=10)
        assert client.stats().journal is not None and not client.stats().journal.broken
        shutil.rmtree(spool_dir)
        for i in range(1, 2001):
            assert client.post("t", {"i": i, "pad": "p" * 200})
        assert client.flush(timeout=30)
        health = client.stats().journal
        assert health is not None and health.broken and health.errors == 1
        assert health.last_error and "No such file" in health.last_error
    report = client.shutdown()
    assert report.complete and sorted(ids(fluent_server)) == list(range(2001))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "spool" in errors[0].getMessage()


def test_without_a_spool_stats_have_no_journal(fluent_server):
    with client_for(fluent_server) as client:
        assert client.post("t", {"i": 0})
        assert client.flush(timeout=10)
        assert client.stats().journal is None


# -- files that cannot be read -------------------------------------------------------------

def _replayed_by_a_new_client(
    server: ForwardServer, spool_dir: Path, expect: int
) -> BufferedClient:
    client = client_for(server, buffering=Buffering(spool_dir=spool_dir))
    assert wait_until(lambda: client.stats().replayed >= expect)
    assert server.wait_for(lambda: len(set(ids(server))) >= expect, timeout=20)
    assert client.flush(timeout=10)
    return client


def test_a_truncated_segment_replays_what_precedes_the_cut(tmp_path, fluent_server, caplog):
    left = leave_orphan(tmp_path, 1000)
    last = segments(tmp_path, left.owner)[-1]
    size = last.stat().st_size
    with open(last, "r+b") as f:
        f.truncate(size - 50)  # into the last block: records 900..999
    client = _replayed_by_a_new_client(fluent_server, tmp_path, 900)
    health = client.stats().journal
    report = client.shutdown()
    assert sorted(set(ids(fluent_server))) == list(range(900))
    assert report.complete and report.sent == 900
    assert health is not None and health.skipped_blocks == 1 and not health.broken
    assert str(last) in (health.last_error or "")
    assert warnings_about(caplog, last.name)


def test_a_garbage_file_named_like_a_segment_is_skipped(tmp_path, fluent_server, caplog):
    left = leave_orphan(tmp_path, 500)
    number = len(segments(tmp_path, left.owner))
    garbage = tmp_path / f"{left.owner}-{number:08d}.spool"
    garbage.write_bytes(os.urandom(4096))
    client = _replayed_by_a_new_client(fluent_server, tmp_path, 500)
    health = client.stats().journal
    report = client.shutdown()
    assert sorted(set(ids(fluent_server))) == list(range(500))
    assert report.complete
    assert health is not None and health.skipped_files == 1 and health.errors == 0
    assert warnings_about(caplog, garbage.name)


def test_a_foreign_lock_file_is_neither_claimed_nor_deleted(tmp_path, fluent_server, caplog):
    foreign = tmp_path / "backup.lock"
    foreign.write_text("someone else's")
    with client_for(fluent_server, buffering=Buffering(spool_dir=tmp_path)) as client:
        assert client.post("t", {"i": 0})
        assert client.flush(timeout=10)
        health = client.stats().journal
    client.shutdown()
    assert foreign.read_text() == "someone else's"
    assert health is not None and health.skipped_files == 1
    assert warnings_about(caplog, "backup.lock")


# -- permissions ---------------------------------------------------------------------------

_PERMISSION_CHILD = textwrap.dedent(
    """
    import json, logging, os, shutil, sys, tempfile, time
    import encodings.idna  # getaddrinfo's codec, imported while python's files are ours
    from fluentclient import Backoff, BufferedClient, Buffering
    from fluentclient.framing import EntryPacker
    from fluentclient.message import Message
    from fluentclient._spool import Spool
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    port = int(sys.argv[1])
    if os.getuid() == 0:
        # Root ignores file modes: become nobody, with everything imported already.
        os.setgid(65534)
        os.setuid(65534)

    def client(spool):
        return BufferedClient("127.0.0.1", port, at_exit=False,
                              buffering=Buffering(spool_dir=spool, spool_limit=2 << 20,
                                                  limit=1 << 20),
                              backoff=Backoff(initial=0.01, maximum=0.05))

    out = {}
    # A directory that turns read-only: the next segment cannot be made.
    spool = tempfile.mkdtemp(prefix="ro-")
    c = client(spool)
    assert c.post("t", {"i": 0}) and c.flush(timeout=30)
    os.chmod(spool, 0o500)
    for i in range(1, 2001):
        assert c.post("t", {"i": i, "pad": "p" * 200})
    assert c.flush(timeout=30)
    report = c.shutdown(timeout=30)
    out["ro"] = dict(sent=report.sent, complete=report.complete, **vars(c.stats().journal))
    os.chmod(spool, 0o700)
    shutil.rmtree(spool)

    # A segment left by a dead process that cannot be read: the others are replayed.
    spool = tempfile.mkdtemp(prefix="unreadable-")
    left = Spool(spool, limit=64 << 20, segment_size=64 << 10)
    pack = EntryPacker().pack
    for start in range(0, 2000, 100):
        entries = b"".join(pack(Message("t", {"i": 10_000 + i, "pad": "q" * 200}, 10**18))
                           for i in range(start, start + 100))
        left.append(start, [("t", entries)], 100)
    left.close(keep=True)
    names = sorted(n for n in os.listdir(spool) if n.endswith(".spool"))
    os.chmod(os.path.join(spool, names[0]), 0)
    c = client(spool)
    # Replay is done when the dead owner's files are gone.
    deadline = time.monotonic() + 30
    while any(n.startswith(left.owner) for n in os.listdir(spool)):
        assert time.monotonic() < deadline, os.listdir(spool)
        time.sleep(0.01)
    assert c.flush(timeout=30)
    report = c.shutdown(timeout=30)
    out["unreadable"] = dict(sent=report.sent, segments=len(names), unreadable=names[0],
                             **vars(c.stats().journal))
    shutil.rmtree(spool)
    print(json.dumps(out))
    """
)


def test_permission_errors_degrade_and_are_counted(fluent_server):
    proc = subprocess.run(
        [sys.executable, "-c", _PERMISSION_CHILD, str(fluent_server.port)],
        capture_output=True, text=True, timeout=120, env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    ro = out["ro"]
    assert ro["sent"] == 2001 and ro["complete"], ro
    assert ro["broken"] and ro["errors"] == 1 and "Permission denied" in ro["last_error"], ro
    unreadable = out["unreadable"]
    # The first segment's records are lost to us; every other one arrives.
    assert unreadable["skipped_files"] == 1 and not unreadable["broken"], unreadable
    assert unreadable["unreadable"] in unreadable["last_error"], unreadable
    got = sorted(i - 10_000 for i in ids(fluent_server) if i >= 10_000)
    assert len(got) == unreadable["sent"] and 0 < len(got) < 2000
    assert got == list(range(2000 - len(got), 2000))
    assert sorted(i for i in ids(fluent_server) if i < 10_000) == list(range(2001))
    assert sum(line.startswith("ERROR") for line in proc.stderr.splitlines()) == 1, proc.stderr
