"""What the writer tells people about connecting: a failed connect once per outage, a
refused key or certificate once until the reason changes, a reconnect after failures.

A client may retry for days: every attempt is counted in stats(), but only news is
logged above debug level. Warnings go through _notice, so that they reach a person even
when logging was set up so that ours reaches no one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .. import _notice
from .._lifecycle import Lifecycle
from .._transport._pool import Link
from .._transport._sender import is_refusal, is_unresolvable
from .._words import count
from ..errors import FluentError

log = logging.getLogger("fluentclient")


class ConnectNotes:
    def __init__(self, life: Lifecycle, report: Callable[[FluentError], None]) -> None:
        self._life = life
        self._report = report

    def connected(self, link: Link, streak: int) -> None:
        """The link connected after ``streak`` failed attempts in a row."""
        if streak:
            log.info("fluentclient: connected to %s after %s", link.name,
                     count(streak, "failed attempt"))
        else:
            log.debug("fluentclient: connected to %s", link.name)

    def connect_failed(self, link: Link, exc: FluentError, news: bool) -> None:
        """A connect failed (already counted on the link). ``news``: the first failure
        of an outage, or one whose reason changed."""
        if is_refusal(exc) and news:
            self.refused(exc, news)
        elif is_refusal(exc):
            log.debug("fluentclient: %s (attempt %d)", exc, link.connect_streak)
        elif link.connect_streak == 1:
            self._outage_began(exc)
        else:
            log.debug("fluentclient: %s (attempt %d)", exc, link.connect_streak)

    def refused(self, exc: FluentError, news: bool) -> None:
        """The server refused our key, credentials or certificate: said loudly, and
        reported, but only when it is news."""
        if news:
            _notice.warn("refused", "fluentclient: %s; retrying with backoff (logged again "
                         "only if the reason changes)", exc, level=logging.ERROR)
            self._report(exc)

    def _outage_began(self, exc: FluentError) -> None:
        kind = "unresolvable" if is_unresolvable(exc) else "connect"
        drain = self._life.drain_deadline
        if drain is None and kind == "unresolvable":
            # Most likely a wrong host setting, so said at error level, like a refusal;
            # but a name can appear later (a service still starting), so the backoff
            # goes on at its usual pace.
            _notice.warn(kind, "fluentclient: %s; retrying with backoff, in "
                         "case the name appears later", exc, level=logging.ERROR)
        elif drain is None:
            _notice.warn(kind, "fluentclient: %s; retrying with backoff", exc)
        elif kind == "unresolvable":
            # The end of the process does not wait for that (see _exit.py).
            _notice.warn(kind, "fluentclient: %s", exc)
        else:
            # Found while the process ends: say what the exit waits for.
            _notice.warn(kind, "fluentclient: %s; retrying until the shutdown "
                         "deadline, %.1f s from now", exc, max(0.0, drain - time.monotonic()))
