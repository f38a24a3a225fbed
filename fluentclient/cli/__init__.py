"""The ``fluentclient`` command: ``cat`` (records from stdin, like fluent-cat), ``serve``
and ``demo``.

Connection options default to the ``FLUENT_*`` environment variables (see
:mod:`fluentclient.config`); an option given on the command line wins.
"""

from __future__ import annotations

from ._main import main

__all__ = ["main"]
