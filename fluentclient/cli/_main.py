"""The ``fluentclient`` command: parse the arguments, set up logging, run the command."""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from collections.abc import Sequence
from typing import Callable

from ..config import options_from_env
from ..errors import ConfigurationError
from ._parser import build_parser
from ._serve import serve, serve_defaults


class _Named(logging.Formatter):
    """A warning as the terminal shows it: the message after the logger's name. Most of
    the client's messages already begin with "fluentclient:"; a second is noise."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if text.startswith("fluentclient") else f"{record.name}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(_Named())
        logging.basicConfig(level=logging.WARNING, handlers=[handler])
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        if run is serve:
            serve_defaults(args, options_from_env())
        return run(args)
    except (ConfigurationError, ssl.SSLError, OSError) as exc:
        print(f"fluentclient {args.command}: {exc}", file=sys.stderr)
        return 2
