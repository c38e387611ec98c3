"""What a run records of where it ran (``run.json``, the manifest): the source tree's git
revision and the machine."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def git_revision(where: Path | None = None) -> dict:
    """The commit of the source tree (and whether it has uncommitted changes)."""
    where = where or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=where, capture_output=True, text=True, check=True,
                               timeout=10).stdout.strip()
        return {"commit": rev, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def machine() -> dict:
    """The platform, Python version, processor and core count of this machine."""
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
