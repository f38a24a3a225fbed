"""A mark that every fork wipes: how the pure-Python post() sees that no fork happened.

``os.getpid()`` is a system call (glibc no longer caches the pid), about a quarter of a
pure-Python ``post()``. Linux can mark a page ``MADV_WIPEONFORK``: every child then reads
it as zeros, however it was forked (``os.fork``, a C extension's ``fork()``, uWSGI's
workers, even a raw ``clone``). A byte set in such a page proves that this is the process
that set it; reading it costs no system call. Where no such page can be had, the mark
asks for the pid instead, as post() did before.
"""

from __future__ import annotations

import mmap
import os
import sys
from typing import Protocol

__all__ = ["Mark", "PidMark", "unforked_mark"]

# Python names the advice only where its build's headers did; the kernel's value is 18 on
# every architecture but PA-RISC. A wrong value must never pass for it (a page that a fork
# did not wipe would hide the fork), so elsewhere the mark asks for the pid.
_GENERIC = ("x86_64", "amd64", "i386", "i686", "aarch64", "arm64", "ppc64le", "ppc64",
            "s390x", "riscv64")
_WIPEONFORK: int | None = getattr(mmap, "MADV_WIPEONFORK", None)
if _WIPEONFORK is None and sys.platform == "linux":
    _machine = os.uname().machine.lower()
    if _machine in _GENERIC or _machine.startswith("arm"):
        _WIPEONFORK = 18


class Mark(Protocol):
    """``mark[0]`` is true while this is still the process that made the mark."""

    def __getitem__(self, index: int, /) -> int: ...


class PidMark:
    """The fallback where no page can be wiped on fork: compares the pid, a system call."""

    __slots__ = ("_pid",)

    def __init__(self) -> None:
        self._pid = os.getpid()

    def __getitem__(self, index: int, /) -> int:
        return os.getpid() == self._pid


def unforked_mark() -> Mark:
    """A fresh mark for this process: made when a client's state is (after a fork too)."""
    if _WIPEONFORK is None:
        return PidMark()
    try:
        # Private: the advice is refused for a shared mapping (mmap.mmap's default).
        page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError):
        return PidMark()
    try:
        # Linux 4.14 and later: an older kernel refuses the advice (EINVAL).
        page.madvise(_WIPEONFORK)
    except (AttributeError, OSError, ValueError):
        page.close()
        return PidMark()
    page[0] = 1
    return page
