"""Docstrings here are written with reST roles (:class:`X`); show them as code in the docs."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`~?([^`]+)`")
# reST ends the paragraph before a literal block with "::"; Markdown shows the colons.
_LITERAL = re.compile(r"(\S):(:\n\n)|^::\n\n", re.M)


class ReSTRoles(griffe.Extension):
    """Turn each role into a plain code span, and each ``::`` into a colon."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = _ROLE.sub(r"``\1``", obj.docstring.value)
            obj.docstring.value = _LITERAL.sub(lambda m: m.group(1) + m.group(2) if m.group(1)
                                               else "", text)
