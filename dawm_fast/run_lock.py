"""One owner per run directory: an exclusive lock on ``<out>/.lock`` for the run's life.

``fcntl.flock`` is held by the open file, so the kernel releases it when the owner exits in any
way (kill -9 included): a lock file left by a dead process is simply taken over, never stale.
The file holds the owner's PID, written after the lock is taken, so a second run can name it.
Exit code ``BUSY_EXIT_CODE`` (75, EX_TEMPFAIL) tells scripts "busy, retry later".
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_NAME = ".lock"
BUSY_EXIT_CODE = 75     # sysexits.h EX_TEMPFAIL


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory."""

    def __init__(self, out: Path, pid: int | None):
        self.out, self.pid = out, pid
        holder = f"PID {pid}" if pid is not None else "PID unknown"
        super().__init__(f"--out {out} is in use by another run ({holder}); wait for it to "
                         f"finish or choose another --out")


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return int(os.read(fd, 32).decode().strip())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def run_dir_lock(out: Path):
    """Hold ``out/.lock`` exclusively within the block (``out`` is created if needed); raise
    RunDirBusy at once if another live process holds it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirBusy(out, _read_pid(fd)) from None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)      # releases the lock; the file stays (removing it would race a taker)
