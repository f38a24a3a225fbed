"""A model of BufferedClient that keeps looking: a hypothesis state machine drives a real
client against the embedded server while switching the server's faults, and after every
step checks what the client promised.

Each record carries a unique ``id``, so the model can match what the server received
against what the client said of each record: refused by post(), dropped with the record
in hand (on_error), handed over unsent (on_unsent), left in the spool (then replayed by
the next client on that directory), acknowledged (an ack future), or only counted
(possibly lost, or dropped where no record is at hand). The counts the client keeps
must then cover everything the model cannot name.

``benchmarks/model_soak.py`` runs the same machine for as long as asked, with a fresh
seed each run. In CI it runs a small, fixed budget (see ``MODEL_SETTINGS``).
"""

from __future__ import annotations

import datetime
import functools
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from fluentclient import Backoff, BufferedClient, Buffering, Timeouts
from fluentclient.errors import FluentError
from fluentclient.message import Message
from fluentclient.server import ForwardServer
from fluentclient.stats import ShutdownReport, Stats, UnsentRecord

from .subproc import ROOT
from .waiting import wait_until

# -- bounds ---------------------------------------------------------------------------------
# Generous on purpose: a loaded 2-core machine must not fail a correct client. They only
# catch a call that waits on the server (seconds), not one that is a little slow.
POST_BOUND = 1.5
FLUSH_SLACK = 2.5
SHUTDOWN_SLACK = 3.0
# How long the model waits for the server to read what the client says it has.
ARRIVAL_WAIT = 20.0
CHILD_DEADLINE = 30.0

MAIN_TAG = "model.main"
ODD_TAG = "model.odd"
ACK_TAG = "model.ack"
RACE_TAG = "model.race"
LOG_TAG = "model.log"
MUTATED_TAG = "model.mutated"

FAST_BACKOFF = Backoff(initial=0.01, maximum=0.1)

# The logger on_error reports to; a handler on it posts to the same client.
APP_LOG = "fluentclient_model.app"

# Steps run, over every example of this process (the soak runner prints it).
STEPS = itertools.count()
steps_run = 0


# The steps of each example that failed, as they ran (newest last), with the error: a
# failure that does not happen again when hypothesis replays it (a race) leaves no
# minimal example, so the soak runner prints this instead.
failed_traces: list[tuple[list[str], str]] = []
# What the examples ran into, so a run can show that it exercised the fates it checks.
seen: Counter[str] = Counter()


def _traced(fn: Any) -> Any:
    """Note each call of a rule in the machine's trace, and the trace if it fails."""

    @functools.wraps(fn)
    def wrapper(self: ClientModel, **kwargs: Any) -> Any:
        global steps_run
        steps_run = next(STEPS) + 1
        args = ", ".join(f"{k}={v!r}"[:300] for k, v in kwargs.items())
        self.trace.append(f"state.{fn.__name__}({args})")
        try:
            return fn(self, **kwargs)
        except BaseException as exc:
            failed_traces.append((list(self.trace), repr(exc)[:2000]))
            raise

    return wrapper


def _checked(fn: Any) -> Any:
    """An invariant or the teardown: its failure is noted with the trace so far."""

    @functools.wraps(fn)
    def wrapper(self: ClientModel) -> Any:
        try:
            return fn(self)
        except BaseException as exc:
            failed_traces.append((self.trace + [f"{fn.__name__}() failed"], repr(exc)[:2000]))
            raise

    return wrapper


# -- odd records ------------------------------------------------------------------------

_surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1,
                      max_size=4)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # big ones too: past 64 bits msgpack cannot pack them
    st.integers(min_value=2**63, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0]),
    st.text(max_size=20),
    _surrogates,
    st.binary(max_size=20),
    st.sampled_from([b"\xff\xfe", "\u0000", "\U0001f600", "caf\u00e9"]),
)
_keys = st.one_of(
    st.text(max_size=8), _surrogates, st.integers(), st.binary(max_size=4), st.none(),
    st.floats(allow_nan=True), st.tuples(st.integers()), st.booleans(),
)


def _nest(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"n": value}
    return value


odd_values = st.one_of(
    st.recursive(
        _scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.tuples(inner, inner),
            st.dictionaries(_keys, inner, max_size=4),
        ),
        max_leaves=12,
    ),
    # Past max_depth (unsafe), an object msgpack cannot pack (unserializable), and a
    # value a default hook would be needed for.
    st.integers(min_value=30, max_value=120).map(_nest),
    st.just(object()).map(lambda _: object()),
    st.just(datetime.datetime(2020, 1, 1)),
    st.binary(min_size=0, max_size=3000),
)


# -- what the model knows ------------------------------------------------------------------

