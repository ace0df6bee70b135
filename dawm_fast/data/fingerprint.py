"""What data a run started on, so that a resume on other data is refused rather than mixed.

A D4RL file is identified by its size, modification time and SHA-256 (the hash is recomputed only
when size or time changed, so a resume does not reread a large file that was left alone); Minari
and embedded data by their dataset ids with versions (in the source string) and their length.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from .dataset import OfflineDataset


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_fingerprint(ds: OfflineDataset, d4rl_path: str | None = None,
                     known: dict | None = None) -> dict:
    """The fingerprint of `ds` as loaded (before any subset); `d4rl_path` when it came from a
    D4RL file. `known`, an earlier fingerprint of the same file, spares the hash when the file's
    size and time are unchanged."""
    fp = {"source": ds.source, "transitions": len(ds)}
    if d4rl_path is not None:
        st = Path(d4rl_path).stat()
        fp.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        same_stat = known is not None and all(known.get(k) == fp[k] for k in ("size", "mtime_ns"))
        fp["sha256"] = known["sha256"] if same_stat and "sha256" in known else _sha256(
            Path(d4rl_path))
    return fp


def fingerprint_difference(old: dict, new: dict) -> str | None:
    """None when `old` and `new` are the same data; else what differs, in words. Two D4RL files
    with the same content are the same data, whatever their times."""
    if "sha256" in old and "sha256" in new and old["sha256"] == new["sha256"]:
        return None
    keys = [k for k in ("source", "transitions", "size", "sha256")
            if k in old or k in new]
    diff = [k for k in keys if old.get(k) != new.get(k)]
    if not diff:
        return None
    shown = []
    for k in diff:
        if k == "sha256":
            shown.append("file content differs (SHA-256)")
        elif k == "size":
            shown.append(f"file size {old.get(k)} bytes there vs {new.get(k)} now")
        else:
            shown.append(f"{k} {old.get(k)!r} there vs {new.get(k)!r} now")
    return "; ".join(shown)
