from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from fluentclient import Backoff
from tests.certs import pki  # noqa: F401
from tests.peer_server import node_peer, node_peer_factory  # noqa: F401
from tests.real_servers import real_server, real_server_factory, real_server_kind  # noqa: F401

# Tests run real servers and threads: no per-example deadline, and fixtures are reused.
settings.register_profile(
    "fluentclient",
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("fluentclient")

# Quick reconnects keep fault tests short; the shape of the backoff is tested on its own.
FAST_BACKOFF = Backoff(initial=0.01, maximum=0.1)


@pytest.fixture
def fast_backoff() -> Backoff:
    return FAST_BACKOFF
