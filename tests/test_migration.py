"""The migration page's examples run, each in its own process, against a real server,
and the server receives what each example's ``# server receives`` comments claim.

An example is a ```python block right after a ``<!-- migration-example -->`` line. Its
claims are comments of the form::

    # server receives: ("tag", {record})                  the record exactly
    # server receives: ("tag", {record}, 1700000000.25)   and the event time, in seconds
    # server receives, among other fields: ("tag", {fields})

Examples that import fluent-logger run only where it is installed (``.[bench]``); they
show that the "before" code really does what the "after" code replaces.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fluentclient import EventTime
from fluentclient.server import ForwardServer, ReceivedEvent

from .subproc import child_env

PAGE = Path(__file__).resolve().parent.parent / "docs" / "migration.md"
MARKER = "<!-- migration-example -->"
CLAIM = re.compile(r"^# server receives(, among other fields)?: (.+)$", re.M)
PORT = re.compile(r"\b24224\b")
USES_FLUENT_LOGGER = re.compile(r"^\s*(from|import) fluent\b(?!client)", re.M)


@dataclass(frozen=True)
class Claim:
    tag: str
    record: dict[str, Any]
    time: float | None
    subset: bool

    def matches(self, event: ReceivedEvent) -> bool:
        if event.tag != self.tag or not isinstance(event.record, dict):
            return False
        if self.subset:
            if any(event.record.get(k, object()) != v for k, v in self.record.items()):
                return False
        elif event.record != self.record:
            return False
        return self.time is None or abs(seconds(event.time) - self.time) < 1e-6


@dataclass(frozen=True)
class Example:
    line: int
    code: str
    claims: tuple[Claim, ...]

    @property
    def needs_fluent_logger(self) -> bool:
        return USES_FLUENT_LOGGER.search(self.code) is not None


def seconds(time: Any) -> float:
    if isinstance(time, EventTime):
        return time.seconds + time.nanoseconds / 1e9
    return float(time)


def parse_claim(subset: str | None, text: str) -> Claim:
    value = ast.literal_eval(text)
    assert isinstance(value, tuple) and len(value) in (2, 3), f"not (tag, record[, time]): {text}"
    tag, record, *time = value
    assert isinstance(tag, str) and isinstance(record, dict), text
    return Claim(tag, record, float(time[0]) if time else None, subset is not None)


def examples(text: str, marker: str = MARKER) -> list[Example]:
    """The examples of ``text``: each ```python block right after a ``marker`` line."""
    block = re.compile(rf"^{re.escape(marker)}\n```python\n(.*?)^```$", re.M | re.S)
    found = []
    for match in block.finditer(text):
        code = match.group(1)
        claims = tuple(parse_claim(m.group(1), m.group(2)) for m in CLAIM.finditer(code))
        found.append(Example(text.count("\n", 0, match.start()) + 1, code, claims))
    return found


EXAMPLES = examples(PAGE.read_text(encoding="utf-8"))


def run_example(example: Example, server: ForwardServer) -> subprocess.CompletedProcess[str]:
    code = PORT.sub(str(server.port), example.code)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=child_env())


def assert_claims_arrived(example: Example, server: ForwardServer, where: str) -> None:
    """Exactly the events the example's comments claim arrived, one event each."""
    assert server.wait_for_events(len(example.claims), timeout=10)
    unmatched = list(server.events)
    assert len(unmatched) == len(example.claims), unmatched
    for claim in example.claims:
        hit = next((event for event in unmatched if claim.matches(event)), None)
        assert hit is not None, f"{where} line {example.line}: no event matches {claim}"
        unmatched.remove(hit)


def test_the_page_has_the_migration_examples():
    # A marker or fence typo would silently drop an example from the test below.
    assert len(EXAMPLES) == PAGE.read_text(encoding="utf-8").count(MARKER)
    assert len(EXAMPLES) >= 10
    for example in EXAMPLES:
        assert example.claims, f"migration.md line {example.line}: an example claims nothing"
        assert PORT.search(example.code), f"migration.md line {example.line}: no port to replace"
    # Each fluent-logger example is followed by the fluentclient one that replaces it.
    kinds = [e.needs_fluent_logger for e in EXAMPLES]
    assert kinds == [True, False] * (len(EXAMPLES) // 2)
    for before, after in zip(EXAMPLES[::2], EXAMPLES[1::2]):
        assert before.claims == after.claims, f"migration.md line {after.line}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: f"line{e.line}")
def test_migration_example_delivers_what_it_claims(example, fluent_server):
    if example.needs_fluent_logger:
        pytest.importorskip("fluent.sender", reason="fluent-logger: pip install -e '.[bench]'")
    done = run_example(example, fluent_server)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "", "an example that should not fail printed an error"
    # Each example has closed its client before exiting: everything is on its way.
    assert_claims_arrived(example, fluent_server, "migration.md")


def test_a_wrong_claim_is_caught(fluent_server):
    """The checker itself can fail: a claim the example does not honour is reported."""
    example = next(e for e in EXAMPLES if not e.needs_fluent_logger)
    assert run_example(example, fluent_server).returncode == 0
    assert fluent_server.wait_for_events(len(example.claims), timeout=10)
    first = example.claims[0]
    wrong = [
        Claim(first.tag + ".other", first.record, first.time, first.subset),
        Claim(first.tag, {**first.record, "extra": 1}, first.time, first.subset),
        Claim(first.tag, first.record, 12345.0, first.subset),
    ]
    for claim in wrong:
        assert not any(claim.matches(event) for event in fluent_server.events), claim
