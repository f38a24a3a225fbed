"""Run the test suite on the compiled path, the record path's tests in pure Python, and a
part of the suite on every other Python version the package declares.

    python tests/run_both_paths.py [pytest arguments...]

Pass 1 runs the whole suite as installed (the compiled packer where the install built it).
Pass 2 sets ``FLUENTCLIENT_NO_EXTENSIONS=1``, which makes the package choose pure Python,
and runs the tests of the record path (``RECORD_PATH``, below), leaving out those marked
``no_packing``: they pack no record, so they cannot tell the paths apart (tests/conftest.py
fails a marked test that makes a packer, packs, forks or starts a Python child). The passes
after them run ``ON_EVERY_VERSION`` (below) on the compiled path of each other version in
``VERSIONS``, with the interpreter of ``.venvs/py3.X`` (``FLUENTCLIENT_VENVS`` names
another folder); ``.ci/venvs`` makes those. Naming test files on the command line runs
those in every pass instead; a ``-m`` among the arguments replaces pass 2's own.

Every pass runs its tests in parallel (pytest-xdist, ``WORKERS`` workers; a file whose
tests share a module fixture stays in one, see tests/conftest.py; ``-n 0`` among the
arguments runs serially). The first pass runs beside the others, which run one after
another (see ``run_lanes``; ``LANES=1`` runs them all in turn); each pass's output is
printed whole when it ends. Every pass always runs, so one run shows
every failure of each; the exit status is non-zero if any failed, and the last lines
name the passes that did.

Each pass first asks its interpreter which path it runs (``fluentclient.COMPILED``), so
that a pass that did not run the path it is named for says so. In CI (``CI`` set) a pass
on a version without the compiled packer, or a version whose environment is missing, is
a failure, as a missing real server is: that version would otherwise go untested without
anyone noticing. Elsewhere the missing version is reported as not tested. A package
without ``COMPILED`` (no compiled path at all) runs every pass and says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SWITCH = "FLUENTCLIENT_NO_EXTENSIONS"
# Pass 2: the tests whose subject is what a record becomes on the wire, through either
# client and every integration. The rest of the suite exercises threads, sockets,
# processes and servers, which run the same code on both paths, and tests/test_compiled.py
# holds the two packers to the same bytes, verdicts and errors for every record it
# generates (so the real servers, which pass 1 runs, receive the same bytes either way).
RECORD_PATH = tuple(f"tests/{name}.py" for name in (
    "test_compiled", "test_framing", "test_properties", "test_hostile", "test_odd_records",
    "test_contained_guard", "test_buffered", "test_sync", "test_handler", "test_structlog",
    "test_loguru", "test_readme",
))
# The other versions pyproject.toml declares (pass 1 and 2 run on the interpreter that runs
# this script, 3.11 in CI).
VERSIONS = ("3.9", "3.10", "3.12", "3.13")
VENVS = Path(os.environ.get("FLUENTCLIENT_VENVS", ROOT / ".venvs"))
# What differs between versions: the compiled packer is built per interpreter (checked
# against pure Python, byte for byte, by test_compiled); logging's records, asyncio, ssl,
# fork (3.12 warns at a fork with threads running) and interpreter shutdown change from
# version to version, and so do the process models' own releases (gunicorn, uWSGI,
# Celery). Left to pass 1: the framing, server-side, benchmark, docs and fault-injection
# files, whose Python is the same on every version but would double the run (the compiled
# packer's bytes are test_compiled's subject).
ON_EVERY_VERSION = tuple(f"tests/{name}.py" for name in (
    "test_compiled", "test_buffered", "test_sync", "test_handler",
    "test_structlog", "test_loguru", "test_aio", "test_fork", "test_contained_fork",
    "test_process", "test_process_models", "test_exit", "test_signals", "test_security",
    "test_config", "test_options",
))
# Test by test, except that a file whose tests share a server runs in one worker; in
# collection order, where tests/conftest.py puts the longest files first. Most tests wait
# on sockets and timers rather than use a core, so more workers than the two cores pay.
WORKERS = 4
PARALLEL = ("-n", str(WORKERS), "--dist", "loadgroup", "--no-loadscope-reorder")
PROBE = ("import importlib.util, fluentclient; "
         "print(getattr(fluentclient, 'COMPILED', None), "
         "importlib.util.find_spec('xdist') is not None)")


@dataclass
class Pass:
    name: str
    python: str
    env: dict[str, str]
    wants_compiled: bool
    own_args: tuple[str, ...] = ()
    missing: str = ""  # why this pass cannot run at all
    returncode: int = 0
    seconds: float = 0.0
    counts: tuple[int, int, int] = (0, 0, 0)  # passed, failed (errors too), skipped
    path_problem: str = ""

    @property
    def ok(self) -> bool:
        if self.missing:
            return not os.environ.get("CI")
        return self.returncode == 0 and not self.path_problem


def probe(one: Pass) -> tuple[str | None, bool]:
    """COMPILED as "True", "False" or "None" (no compiled path in this package), or None if
    fluentclient does not import; and whether pytest-xdist is there to run in parallel."""
    out = subprocess.run([one.python, "-c", PROBE], capture_output=True, text=True,
                         env=one.env, cwd=ROOT)
    words = out.stdout.split()
    if out.returncode != 0 or len(words) != 2:
        return None, False
    return words[0], words[1] == "True"


def counts(junit: Path) -> tuple[int, int, int]:
    """Passed, failed and skipped tests, from pytest's JUnit XML report."""
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return (0, 0, 0)
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = failed = skipped = 0
    for suite in suites:
        total += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return (total - failed - skipped, failed, skipped)


