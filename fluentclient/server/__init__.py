"""An embedded forward-protocol server, for tests, demos and ``python -m fluentclient serve``.

:class:`ForwardServer` listens on TCP (``127.0.0.1`` and an ephemeral port by default) or on a
Unix stream socket, decodes every frame it receives in any of the four event modes, records
the events, and answers ``chunk`` options with acks, as fluentd and fluent-bit do. It also has
fault switches that act on the real sockets, so that a client can be tested against a server
that goes away, stops reading, resets connections in the middle of a frame, refuses
connections or never answers them at all.

All socket work happens in one background thread around a selector. The fault switches do
not touch sockets themselves: they hand a function to that thread and wait until it has run,
so when a switch returns its effect is already in place (no further reads after ``stall()``,
connects refused after ``refuse()``, and so on), and no socket is ever closed under the feet
of a ``select`` running in another thread.
"""

from __future__ import annotations

from ._forward import ForwardServer
from ._record import ReceivedEvent

__all__ = ["ForwardServer", "ReceivedEvent"]

# Both are public here, wherever they happen to be defined.
ForwardServer.__module__ = __name__
ReceivedEvent.__module__ = __name__
