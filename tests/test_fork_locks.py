"""Locks beside the clients' own that a thread of the parent may hold at a fork.

A fork copies only the forking thread: a lock held by any other thread at that moment
stays held in the child for good. Each case below holds one such lock in a parent thread,
forks, and has the child do what takes that lock (register metrics, close a log
handler, drain at exit, decide on SIGTERM). The child must finish, where it would hang.
A plain ``threading.Lock`` under the same test is the control: its child hangs.

The forking runs in a child process of the test (forking the pytest worker, with its
threads, would prove little), which reports each grandchild's fate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .subproc import ROOT

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

# Holds ``LOCK`` in a thread of this process, forks, and in the child runs ``USE`` under
# an alarm: the child exits 0 if ``USE`` returned, and dies of SIGALRM if it hung.
FORKER = """
import json, os, signal, sys, threading, warnings
warnings.filterwarnings("ignore", r"This process .* is multi-threaded", DeprecationWarning)
case = sys.argv[1]
{setup}
held, release = threading.Event(), threading.Event()

def hold():
    with LOCK:
        held.set()
        release.wait(30)

threading.Thread(target=hold, daemon=True).start()
assert held.wait(10)
pid = os.fork()
if pid == 0:
    signal.alarm(10)
    {use}
    os._exit(0)
release.set()
_, status = os.waitpid(pid, 0)
print(json.dumps({{"exited": os.WIFEXITED(status),
                   "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}}))
"""

CASES = {
    "control: a plain threading.Lock": (
        "LOCK = threading.Lock()",
        "with LOCK: pass",
    ),
    "metrics.register": (
        "from prometheus_client import CollectorRegistry\n"
        "from fluentclient import SyncClient, metrics\n"
        "LOCK = metrics._collectors_lock",
        "metrics.register(SyncClient('127.0.0.1', 9), CollectorRegistry())",
    ),
    "FluentHandler.close": (
        "from fluentclient import SyncClient\n"
        "from fluentclient.handler import FluentHandler\n"
        "handler = FluentHandler('app', client=SyncClient('127.0.0.1', 9))\n"
        "LOCK = handler._close_lock",
        "handler.close()",
    ),
    "the drain at exit": (
        "from fluentclient import BufferedClient\n"
        "from fluentclient._lifetime import _exit\n"
        "client = BufferedClient('127.0.0.1', 9, shutdown_timeout=0.5)\n"
        "LOCK = _exit.state.lock",
        # A record held, so that the drain has a client to wait for.
        "client.post('t', {'a': 1}); _exit.drain_all()",
    ),
    "the SIGTERM decision": (
        "from fluentclient._lifetime import _sigterm\n"
        "LOCK = _sigterm._lock",
        "_sigterm.offer()",
    ),
}


def _fork_with_lock_held(case: str) -> dict[str, object]:
    setup, use = CASES[case]
    code = FORKER.format(setup=setup, use=use)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, case], capture_output=True,
                         text=True, timeout=120, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_the_control_child_hangs_on_a_lock_held_at_the_fork() -> None:
    import signal

    result = _fork_with_lock_held("control: a plain threading.Lock")
    assert result == {"exited": False, "signal": int(signal.SIGALRM)}, result


@pytest.mark.parametrize("case", [c for c in CASES if not c.startswith("control")])
def test_a_child_finds_the_lock_free(case: str) -> None:
    result = _fork_with_lock_held(case)
    assert result == {"exited": True, "signal": None}, result
