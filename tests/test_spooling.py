"""What the reader writes to the spool for a batch, read back as the next process would."""

from __future__ import annotations

from collections import deque
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fluentclient._admission import Admission
from fluentclient._buffer import Buffer
from fluentclient._journal import Journal, open_journal
from fluentclient._ledger import Ledger
from fluentclient._lifecycle import Lifecycle
from fluentclient._reading._replay import Spooled
from fluentclient._reading._spooling import Spooling
from fluentclient._reporting import Reporter, Reporting
from fluentclient._spool import Spool
from fluentclient.errors import BufferFullError, FluentError
from fluentclient.framing import EntryPacker
from fluentclient.message import Message


def spooling_on(directory: Path, limit: int, told: list[tuple[FluentError, Message | None]]
                ) -> tuple[Spooling, Journal]:
    """A real file journal, with what a client wires around it; drops are ``told``."""
    journal = open_journal(str(directory), limit=limit)
    buffer = Buffer(limit=1 << 20, write_threshold=1 << 16, max_frame_size=1 << 20)
    ledger, life = Ledger(), Lifecycle()
    reporter = Reporter(ledger, Reporting(), lambda err, msg: told.append((err, msg)))
    admission = Admission("drop_newest", 0.0, buffer, deque(), journal, lambda: False,
                          queue_limit=256, life=life, ledger=ledger, reporter=reporter)
    return Spooling(journal, buffer, admission, reporter), journal


def read_back(directory: Path) -> list[tuple[str, bytes, int]]:
    """What a later process replays from ``directory``, as (tag, entry, number)."""
    spool = Spool(str(directory), limit=1 << 30)
    try:
        return [record for orphan in spool.orphans() for record in orphan.records()]
    finally:
        spool.close(keep=True)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c.d"]), st.integers(0, 2**32), st.booleans()),
                min_size=1, max_size=20),
       st.integers(min_value=0, max_value=10**6))
def test_a_batch_is_spooled_as_the_buffer_took_it(tmp_path_factory, batch, first_seq):
    """Every record the buffer took, and none it rejected, in order, with its tag, numbered
    from ``first_seq``: however the tags alternate."""
    directory = tmp_path_factory.mktemp("spool")
    spooling, journal = spooling_on(directory, 1 << 20, [])
    kept = [Spooled(tag) for tag, _, _ in batch]
    pack = EntryPacker().pack
    entries = [pack(Message(tag, {"i": i}, 0)) for tag, i, _ in batch]
    rejected = [record for record, (_, _, refused) in zip(kept, batch) if refused]
    spooling.record(first_seq, kept, entries, rejected)
    spooling.maintain()
    journal.close(keep=True)
    took = [(tag, entry) for (tag, _, refused), entry in zip(batch, entries) if not refused]
    assert read_back(directory) == [
        (tag, entry, first_seq + n) for n, (tag, entry) in enumerate(took)]


def test_a_run_is_cut_to_the_spools_room_and_the_rest_told_as_spool_full(tmp_path):
    told: list[tuple[FluentError, Message | None]] = []
    spooling, _ = spooling_on(tmp_path, 4096, told)
    messages = [Message("t", {"i": i, "pad": "x" * 200}, 0) for i in range(40)]
    run = next(iter(EntryPacker().pack_runs(messages, lambda m, e: None)))
    spooling.trim(run)
    assert 0 < len(run.messages) < len(messages)
    assert len(run.sizes) == len(run.messages) and len(run.data) == sum(run.sizes)
    assert run.messages == messages[:len(run.messages)]
    assert told
    assert all(isinstance(err, BufferFullError) and "spool_limit" in str(err) for err, _ in told)
    assert [msg for _, msg in told] == messages[len(run.messages):]
