"""The embedded server's fault switches, gathered on one value.

Every switch makes :class:`~fluentclient.server.ForwardServer` behave like some real server,
or the network in front of one, on a bad day. The I/O thread reads them while it serves;
``ForwardServer`` changes them only from that thread (or before it runs), so they need no lock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Faults:
    """What is wrong with the server right now; the defaults are a healthy server.

    ``stalled``
        ``stall()``: a server too busy to read, such as fluentd with a blocked input thread.
        Connections are accepted, nothing more is read, and the client's socket buffers fill.
    ``refusing``
        ``refuse()``: nothing listens on the port (a crashed or restarting server), so
        connects fail at once with ECONNREFUSED.
    ``blackholed``
        ``blackhole()``: the host has vanished from the network, or a firewall drops the
        packets. SYNs get no answer, so ``connect()`` hangs until the client gives up.
    ``drop_after``
        ``drop_after()``: the byte budget each new connection gets before it is reset, like
        a server that crashes, or a load balancer that cuts a stream, in the middle of a frame.
    ``ack_delay``
        ``delay_acks()``: a server that is slow to commit its chunks, so acks come late.
    ``withhold_acks``
        ``withhold_acks()``: a server that stores events but loses track of their acks.
    ``duplicate_acks``
        ``duplicate_acks()``: a confused server that answers one chunk twice.
    ``garble_acks``
        ``garble_acks()``: a server whose acks name a chunk id the client never sent.
    ``close_with_reset``
        Constructor option: end every connection with an RST, as fluentd's in_forward does
        (its ``linger_timeout`` is 0), even after reading up to the client's FIN.
    ``silent_key_refusal``
        Constructor option: answer a wrong shared key or a malformed PING as Fluent Bit
        does, by closing without a PONG. A wrong user or password still gets its PONG.
    """

    stalled: bool = False
    refusing: bool = False
    blackholed: bool = False
    drop_after: int | None = None
    ack_delay: float | None = None
    withhold_acks: bool = False
    duplicate_acks: bool = False
    garble_acks: bool = False
    close_with_reset: bool = False
    silent_key_refusal: bool = False
