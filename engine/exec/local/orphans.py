"""Orphans of a run's processes: adopted by the engine, so none escapes.

A step's process may leave something behind that neither its process group
nor its environment leads back to: ``(setsid env -i daemon &)`` starts a
process in a session of its own, with no ``ENGINE_RUN_ID``, whose parent has
exited. Linux hands such an orphan to its nearest ancestor that asked to be a
*child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``) instead of to init. The
engine asks while it runs a workflow, so every orphan of its attempts becomes
its child: found at the end of the run (a live child the engine did not
start) and stopped there, and reaped whenever it exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

__all__ = ["OWN", "adopt", "adopting", "reap"]

_PR_SET_CHILD_SUBREAPER = 36

OWN: set[int] = set()
"""Children the engine started and waits for itself (attempt processes, the guardian)."""

_state = {"adopting": False}


def adopt(on: bool) -> bool:
    """Become (or stop being) the reaper of descendants' orphans; False where not supported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        done = bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        done = False
    _state["adopting"] = on and done
    return done


def adopting() -> bool:
    return _state["adopting"]


def reap() -> int:
    """Reap adopted orphans that have exited; how many. Never a child of the engine's own.

    Peeks at the next child that can be waited for and reaps it only when it
    is not the engine's own (whose exit status the engine reads itself); it
    stops at the first that is, and the next call goes on.
    """
    if not adopting():
        return 0
    count = 0
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return count
        if info is None or info.si_pid in OWN:
            return count
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, os.WNOHANG)
        count += 1