@dataclass
class Knowledge:
    """Everything the model has been told, by post(), the callbacks and the futures.

    Written from several threads (callbacks run on the client's threads): list appends
    and set adds, which are atomic, and two counts behind the model's lock. A forked
    child touches none of it (its callbacks return at once), so no lock a fork could
    leave held matters there.
    """

    posted: list[int] = field(default_factory=list)  # every id handed to post()
    refused: set[int] = field(default_factory=set)  # post() returned False
    taken: list[int] = field(default_factory=list)  # post() returned True / a future
    # on_error with the record in hand: (id, error type name)
    errors_with_record: list[tuple[int, str]] = field(default_factory=list)
    errors_without_record: list[str] = field(default_factory=list)
    handed_over: list[int] = field(default_factory=list)  # on_unsent
    futures: dict[int, Future[None]] = field(default_factory=dict)
    cancelled: set[int] = field(default_factory=set)
    # Posts started and posts returned: stats().posted lies between them.
    posts_started: int = 0
    posts_returned: int = 0
    order: dict[str, list[int]] = field(default_factory=dict)  # main-thread ids by tag
    # Ids each flush() that returned True promised.
    promised: set[int] = field(default_factory=set)
    # Checks that failed on a thread of the client (in on_error's handler), where an
    # exception would only be logged: an invariant raises them.
    background_failures: list[str] = field(default_factory=list)


def _record_id(record: object) -> int | None:
    if isinstance(record, dict):
        value = record.get("id")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _message_id(msg: object) -> int | None:
    if isinstance(msg, Message):
        return _record_id(msg.record)
    return None


class _PostingHandler(logging.Handler):
    """A logging handler that posts each record to the model's client, as an application
    that logs to Fluentd from on_error would."""

    def __init__(self, machine: ClientModel) -> None:
        super().__init__()
        self.machine = machine

    def emit(self, record: logging.LogRecord) -> None:
        m = self.machine
        if os.getpid() != m.pid:
            return  # a forked child: its own posts are the child's business
        try:
            m.post_one(LOG_TAG, {"id": m.new_id(), "msg": record.getMessage()[:200]},
                       main_thread=False)
        except BaseException as exc:  # noqa: BLE001 - logging would only print it
            m.k.background_failures.append(
                f"in a post from on_error on {threading.current_thread().name}: {exc!r}")


class ClientModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pid = os.getpid()
        self.server = ForwardServer().start()
        self.tmp = tempfile.mkdtemp(prefix="fluentclient-model-")
        self.k = Knowledge()
        self.count_lock = threading.Lock()
        self.ids = itertools.count(1)
        self.client: BufferedClient | None = None
        self.variant = ""
        self.overflow = "drop_newest"
        self.closed = False
        self.report: ShutdownReport | None = None
        self.faults: dict[str, Any] = {
            "stalled": False, "refusing": False, "stopped": False, "drop_after": None,
            "withhold": False, "garble": False, "delay": None, "blackholed": False,
        }
        self.trace: list[str] = ["state = ClientModel()"]
        self.children: list[dict[str, Any]] = []  # what each forked child reported
        self.child_ids: set[int] = set()
        self.forks = 0
        self.logger = logging.getLogger(APP_LOG)
        self.logger.propagate = False
        self.handler = _PostingHandler(self)
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)

    # -- helpers ---------------------------------------------------------------------------

    def new_id(self) -> int:
        return next(self.ids)

    def _on_error(self, err: FluentError, msg: Message | None) -> None:
        if os.getpid() != self.pid:
            return
        rid = _message_id(msg)
        if rid is None:
            self.k.errors_without_record.append(type(err).__name__)
        else:
            self.k.errors_with_record.append((rid, type(err).__name__))
        # An application that logs its client's errors, to a handler posting to the
        # same client.
        self.logger.warning("fluentclient said: %s", err)

    def _on_unsent(self, records: list[UnsentRecord]) -> None:
        for r in records:
            rid = _record_id(r.record)
            if rid is not None:
                self.k.handed_over.append(rid)

    def post_one(self, tag: str, record: dict[Any, Any], *, main_thread: bool = True,
                 ack: bool = False) -> Any:
        """post() one record, timed and noted."""
        assert self.client is not None
        rid = record["id"]
        self.k.posted.append(rid)
        # Posts come from several threads (the racer, on_error's handler): the counts
        # take a lock, which a forked child never touches (it posts on its own).
        with self.count_lock:
            self.k.posts_started += 1
        start = time.monotonic()
        # A post() that raises is a failure in itself (valid tag, no sync_append); it is
        # not counted as returned, so the books' check stays true to what the client did.
        result = self.client.post(tag, record, ack=True) if ack else \
            self.client.post(tag, record)
        with self.count_lock:
            self.k.posts_returned += 1
        took = time.monotonic() - start
        assert took < POST_BOUND, f"post() took {took:.2f} s (faults {self.faults})"
        if ack:
            assert isinstance(result, Future)
            self.k.futures[rid] = result
            self.k.taken.append(rid)
        elif result:
            self.k.taken.append(rid)
        else:
            self.k.refused.add(rid)
        if main_thread and result is not False:
            self.k.order.setdefault(tag, []).append(rid)
        return result

    def arrivals(self) -> Counter[int]:
        found: Counter[int] = Counter()
        for event in self.server.events:
            rid = _record_id(event.record)
            if rid is not None:
                found[rid] += 1
        return found

    def named_drops(self) -> set[int]:
        """Ids the client told us it dropped, with the record in hand."""
        return self.k.refused | {rid for rid, _ in self.k.errors_with_record}

    def stats(self) -> Stats:
        assert self.client is not None
        return self.client.stats()

    def budget(self, s: Stats, *, spooled: int = 0) -> int:
        """How many records the counts say may be missing without the model knowing
        which: dropped without the record at hand, unsent not handed over (and not in
        the spool), possibly lost, and still on the way."""
        named = len(self.named_drops() & set(self.k.posted))
        unnamed_drops = max(0, s.dropped_total - named)
        unnamed_unsent = max(0, s.unsent - len(set(self.k.handed_over)) - spooled)
        return unnamed_drops + unnamed_unsent + s.possibly_lost + s.buffered

    def may_duplicate(self, s: Stats) -> bool:
        # Without acks nothing that may have arrived is written again (a frame goes out
        # again only once a reset proves it never did); a spool may replay what was
        # possibly lost, and acks resend what was not acknowledged.
        if self.variant == "ack" or (self.variant == "spool" and s.possibly_lost):
            return True
        return False

    # -- setup -------------------------------------------------------------------------------

    @initialize(
        variant=st.sampled_from(["plain", "ack", "spool"]),
        overflow=st.sampled_from(["drop_newest", "drop_newest", "drop_oldest", "block"]),
        small_buffer=st.booleans(),
    )
    @_traced
    def make_client(self, variant: str, overflow: str, small_buffer: bool) -> None:
        self.variant = variant
        self.overflow = overflow
        # The client is built through the option objects: each setting has its one home.
        timeouts = Timeouts(write=1.0, connect=1.0)
        buffering = Buffering(
            flush_interval=0.01, limit=64 * 1024 if small_buffer else 4 * 1024 * 1024,
            overflow=overflow, overflow_timeout=0.2,
        )
        options: dict[str, Any] = dict(
            at_exit=False, backoff=FAST_BACKOFF, shutdown_timeout=2.0, on_error=self._on_error,
        )
        if variant == "ack":
            timeouts = replace(timeouts, ack=0.5, ack_retries=4)
            options.update(require_ack=True, on_unsent=self._on_unsent)
        elif variant == "spool":
            buffering = replace(buffering, spool_dir=os.path.join(self.tmp, "spool"))
        else:
            options.update(on_unsent=self._on_unsent)
        self.client = BufferedClient(self.server.host, self.server.port, timeouts=timeouts,
                                     buffering=buffering, **options)

    # -- posting -------------------------------------------------------------------------

    @precondition(lambda self: not self.closed)
    @rule(n=st.integers(min_value=1, max_value=200), pad=st.sampled_from([0, 10, 1000]))
    @_traced
    def post_records(self, n: int, pad: int) -> None:
        self._post_many(n, "x" * pad)

    def _post_many(self, n: int, pad: str) -> None:
        """Post n records, stopping after a few refusals: with overflow="block" each one
        waits overflow_timeout, and a full buffer stays full while the server is stuck."""
        refused = 0
        for _ in range(n):
            if self.post_one(MAIN_TAG, {"id": self.new_id(), "pad": pad}) is False:
                refused += 1
                if refused >= 3:
                    return

    @precondition(lambda self: not self.closed)
    @rule(n=st.sampled_from([2000, 5000]))
    @_traced
    def post_burst(self, n: int) -> None:
        """Megabytes at once: enough to fill the kernel's buffers when the server is
        stalled, so that the writer's own timeouts come into play."""
        self._post_many(n, "y" * 1000)

    @precondition(lambda self: not self.closed)
    @rule(seconds=st.sampled_from([0.1, 0.7, 1.6]))
    @_traced
    def let_time_pass(self, seconds: float) -> None:
        """Time is part of the model: flush intervals, ack and write timeouts (0.5 and
        1 s here) and backoffs fire while nothing else happens. Nothing is checked
        after the wait that the wait would have to make true."""
        threading.Event().wait(seconds)

    @precondition(lambda self: not self.closed)
    @rule(value=odd_values, ack=st.booleans())
    @_traced
    def post_odd_record(self, value: Any, ack: bool) -> None:
        self.post_one(ODD_TAG, {"id": self.new_id(), "odd": value},
                      ack=ack and self.variant == "ack")

    @precondition(lambda self: not self.closed)
    @rule(n=st.integers(min_value=1, max_value=20), width=st.sampled_from([3, 100]))
    @_traced
    def post_then_mutate(self, n: int, width: int) -> None:
        """Records another thread keeps changing (keys come and go, values turn odd)
        while the reader packs them, until the reader is done with them."""
        records = [{"id": self.new_id(), "nested": {"x": [1, 2]},
                    **{f"f{j}": [j, {"y": j}] for j in range(width)}} for _ in range(n)]
        odd = [object(), math.nan, "\udc80", 2**70, b"\xff", {1: 2}, _nest(40)]
        stop = threading.Event()

        def mutate() -> None:
            i = 0
            while not stop.is_set() and i < 200_000:
                for r in records:
                    r[f"k{i % 40}"] = i
                    r.pop(f"k{(i + 7) % 40}", None)
                    r["odd"] = odd[i % len(odd)]
                    r["nested"]["x"].append(i)
                    if len(r["nested"]["x"]) > 20:
                        r["nested"]["x"].clear()
                i += 1

        t = threading.Thread(target=mutate, name="model-mutator", daemon=True)
        # Switch threads often, so that the mutator runs in the middle of packing.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)
        try:
            t.start()
            for r in records:
                self.post_one(MUTATED_TAG, r)
            ids = {r["id"] for r in records}
            # Until the reader has taken them all (or died: the invariants say so),
            # with a deadline for a reader that never gets there.
            c = self.client
            assert c is not None
            wait_until(lambda: (not c._queue and c._reader.idle)
                       or not c._reader.thread.is_alive() or ids <= self.named_drops(), 2.0)
        finally:
            stop.set()
            sys.setswitchinterval(interval)
            t.join(30)
        assert not t.is_alive(), "the mutating thread did not finish"

    @precondition(lambda self: not self.closed and self.variant == "ack")
    @rule(n=st.integers(min_value=1, max_value=30), cancel=st.sets(st.integers(0, 29)))
    @_traced
    def post_with_acks(self, n: int, cancel: set[int]) -> None:
        for i in range(n):
            rid = self.new_id()
            fut = self.post_one(ACK_TAG, {"id": rid}, ack=True)
            if i in cancel and fut.cancel():
                self.k.cancelled.add(rid)

    # -- flushing --------------------------------------------------------------------------

    @precondition(lambda self: not self.closed)
    @rule(timeout=st.sampled_from([0.0, 0.05, 0.3, 2.0]))
    @_traced
    def flush(self, timeout: float) -> None:
        assert self.client is not None
        before = set(self.k.taken)
        start = time.monotonic()
        done = self.client.flush(timeout)
        took = time.monotonic() - start
        assert took <= timeout + FLUSH_SLACK, f"flush({timeout}) took {took:.2f} s"
        if not done:
            return
        # Written means the server's host has it: the server reads it unless it is
        # stalled, or goes away first (then the client counts the loss).
        self.k.promised |= before
        seen["flush True"] += 1
        f = self.faults
        if not (f["stalled"] or f["refusing"] or f["stopped"] or f["drop_after"] is not None):
            self._check_promises("flush() returned True")

    def _check_promises(self, why: str) -> None:
        def kept() -> bool:
            missing = self.k.promised - set(self.arrivals()) - self.named_drops()
            s = self.stats()
            return len(missing) <= self.budget(s) - s.buffered
        if not wait_until(kept, ARRIVAL_WAIT):
            missing = self.k.promised - set(self.arrivals()) - self.named_drops()
            raise AssertionError(
                f"{why}, yet {len(missing)} records never arrived (e.g. "
                f"{sorted(missing)[:5]}) and the counts leave room for "
                f"{self.budget(self.stats()) - self.stats().buffered}: {self.stats()}")

    # -- server faults -------------------------------------------------------------------

    def _fault(self, name: str, value: Any) -> None:
        self.faults[name] = value

    @precondition(lambda self: not self.closed)
    @rule(on=st.booleans())
    @_traced
    def stall(self, on: bool) -> None:
        self.server.stall(on)
        self._fault("stalled", on)

    @precondition(lambda self: not self.closed)
    @rule(n=st.sampled_from([None, None, 0, 10, 300, 5000, 70000]))
    @_traced
    def drop_after(self, n: int | None) -> None:
        """Reset each new connection after n bytes: mid-frame, most of the time."""
        self.server.drop_after(n)
        self._fault("drop_after", n)

    @precondition(lambda self: not self.closed)
    @rule(on=st.booleans())
    @_traced
    def withhold_acks(self, on: bool) -> None:
        self.server.withhold_acks(on)
        self._fault("withhold", on)

    @precondition(lambda self: not self.closed)
    @rule(on=st.booleans())
    @_traced
    def garble_acks(self, on: bool) -> None:
        self.server.garble_acks(on)
        self._fault("garble", on)

    @precondition(lambda self: not self.closed)
    @rule(delay=st.sampled_from([None, 0.05, 0.3]))
    @_traced
    def delay_acks(self, delay: float | None) -> None:
        self.server.delay_acks(delay)
        self._fault("delay", delay)

    @precondition(lambda self: not self.closed)
    @rule()
    @_traced
    def restart(self) -> None:
        self.server.stop()
        self.server.restart()
        self._fault("refusing", False)

    @precondition(lambda self: not self.closed)
    @rule(n=st.sampled_from([500, 3000]))
    @_traced
    def go_away_unread(self, n: int) -> None:
        """What fluentd and Fluent Bit do when stopped: stop reading while records come,
        then exit with them unread (each connection is reset), then come back. What the
        server's TCP never acknowledged goes out again; nothing arrives twice."""
        self.server.stall(True)
        self._post_many(n, "u" * 1000)
        wait_until(lambda: self.server.open_connections > 0, 1.0)
        self.server.stop()
        self.server.restart()
        self.server.stall(self.faults.get("stalled", False))
        self._fault("refusing", False)

    @precondition(lambda self: not self.closed)
    @rule(on=st.booleans())
    @_traced
    def refuse(self, on: bool) -> None:
        self.server.refuse(on)
        self._fault("refusing", on)

    @precondition(lambda self: not self.closed)
    @rule(on=st.booleans())
    @_traced
    def blackhole(self, on: bool) -> None:
        """A host that does not answer: each connect hangs for Timeouts.connect (1 s)."""
        self.server.blackhole(on)
        self._fault("blackholed", on)

    @precondition(lambda self: not self.closed)
    @rule()
    @_traced
    def heal(self) -> None:
        """Every fault off at once, so that later steps see a healthy server too."""
        self._heal()

    def _heal(self) -> None:
        s = self.server
        s.stall(False)
        s.drop_after(None)
        s.withhold_acks(False)
        s.garble_acks(False)
        s.delay_acks(None)
        s.refuse(False)
        s.blackhole(False)
        s.restart()
        for name in self.faults:
            self.faults[name] = None if name in ("drop_after", "delay") else False

    # -- fork ----------------------------------------------------------------------------

    @precondition(lambda self: not self.closed and hasattr(os, "fork"))
    @rule(n=st.integers(min_value=0, max_value=30))
    @_traced
    def fork(self, n: int) -> None:
        """A child posts n records and shuts down; the parent goes on."""
        assert self.client is not None
        self.forks += 1
        base = -(self.forks * 1000)
        ids = [base - i for i in range(n)]
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child, which never returns
            status = 3
            try:
                os.close(read_end)
                taken = 0
                for rid in ids:
                    # ack=False even with acks on: the child's futures are its own.
                    taken += bool(self.client.post(MAIN_TAG, {"id": rid}))
                report = self.client.shutdown(2.0)
                s = self.client.stats()
                out = {"taken": taken, "sent": report.sent, "unsent": report.unsent_records,
                       "lost": report.possibly_lost, "dropped": sum(report.dropped.values()),
                       "posted": s.posted, "replayed": s.replayed,
                       "reasons": dict(report.dropped)}
                status = 0
            except BaseException as exc:  # noqa: BLE001 - told to the parent
                out = {"error": repr(exc)[:2000]}
            try:
                os.write(write_end, json.dumps(out).encode())
            finally:
                os._exit(status)
        os.close(write_end)
        start = time.monotonic()
        result: dict[str, int] = {}

        def reaped() -> bool:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                result["status"] = status
            return bool(done)

        try:
            if not wait_until(reaped, CHILD_DEADLINE):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(
                    f"the forked child hung (killed after {CHILD_DEADLINE} s)")
            with os.fdopen(read_end, "rb") as f:
                said = json.loads(f.read() or b"{}")
            read_end = -1
        finally:
            if read_end != -1:
                os.close(read_end)
        assert os.WIFEXITED(result["status"]) and os.WEXITSTATUS(result["status"]) == 0, (
            f"the child failed: status {result['status']}, said {said}")
        assert said["posted"] == n, said
        # A child with a spool takes over what an earlier child left there (replayed).
        assert said["sent"] + said["unsent"] + said["lost"] + said["dropped"] == (
            n + said["replayed"]), said
        assert not said["replayed"] or self.variant == "spool", said
        said["ids"] = ids
        self.children.append(said)
        seen["fork"] += 1
        self.child_ids.update(ids)
        assert time.monotonic() - start < CHILD_DEADLINE

    # -- shutdown ----------------------------------------------------------------------------

    # Not before a few other steps: after it only the checks run.
    @precondition(lambda self: not self.closed and len(self.trace) > 8)
    @rule(timeout=st.sampled_from([0.0, 0.1, 1.0, 3.0]), race=st.booleans())
    @_traced
    def shutdown(self, timeout: float, race: bool) -> None:
        assert self.client is not None
        client = self.client
        stop = threading.Event()
        racer_errors: list[BaseException] = []

        def racer() -> None:
            try:
                while not stop.is_set():
                    self.post_one(RACE_TAG, {"id": self.new_id()}, main_thread=False)
                # And a few after, which must all be refused.
                for _ in range(5):
                    rid = self.new_id()
                    self.post_one(RACE_TAG, {"id": rid}, main_thread=False)
                    assert rid in self.k.refused, "a post after shutdown was taken"
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                racer_errors.append(exc)

        t = threading.Thread(target=racer, name="model-racer", daemon=True)
        if race:
            t.start()
        start = time.monotonic()
        self.report = client.shutdown(timeout)
        took = time.monotonic() - start
        stop.set()
        if t.is_alive():
            t.join(30)
            assert not t.is_alive(), "the posting thread hung"
        self.closed = True
        assert took <= timeout + SHUTDOWN_SLACK, f"shutdown({timeout}) took {took:.2f} s"
        assert not racer_errors, racer_errors
        # Idempotent, and the same story in stats().
        assert client.shutdown(0) is self.report
        report = self.report
        s = self.stats()
        assert s.buffered == 0, s
        assert (s.sent, s.unsent, s.possibly_lost) == (
            report.sent, report.unsent_records, report.possibly_lost), (s, report)
        # A post now is refused and counted.
        rid = self.new_id()
        assert self.post_one(MAIN_TAG, {"id": rid}) is False
        assert self.stats().dropped.get("closed", 0) >= 1
        if report.unsent_records:
            assert client.flush(0.1) is False, "flush() said all was written, after a " \
                f"shutdown that left {report.unsent_records} unsent"
        if self.variant == "ack":
            # Every future is settled by the end: none waits for ever.
            pending = [rid for rid, f in self.k.futures.items() if not f.done()]
            assert not pending, f"futures never settled: {pending[:5]}"

    @precondition(lambda self: self.closed)
    @rule()
    @_traced
    def after_shutdown(self) -> None:
        """Once shut down, only the checks run."""

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    @_checked
    def threads_alive_unless_closed(self) -> None:
        c = self.client
        if c is None:
            return
        if self.closed:
            assert wait_until(lambda: not c._reader.thread.is_alive()
                              and not c._writer.thread.is_alive(), 20), \
                "a thread outlived shutdown()"
            return
        if c._reader.thread.ident is None:  # not started yet
            return
        # After a fork a client with nothing to send stays dormant, its threads parked
        # until the next post or flush (fluentclient/_lifetime/_parking.py); a writer stuck in a
        # socket call at the fork never parked and runs on.
        parking = c._parking
        parked = set(parking.parked) if parking.requested else set()
        if "reader" not in parked:
            assert c._reader.thread.is_alive(), f"the reader died: {c._life.failure}"
        if "writer" not in parked:
            assert c._writer.thread.is_alive(), f"the writer died: {c._life.failure}"
        if parked == {"reader", "writer"}:
            assert not c._crew.has_work(), "a dormant client holds work that no thread will send"

    @invariant()
    @_checked
    def nothing_failed_in_the_background(self) -> None:
        assert not self.k.background_failures, self.k.background_failures[:3]

    @invariant()
    @_checked
    def books_balance(self) -> None:
        if self.client is None:
            return
        with self.count_lock:
            returned = self.k.posts_returned
        s = self.stats()
        with self.count_lock:
            started = self.k.posts_started
        assert s.posted + s.replayed == (
            s.sent + s.dropped_total + s.possibly_lost + s.unsent + s.buffered), s
        assert returned <= s.posted <= started, (returned, s.posted, started)
        if self.variant != "ack":
            # Without acks nothing is given up for want of one: a garbled or missing
            # ack costs at most a resend or a possible loss.
            assert not s.dropped.get("not_acked"), s

    @invariant()
    @_checked
    def drop_oldest_refuses_only_for_frames_in_flight(self) -> None:
        """drop_oldest makes room by evicting the oldest records; it can only fail to when
        the buffer is taken up by frames written and not yet confirmed, which never
        happens before the client's first connection."""
        if self.client is None or self.overflow != "drop_oldest":
            return
        s = self.stats()
        if s.connects == 0:
            assert not s.dropped.get("buffer_full"), s

    @invariant()
    @_checked
    def what_is_said_is_so(self) -> None:
        """Records dropped by name never arrive; a record acknowledged has arrived; no
        more records count as sent than the server has."""
        if self.client is None:
            return
        # What the client says is read before what the server has: the server records
        # an event before it acks it, so anything said now has arrived by then.
        acked = [rid for rid, fut in list(self.k.futures.items())
                 if fut.done() and not fut.cancelled() and fut.exception() is None]
        s = self.stats()
        arrived = self.arrivals()
        ours = {rid for rid in arrived if rid > 0}
        assert s.sent <= len(ours), f"{s.sent} counted sent, {len(ours)} arrived"
        came = self.named_drops() & set(arrived)
        assert not came, f"records reported dropped arrived: {sorted(came)[:5]} " \
            f"{[e for e in self.k.errors_with_record if e[0] in came][:5]}"
        for rid in acked:
            assert rid in arrived, f"record {rid} acknowledged, yet not received"

    # -- the end ---------------------------------------------------------------------------

    @_checked
    def teardown(self) -> None:
        try:
            if self.client is not None:
                self._final_checks()
        finally:
            if self.client is not None:
                self.client.close()
            self.logger.removeHandler(self.handler)
            self.server.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _final_checks(self) -> None:
        assert self.client is not None
        self._heal()
        if not self.closed:
            self.report = self.client.shutdown(10)
            self.closed = True
        report = self.report
        assert report is not None
        # The server reads whatever reached it, to the end of each connection.
        assert wait_until(lambda: self.server.open_connections == 0, ARRIVAL_WAIT)
        s = self.stats()
        assert s.buffered == 0
        arrived = self.arrivals()
        posted = set(self.k.posted)
        assert len(posted) == len(self.k.posted)
        handed = set(self.k.handed_over)
        assert len(handed) == len(self.k.handed_over), "a record handed over twice"
        assert len(handed) == report.handed_over, (len(handed), report)
        named = self.named_drops()
        # Handed over or dropped: never both.
        assert not (handed & named), sorted(handed & named)[:5]
        if self.variant != "ack":
            came = handed & set(arrived)
            assert not came, f"records handed to on_unsent arrived: {sorted(came)[:5]}"
        # Without acks a record arrives only if it was sent or possibly lost.
        ours = {rid for rid in arrived if rid > 0}
        assert ours <= posted, sorted(ours - posted)[:5]
        if self.variant != "ack":
            assert len(ours) <= s.sent + s.possibly_lost, (len(ours), s)
        twice = [rid for rid, n in arrived.items() if n > 1 and rid > 0]
        if twice and not self.may_duplicate(s):
            raise AssertionError(f"records arrived twice without a cause: {twice[:5]} ({s})")
        spooled = report.spooled
        seen[f"variant:{self.variant}"] += 1
        seen.update(f"dropped:{reason}" for reason, n in s.dropped.items() if n)
        for name in ("possibly_lost", "retried", "unsent"):
            if getattr(s, name):
                seen[name] += 1
        for name in ("spooled", "handed_over", "timed_out"):
            if getattr(report, name):
                seen[name] += 1
        if twice:
            seen["arrived twice"] += 1
        self._check_order(self.server.events, s)
        if self.variant == "spool" and spooled:
            arrived = self._replay(spooled, arrived)
        missing = posted - set(arrived) - named - handed
        allowed = self.budget(s, spooled=spooled)
        assert len(missing) <= allowed, (
            f"{len(missing)} records neither arrived nor were reported (e.g. "
            f"{sorted(missing)[:5]}); the counts leave room for {allowed}: {s}, {report}")
        self._check_children(arrived)
        assert not self.k.background_failures, self.k.background_failures[:3]

    def _replay(self, spooled: int, before: Counter[int]) -> Counter[int]:
        """A new client on the spool sends what the first one left there."""
        assert self.client is not None
        came_before = set(before)
        later = BufferedClient(self.server.host, self.server.port, at_exit=False,
                               backoff=FAST_BACKOFF,
                               buffering=Buffering(flush_interval=0.01,
                                                   spool_dir=os.path.join(self.tmp, "spool")))
        try:
            replay = later.shutdown(10)
        finally:
            later.close()
        s = later.stats()
        seen["replayed"] += 1
        # Children forked with the spool leave theirs there too.
        assert s.replayed == spooled or (self.children and s.replayed > spooled), (s, spooled)
        assert replay.complete, replay
        assert wait_until(lambda: self.server.open_connections == 0, ARRIVAL_WAIT)
        after = self.arrivals()
        new = {rid for rid in after if after[rid] > before.get(rid, 0)}
        # What the spool held had not arrived before: it was unsent.
        again = new & came_before
        # (With acks, a record unacknowledged at shutdown may have arrived.)
        assert not again or self.variant == "ack", \
            f"records the spool replayed had arrived already: {sorted(again)[:5]}"
        assert len(new) >= spooled - self.stats().possibly_lost, (len(new), spooled)
        return after

    def _check_order(self, events: list[Any], s: Stats) -> None:
        """Records of one tag, posted by one thread, arrive in order (first arrivals).

        Except where an older copy may come late: a frame left unread on a connection
        that failed (possibly lost or retiring without acks, given up or resent with
        acks) is read whenever the server gets to that connection, after newer ones
        maybe. With acks, records whose ack came back still keep their order: each
        connection carries the frames from the oldest unacknowledged one on. Without
        acks, a failed connection retires with what it holds, and newer frames go out
        on the next one (docs/guarantees.md, Order), so order is checked only while no
        connection failed.
        """
        acked: set[int] | None = None
        if self.variant == "ack":
            acked = {rid for rid, f in self.k.futures.items()
                     if f.done() and not f.cancelled() and f.exception() is None}
        elif self.may_duplicate(s) or s.connection_failures:
            return
        first: dict[int, int] = {}
        for pos, event in enumerate(events):
            rid = _record_id(event.record)
            if rid is not None and rid > 0:
                first.setdefault(rid, pos)
        for tag, ids in self.k.order.items():
            got = [rid for rid in ids if rid in first and (acked is None or rid in acked)]
            for a, b in zip(got, got[1:]):
                assert first[a] < first[b], (
                    f"records of {tag} arrived out of order: {b} (posted after {a}) "
                    f"arrived first, at event {first[b]} before {first[a]}")

    def _check_children(self, arrived: Counter[int]) -> None:
        """The children's records, all together: a child with a spool sends what an
        earlier one left there, so one child's counts may cover another's records."""
        ids = [rid for child in self.children for rid in child["ids"]]
        if not ids:
            return
        total = Counter[str]()
        for child in self.children:
            for name in ("sent", "lost", "unsent", "dropped"):
                total[name] += child[name]
            total["not_acked"] += child["reasons"].get("not_acked", 0)
        got = {rid for rid in ids if rid in arrived}
        assert len(got) >= total["sent"], (total, len(got))
        # With acks, a record given up (not_acked) or unsent may have arrived: the server
        # took it and its ack never came back. With a spool, what a child left unsent
        # is sent by the next client on it.
        maybe = total["lost"]
        if self.variant == "ack":
            maybe += total["unsent"] + total["not_acked"]
        elif self.variant == "spool":
            maybe += total["unsent"]
        assert len(got) <= total["sent"] + maybe, (total, len(got))
        twice = [rid for rid in ids if arrived.get(rid, 0) > 1]
        assert not twice or total["lost"] or self.variant == "ack", (total, twice[:5])


# CI's budget: a fixed, small one (about a minute on a loaded 2-core machine). The soak
# runner (benchmarks/model_soak.py) runs the same machine without these bounds.
settings.register_profile(
    "model-ci",
    max_examples=int(os.environ.get("MODEL_EXAMPLES", "20")),
    stateful_step_count=int(os.environ.get("MODEL_STEPS", "25")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
)
MODEL_SETTINGS = settings.get_profile("model-ci")

ClientModel.TestCase.settings = MODEL_SETTINGS


# Its fork rule forks this process, whose embedded server thread runs: Python 3.12+ warns
# about that thread, the test's own (the client's are parked, see tests/test_fork_parking.py).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.skipif(os.name != "posix", reason="the embedded server's faults need POSIX")
def test_the_model_holds() -> None:
    ClientModel.TestCase().runTest()


def test_the_soak_runner_runs_the_model_and_reports_its_steps() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "model_soak.py"), "--minutes", "0.01",
         "--examples", "2", "--steps", "4"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    last = out.stdout.strip().splitlines()[-1]
    found = re.fullmatch(r"(\d+) runs, (\d+) steps, 0 failed", last)
    assert found and int(found[1]) >= 1 and int(found[2]) >= 1, out.stdout
