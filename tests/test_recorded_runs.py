"""A smoke run per backend reproduces its recorded results exactly.

tests/data/recorded_smoke_runs.json holds, per backend, every number of a smoke run's
results.json (scores, returns, action consistency, state MSEs, counts; not wall times, paths,
the code version or the config) and a digest of its synthetic transitions. A redesign of the
fast path or the pipeline must not change any of them: floats are compared for equality.

Re-record (only when a change of numbers is intended, and say so in the commit):
``DAWM_RECORD_RUNS=1 python -m pytest tests/test_recorded_runs.py``.
"""
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from dawm_fast import train
from dawm_fast.data import embedded
from dawm_fast.data.tasks import env_family

RECORD = Path(__file__).parent / "data" / "recorded_smoke_runs.json"
# Not numbers of the run: time, throughput, where it ran and with which code and settings.
SKIPPED = {"wall_time_s", "shared_wall_time_s", "generation_transitions_per_s", "code", "config",
           "dataset_source", "world_model_dir", "world_model_fingerprint", "device", "backend"}
SYNTHETIC_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals")


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    with embedded.random_policy_store(tmp_path_factory.mktemp("recorded"),
                                      env_family("walker2d")) as root:
        yield root


def _numbers(res: dict) -> dict:
    return {k: v for k, v in sorted(res.items()) if k not in SKIPPED}


def _synthetic_digest(path: Path) -> str:
    h = hashlib.sha256()
    with np.load(path) as z:
        for key in SYNTHETIC_KEYS:
            a = np.ascontiguousarray(z[key])
            h.update(key.encode() + str(a.dtype).encode() + str(a.shape).encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_smoke_run_reproduces_its_recorded_numbers(smoke_data, tmp_path, backend):
    out = tmp_path / backend
    assert train.main(["--env", "walker2d-medium-expert", "--preset", "smoke", "--out", str(out),
                       "--device", "cpu", "--backend", backend, "--synthetic-ratio", "0.5"]) == 0
    got = {"results": _numbers(json.loads((out / "results.json").read_text())),
           "synthetic_sha256": _synthetic_digest(out / "synthetic.npz")}
    recorded = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    if os.environ.get("DAWM_RECORD_RUNS") == "1":
        recorded[backend] = got
        RECORD.parent.mkdir(exist_ok=True)
        RECORD.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        return
    want = recorded[backend]
    differ = {k: (want["results"].get(k), got["results"].get(k))
              for k in set(want["results"]) | set(got["results"])
              if not _same(want["results"].get(k), got["results"].get(k))}
    assert not differ, f"{backend}: results.json numbers changed (recorded, now): {differ}"
    assert got["synthetic_sha256"] == want["synthetic_sha256"], \
        f"{backend}: the synthetic transitions changed"
