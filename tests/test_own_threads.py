"""One meaning of "a client's own thread": the threads a client runs, and no other."""

from __future__ import annotations

import threading

from fluentclient import BufferedClient
from fluentclient._threads import own_thread

from .waiting import wait_until


def test_a_helper_thread_named_like_ours_is_not_a_clients_own(fluent_server):
    seen: dict[str, bool] = {}

    def on_error(err, msg):
        seen.setdefault("reader", own_thread())

    client = BufferedClient(fluent_server.host, fluent_server.port, at_exit=False,
                            on_error=on_error)
    try:
        # Cannot be packed: the reader drops it, and reports it on its own thread.
        client.post("layout.bad", {"value": object()})
        assert wait_until(lambda: "reader" in seen)
        assert seen["reader"] is True
        helper = threading.Thread(target=lambda: seen.setdefault("helper", own_thread()),
                                  name="fluentclient-aio-helper")
        helper.start()
        helper.join(20)
        assert seen["helper"] is False
        assert own_thread() is False
    finally:
        client.shutdown(10)
