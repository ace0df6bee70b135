"""Run-directory plumbing: atomic writes, checkpoints and files checked where they are read (a
failure is one line naming the file), metrics CSV, progress, stop signals."""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
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


def _corrupt(path: Path, stage: str, why: str) -> RunError:
    return RunError(f"{path} (stage '{stage}') is corrupt or unreadable ({why}); delete that "
                    f"file to redo the stage from its last good point, or use another --out")


@contextlib.contextmanager
def reading(path: Path, stage: str):
    """Whatever goes wrong while a file's contents are read or loaded into a model (a truncated
    zip, a missing key, a shape that does not fit) becomes one line naming the file."""
    try:
        yield
    except RunError:
        raise
    except FileNotFoundError:
        raise RunError(f"{path} (stage '{stage}') is missing: that stage has not finished in "
                       f"this run directory (or its file was deleted); run the stage there, or "
                       f"use the run directory that holds it") from None
    except Exception as e:
        detail = str(e).splitlines()[0][:120] if str(e) else ""
        raise _corrupt(path, stage, f"{type(e).__name__}{': ' + detail if detail else ''}") \
            from None


def load_checkpoint(path: Path, stage: str, keys: tuple[str, ...] = ()):
    """A checkpoint dict holding `keys`, with every float tensor finite."""
    with reading(path, stage):
        ck = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ck, dict) or any(k not in ck for k in keys):
        raise _corrupt(path, stage, f"expected the keys {', '.join(keys)}")
    bad = nonfinite_tensors(ck)
    if bad:
        raise _corrupt(path, stage, f"NaN or inf in {bad[0]}")
    return ck


def nonfinite_tensors(obj, prefix: str = "") -> list[str]:
    """Names of the float tensors / arrays / numbers in a nested dict or list that hold NaN or
    inf (empty when all is finite)."""
    if isinstance(obj, dict):
        return [n for k, v in obj.items() for n in nonfinite_tensors(v, f"{prefix}{k}.")]
    if isinstance(obj, (list, tuple)):
        return [n for i, v in enumerate(obj) for n in nonfinite_tensors(v, f"{prefix}{i}.")]
    name = prefix.rstrip(".") or "value"
    if isinstance(obj, torch.Tensor):
        return [name] if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else []
    if isinstance(obj, np.ndarray):
        return [name] if obj.dtype.kind == "f" and not np.isfinite(obj).all() else []
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [name]
    return []


def load_arrays(path: Path, stage: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """An .npz file's arrays `keys`: present, of one length, finite (else one line naming it)."""
    with reading(path, stage):
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise _corrupt(path, stage, f"no '{missing[0]}' array")
            arrays = {k: z[k] for k in keys}
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise _corrupt(path, stage, "arrays of different lengths: " +
                       ", ".join(f"{k} {n}" for k, n in lengths.items()))
    bad = nonfinite_tensors(arrays)
    if bad:
        raise _corrupt(path, stage, f"NaN or inf in '{bad[0]}'")
    return arrays


def read_metric_rows(path: Path) -> list[dict]:
    """The rows of a metrics.csv (MetricsLog's long format) as dicts; [] when there is none.
    Read-only: for readers outside the run (reports, sweep plans), which must not repair or
    rewrite a file a running job is appending to."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class MetricsLog:
    """Long-format CSV (stage, step, wall_s, metric, value): one row per measured number."""

    FIELDS = ("stage", "step", "wall_s", "metric", "value")

    def __init__(self, path: Path):
        self.path = path
        self.t0 = time.time()
        if not path.exists():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)
        else:
            self._repair()

    def _repair(self) -> None:
        """A run stopped mid-write leaves a last line without its newline: drop it (it is
        logged again when its step is redone). Anything else that does not parse is reported."""
        text = self.path.read_text(errors="replace")
        header = ",".join(self.FIELDS)
        if header.startswith(text.strip()):              # empty, or cut inside the header
            atomic_write_text(self.path, header + "\n")
            return
        complete = text[:text.rfind("\n") + 1]
        for i, line in enumerate(complete.splitlines()):
            fields = line.split(",")
            ok = (line == header) if i == 0 else len(fields) == len(self.FIELDS)
            if ok and i > 0:
                try:
                    int(fields[1]), float(fields[2]), float(fields[4])
                except ValueError:
                    ok = False
            if not ok:
                raise RunError(f"{self.path} is corrupt at line {i + 1}; delete that file (the "
                               f"numbers logged so far are lost, the run is not) or use another "
                               f"--out")
        if complete != text:
            atomic_write_text(self.path, complete)

    def log(self, stage: str, step: int, **metrics) -> None:
        wall = round(time.time() - self.t0, 2)
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            for k, v in metrics.items():
                w.writerow((stage, step, wall, k, f"{float(v):.6g}"))

    def read(self) -> list[dict]:
        return read_metric_rows(self.path)

    def truncate_after(self, stage: str, step: int) -> None:
        """Drop rows of `stage` beyond `step` (written after the checkpoint a resume starts
        from), so a resumed run's CSV has no duplicate or orphaned points."""
        self._rewrite([r for r in self.read()
                       if not (r["stage"] == stage and int(r["step"]) > step)])

    def keep_stages(self, stages: tuple[str, ...]) -> None:
        """Drop every row of the other stages (a world model reused for another generation
        keeps its training's rows only)."""
        self._rewrite([r for r in self.read() if r["stage"] in stages])

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, self.FIELDS)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)


