"""Run-directory plumbing: atomic writes, checkpoints with clear errors, metrics CSV, progress."""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

import torch


class RunError(RuntimeError):
    """An error for the user: one line that says what is wrong and what to do."""


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_torch_save(obj, path: Path) -> None:
    """Write to a temporary file, fsync, then rename: a crash never leaves a half checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, stage: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise RunError(f"checkpoint {path} of stage '{stage}' is corrupt or unreadable "
                       f"({type(e).__name__}); delete that file to redo the stage from its last "
                       f"good point, or use another --out") from None


class MetricsLog:
    """Long-format CSV (stage, step, wall_s, metric, value): one row per measured number."""

    FIELDS = ("stage", "step", "wall_s", "metric", "value")

    def __init__(self, path: Path):
        self.path = path
        self.t0 = time.time()
        if not path.exists():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)

    def log(self, stage: str, step: int, **metrics) -> None:
        wall = round(time.time() - self.t0, 2)
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            for k, v in metrics.items():
                w.writerow((stage, step, wall, k, f"{float(v):.6g}"))

    def read(self) -> list[dict]:
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def truncate_after(self, stage: str, step: int) -> None:
        """Drop rows of `stage` beyond `step` (written after the checkpoint a resume starts
        from), so a resumed run's CSV has no duplicate or orphaned points."""
        rows = [r for r in self.read() if not (r["stage"] == stage and int(r["step"]) > step)]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, self.FIELDS)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)


class Progress:
    """Prints `[stage] step i/N (p%)  rate/s  ETA  extra` at most every `every_s` seconds."""

    def __init__(self, stage: str, total: int, start: int = 0, every_s: float = 10.0,
                 unit: str = "steps"):
        self.stage, self.total, self.unit, self.every_s = stage, total, unit, every_s
        self.t_start, self.start = time.time(), start
        self.t_last = 0.0

    def update(self, step: int, force: bool = False, **extra) -> None:
        now = time.time()
        if not force and now - self.t_last < self.every_s and step < self.total:
            return
        self.t_last = now
        done = step - self.start
        rate = done / max(now - self.t_start, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        # A metric not measured yet (NaN: no loss logged, no evaluation run) is left out.
        fields = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in extra.items()
                           if not (isinstance(v, float) and v != v))
        print(f"[{self.stage}] {step:,}/{self.total:,} ({100 * step / max(self.total, 1):.0f}%)  "
              f"{rate:,.1f} {self.unit}/s  ETA {_fmt_s(eta)}  {fields}", flush=True)


def _fmt_s(s: float) -> str:
    if s == float("inf"):
        return "?"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=_json_default))


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def die(msg: str, code: int = 2) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(code)
