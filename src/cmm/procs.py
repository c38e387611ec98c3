"""Processes this project starts: whether one is alive, and children that die with their parent.

``kill -9`` of ``cmm run`` gives the run no chance to stop what it started. A child that calls
:func:`die_with_parent` first thing is killed by the kernel when its parent goes (Linux
``prctl(PR_SET_PDEATHSIG, SIGKILL)``; elsewhere a no-op).
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PARENT_PID_VAR = "CMM_PARENT_PID"  # set for a child that is no multiprocessing worker


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def die_with_parent(parent_pid: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent exits (Linux; a no-op elsewhere).

    ``parent_pid``: the pid the parent had when it started us; if it is already gone (it died
    before this call could arm the signal), exit now. The signal follows the parent *thread*
    that created this process: create children from a thread that lives as long as they do.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def die_with_parent_from_env() -> None:
    """:func:`die_with_parent` for a child started with ``CMM_PARENT_PID`` in its environment
    (see :func:`child_env`)."""
    pid = os.environ.get(PARENT_PID_VAR)
    if pid and pid.isdigit():
        die_with_parent(int(pid))


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this environment) plus ``CMM_PARENT_PID``: for a child process that
    calls :func:`die_with_parent_from_env`."""
    return {**(os.environ if env is None else env), PARENT_PID_VAR: str(os.getpid())}
