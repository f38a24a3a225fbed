"""The shared state that tells a buffered client's threads when to stop."""

from __future__ import annotations


class Lifecycle:
    """Changed only with the buffer's lock held, followed by a notify of every waiter.

    ``closing``: ``post()`` takes no new records. ``drain_deadline``: the writer writes
    everything it holds, whatever the thresholds, until that monotonic time.
    ``abandoned``: the deadline passed, or ``close()`` wants no drain; threads stop
    without starting new work. They still settle what they hold as they stop, and count it:
    the reader its batch in hand (drops), the writer its connections (sent, possibly lost,
    a failed connection, frames sent again or given up). So shutdown gives them a short
    grace before it reports, and a count may still move if one outlives that grace.
    ``reader_done``: nothing more will enter the buffer.
    """

    __slots__ = ("closing", "drain_deadline", "abandoned", "reader_done")

    def __init__(self) -> None:
        self.closing = False
        self.drain_deadline: float | None = None
        self.abandoned = False
        self.reader_done = False
