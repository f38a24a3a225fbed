"""Let long identifiers in table cells break between their words, never inside one.

A narrow table column holds names like ``connection_failures`` or
``dropped["buffer_full"]``. Without a place to break, such a name widens its column until
the table no longer fits and has to scroll; with the theme's ``word-break`` it broke
anywhere (``connect_failur`` / ``es``). A ``<wbr>`` after each ``_``, ``.`` and ``/``
lets the browser break there, and only there (the site's CSS stops every other break).
It adds no character: copying the name copies it whole.
"""

from __future__ import annotations

import re
from typing import Any

_CELL = re.compile(r"(<t[dh][^>]*>)(.*?)(</t[dh]>)", re.S)
_CODE = re.compile(r"(<code[^>]*>)(.*?)(</code>)", re.S)
# After a separator that has a word on both sides; never inside an entity such as &quot;.
_BREAK = re.compile(r"(?<=\w)([_./])(?=\w)")


def _code(match: re.Match[str]) -> str:
    opening, text, closing = match.groups()
    parts = re.split(r"(<[^>]+>|&\w+;|&#\d+;)", text)
    return opening + "".join(
        part if part.startswith(("<", "&")) else _BREAK.sub(r"\1<wbr>", part)
        for part in parts
    ) + closing


def _cell(match: re.Match[str]) -> str:
    opening, text, closing = match.groups()
    return opening + _CODE.sub(_code, text) + closing


def on_page_content(html: str, **kwargs: Any) -> str:
    return _CELL.sub(_cell, html)
