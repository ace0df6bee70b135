"""The DAWM pipeline, stage by stage: data -> IDM -> world model -> generation -> RL -> evaluation.

A thin sequence of parts: each stage calls the part that does its work (`world_model.fit`,
`rl.loop`, `sampling`, `evaluation`), writes its product into the run directory and returns what
results.json reports. `progress.json` records the finished stages, so re-running with the same
directory resumes at the first unfinished one; the long stages resume mid-stage from their last
atomic checkpoint (`run_io.StageCheckpoint`). Errors carry no command-line wording.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from dawm_fast import backends, distributed
from dawm_fast.config import (STATE_NORMALIZERS, PipelineConfig, config_from_dict,
                              world_model_fingerprint)
from dawm_fast.data import (MinMaxNormalizer, Normalizer, OfflineDataset, discounted_returns_to_go,
                            load_dataset)
from dawm_fast.data.dataset import run_subset
from dawm_fast.data.fingerprint import data_fingerprint, fingerprint_difference
from dawm_fast.data.tasks import parse_task
from dawm_fast.distributed import World
from dawm_fast.evaluation import dynamics_check, score_policy
from dawm_fast.provenance import code_version
from dawm_fast.rl.buffer import MixedSampler, Transitions, compute_obs_stats, iql_reward_scale
from dawm_fast.rl.loop import train_agent
from dawm_fast.run_progress import RunProgress, evaluation_fields, read_progress
from dawm_fast.run_io import (MetricsLog, RunError, StageCheckpoint, atomic_torch_save,
                              load_arrays, load_checkpoint, nonfinite_tensors, reading, write_json)
from dawm_fast.sampling import generate_transitions
from dawm_fast.world_model import (DiffusionWorldModel, InverseDynamics, action_labels,
                                   fall_classifier, train_inverse_dynamics)
from dawm_fast.world_model.fit import fit_world_model, training_windows

STAGES = ("data", "idm", "world_model", "generation", "rl", "evaluation")
# The stages whose products (idm.pt, world_model.pt, synthetic.npz) depend on the task, the seed
# and the world-model settings only: a run with `world_model_dir` reads them from there.
WORLD_MODEL_STAGES = ("idm", "world_model", "generation")
# What a finished stage leaves for the later ones: deleting it redoes that stage and every later
# one. The long stages resume mid-stage from their checkpoint.
PRODUCTS = {"idm": "idm.pt", "world_model": "world_model.pt", "generation": "synthetic.npz",
            "rl": "agent.pt"}
CHECKPOINTS = {"world_model": "world_model_ckpt.pt", "rl": "rl_ckpt.pt"}
SYNTHETIC_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals")
# What results.json takes from each stage's return, under the same names (None where the stage
# did not run: a plain run has no world model).
RESULT_FIELDS = {
    "idm": ("idm_heldout_action_mse",),
    "generation": ("action_consistency_mse", "one_step_state_mse", "copy_state_mse",
                   "synthetic_clipped_fraction", "replay_state_error", "replay_still_error",
                   "replay_reward_rmse", "synthetic_transitions", "generation_transitions_per_s",
                   "target_return_mean"),
    "rl": ("label_action_mse", "label_replay_state_error", "falls_marked_by_health_check",
           "falls_added_by_classifier", "rows_dropped_after_falls", "synthetic_falls",
           "classifier_heldout_recall"),
    "evaluation": ("final_score_mean", "final_score_std", "final_return_mean",
                   "final_return_std", "score_reference"),
}
# The dataset-reference scores, present when the dataset has its own reference returns.
OPTIONAL_RESULT_FIELDS = {"evaluation": ("dataset_score_mean", "dataset_score_std",
                                         "dataset_reference")}


def guidance_targets(cfg: PipelineConfig, ds: OfflineDataset, rtg_scale: float,
                     rows: np.ndarray) -> np.ndarray:
    """float32 [n]: the normalized return-to-go cfg guides each start (row of ds) toward."""
    if cfg.target_mode == "own":
        # the g make_windows pairs with a window starting at that row
        own = discounted_returns_to_go(ds.rewards, ds.episode_ends, cfg.gamma)
        return (cfg.target_gain * own[rows] / rtg_scale).astype(np.float32)
    return np.full(len(rows), cfg.resolved_target_return(), np.float32)


class Pipeline:
    def __init__(self, cfg: PipelineConfig, out: Path, world: World = World()):
        if cfg.backend == "auto":
            cfg = dataclasses.replace(cfg, backend=backends.resolve_backend("auto",
                                                                            cfg.device)[0])
        self.cfg = cfg
        self.out = out
        # Under torchrun: rank 0 runs every stage and writes every file; the other ranks run
        # world_model_worker() and join the world-model stage only.
        self.world = world
        self._workers_released = not world.active
        self.device = torch.device(cfg.device)
        self.family, self.kind = parse_task(cfg.env)
        self.progress = RunProgress(out, STAGES, cfg.identity())
        self.metrics: MetricsLog | None = None
        self._relabelled = None
        self._fall_labelled = None
        # Which code runs is decided when this process imported it: read the commit now (it is
        # cached), not when results.json is written hours later, after the checkout may have moved.
        code_version()

    def done(self, stage: str) -> bool:
        return self.progress.done(stage)

    # -- the run ---------------------------------------------------------------------------------
    def run(self, until: str | None = None) -> dict | None:
        """Run (or resume) every stage; with `until`, stop after that stage and return None."""
        try:
            return self._run(until)
        finally:
            self._release_workers(None)    # the other ranks are not needed (or rank 0 failed)

    def _release_workers(self, message: dict | None) -> None:
        """Tell the other ranks, once, whether they join world-model training (`message` holds
        the checkpoint to start from) or are done (None)."""
        if not self._workers_released:
            self._workers_released = True
            distributed.broadcast(message, self.world)

    def world_model_worker(self) -> None:
        """A rank other than 0: wait for rank 0's word, then load the data (read only) and train
        the world model data-parallel with it; write nothing."""
        message = distributed.broadcast(None, self.world)
        if message is None:
            return
        self.stage_data()
        self._fit_world_model(message["checkpoint"])

    def _run(self, until: str | None) -> dict | None:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress.load()
        self.progress.redo_missing_products({s: self.out / p for s, p in PRODUCTS.items()})
        write_json(self.out / "config.json", cfg.to_dict())
        self.metrics = MetricsLog(self.out / "metrics.csv")
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        for stage in STAGES:
            if self.done(stage) and stage != "data":
                wall = self.progress.finished[stage]["wall_s"]
                print(f"[{stage}] finished earlier ({wall:.0f} s); skipping", flush=True)
                if stage == until:
                    return None
                continue
            t0 = time.time()
            if cfg.synthetic_ratio == 0 and stage in WORLD_MODEL_STAGES:
                # the plain baseline: no world model at all, the RL code path unchanged
                self.progress.finish(stage, 0.0, skipped="synthetic_ratio 0")
                continue
            if cfg.world_model_dir is not None and stage in WORLD_MODEL_STAGES:
                self._adopt_shared(stage)
                continue
            if self.world.active and STAGES.index(stage) > STAGES.index("world_model"):
                self._release_workers(None)
            if stage not in CHECKPOINTS or not (self.out / CHECKPOINTS[stage]).exists():
                self.metrics.truncate_after(stage, -1)   # a stage redone from its start logs anew
            info = getattr(self, f"stage_{stage}")()
            if not self.done(stage):
                # a long stage returns its wall time, earlier attempts included
                self.progress.finish(stage, info.pop("wall_s", time.time() - t0), **info)
            if stage == until:
                return None
        return self.results()

    @property
    def products_dir(self) -> Path:
        """Where this run's world-model products live: its own directory, or the shared one."""
        if self.cfg.world_model_dir is None:
            return self.out
        return Path(self.cfg.world_model_dir)

    def _adopt_shared(self, stage: str) -> None:
        """Take a world-model stage as done by the shared run in `world_model_dir`, which must
        have finished it with the same world-model settings (same fingerprint)."""
        shared = self.products_dir
        try:
            state = read_progress(shared / "progress.json", STAGES)
            shared_cfg = config_from_dict(json.loads((shared / "config.json").read_text()))
        except (OSError, ValueError) as e:
            state, why = None, type(e).__name__
        else:
            why = "corrupt progress.json"
        if state is None:
            raise RunError(f"world_model_dir {shared} holds no readable finished world model "
                           f"({why}); run its stages first (until the generation stage)")
        if stage not in state["done"]:
            raise RunError(f"world_model_dir {shared} has not finished stage '{stage}'; run its "
                           f"stages first (until the generation stage, with --out {shared})")
        want, have = world_model_fingerprint(self.cfg), world_model_fingerprint(shared_cfg)
        if want != have:
            raise RunError(f"world_model_dir {shared} was made with other world-model settings "
                           f"(fingerprint {have} there, {want} for this run)")
        info = dict(state["done"][stage])
        self.progress.finish(stage, 0.0, **{k: v for k, v in info.items() if k != "wall_s"},
                     shared_from=str(shared), shared_wall_s=info.get("wall_s", 0.0))
        print(f"[{stage}] shared: read from {shared} (world model {want})", flush=True)

    # -- stage: data -----------------------------------------------------------------------------
    def stage_data(self) -> dict:
        cfg = self.cfg
        t0 = time.time()
        ds = load_dataset(cfg.env, source=cfg.data_source, path=cfg.data_path)
        if self.world.is_main:
            self._check_data_fingerprint(ds)
        ds = run_subset(ds, cfg.max_transitions, cfg.episode_fraction, cfg.seed)
        self.dataset: OfflineDataset = ds
        print(f"[data] {ds.summary()}", flush=True)
        print(f"[data] evaluation env: {ds.eval_env_id}", flush=True)
        norm_dir = self.out / "normalizers"
        if self.world.is_main:
            norm_dir.mkdir(exist_ok=True)
        paths = norm_dir / "states.npz", norm_dir / "rewards.npz"
        if all(p.exists() for p in paths):
            self.state_norm, self.reward_norm = (self._load_normalizer(p, k, d) for p, k, d in zip(
                paths, (cfg.state_normalizer, "minmax"), (ds.obs_dim, 1)))
        else:
            states = np.concatenate([ds.observations, ds.next_observations])
            if cfg.state_normalizer not in STATE_NORMALIZERS:
                raise RunError(f"unknown state_normalizer {cfg.state_normalizer!r}; valid: "
                               f"{', '.join(STATE_NORMALIZERS)}")
            self.state_norm = STATE_NORMALIZERS[cfg.state_normalizer](states)
            self.reward_norm = MinMaxNormalizer(ds.rewards[:, None])
            for norm, p in zip((self.state_norm, self.reward_norm), paths):
                tmp = p.with_name(p.name + ".tmp")
                with open(tmp, "wb") as f:
                    norm.save(f)
                os.replace(tmp, p)
        self.windows = training_windows(ds, self.state_norm, self.reward_norm,
                                        cfg.world_model.horizon, cfg.gamma,
                                        self.family.rtg_scale, self.device,
                                        cfg.windows_past_falls, cfg.past_fall_reward)
        return {"transitions": len(ds), "windows": len(self.windows["x0"]), "source": ds.source,
                "load_s": round(time.time() - t0, 2)}

    def _check_data_fingerprint(self, ds: OfflineDataset) -> None:
        """Refuse to resume on other data than the run started on; runs saved before
        fingerprints existed have theirs recorded now."""
        cfg, identity = self.cfg, self.progress.identity
        old = identity.get("data")
        path = cfg.data_path if cfg.data_source == "d4rl" else None
        fp = data_fingerprint(ds, path, known=old if isinstance(old, dict) else None)
        why = fingerprint_difference(old, fp) if isinstance(old, dict) else None
        if why:
            raise RunError(f"--out {self.out} was started on other data ({why}); restore the "
                           f"data it started on to resume it, or choose another --out")
        if fp != old:
            identity["data"] = fp
            if self.progress.path.exists():
                self.progress.save()

    def _load_normalizer(self, path: Path, kind: str, dim: int) -> Normalizer:
        with reading(path, "data"):
            norm = Normalizer.load(path)
            probe = norm.normalize(np.zeros((1, dim), np.float32))
        if norm.kind != kind or probe.shape != (1, dim) or nonfinite_tensors(
                {k: v for k, v in vars(norm).items()}):
            raise RunError(f"{path} is not a finite {kind} normalizer for {dim} dimensions; delete "
                           f"that file to fit it again from the data, or use another --out")
        return norm

    # -- stage: inverse dynamics -----------------------------------------------------------------
    def stage_idm(self) -> dict:
        ds, cfg = self.dataset, self.cfg
        print(f"[idm] training the inverse dynamics model ({cfg.idm.n_steps:,} steps)", flush=True)
        idm, report = train_inverse_dynamics(self.state_norm.normalize(ds.observations),
                                             self.state_norm.normalize(ds.next_observations),
                                             ds.actions, cfg.idm, device=self.device,
                                             seed=cfg.seed)
        bad = nonfinite_tensors({"held-out MSE": report.heldout_mse, "train MSE": report.train_mse,
                                 "weights": idm.state_dict()})
        if bad:
            raise RunError(f"[idm] the inverse dynamics model's {bad[0]} became NaN or inf by step "
                           f"{cfg.idm.n_steps} (not saved); rerun in another --out with a lower "
                           f"learning rate (--set idm.lr=..., now {cfg.idm.lr:g})")
        atomic_torch_save({"model": idm.state_dict(), "report": dataclasses.asdict(report)},
                          self.out / "idm.pt")
        self.metrics.log("idm", cfg.idm.n_steps, heldout_action_mse=report.heldout_mse,
                         train_action_mse=report.train_mse)
        print(f"[idm] held-out action MSE {report.heldout_mse:.4f} (action variance "
              f"{report.heldout_action_var:.4f})", flush=True)
        return {"idm_heldout_action_mse": report.heldout_mse,
                "idm_heldout_action_var": report.heldout_action_var}

    def load_idm(self) -> InverseDynamics:
        path = self.products_dir / "idm.pt"
        ck = load_checkpoint(path, "idm", ("model",))
        idm = InverseDynamics(self.dataset.obs_dim, self.dataset.act_dim, self.cfg.idm)
        with reading(path, "idm"):
            idm.load_state_dict(ck["model"])
        return idm.to(self.device).eval()

    # -- stage: world model ----------------------------------------------------------------------
    def new_world_model(self) -> DiffusionWorldModel:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed + 1)
            model = DiffusionWorldModel(self.dataset.obs_dim, self.dataset.act_dim,
                                        self.cfg.world_model)
        return model.to(self.device)

    def _world_model_checkpoint(self) -> StageCheckpoint:
        training = self.cfg.wm_training
        return StageCheckpoint(self.out / CHECKPOINTS["world_model"], "world_model",
                               training.checkpoint_every,
                               f"rerun in another --out with a lower learning rate (--set "
                               f"wm_training.lr=..., now {training.lr:g})")

    def stage_world_model(self) -> dict:
        ck = self._world_model_checkpoint().load(("trainer", "batch_generator"))
        self._release_workers({"checkpoint": ck})     # under torchrun: the other ranks join
        return self._fit_world_model(ck)

    def _fit_world_model(self, resume: dict | None) -> dict:
        """On every rank under torchrun; rank 0 alone logs and writes."""
        cfg, checkpoint = self.cfg, self._world_model_checkpoint()
        trainer, info = fit_world_model(
            self.new_world_model(), self.windows, cfg.wm_training, backend=cfg.backend,
            seed=cfg.seed, checkpoint=checkpoint, resume=resume,
            metrics=self.metrics if self.world.is_main else None,
            progress_every_s=cfg.progress_every_s, world=self.world)
        if self.world.is_main:
            atomic_torch_save({"ema_model": trainer.ema.model.state_dict()},
                              self.out / "world_model.pt")
        return {**info, "wall_s": checkpoint.wall_s()}

    def load_world_model(self) -> DiffusionWorldModel:
        path = self.products_dir / "world_model.pt"
        ck = load_checkpoint(path, "world_model", ("ema_model",))
        model = self.new_world_model()
        with reading(path, "world_model"):
            model.load_state_dict(ck["ema_model"])
        return model.eval()

    # -- stage: generation -----------------------------------------------------------------------
    def guidance_targets(self, rows: np.ndarray) -> np.ndarray:
        """float32 [n]: the normalized return-to-go each start (dataset row) is guided toward."""
        return guidance_targets(self.cfg, self.dataset, self.family.rtg_scale, rows)

    def stage_generation(self) -> dict:
        cfg, ds = self.cfg, self.dataset
        model, idm = self.load_world_model(), self.load_idm()
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 4)
        rng = np.random.default_rng(cfg.seed + 4)
        n = cfg.n_synthetic_starts
        rows = rng.choice(len(ds), n, replace=n > len(ds))
        s0 = torch.as_tensor(self.state_norm.normalize(ds.observations[rows]), device=self.device)
        a0 = torch.as_tensor(ds.actions[rows], device=self.device)
        g = torch.as_tensor(self.guidance_targets(rows), device=self.device)
        print(f"[generation] {n:,} starts, target return {cfg.target_description()}, "
              f"guidance w {cfg.sampling.guidance_weight}, {cfg.sampling.n_sampling_steps} DDIM "
              f"steps, backend {cfg.backend}; step-0 rewards "
              f"{'from the dataset' if cfg.sampling.real_first_reward else 'generated'}",
              flush=True)
        t0 = time.time()
        s1 = torch.as_tensor(self.state_norm.normalize(ds.next_observations[rows]),
                             device=self.device)
        syn = generate_transitions(
            model, idm, s0, a0, g, self.family, self.state_norm.unnormalize,
            lambda r: self.reward_norm.unnormalize(r[:, None])[:, 0], cfg.sampling, gen,
            backend=cfg.backend, next_states=s1, first_rewards=ds.rewards[rows])
        dt = time.time() - t0
        consistency = syn.pop("action_consistency")
        step_mse, clipped = syn.pop("one_step_state_mse"), syn.pop("clipped_fraction")
        dropped = syn.pop("dropped_clipped_terminals")
        # Scale for step_mse: predicting "nothing moves" (s_{t+1} = s_t) on the same starts.
        copy_mse = float(((s0 - s1) ** 2).mean())
        n_syn = len(syn["rewards"])
        bad = nonfinite_tensors(syn)
        if bad:
            raise RunError(f"[generation] the synthetic '{bad[0]}' hold NaN or inf (not saved); "
                           f"the world model or IDM made them: rerun in another --out with a "
                           f"lower --set wm_training.lr=... (now {cfg.wm_training.lr:g}) or "
                           f"another --target-return (now {cfg.target_description()})")
        tmp = self.out / "synthetic.tmp.npz"
        np.savez(tmp, **syn)
        os.replace(tmp, self.out / "synthetic.npz")
        rate = n_syn / dt
        self.metrics.log("generation", n_syn, transitions_per_s=rate,
                         action_consistency_mse=consistency, one_step_state_mse=step_mse,
                         copy_state_mse=copy_mse, clipped_fraction=clipped,
                         dropped_clipped_terminals=dropped,
                         terminal_fraction=float(syn["terminals"].mean()) if n_syn else 0.0)
        print(f"[generation] {n_syn:,} synthetic transitions in {dt:.1f} s ({rate:,.0f}/s); "
              f"action consistency MSE {consistency:.4f}", flush=True)
        print(f"[generation] world-model check: one-step state MSE {step_mse:.4f} against the "
              f"real next states (normalized; 'nothing moves' scores {copy_mse:.4f}); "
              f"{clipped:.1%} of generated state values at the clip bound; {dropped:,} windows "
              f"cut at a fall only the clip made", flush=True)
        replay = self._replay_check(syn)
        return {"synthetic_transitions": n_syn, "action_consistency_mse": consistency,
                "one_step_state_mse": step_mse, "copy_state_mse": copy_mse,
                "synthetic_clipped_fraction": clipped, "dropped_clipped_terminals": dropped,
                "generation_transitions_per_s": rate, "target_return_mean": float(g.mean()),
                **replay}

    def _replay_check(self, syn: dict) -> dict:
        """A diagnostic, never a filter: up to 5,000 synthetic transitions replayed in the
        simulator (dynamics_check), their errors against the true dynamics written to
        dynamics_check.json and the log."""
        if len(syn["rewards"]) == 0:
            return {}
        rep = dynamics_check.check(self.family, syn, dynamics_check.dataset_arrays(self.dataset),
                                   n=5_000, seed=self.cfg.seed + 5,
                                   env_id=self.dataset.eval_env_id)
        write_json(self.out / "dynamics_check.json", rep)
        s = rep["synthetic"]
        print(f"[generation] simulator replay (diagnostic, not used for training): synthetic "
              f"next states off the true dynamics by {s['state_error']:.4f} (standardized MSE; "
              f"'nothing moves' {rep['still_error']:.4f}, real data 0), reward RMSE "
              f"{s['reward_rmse']:.4f} (real reward std {rep['real_reward_std']:.4f}); falls "
              f"per step {s['falls']:.2%} (real data {rep['real_fall_rate']:.2%}; against the "
              f"simulator {s['missed_falls']:.2%} missed, {s['made_up_falls']:.2%} made up); "
              f"dynamics_check.json has it by window step and over whole windows", flush=True)
        self.metrics.log("generation", len(syn["rewards"]), replay_state_error=s["state_error"],
                         replay_still_error=rep["still_error"],
                         replay_reward_rmse=s["reward_rmse"])
        return {"replay_state_error": s["state_error"], "replay_still_error": rep["still_error"],
                "replay_reward_rmse": s["reward_rmse"]}

    # -- stage: offline RL -----------------------------------------------------------------------
    def _agent(self):
        cfg, ds = self.cfg, self.dataset
        mean, std = compute_obs_stats(ds.observations)
        agent = backends.rl_agent(cfg.backend, cfg.algo, ds.obs_dim, ds.act_dim,
                                  getattr(cfg, cfg.algo), self.device, mean, std, seed=cfg.seed,
                                  gamma=cfg.gamma, total_steps=cfg.rl_steps)
        return agent, mean, std

    def _sampler(self, mean: np.ndarray, std: np.ndarray) -> MixedSampler:
        """Batches of real and synthetic transitions (observations standardized by the real
        data's statistics; IQL's rewards scaled), `synthetic_ratio` of each batch synthetic."""
        cfg, ds = self.cfg, self.dataset
        real = Transitions.from_numpy(ds.observations, ds.actions, ds.rewards,
                                      ds.next_observations, ds.terminals.astype(np.float32))
        syn = None
        if cfg.synthetic_ratio > 0:
            z = self._synthetic_falls(
                load_arrays(self.products_dir / "synthetic.npz", "generation", SYNTHETIC_KEYS))
            syn = Transitions.from_numpy(z["observations"], self._synthetic_actions(z),
                                         z["rewards"], z["next_observations"], z["terminals"])
        parts = []
        for t in (real, syn):
            if t is not None:
                t = t.normalized(mean, std)
                if cfg.algo == "iql" and cfg.iql.normalize_reward:
                    t = t.scaled_rewards(self.iql_scale)
                t = t.to(self.device)
            parts.append(t)
        batch_size = getattr(cfg, cfg.algo).batch_size
        return MixedSampler(parts[0], parts[1], cfg.synthetic_ratio, batch_size,
                            torch.Generator(device=self.device).manual_seed(cfg.seed + 5))

    def _synthetic_falls(self, syn: dict) -> dict:
        """The synthetic arrays with their falls as `synthetic_terminals` says: the generated
        states' health check (as saved), or also a fall classifier on (s, a) trained on the real
        data, each new fall's window cut after it (world_model/fall_classifier.py). Once per
        process (seeded, so a resume labels the same rows)."""
        cfg, ds = self.cfg, self.dataset
        if cfg.synthetic_terminals == "health":
            return syn
        if self._fall_labelled is None:
            real = {"observations": ds.observations, "actions": ds.actions,
                    "terminals": ds.terminals}
            labelled, info = fall_classifier.classify_synthetic_falls(
                syn, real, self.state_norm.normalize, cfg.fall_classifier, self.device,
                seed=cfg.seed + fall_classifier.SEED_OFFSET)
            self._fall_labelled = labelled, info
            if "fall_classifier" in info:                  # no falls in the data to learn from
                print(f"[rl] synthetic falls: {info['fall_classifier']}", flush=True)
                return labelled
            recall, alarms = (info[k] for k in ("classifier_heldout_recall",
                                                "classifier_heldout_false_alarms"))
            print(f"[rl] synthetic falls: the health check marked "
                  f"{info['falls_marked_by_health_check']:,}, the fall classifier (held-out "
                  f"recall {'n/a' if recall is None else f'{recall:.2f}'}, false alarms "
                  f"{'n/a' if alarms is None else f'{alarms:.4f}'} per row) "
                  f"{info['falls_added_by_classifier']:,} more; "
                  f"{info['rows_dropped_after_falls']:,} rows after them dropped, "
                  f"{info['synthetic_falls']:,} falls left (one per window at most)", flush=True)
        return self._fall_labelled[0]

    def _synthetic_actions(self, syn: dict) -> np.ndarray:
        """The synthetic rows' actions: the IDM's (DAWM), or, for the action-label ablation,
        a BC policy's or uniform noise on the same states and rewards; the relabelling and its
        simulator replay are measured once per process (deterministic: seeded)."""
        cfg = self.cfg
        if cfg.synthetic_actions == "idm":
            return syn["actions"]
        if self._relabelled is None:
            actions, info = action_labels.relabel(
                cfg.synthetic_actions, syn, self.state_norm.normalize, self.dataset.observations,
                self.dataset.actions, cfg.idm, cfg.seed + 7, self.device)
            replay = dynamics_check.check(self.family, {**syn, "actions": actions},
                                          dynamics_check.dataset_arrays(self.dataset), n=5_000,
                                          seed=cfg.seed + 5, env_id=self.dataset.eval_env_id)
            info["label_replay_state_error"] = replay["synthetic"]["state_error"]
            print(f"[rl] synthetic actions from {cfg.synthetic_actions} (ablation): "
                  f"{info['relabelled_rows']:,} IDM actions replaced; against the real a_t of "
                  f"window starts MSE {info['label_action_mse']:.4f}; simulator replay of the "
                  f"relabelled transitions off by {info['label_replay_state_error']:.4f}",
                  flush=True)
            self._relabelled = actions, info
        return self._relabelled[0]

    def stage_rl(self) -> dict:
        cfg = self.cfg
        agent, mean, std = self._agent()
        sampler = self._sampler(mean, std)
        lrs = [f.name for f in dataclasses.fields(getattr(cfg, cfg.algo)) if f.name.endswith("_lr")]
        checkpoint = StageCheckpoint(
            self.out / CHECKPOINTS["rl"], "rl", cfg.rl_checkpoint_every,
            "rerun in another --out with lower learning rates (" + ", ".join(
                f"--set {cfg.algo}.{k}=..., now {getattr(getattr(cfg, cfg.algo), k):g}"
                for k in lrs) + ")", unit="update")
        resume = checkpoint.load(("agent", "sampler", "step"))
        print(f"[rl] {cfg.algo} for {cfg.rl_steps:,} updates, batch {sampler.batch_size} "
              f"({sampler.n_synthetic} synthetic + {sampler.n_real} real); update path: "
              f"{agent.path_description}", flush=True)

        def evaluate(step: int) -> dict:
            ev = self.evaluate(agent, cfg.eval_episodes, seed=cfg.seed * 1000 + step)
            self.metrics.log("rl", step, eval_score=ev["score_mean"],
                             eval_return=ev["return_mean"])
            print(f"[rl] update {step:,}: normalized score {ev['score_mean']:.1f} ± "
                  f"{ev['score_std']:.1f} (return {ev['return_mean']:.0f})", flush=True)
            return ev

        steps = train_agent(agent, sampler, cfg.rl_steps, checkpoint=checkpoint, resume=resume,
                            metrics=self.metrics, eval_every=cfg.eval_every, evaluate=evaluate,
                            progress_every_s=cfg.progress_every_s)
        # finite: the loop's last checkpoint (or the one resumed from) checked this state
        atomic_torch_save({"agent": agent.state_dict()}, self.out / PRODUCTS["rl"])
        labels = {**(self._fall_labelled[1] if self._fall_labelled is not None else {}),
                  **(self._relabelled[1] if self._relabelled is not None else {})}
        return {"updates": steps, **labels, "wall_s": checkpoint.wall_s()}

    @property
    def iql_scale(self) -> float:
        return iql_reward_scale(self.dataset.rewards, self.dataset.episode_ends)

    def evaluate(self, agent, episodes: int, seed: int) -> dict:
        return score_policy(agent.act, self.dataset, self.family.name, episodes, seed)

    # -- stage: evaluation -----------------------------------------------------------------------
    def stage_evaluation(self) -> dict:
        cfg = self.cfg
        agent, _, _ = self._agent()
        path = self.out / PRODUCTS["rl"]
        ck = load_checkpoint(path, "rl", ("agent",))
        with reading(path, "rl"):
            agent.load_state_dict(ck["agent"])
        ev = self.evaluate(agent, cfg.final_eval_episodes, seed=10_000_019 + cfg.seed)
        print(f"[evaluation] {cfg.final_eval_episodes} episodes on {self.dataset.eval_env_id}: "
              f"normalized score {ev['score_mean']:.1f} ± {ev['score_std']:.1f} "
              f"(return {ev['return_mean']:.0f} ± {ev['return_std']:.0f}; {ev['reference']})",
              flush=True)
        self.metrics.log("evaluation", 0, score=ev["score_mean"], return_mean=ev["return_mean"])
        return evaluation_fields(ev)

    # -- results ---------------------------------------------------------------------------------
    def results(self) -> dict:
        """results.json: who the run is and what its data was, then the stages' returns
        (RESULT_FIELDS), wall times and provenance."""
        cfg, done = self.cfg, self.progress.finished
        res = {
            "env": cfg.env, "algo": cfg.algo, "seed": cfg.seed, "preset": cfg.preset,
            "backend": cfg.backend, "device": str(self.device),
            "dataset_source": self.dataset.source, "dataset_transitions": len(self.dataset),
            "eval_env": self.dataset.eval_env_id, "synthetic_ratio": cfg.synthetic_ratio,
            "final_eval_episodes": cfg.final_eval_episodes,
            "synthetic_actions": cfg.synthetic_actions,
        }
        for stage, names in RESULT_FIELDS.items():
            info = done.get(stage, {})
            res.update({k: info.get(k) for k in names})
            res.update({k: info[k] for k in OPTIONAL_RESULT_FIELDS.get(stage, ()) if k in info})
        res["synthetic_transitions"] = res["synthetic_transitions"] or 0    # plain: none
        res.update({
            "wall_time_s": {s: done[s]["wall_s"] for s in STAGES if s in done},
            "shared_wall_time_s": {s: done[s]["shared_wall_s"] for s in WORLD_MODEL_STAGES
                                   if "shared_wall_s" in done.get(s, {})},
            # what a report needs to tell runs of one setting from runs of another
            "world_model_fingerprint": (world_model_fingerprint(cfg) if cfg.synthetic_ratio > 0
                                        else None),
            "world_model_dir": cfg.world_model_dir,
            "code": code_version(),
            "config": cfg.to_dict(),
        })
        write_json(self.out / "results.json", res)
        from dawm_fast.plots import write_plots
        write_plots(self.out, self.metrics.read(), self.dataset, self.cfg.synthetic_ratio,
                    self.products_dir / "synthetic.npz")
        return res

