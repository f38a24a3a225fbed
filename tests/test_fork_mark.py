"""The mark a fork wipes (post()'s fork check on the pure-Python path), in real forks.

Forked in a child process of its own: forking the pytest process, with its threads,
would prove little and warn on Python 3.12+.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fluentclient._lifetime._mark import PidMark, unforked_mark

from .subproc import ROOT

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

# Prints what mark[0] reads before the fork, in the child and in the parent after it.
FORKS = """
import ctypes, os, sys
from fluentclient._lifetime._mark import PidMark, unforked_mark

mark = unforked_mark() if sys.argv[1] == "page" else PidMark()
before = bool(mark[0])
fork = os.fork if sys.argv[2] == "os" else ctypes.PyDLL(None).fork
pid = fork()
if pid == 0:
    os._exit(10 + bool(mark[0]))
_, status = os.waitpid(pid, 0)
print(type(mark).__name__, before, bool(os.waitstatus_to_exitcode(status) - 10),
      bool(mark[0]))
"""


def forked(kind: str, how: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", FORKS, kind, how], env=env, timeout=60,
                          capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.mark.skipif(sys.platform != "linux", reason="MADV_WIPEONFORK is Linux's")
@pytest.mark.parametrize("how", ["os", "libc"])
def test_a_fork_wipes_the_page_in_the_child_only(how: str) -> None:
    # libc's fork() through ctypes runs none of Python's at-fork hooks: the page alone
    # tells the child it was forked.
    assert forked("page", how) == ["mmap", "True", "False", "True"]


@pytest.mark.parametrize("how", ["os", "libc"] if sys.platform == "linux" else ["os"])
def test_the_fallback_mark_compares_the_pid(how: str) -> None:
    assert forked("pid", how) == ["PidMark", "True", "False", "True"]


def test_a_mark_reads_true_in_the_process_that_made_it() -> None:
    assert unforked_mark()[0] and PidMark()[0]
