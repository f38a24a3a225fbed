"""The ledger on its own: every snapshot balances, and the report freezes it."""

from __future__ import annotations

import threading

import pytest

from fluentclient._ledger import Ledger, State

from .waiting import wait_until

# Packs no record through the client (raw frames, the server, plain values): the
# pure-Python pass of CI leaves it out (see tests/conftest.py).
pytestmark = pytest.mark.no_packing


def test_every_snapshot_balances_while_threads_step_the_ledger() -> None:
    ledger = Ledger()
    stop = threading.Event()
    unbalanced: list[object] = []
    looks = [0]

    def step() -> None:
        while not stop.is_set():
            ledger.enqueue()
            ledger.buffer(1)
            ledger.write(1, frames=1, nbytes=10)
            ledger.requeue(1)
            ledger.write(1, frames=1, nbytes=10)
            ledger.send(1)
            ledger.enqueue()
            ledger.drop("unserializable", 1, State.QUEUED)
            ledger.refuse("closed")

    def watch() -> None:
        while not stop.is_set():
            s = ledger.snapshot(buffered_bytes=0)
            settled = s.sent + s.dropped_total + s.unsent + s.possibly_lost + s.buffered
            if settled != s.posted + s.replayed or s.buffered < 0:
                unbalanced.append(s)
            looks[0] += 1

    threads = [threading.Thread(target=step) for _ in range(2)]
    threads.append(threading.Thread(target=watch))
    for th in threads:
        th.start()
    # Enough snapshots taken while the steppers run, however slow the machine.
    assert wait_until(lambda: looks[0] >= 500, timeout=60)
    stop.set()
    for th in threads:
        th.join(10)
    assert unbalanced == []
    final = ledger.snapshot(buffered_bytes=0)
    assert final.buffered == 0 and final.sent > 0 and final.retried == final.sent


def test_the_report_freezes_the_ledger_but_not_later_refusals() -> None:
    ledger = Ledger()
    for _ in range(3):
        ledger.enqueue()
    ledger.buffer(3)
    ledger.write(2, frames=1, nbytes=100)
    ledger.close(stranded=0, held=1, held_bytes=40)
    report = ledger.report(timed_out=True)
    # Written, never confirmed, in the hands of a writer shutdown stopped waiting for.
    assert (report.sent, report.unsent_records, report.possibly_lost) == (0, 1, 2)
    ledger.send(2)
    ledger.refuse("closed")
    stats = ledger.snapshot(buffered_bytes=0)
    assert (stats.sent, stats.unsent, stats.possibly_lost) == (0, 1, 2)
    assert stats.posted == 4 and dict(stats.dropped) == {"closed": 1}
