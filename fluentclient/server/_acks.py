"""Which acks the embedded server owes for a batch of frames, and acks held back until due."""

from __future__ import annotations

import time
from typing import Callable

from .._decoding import DecodedFrame, ack_for
from ._faults import Faults

# Writes a batch of acks that fell due (the packed acks, how many) on the connection that
# owes them. The schedule knows no more of connections than this.
Deliver = Callable[[bytes, int], None]


def acks_for(frames: list[DecodedFrame], faults: Faults) -> list[bytes]:
    """The packed acks for the frames that asked for one, bent by the ack faults."""
    if faults.withhold_acks:
        return []
    acks = []
    for frame in frames:
        chunk = frame.options.get("chunk")
        if chunk is None:
            continue
        ack = ack_for(f"{chunk}-not-this-one" if faults.garble_acks else chunk)
        acks.append(ack)
        if faults.duplicate_acks:
            acks.append(ack)
    return acks


class AckSchedule:
    """Batches of acks that ``delay_acks()`` holds back, each with the moment it falls due."""

    def __init__(self) -> None:
        # (when due, where they go, the acks packed, how many)
        self._held: list[tuple[float, Deliver, bytes, int]] = []

    def __bool__(self) -> bool:
        return bool(self._held)

    def hold(self, delay: float, deliver: Deliver, data: bytes, count: int) -> None:
        self._held.append((time.monotonic() + delay, deliver, data, count))

    def send_due(self) -> float:
        """Hand the due batches to their connections; the seconds until the next one (or 1)."""
        now = time.monotonic()
        waiting = []
        for item in self._held:
            due, deliver, data, count = item
            if due > now:
                waiting.append(item)
            else:
                deliver(data, count)
        self._held = waiting
        return min((item[0] - now for item in waiting), default=1.0)
