"""Run the test suite on the compiled path, then the record path's tests in pure Python.

    python tests/run_both_paths.py [pytest arguments...]

The first pass runs the whole suite as installed (the compiled packer where the install
built it). The second sets ``FLUENTCLIENT_NO_EXTENSIONS=1``, which makes the package choose
pure Python, and runs the tests of the record path (``RECORD_PATH``, below), leaving out
those marked ``no_packing``: they pack no record, so they cannot tell the paths apart
(tests/conftest.py fails a marked test that makes a packer, packs, forks or starts a Python
child). Both passes always run, so one run shows every failure of each path; a ``-m``
among the arguments replaces the second pass's own. The exit status is non-zero if either
pass failed, and the last lines name the pass that did.

Each pass first asks a fresh interpreter which path it runs (``fluentclient.COMPILED``),
so that a pass that did not run the path it is named for says so: in CI (``CI`` set) a
first pass without the compiled packer is a failure, as a missing real server is, since
the compiled path would otherwise go untested without anyone noticing. A package without
``COMPILED`` (no compiled path at all) runs both passes and says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SWITCH = "FLUENTCLIENT_NO_EXTENSIONS"
# The second pass: the tests whose subject is what a record becomes on the wire, through
# either client and every integration. The whole suite twice does not fit CI's ten minutes
# on two cores (about 500 s a pass); the rest of it exercises threads, sockets, processes
# and servers, which run the same code on both paths, and tests/test_compiled.py holds the
# two packers to the same bytes, verdicts and errors for every record it generates (so the
# real servers, which the first pass runs, receive the same bytes either way). Naming test
# files on the command line runs those in both passes instead.
RECORD_PATH = tuple(f"tests/{name}.py" for name in (
    "test_compiled", "test_framing", "test_properties", "test_hostile", "test_odd_records",
    "test_contained_guard", "test_buffered", "test_sync", "test_handler", "test_structlog",
    "test_loguru", "test_readme",
))
PROBE = "import fluentclient; print(getattr(fluentclient, 'COMPILED', None))"


@dataclass
class Pass:
    name: str
    env: dict[str, str]
    wants_compiled: bool
    own_args: tuple[str, ...] = ()
    returncode: int = 0
    seconds: float = 0.0
    counts: tuple[int, int, int] = (0, 0, 0)  # passed, failed (errors too), skipped
    path_problem: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.path_problem


def which_path(env: dict[str, str]) -> str | None:
    """"True", "False" or "None" (no compiled path in this package); None if unknown."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    return out.stdout.strip() if out.returncode == 0 else None


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


def run(one: Pass, number: int, args: list[str], workdir: Path) -> None:
    path = which_path(one.env)
    label = {"True": "compiled", "False": "pure Python",
             "None": "pure Python (this package has no compiled path)"}.get(path or "", "?")
    print(f"\n=== pass {number} of 2: {one.name} (fluentclient runs {label}) ===", flush=True)
    if one.wants_compiled and path == "False":
        one.path_problem = "the compiled packer is not in use (was it built?)"
        if not os.environ.get("CI"):
            print(f"warning: {one.path_problem}; this pass tests pure Python", flush=True)
            one.path_problem = ""
    elif not one.wants_compiled and path == "True":
        one.path_problem = f"{SWITCH}=1 did not switch the compiled packer off"
    elif path is None:
        one.path_problem = "importing fluentclient failed"
    junit = workdir / f"pass{number}.xml"
    started = time.monotonic()
    one.returncode = subprocess.call(
        [sys.executable, "-m", "pytest", "-q", f"--junitxml={junit}", *one.own_args, *args],
        env=one.env, cwd=ROOT)
    one.seconds = time.monotonic() - started
    one.counts = counts(junit)


def main(args: list[str]) -> int:
    plain = {k: v for k, v in os.environ.items() if k != SWITCH}
    pure_args: tuple[str, ...] = ("-m", "not no_packing")
    if not any(arg.startswith("tests") for arg in args):
        pure_args += RECORD_PATH
    passes = [Pass("compiled path", plain, wants_compiled=True),
              Pass("pure Python", {**plain, SWITCH: "1"}, wants_compiled=False,
                   own_args=pure_args)]
    with tempfile.TemporaryDirectory() as tmp:
        for number, one in enumerate(passes, 1):
            run(one, number, args, Path(tmp))
    print()
    for one in passes:
        passed, failed, skipped = one.counts
        verdict = "passed" if one.ok else "FAILED"
        why = f" (pytest exit {one.returncode})" if one.returncode else ""
        why += f" ({one.path_problem})" if one.path_problem else ""
        print(f"{one.name}: {verdict}{why} in {one.seconds:.0f} s: {passed} passed, "
              f"{failed} failed, {skipped} skipped", flush=True)
    failed_passes = [one.name for one in passes if not one.ok]
    if failed_passes:
        print(f"failed pass: {', '.join(failed_passes)}")
    total = [sum(c) for c in zip(*(one.counts for one in passes))]
    # Last, in the plain form CI reads: the tests of both passes together.
    print(f"total: {total[0]} passed, {total[1]} failed, {total[2]} skipped", flush=True)
    return 1 if failed_passes else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
