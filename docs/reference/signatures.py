"""Signatures and attributes in the API reference as a user should read them.

- A default that names a private constant shows the public name it stands for
  (``8 * _MiB`` becomes ``8 * MiB``), or the constant's value when it has none.
- A method returning the client itself (a private TypeVar bound to the class) shows
  ``Self``.
- An attribute set from a parameter of the same name (``self.x = x``) shows no value: the
  page would say ``x = x``. Nor does one whose value is built from private names.
- ``__slots__`` is not an API.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_PRIVATE = re.compile(r"(?<![\w.])_[A-Za-z]\w*")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _public_text(text: str, scope: griffe.Object) -> str:
    """``text`` with each private name replaced by what it stands for, where known."""
    module = scope.module

    def replace(match: re.Match[str]) -> str:
        name = match.group(0)
        member = module.members.get(name)
        if isinstance(member, griffe.Alias):
            target = member.target_path.rpartition(".")[2]
            if not _is_private(target):
                return target
        if isinstance(member, griffe.Attribute) and member.value is not None:
            return f"({member.value})"
        return name

    return _PRIVATE.sub(replace, text)


def _self_type(function: griffe.Function) -> None:
    returns = function.returns
    if returns is None or not _is_private(str(returns)):
        return
    member = function.module.members.get(str(returns))
    value = str(getattr(member, "value", "") or "")
    if value.startswith("TypeVar("):
        function.returns = "Self"


class PublicSignatures(griffe.Extension):
    def on_function_instance(self, *, func: griffe.Function, **kwargs: Any) -> None:
        for parameter in func.parameters:
            if parameter.default is not None and _PRIVATE.search(str(parameter.default)):
                parameter.default = _public_text(str(parameter.default), func)
        _self_type(func)

    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs: Any) -> None:
        value = attr.value
        if value is None or _is_private(attr.name):
            return  # a private one is not shown, and its value may be read above
        text = str(value)
        if ("instance-attribute" in attr.labels and text.isidentifier()) or _PRIVATE.search(text):
            attr.value = None

    def on_class_members(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        if "__slots__" in cls.members:
            cls.del_member("__slots__")
