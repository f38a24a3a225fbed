"""The spool: records left by a killed or timed-out process are replayed by the next one."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

from fluentclient import BufferedClient, Buffering
from fluentclient._spool import Spool, _split_entries, read_blocks
from fluentclient.server import ForwardServer

from .conftest import FAST_BACKOFF
from .subproc import child_env
from .waiting import wait_until

CHILD = textwrap.dedent(
    """
    import sys, time
    from fluentclient import Backoff, BufferedClient, Buffering, Timeouts
    port, spool, ack = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "ack"
    client = BufferedClient(
        "127.0.0.1", port, require_ack=ack, timeouts=Timeouts(ack=30),
        backoff=Backoff(initial=0.01, maximum=0.05),
        buffering=Buffering(spool_dir=spool, flush_interval=0.01),
    )
    # Each phase "name:records:flush_timeout" posts, flushes, says its name, and waits
    # for a line on stdin before the next one; after the last the process waits to be
    # killed.
    for phase in sys.argv[4:]:
        name, n, flush = phase.split(":")
        for i in range(int(n)):
            client.post("spool.test", {"i": i, "phase": name})
        client.flush(timeout=float(flush))
        print(name, flush=True)
        sys.stdin.readline()
    time.sleep(60)
    """
)


class Child:
    def __init__(self, port: int, spool: Path, *phases: str, ack: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(port), str(spool), "ack" if ack else "plain",
             *phases],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=child_env(),
        )

    def wait_for(self, phase: str) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        line = self.proc.stdout.readline()
        assert line.strip() == phase, self.proc.stderr.read()

    def next(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def killed_after(port: int, spool: Path, n: int, *, flush: float = 0.2) -> None:
    child = Child(port, spool, f"a:{n}:{flush}")
    child.wait_for("a")
    child.kill9()


def new_client(server: ForwardServer, spool: Path, *, buffering: Buffering = Buffering(),
               **kwargs) -> BufferedClient:
    kwargs.setdefault("backoff", FAST_BACKOFF)
    return BufferedClient(server.host, server.port, at_exit=False,
                          buffering=replace(buffering, spool_dir=spool), **kwargs)


def ids(server: ForwardServer, phase: str | None = None) -> list[int]:
    return [e.record["i"] for e in server.events
            if phase is None or e.record.get("phase") == phase]


def spool_files(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.iterdir())


def test_kill9_with_server_down_replays_everything_once(tmp_path, fluent_server):
    fluent_server.refuse()
    killed_after(fluent_server.port, tmp_path, 2000)
    fluent_server.refuse(False)
    with new_client(fluent_server, tmp_path) as client:
        assert fluent_server.wait_for_events(2000, timeout=20)
        assert client.flush(timeout=10)
    stats = client.stats()
    assert sorted(ids(fluent_server)) == list(range(2000))
    assert stats.replayed == 2000 and stats.sent == 2000 and stats.posted == 0
    assert spool_files(tmp_path) == []


def test_with_acks_only_records_never_acked_are_replayed(tmp_path, fluent_server):
    # Phase a is acknowledged; phase b reaches the server but its acks are withheld.
    child = Child(fluent_server.port, tmp_path, "a:500:10", "b:700:0.3", ack=True)
    child.wait_for("a")
    assert len(ids(fluent_server, "a")) == 500
    fluent_server.withhold_acks()
    child.next()
    child.wait_for("b")
    assert fluent_server.wait_for(lambda: len(ids(fluent_server, "b")) == 700, timeout=10)
    child.kill9()
    fluent_server.withhold_acks(False)
    fluent_server.clear()
    with new_client(fluent_server, tmp_path, require_ack=True) as client:
        assert fluent_server.wait_for_events(700, timeout=20)
        assert client.flush(timeout=10)
        assert client.stats().replayed == 700
    assert sorted(ids(fluent_server, "b")) == list(range(700))
    assert ids(fluent_server, "a") == []
    assert spool_files(tmp_path) == []


def records_in(path: Path) -> int:
    return sum(
        len(_split_entries(run))
        for block in read_blocks(str(path)) if block[0] == 0
        for _, run in block[2]
    )


def test_a_torn_last_write_costs_only_that_block(tmp_path, fluent_server):
    fluent_server.refuse()
    killed_after(fluent_server.port, tmp_path, 1000)
    segments = sorted(tmp_path.glob("*.spool"))
    assert sum(map(records_in, segments)) == 1000
    last = segments[-1]
    blocks = len(list(read_blocks(str(last))))
    # Cut the last block short and append junk, as a crash in the middle of a write might.
    data = last.read_bytes()
    last.write_bytes(data[:-7] + b"\xff\x00junk")
    assert len(list(read_blocks(str(last)))) == blocks - 1
    kept = sum(map(records_in, segments))
    assert 0 < kept < 1000
    fluent_server.refuse(False)
    with new_client(fluent_server, tmp_path) as client:
        assert fluent_server.wait_for_events(kept, timeout=20)
        assert client.flush(timeout=10)
        assert client.stats().replayed == kept
    # Everything before the torn block arrived once, in order.
    assert ids(fluent_server) == list(range(kept))


def test_shutdown_leaves_what_it_cannot_send_in_the_spool(tmp_path, fluent_server):
    fluent_server.refuse()
    client = new_client(fluent_server, tmp_path)
    for i in range(300):
        client.post("spool.test", {"i": i})
    report = client.shutdown(timeout=0.2)
    assert report.unsent_records == 300 and report.spooled == 300
    assert any(name.endswith(".spool") for name in spool_files(tmp_path))
    fluent_server.refuse(False)
    with new_client(fluent_server, tmp_path) as again:
        assert fluent_server.wait_for_events(300, timeout=10)
        assert again.flush(timeout=5)
    assert sorted(ids(fluent_server)) == list(range(300))


def test_a_clean_shutdown_leaves_nothing_behind(tmp_path, fluent_server):
    with new_client(fluent_server, tmp_path) as client:
        for i in range(5000):
            client.post("spool.test", {"i": i, "pad": "x" * 200})
        assert client.flush(timeout=10)
    assert client.stats().sent == 5000
    assert spool_files(tmp_path) == []


def test_live_owners_are_never_claimed(tmp_path, fluent_server):
    fluent_server.refuse()
    first = new_client(fluent_server, tmp_path)
    for i in range(100):
        first.post("spool.test", {"i": i})
    assert not first.flush(timeout=0.1)  # nothing can leave while the server refuses
    fluent_server.refuse(False)
    second = new_client(fluent_server, tmp_path)
    second.post("spool.test", {"i": 1000})
    assert second.flush(timeout=5)
    assert second.stats().replayed == 0
    # The first client finds the server again and sends its own records, once.
    assert first.flush(timeout=10)
    assert fluent_server.wait_for_events(101, timeout=10)
    assert sorted(ids(fluent_server)) == [*range(100), 1000]
    first.shutdown(timeout=5)
    second.shutdown(timeout=5)
    assert spool_files(tmp_path) == []


def test_segments_are_deleted_as_their_records_are_sent(tmp_path, fluent_server):
    with new_client(fluent_server, tmp_path, buffering=Buffering(limit=256 * 1024)) as client:
        spool = client._journal._spool
        for i in range(20_000):
            client.post("spool.test", {"i": i, "pad": "y" * 100})
            if i % 1000 == 999:
                assert client.flush(timeout=10)
        assert client.flush(timeout=10)
        assert fluent_server.wait_for_events(20_000, timeout=10)
        # About 2.6 MB went through; only the active segment (and its done blocks) stays,
        # once the reader has had its turn at the spool.
        assert wait_until(lambda: spool.size <= spool.segment_size + 64 * 1024
                          and len(list(tmp_path.glob("*.spool"))) <= 2), (
            spool.size, spool_files(tmp_path))


def test_forked_child_gets_its_own_spool(tmp_path, fluent_server):
    code = textwrap.dedent(
        """
        import os, sys
        from fluentclient import Backoff, BufferedClient, Buffering
        port, spool = int(sys.argv[1]), sys.argv[2]
        client = BufferedClient("127.0.0.1", port, buffering=Buffering(spool_dir=spool),
                                backoff=Backoff(initial=0.01, maximum=0.05))
        for i in range(100):
            client.post("spool.test", {"i": i, "who": "parent"})
        pid = os.fork()
        if pid == 0:
            for i in range(50):
                client.post("spool.test", {"i": i, "who": "child"})
            report = client.shutdown(timeout=10)
            os._exit(0 if report.sent == 50 and report.complete else 3)
        _, status = os.waitpid(pid, 0)
        report = client.shutdown(timeout=10)
        sys.exit(os.waitstatus_to_exitcode(status) or (0 if report.sent == 100 else 4))
        """
    )
    done = subprocess.run([sys.executable, "-c", code, str(fluent_server.port), str(tmp_path)],
                          capture_output=True, text=True, timeout=60, env=child_env())
    assert done.returncode == 0, done.stderr
    parent = [e.record["i"] for e in fluent_server.events if e.record["who"] == "parent"]
    child = [e.record["i"] for e in fluent_server.events if e.record["who"] == "child"]
    assert sorted(parent) == list(range(100)) and sorted(child) == list(range(50))
    assert spool_files(tmp_path) == []


def test_spool_rotates_and_collects(tmp_path):
    spool = Spool(str(tmp_path), limit=1 << 20, segment_size=64 * 1024)
    entry = b"\x92\x01\xa3abc"
    for n in range(100):
        spool.append(n * 1000, [("t", entry * 1000)], 1000)
    before = len(list(tmp_path.glob("*.spool")))
    assert before > 2
    spool.collect(50 * 1000)
    remaining = sorted(tmp_path.glob("*.spool"))
    assert 0 < len(remaining) < before
    # Kept: exactly the segments holding a record numbered 5000 or more.
    last_seqs = [max(b[1] + 999 for b in read_blocks(str(p))) for p in remaining]
    assert min(last_seqs) >= 50 * 1000
    assert sum(map(records_in, remaining)) >= 50 * 1000
    spool.close(keep=False)
    assert spool_files(tmp_path) == []


def test_a_second_spool_in_the_same_process_sees_an_abandoned_one(tmp_path):
    limit = 1 << 20
    first = Spool(str(tmp_path), limit=limit)
    first.append(0, [("t", b"\x92\x01\x80")], 1)
    second = Spool(str(tmp_path), limit=limit)
    assert not second.has_orphans()
    first.close(keep=True)
    assert second.has_orphans()
    orphan = next(second.orphans())
    assert list(orphan.records()) == [("t", b"\x92\x01\x80", 0)]
    orphan.finish()
    second.close(keep=False)
    assert spool_files(tmp_path) == []


def test_a_spooled_record_too_large_for_the_new_frame_size_is_counted(tmp_path, fluent_server):
    from fluentclient.framing import EntryPacker
    from fluentclient.message import Message

    pack = EntryPacker().pack
    big = pack(Message("spool.test", {"i": 0, "pad": "z" * 4000}, 1_700_000_000 * 10**9))
    small = pack(Message("spool.test", {"i": 1}, 1_700_000_000 * 10**9))
    left = Spool(str(tmp_path), limit=1 << 20)
    left.append(0, [("spool.test", big + small)], 2)
    left.close(keep=True)
    with new_client(fluent_server, tmp_path, buffering=Buffering(max_frame_size=2048)) as client:
        assert fluent_server.wait_for_events(1, timeout=10)
        assert client.flush(timeout=5)
    stats = client.stats()
    assert ids(fluent_server) == [1]
    assert stats.replayed == 2 and stats.dropped == {"too_large": 1}
    assert stats.sent + stats.dropped_total == stats.replayed
    assert spool_files(tmp_path) == []