class StageCheckpoint:
    """The resume file of one long stage (world model, RL), shared by both loops: it restores
    the loop's state, writes it atomically (the loop writes it every `every` steps, at the last
    step and at a stop signal), refuses non-finite state, and carries the stage's wall time
    across interruptions."""

    def __init__(self, path: Path, stage: str, every: int, nan_advice: str, unit: str = "step"):
        self.path, self.stage, self.every = path, stage, every
        self.unit = unit
        self.nan_advice = nan_advice        # what to do when the state went NaN (not saved)
        self.wall_before = 0.0              # wall time spent in earlier attempts
        self.t0 = time.time()

    def load(self, keys: tuple[str, ...]) -> dict | None:
        """The saved state (with `keys` checked), or None when the stage starts afresh."""
        if not self.path.exists():
            return None
        return load_checkpoint(self.path, self.stage, keys)

    def restore(self, ck: dict, restore_fn) -> None:
        """Apply `restore_fn(ck)`; a failure names the file (see `reading`)."""
        with reading(self.path, self.stage):
            restore_fn(ck)
        self.wall_before = float(ck.get("wall_s", 0.0))
        self.t0 = time.time()

    def check_finite(self, state, step: int, what: str = "") -> None:
        bad = nonfinite_tensors(state, what)
        if bad:
            raise RunError(f"[{self.stage}] {bad[0]} became NaN or inf by {self.unit} {step} "
                           f"(not saved); {self.nan_advice}")

    def save(self, state: dict, step: int) -> None:
        self.check_finite(state, step)
        atomic_torch_save({**state, "wall_s": self.wall_s()}, self.path)

    def wall_s(self) -> float:
        """The stage's wall time so far, earlier attempts included."""
        return self.wall_before + time.time() - self.t0


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
              f"{rate:,.1f} {self.unit}/s  ETA {format_duration(eta)}  {fields}", flush=True)


def format_duration(s: float) -> str:
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


# -- stop signals ----------------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run; `signum` says which (exit code 128 + signum)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_stop = {"deferring": 0, "pending": None}


def _on_stop_signal(signum, frame) -> None:
    # Outside a training loop's steps: stop at once (every write is atomic, so no file is left
    # half written). Inside: note it; the loop checkpoints and stops at its next step boundary.
    # A second signal while one is pending stops at once.
    if _stop["deferring"] and _stop["pending"] is None:
        _stop["pending"] = signum
    else:
        raise Interrupted(signum)


@contextlib.contextmanager
def stop_signals():
    """Within the block SIGINT and SIGTERM are handled alike (Interrupted); the previous handlers
    come back after it. Off the main thread, where Python cannot set handlers, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _on_stop_signal) for s in _STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _stop["pending"] = None


@contextlib.contextmanager
def deferred_stop():
    """A training loop: a stop signal is held until the loop asks `stop_requested()` at a step
    boundary, where it writes a checkpoint and calls `raise_if_stopped()`. One still pending
    when the block ends stops the run there."""
    _stop["deferring"] += 1
    try:
        yield
    finally:
        _stop["deferring"] -= 1
    raise_if_stopped()


def stop_requested() -> bool:
    return _stop["pending"] is not None


def raise_if_stopped() -> None:
    signum = _stop["pending"]
    if signum is not None:
        _stop["pending"] = None
        raise Interrupted(signum)
