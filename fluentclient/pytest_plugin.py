"""pytest plugin: the ``fluent_server`` fixture, a started :class:`ForwardServer` per test.

Registered through the ``pytest11`` entry point, or with
``pytest_plugins = ["fluentclient.pytest_plugin"]`` in a root conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

__all__ = ["fluent_server"]

if TYPE_CHECKING:
    from .server import ForwardServer


@pytest.fixture
def fluent_server() -> Iterator[ForwardServer]:
    """A forward server on 127.0.0.1 and an ephemeral port, closed after the test."""
    # Imported here so that pytest still starts in this environment if the package is
    # broken while being edited: only tests that use the fixture see the error.
    from .server import ForwardServer

    with ForwardServer("127.0.0.1", 0) as server:
        yield server
