"""What happens to the records in each failure scenario, measured on real processes.

    python benchmarks/scenarios.py                 # every scenario, 20,000 records each
    python benchmarks/scenarios.py --records 5000 --only healthy,sigterm
    python benchmarks/scenarios.py --quick         # does every scenario still run?

``--quick`` (200 records, deadlines of 0.3 s) only shows that each scenario runs: its
figures mean little (a kill may come before anything reached the spool).

Each scenario starts a fresh embedded server in this process and a posting process (this
script again, with ``--child``) that posts records carrying unique ids and then ends: it
returns from main (the at-exit shutdown drains), is sent SIGTERM, or is killed with -9.
The server counts distinct ids (delivered) and repeated ones (duplicated); the posting
process reports its own counts as it ends. Prints one Markdown table:

- *counted as dropped*: what the client itself reported as not delivered (dropped for a
  reason, or still unsent at its deadline);
- *possibly lost*: written to a connection that failed before the server was seen to
  take it (some of it may have arrived: then it is also in *delivered*);
- *lost uncounted*: posted, never delivered, and in none of the client's counts;
- *time to exit*: from the moment the process starts to end (main returns, or the signal
  is sent) to the moment it is gone.

To add a row, write a function ``def name(ctx: Context) -> Row`` and add it to SCENARIOS.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fluentclient import Buffering  # noqa: E402
from fluentclient.server import ForwardServer  # noqa: E402

TAG = "scenario.record"


# -- the posting process ----------------------------------------------------------------------

def child_main(p: dict[str, Any]) -> None:
    import atexit

    from fluentclient import BufferedClient, Buffering, Timeouts, shutdown_on_signal

    def stamp(name: str, *values: Any) -> None:
        print(name, repr(time.monotonic()), *values, flush=True)

    def report() -> None:
        s = client.stats()
        print("STATS", json.dumps({
            "posted": s.posted, "sent": s.sent, "dropped": s.dropped_total,
            "unsent": s.unsent, "possibly_lost": s.possibly_lost,
        }), flush=True)

    # Registered before the client's own hook, so it runs after it (last in, first out).
    atexit.register(report)
    # The option objects come as dicts of their fields (the parameters travel as JSON).
    objects = {"buffering": Buffering, "timeouts": Timeouts}
    options = {k: objects[k](**v) if k in objects else v for k, v in p["client"].items()}
    client = BufferedClient("127.0.0.1", p["port"], **options)
    if p["end"] == "sigterm":
        def die(signum: int, frame: Any) -> None:
            # The application's own handler: report, then die of the signal.
            report()
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

        signal.signal(signal.SIGTERM, die)
        shutdown_on_signal(client)

    def post(first: int, count: int) -> None:
        pace = p["pace"]
        start = time.monotonic()
        for n in range(count):
            if n == count // 2:
                stamp("HALF")
            if pace and n % 100 == 0:
                delay = start + n / pace - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            client.post(TAG, {"id": first + n, "pad": "x" * p["pad"]})

    records = p["records"]
    if p["end"] == "fork":
        post(0, records // 2)
        pid = os.fork()
        if pid == 0:
            post(records // 2, records - records // 2)
            return  # the child exits normally too
        os.waitpid(pid, 0)
        stamp("EXITING")
        return
    post(0, records)
    if p["end"] in ("sigterm", "kill"):
        stamp("POSTED")
        threading.Event().wait(60)
        return
    stamp("EXITING")


# -- running one scenario ---------------------------------------------------------------------

@dataclass
class Row:
    scenario: str
    posted: int
    delivered: int
    dropped: int | None
    possibly_lost: int | None
    duplicated: int
    uncounted: int
    exit_s: float
    note: str = ""


@dataclass
class Run:
    """What a posting process printed, and when it ended."""

    lines: list[str] = field(default_factory=list)
    stderr: str = ""
    returncode: int = 0
    ended: float = 0.0
    ending_at: float = 0.0  # its EXITING stamp, or when it was signalled

    def stats(self) -> list[dict[str, int]]:
        return [json.loads(line.split(" ", 1)[1]) for line in self.lines
                if line.startswith("STATS ")]

    @property
    def exit_s(self) -> float:
        return self.ended - self.ending_at


# How a posting process may end, by how it was told to (a negative code: that signal).
EXPECTED_EXIT = {"exit": 0, "fork": 0, "sigterm": -signal.SIGTERM, "kill": -signal.SIGKILL}


class Context:
    def __init__(self, records: int, *, quick: bool = False) -> None:
        self.records = records
        # Short deadlines: the rows whose server never takes everything end sooner.
        self.quick = quick

    def run(
        self,
        server: ForwardServer,
        *,
        end: str = "exit",
        client: dict[str, Any] | None = None,
        pace: float = 0.0,
        pad: int = 100,
        on_half: Callable[[], None] | None = None,
        after_posted: Callable[[subprocess.Popen[str]], float] | None = None,
    ) -> Run:
        """Run a posting process to its end.

        ``on_half`` runs when half the records are posted (the process keeps posting);
        ``after_posted`` gets the process once every record is posted and returns the
        monotonic time it ended it (by a signal).
        """
        options = {"shutdown_timeout": 2.0, **(client or {})}
        if self.quick:
            options["shutdown_timeout"] = min(options["shutdown_timeout"], 0.3)
        params = {"port": server.port, "records": self.records, "end": end, "pace": pace,
                  "pad": pad, "client": options}
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), env.get("PYTHONPATH")) if p
        )
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(params)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        run = Run()
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.extend(proc.stderr or ()), daemon=True)
        reader.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            run.lines.append(line.strip())
            word = line.split()[0]
            if word == "HALF" and on_half is not None:
                on_half()
                on_half = None  # the fork scenario's child posts its own half
            elif word == "POSTED" and after_posted is not None:
                run.ending_at = after_posted(proc)
            elif word == "EXITING":
                run.ending_at = float(line.split()[1])
        run.returncode = proc.wait()
        run.ended = time.monotonic()
        reader.join(10)
        run.stderr = "".join(err)
        if run.returncode != EXPECTED_EXIT[end] or "Traceback" in run.stderr:
            # A posting process that failed measures nothing: say so, not a bad row.
            raise RuntimeError(f"the posting process ended with {run.returncode} "
                               f"(expected {EXPECTED_EXIT[end]}):\n{run.stderr}")
        return run

    def row(self, name: str, server: ForwardServer, run: Run, note: str = "") -> Row:
        # What the server got: wait until it has decoded everything that reached it.
        seen = [-1]
        while server.event_count != seen[0]:
            seen[0] = server.event_count
            server.wait_for(lambda: server.event_count > seen[0], timeout=0.3)
        ids = Counter(e.record["id"] for e in server.events if e.tag == TAG)
        stats = run.stats()
        posted = sum(s["posted"] for s in stats) if stats else self.records
        dropped = sum(s["dropped"] + s["unsent"] for s in stats) if stats else None
        lost = sum(s["possibly_lost"] for s in stats) if stats else None
        delivered = len(ids)
        uncounted = max(0, posted - delivered - (dropped or 0) - (lost or 0))
        return Row(name, posted, delivered, dropped, lost, sum(ids.values()) - delivered,
                   uncounted, run.exit_s, note)


def signal_once_posted(signum: int) -> Callable[[subprocess.Popen[str]], float]:
    def send(proc: subprocess.Popen[str]) -> float:
        sent = time.monotonic()
        proc.send_signal(signum)
        return sent
    return send


# -- the scenarios ----------------------------------------------------------------------------

def healthy(ctx: Context) -> Row:
    with ForwardServer() as server:
        return ctx.row("healthy", server, ctx.run(server))


def server_down(ctx: Context) -> Row:
    with ForwardServer() as server:
        server.refuse()
        return ctx.row("server down for the whole run", server, ctx.run(server))


def server_stuck(ctx: Context) -> Row:
    with ForwardServer() as server:
        server.stall()
        run = ctx.run(server, pad=200)
        server.stall(False)  # now read what its kernel took: some "possibly lost" arrived
        return ctx.row("server stuck (reads nothing)", server, run)


def server_paused(ctx: Context) -> Row:
    # Stops reading from the start and reads again once two connections have timed out
    # (its third is accepted): a blocked input thread, a long pause, that passes.
    with ForwardServer() as server:
        server.stall()
        # A process that ends before its third connection (--quick cuts its shutdown to
        # 0.3 s) must not leave the watcher waiting out its whole minute.
        ended = threading.Event()

        def resume() -> None:
            deadline = time.monotonic() + 60
            while not ended.is_set() and time.monotonic() < deadline:
                # The server's wait wakes on what it records, not on `ended`: look often.
                if server.wait_for(lambda: server.connections_accepted >= 3, timeout=0.05):
                    break
            server.stall(False)

        watcher = threading.Thread(target=resume, daemon=True)
        watcher.start()
        try:
            run = ctx.run(server, pad=1000, client={
                "timeouts": {"write": 1.0}, "shutdown_timeout": 30.0,
                "buffering": {"limit": 64 << 20}})
        finally:
            ended.set()
        watcher.join(60)
        return ctx.row("server paused, then reads again", server, run,
                       "`Timeouts(write=1)`; resumes after two connections timed out")


def black_holed(ctx: Context) -> Row:
    with ForwardServer() as server:
        server.blackhole()
        return ctx.row("black-holed (SYN never answered)", server, ctx.run(server))


def _restart(server: ForwardServer) -> Callable[[], None]:
    def restart() -> None:
        server.stop()
        time.sleep(0.3)
        server.restart()
    return restart


def restarted(ctx: Context) -> Row:
    with ForwardServer() as server:
        run = ctx.run(server, pace=10_000, on_half=_restart(server),
                      client={"shutdown_timeout": 5.0})
        return ctx.row("server restarted mid-stream", server, run)


def restarted_with_acks(ctx: Context) -> Row:
    with ForwardServer() as server:
        run = ctx.run(server, pace=10_000, on_half=_restart(server),
                      client={"shutdown_timeout": 5.0, "require_ack": True})
        return ctx.row("server restarted mid-stream, require_ack=True", server, run)


def fork_with_buffered_records(ctx: Context) -> Row:
    with ForwardServer() as server:
        # Half posted and held (long interval, high threshold) when the process forks; the
        # child posts the other half; both exit normally.
        run = ctx.run(server, end="fork",
                      client={"buffering": {"flush_interval": 60, "write_threshold": 2**22}})
        return ctx.row("fork with buffered records", server, run)


def sigterm(ctx: Context) -> Row:
    with ForwardServer() as server:
        run = ctx.run(server, end="sigterm", after_posted=signal_once_posted(signal.SIGTERM),
                      client={"buffering": {"flush_interval": 60, "write_threshold": 2**22}})
        return ctx.row("SIGTERM (shutdown_on_signal)", server, run)


def kill_9(ctx: Context) -> Row:
    with ForwardServer() as server:
        run = ctx.run(server, end="kill", after_posted=signal_once_posted(signal.SIGKILL))
        return ctx.row("kill -9 while posting, no spool", server, run)


def _replay(server: ForwardServer, spool: str) -> int:
    """Start a client on the spool left behind, as the next process would; returns how
    many records it replayed once everything it holds was sent."""
    from fluentclient import BufferedClient

    # The locks of the processes that went away, noted before ours exists: this needs
    # nothing of the client's internals, which change.
    theirs = {name for name in os.listdir(spool) if name.endswith(".lock")}
    with BufferedClient(server.host, server.port, buffering=Buffering(spool_dir=spool),
                        at_exit=False) as client:
        deadline = time.monotonic() + 60
        # The replay is over once the files of the process that went away are deleted.
        while time.monotonic() < deadline and theirs & set(os.listdir(spool)):
            time.sleep(0.01)
        client.flush(timeout=30)
    return client.stats().replayed


def _spooled(ctx: Context, name: str, *, down: bool, end: str,
             client: dict[str, Any] | None = None) -> Row:
    import tempfile

    with ForwardServer() as server, tempfile.TemporaryDirectory() as spool:
        if down:
            server.refuse()
        after = signal_once_posted(signal.SIGKILL) if end == "kill" else None
        run = ctx.run(server, end=end, after_posted=after,
                      client={**(client or {}),
                              "buffering": {"spool_dir": spool,
                                            **(client or {}).get("buffering", {})}})
        server.refuse(False)
        replayed = _replay(server, spool)
        row = ctx.row(name, server, run, note=f"{replayed:,} replayed by the next start")
        if row.dropped is not None:
            # What the first process counted as unsent was kept in the spool and sent.
            row.dropped = max(0, row.dropped - replayed)
        return row


def spool_server_down(ctx: Context) -> Row:
    return _spooled(ctx, "server down, spool_dir set (next start replays)", down=True,
                    end="exit", client={"shutdown_timeout": 0.5})


def spool_kill_9_server_down(ctx: Context) -> Row:
    return _spooled(ctx, "kill -9 with the server down, spool_dir set", down=True, end="kill")


def spool_kill_9_healthy(ctx: Context) -> Row:
    return _spooled(ctx, "kill -9 while sending, spool_dir set", down=False, end="kill",
                    client={"buffering": {"flush_interval": 60, "write_threshold": 2**16}})


def spool_kill_9_acks(ctx: Context) -> Row:
    return _spooled(ctx, "kill -9 while sending, spool_dir set, require_ack=True",
                    down=False, end="kill",
                    client={"buffering": {"flush_interval": 60, "write_threshold": 2**16},
                            "require_ack": True})


SCENARIOS: list[Callable[[Context], Row]] = [
    healthy, server_down, server_stuck, server_paused, black_holed, restarted, restarted_with_acks,
    fork_with_buffered_records, sigterm, kill_9, spool_server_down, spool_kill_9_server_down,
    spool_kill_9_healthy, spool_kill_9_acks,
]


def table(rows: list[Row]) -> str:
    def n(value: int | None) -> str:
        return "–" if value is None else f"{value:,}"

    lines = [
        "| scenario | records posted | delivered | counted as dropped | possibly lost | "
        "duplicated | lost uncounted | time to exit (s) | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r.scenario} | {n(r.posted)} | {n(r.delivered)} | {n(r.dropped)} | "
                     f"{n(r.possibly_lost)} | {n(r.duplicated)} | {n(r.uncounted)} | "
                     f"{r.exit_s:.2f} | {r.note} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=None, help="20,000 unless --quick")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--quick", action="store_true",
                        help="200 records and short deadlines: does every scenario run?")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return 0
    wanted = [name for name in args.only.split(",") if name]
    chosen = [s for s in SCENARIOS if not wanted or s.__name__ in wanted]
    unknown = set(wanted) - {s.__name__ for s in SCENARIOS}
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    records = args.records if args.records is not None else 200 if args.quick else 20_000
    ctx = Context(records, quick=args.quick)
    rows = []
    for scenario in chosen:
        print(f"running {scenario.__name__} ...", file=sys.stderr, flush=True)
        rows.append(scenario(ctx))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