# Printing a pass's output: one pass at a time, whole, as each ends.
_printing = threading.Lock()


def run(one: Pass, number: int, of: int, args: list[str], workdir: Path) -> None:
    if one.missing:
        with _printing:
            print(f"\n=== pass {number} of {of}: {one.name}: NOT TESTED ({one.missing}) ===",
                  flush=True)
        return
    path, has_xdist = probe(one)
    label = {"True": "compiled", "False": "pure Python",
             "None": "pure Python (this package has no compiled path)"}.get(path or "", "?")
    notes: list[str] = []
    if one.wants_compiled and path == "False":
        one.path_problem = "the compiled packer is not in use (was it built?)"
        if not os.environ.get("CI"):
            notes.append(f"warning: {one.path_problem}; this pass tests pure Python")
            one.path_problem = ""
    elif not one.wants_compiled and path == "True":
        one.path_problem = f"{SWITCH}=1 did not switch the compiled packer off"
    elif path is None:
        one.path_problem = "importing fluentclient failed"
    parallel: tuple[str, ...] = ()
    chosen = any(arg.startswith(("-n", "--numprocesses")) or arg == "no:xdist" for arg in args)
    if not chosen:
        if has_xdist:
            parallel = PARALLEL
        else:
            notes.append("warning: pytest-xdist is not installed here; this pass runs serially")
    junit = workdir / f"pass{number}.xml"
    output = workdir / f"pass{number}.log"
    started = time.monotonic()
    with open(output, "wb") as out:
        one.returncode = subprocess.call(
            [one.python, "-m", "pytest", "-q", f"--junitxml={junit}", *parallel,
             *one.own_args, *args],
            env=one.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    one.seconds = time.monotonic() - started
    one.counts = counts(junit)
    with _printing:
        print(f"\n=== pass {number} of {of}: {one.name} (fluentclient runs {label}) ===",
              flush=True)
        for note in notes:
            print(note, flush=True)
        sys.stdout.buffer.write(output.read_bytes())
        sys.stdout.flush()


def run_lanes(passes: list[Pass], args: list[str], workdir: Path) -> None:
    """The first pass (the whole suite) in one lane, the others one after another in a
    second lane beside it: most tests wait on sockets, timers and child processes rather
    than use a core, so two lanes take little more than the longer one alone. LANES=1 in
    the environment runs every pass one after another instead."""
    numbered = list(enumerate(passes, 1))
    if os.environ.get("LANES", "2") == "1":
        lanes = [numbered]
    else:
        lanes = [numbered[:1], numbered[1:]]

    def lane(items: list[tuple[int, Pass]]) -> None:
        for number, one in items:
            run(one, number, len(passes), args, workdir)

    threads = [threading.Thread(target=lane, args=(items,)) for items in lanes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def version_pass(version: str, env: dict[str, str], own_args: tuple[str, ...]) -> Pass:
    python = VENVS / f"py{version}" / "bin" / "python"
    # As an activated venv would: its commands (uwsgi, celery...) come first on PATH.
    env = {**env, "PATH": os.pathsep.join((str(python.parent), env.get("PATH", "")))}
    one = Pass(f"Python {version}, compiled path", str(python), env, wants_compiled=True,
               own_args=own_args)
    if not python.exists():
        one.missing = f"no {python.parent.parent}; .ci/venvs {version} makes it"
    return one


def main(args: list[str]) -> int:
    plain = {k: v for k, v in os.environ.items() if k != SWITCH}
    named = any(arg.startswith("tests") for arg in args)
    pure_args: tuple[str, ...] = ("-m", "not no_packing")
    if not named:
        pure_args += RECORD_PATH
    version_args = () if named else ON_EVERY_VERSION
    passes = [Pass("compiled path", sys.executable, plain, wants_compiled=True),
              Pass("pure Python", sys.executable, {**plain, SWITCH: "1"},
                   wants_compiled=False, own_args=pure_args),
              *(version_pass(version, plain, version_args) for version in VERSIONS)]
    with tempfile.TemporaryDirectory() as tmp:
        run_lanes(passes, args, Path(tmp))
    print()
    for one in passes:
        if one.missing:
            verdict = "FAILED" if not one.ok else "not tested"
            print(f"{one.name}: {verdict} ({one.missing})", flush=True)
            continue
        passed, failed, skipped = one.counts
        verdict = "passed" if one.ok else "FAILED"
        why = f" (pytest exit {one.returncode})" if one.returncode else ""
        why += f" ({one.path_problem})" if one.path_problem else ""
        print(f"{one.name}: {verdict}{why} in {one.seconds:.0f} s: {passed} passed, "
              f"{failed} failed, {skipped} skipped", flush=True)
    failed_passes = [one.name for one in passes if not one.ok]
    if failed_passes:
        print(f"failed pass: {'; '.join(failed_passes)}")
    total = [sum(c) for c in zip(*(one.counts for one in passes))]
    # Last, in the plain form CI reads: the tests of every pass together.
    print(f"total: {total[0]} passed, {total[1]} failed, {total[2]} skipped", flush=True)
    return 1 if failed_passes else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
