"""A run directory's record of finished stages (`progress.json`): what each stage returned, its
wall time, and the run's identity (config keys and data fingerprint) that a resume must match."""
from __future__ import annotations

import json
from pathlib import Path

from dawm_fast.run_io import RunError, write_json

# progress.json of runs made before the stages returned results.json's names: old -> new.
_OLD_STAGE_FIELDS = {
    "idm": {"heldout_action_mse": "idm_heldout_action_mse",
            "heldout_action_var": "idm_heldout_action_var"},
    "generation": {"clipped_fraction": "synthetic_clipped_fraction",
                   "transitions_per_s": "generation_transitions_per_s"},
    "evaluation": {"score_mean": "final_score_mean", "score_std": "final_score_std",
                   "return_mean": "final_return_mean", "return_std": "final_return_std",
                   "reference": "score_reference", "returns": "final_returns"},
}


def evaluation_fields(ev: dict) -> dict:
    """A final evaluation (evaluation.score_policy) under results.json's names."""
    return _current_names("evaluation", ev)


def _current_names(stage: str, info: dict) -> dict:
    renames = _OLD_STAGE_FIELDS.get(stage, {})
    return {renames.get(k, k): v for k, v in info.items()}


def read_progress(path: Path, stages: tuple[str, ...]) -> dict | None:
    """A progress.json with its stages' returns under today's names; None when corrupt."""
    try:
        state = json.loads(path.read_text())
        ok = (isinstance(state, dict) and isinstance(state.get("done"), dict)
              and isinstance(state.get("identity", {}), dict)
              and all(isinstance(v, dict) and isinstance(v.get("wall_s"), (int, float))
                      and k in stages for k, v in state["done"].items()))
    except ValueError:
        return None
    if not ok:
        return None
    state["done"] = {k: _current_names(k, v) for k, v in state["done"].items()}
    return state


def stages_done(run_dir: Path) -> dict[str, dict]:
    """The finished stages a run directory's progress.json lists, for readers outside the run
    (sweep plans, reuse, exports): {} when it has none or it is unreadable, because those skip
    a run they cannot read rather than fail (the run itself reports a corrupt file, via
    read_progress)."""
    try:
        done = json.loads((run_dir / "progress.json").read_text()).get("done")
    except (OSError, ValueError, AttributeError):
        return {}
    return done if isinstance(done, dict) else {}


class RunProgress:
    """The finished stages of one run directory, written atomically at every change."""

    def __init__(self, out: Path, stages: tuple[str, ...], identity: dict):
        self.path, self.stages = out / "progress.json", stages
        self.state = {"identity": identity, "done": {}}

    @property
    def finished(self) -> dict[str, dict]:
        """stage -> what it returned, with its wall_s."""
        return self.state["done"]

    @property
    def identity(self) -> dict:
        return self.state["identity"]

    def load(self) -> None:
        if not self.path.exists():
            return
        state = read_progress(self.path, self.stages)
        if state is None:
            raise RunError(f"{self.path} is corrupt; delete that file to redo every stage from "
                           f"the checkpoints kept, or choose another --out")
        state.setdefault("identity", self.state["identity"])
        self.state = state

    def redo_missing_products(self, products: dict[str, Path]) -> None:
        """A finished stage whose product (stage -> file) was deleted is redone, with every
        stage after it."""
        done = self.finished
        for i, stage in enumerate(self.stages):
            info, product = done.get(stage), products.get(stage)
            if (info is None or product is None or "skipped" in info or "shared_from" in info
                    or product.exists()):
                continue
            redo = [s for s in self.stages[i:] if s in done]
            for s in redo:
                del done[s]
            self.save()
            print(f"[{stage}] {product} is missing: redoing {', '.join(redo)}", flush=True)
            return

    def finish(self, stage: str, wall_s: float, **info) -> None:
        self.finished[stage] = {"wall_s": round(wall_s, 2), **info}
        self.save()

    def done(self, stage: str) -> bool:
        return stage in self.finished

    def save(self) -> None:
        write_json(self.path, self.state)
