"""asyncio helpers that never block the event loop.

``post()`` never blocks, so coroutines call it directly. Only waiting does: :func:`flush`
and :func:`shutdown` run the client's blocking call on a thread of their own and await
it, and :func:`delivered` awaits the Future that ``post(..., ack=True)`` returns::

    client.post("app.audit", {"user": 42})
    ok = await aio.flush(client, timeout=2.0)
    await aio.delivered(client.post("app.audit", {"user": 42}, ack=True), timeout=10)
    report = await aio.shutdown(client, timeout=5.0)

Why not ``asyncio.to_thread``: its pool is joined when ``asyncio.run()`` ends, so a flush
waiting on a stuck server without a timeout would hold up the program's exit, and a few
of them would occupy the pool that the application's own ``to_thread`` calls need. A
thread of our own per call (flushes are rare) is a daemon and ends at the client's own
deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Callable, Protocol, TypeVar

from .errors import FluentTimeoutError
from .stats import ShutdownReport

__all__ = ["delivered", "flush", "shutdown"]

_T = TypeVar("_T")


# Public names (though not exported) because the API reference shows them in signatures:
# either client, or anything else with the same method.
class Flushable(Protocol):
    def flush(self, timeout: float | None = None) -> bool: ...


class Stoppable(Protocol):
    def shutdown(self, timeout: float | None = None) -> ShutdownReport: ...


async def flush(client: Flushable, timeout: float | None = None) -> bool:
    """``client.flush(timeout)`` without blocking the loop: True once everything was sent.

    The deadline is the client's own, so the thread is done by then too. Cancelling the
    awaiting task stops the wait, not the flush.
    """
    return await _in_thread(client.flush, timeout, "flush")


async def shutdown(client: Stoppable, timeout: float | None = None) -> ShutdownReport:
    """``client.shutdown(timeout)`` without blocking the loop; returns its report.

    The client stops taking records at once; the report comes once it has sent what it
    could before the deadline (``timeout``, else the client's ``shutdown_timeout``).
    """
    return await _in_thread(client.shutdown, timeout, "shutdown")


async def delivered(future: concurrent.futures.Future[Any], timeout: float | None = None) -> None:
    """Wait for the record behind ``post(..., ack=True)`` to be acknowledged.

    Raises what the future holds when it never will be (``DeliveryError``,
    ``ClientClosedError``, ...), or :class:`FluentTimeoutError` after ``timeout`` seconds.
    A timeout or a cancelled caller leaves the future itself alone: the record may still
    be delivered, and the future can be awaited again.
    """
    waiting = asyncio.wrap_future(future)
    waiting.add_done_callback(_retrieve)
    try:
        # Cancelling the wrapper would cancel the client's Future too: shield it.
        await asyncio.wait_for(asyncio.shield(waiting), timeout)
    except asyncio.TimeoutError:
        raise FluentTimeoutError(
            f"the record was not acknowledged within {timeout} s"
        ) from None


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A shielded future nobody awaits any more must not log "exception never retrieved".
    if not future.cancelled():
        future.exception()


async def _in_thread(call: Callable[[float | None], _T], timeout: float | None, what: str) -> _T:
    loop = asyncio.get_running_loop()
    result: asyncio.Future[_T] = loop.create_future()

    def settle(value: _T | None, error: Exception | None) -> None:
        if result.done():
            return  # the caller was cancelled meanwhile
        if error is not None:
            result.set_exception(error)
        else:
            result.set_result(value)  # type: ignore[arg-type]

    def run() -> None:
        value: _T | None = None
        error: Exception | None = None
        try:
            value = call(timeout)
        except Exception as exc:
            error = exc
        try:
            loop.call_soon_threadsafe(settle, value, error)
        except RuntimeError:
            pass  # the loop closed while we waited: nobody is left to tell

    threading.Thread(target=run, name=f"fluentclient-aio-{what}", daemon=True).start()
    return await result
