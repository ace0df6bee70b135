"""Which code made a result: the package version and, in a git checkout, the commit.

Reports use it to keep runs of different code apart (`dawm_fast.report` flags a cell whose runs
disagree). Bump the package version when a change alters the numbers a run produces.
"""
from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    try:
        version = metadata.version("dawm_fast")
    except metadata.PackageNotFoundError:
        version = None
    root = Path(__file__).resolve().parent.parent
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                 "--untracked-files=no", "--", "dawm_fast", "csrc", "kernels"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass   # not a git checkout (an installed wheel): the version alone
    return {"version": version, "git_commit": commit, "git_dirty": dirty}
