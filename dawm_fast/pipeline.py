"""The DAWM pipeline, stage by stage: data -> IDM -> world model -> generation -> RL -> evaluation.

Each stage writes its product into the run directory; `progress.json` records the finished ones, so
re-running with the same directory resumes at the first unfinished stage, and the long stages
(world model, RL) resume mid-stage from their last atomic checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch

from dawm_fast import distributed
from dawm_fast.config import (STATE_NORMALIZERS, PipelineConfig, config_from_dict,
                              world_model_fingerprint)
from dawm_fast.data import (MinMaxNormalizer, Normalizer, OfflineDataset, load_dataset,
                            make_windows, normalized_score)
from dawm_fast.data.dataset import subset_episode_fraction, subset_episodes
from dawm_fast.data.fingerprint import data_fingerprint, fingerprint_difference
from dawm_fast.data.tasks import parse_task
from dawm_fast.evaluation import dynamics_check, evaluate_policy
from dawm_fast.provenance import code_version
from dawm_fast.rl.buffer import MixedSampler, Transitions, compute_obs_stats, iql_reward_scale
from dawm_fast.rl.fast_updates import FastIQL, FastTD3BC
from dawm_fast.rl.iql import IQL
from dawm_fast.rl.td3bc import TD3BC
from dawm_fast.distributed import World
from dawm_fast.run_io import (Interrupted, MetricsLog, Progress, RunError, atomic_torch_save, deferred_stop,
                              load_arrays, load_checkpoint, nonfinite_tensors, raise_if_stopped,
                              reading, stop_requested, write_json)
from dawm_fast.ops import ExtensionUnavailable
from dawm_fast.sampling import generate_transitions
from dawm_fast.step_graphs import GraphCaptureError
from dawm_fast.world_model import (DiffusionWorldModel, InverseDynamics, WorldModelTrainer,
                                   WorldModelTrainerConfig, train_inverse_dynamics)
from dawm_fast.world_model import action_labels
from dawm_fast.world_model.fast_training import FastWorldModelTrainer
from dawm_fast.world_model.training import WindowBatcher

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


class Pipeline:
    def __init__(self, cfg: PipelineConfig, out: Path, world: World = World()):
        self.cfg = cfg
        self.out = out
        # Under torchrun: rank 0 runs every stage and writes every file; the other ranks run
        # world_model_worker() and join the world-model stage only.
        self.world = world
        self._workers_released = not world.active
        self.device = torch.device(cfg.device)
        self.family, self.kind = parse_task(cfg.env)
        self.progress_path = out / "progress.json"
        self.state = {"identity": cfg.identity(), "done": {}}

    # -- bookkeeping -----------------------------------------------------------------------------
    def _load_progress(self) -> None:
        if not self.progress_path.exists():
            return
        try:
            state = json.loads(self.progress_path.read_text())
            ok = (isinstance(state, dict) and isinstance(state.get("done"), dict)
                  and isinstance(state.get("identity", {}), dict)
                  and all(isinstance(v, dict) and isinstance(v.get("wall_s"), (int, float))
                          and k in STAGES for k, v in state["done"].items()))
        except ValueError:
            ok = False
        if not ok:
            raise RunError(f"{self.progress_path} is corrupt; delete that file to redo every "
                           f"stage from the checkpoints kept, or choose another --out")
        state.setdefault("identity", self.cfg.identity())
        self.state = state
        self._redo_missing_products()

    def _redo_missing_products(self) -> None:
        """A finished stage whose product was deleted is redone, with every stage after it."""
        done = self.state["done"]
        for i, stage in enumerate(STAGES):
            info, product = done.get(stage), PRODUCTS.get(stage)
            if (info is None or product is None or "skipped" in info or "shared_from" in info
                    or (self.out / product).exists()):
                continue
            redo = [s for s in STAGES[i:] if s in done]
            for s in redo:
                del done[s]
            write_json(self.progress_path, self.state)
            print(f"[{stage}] {self.out / product} is missing: redoing {', '.join(redo)}",
                  flush=True)
            return

    def _finish(self, stage: str, wall_s: float, **info) -> None:
        self.state["done"][stage] = {"wall_s": round(wall_s, 2), **info}
        write_json(self.progress_path, self.state)

    def done(self, stage: str) -> bool:
        return stage in self.state["done"]

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
        self.metrics = None
        self.stage_data()
        self._train_world_model(message["checkpoint"])

    def _run(self, until: str | None) -> dict | None:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        self._load_progress()
        write_json(self.out / "config.json", cfg.to_dict())
        self.metrics = MetricsLog(self.out / "metrics.csv")
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        for stage in STAGES:
            if self.done(stage) and stage != "data":
                print(f"[{stage}] finished earlier ({self.state['done'][stage]['wall_s']:.0f} s); "
                      f"skipping", flush=True)
                if stage == until:
                    return None
                continue
            t0 = time.time()
            if cfg.synthetic_ratio == 0 and stage in WORLD_MODEL_STAGES:
                # the plain baseline: no world model at all, the RL code path unchanged
                self._finish(stage, 0.0, skipped="synthetic_ratio 0")
                continue
            if cfg.world_model_dir is not None and stage in WORLD_MODEL_STAGES:
                self._adopt_shared(stage)
                continue
            if stage != "world_model" and self.world.active and STAGES.index(stage) > \
                    STAGES.index("world_model"):
                self._release_workers(None)
            ckpt = CHECKPOINTS.get(stage)
            if ckpt is None or not (self.out / ckpt).exists():
                self.metrics.truncate_after(stage, -1)   # a stage redone from its start logs anew
            try:
                info = getattr(self, f"stage_{stage}")() or {}
            except (GraphCaptureError, ExtensionUnavailable) as exc:
                # finished stages and checkpoints stay on disk, and either backend resumes them
                raise RunError(f"{exc}; rerun with --backend reference (plain eager PyTorch) "
                               f"to go on") from exc
            if not self.done(stage):
                self._finish(stage, time.time() - t0 + self._resumed_wall(stage), **info)
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
            state = json.loads((shared / "progress.json").read_text())
            shared_cfg = config_from_dict(json.loads((shared / "config.json").read_text()))
        except (OSError, ValueError) as e:
            raise RunError(f"world_model_dir {shared} holds no readable finished world model "
                           f"({type(e).__name__}); run its stages first (--until generation)") \
                from None
        if stage not in state.get("done", {}):
            raise RunError(f"world_model_dir {shared} has not finished stage '{stage}'; run it "
                           f"first (python -m dawm_fast.train ... --until generation --out "
                           f"{shared})")
        want, have = world_model_fingerprint(self.cfg), world_model_fingerprint(shared_cfg)
        if want != have:
            raise RunError(f"world_model_dir {shared} was made with other world-model settings "
                           f"(fingerprint {have} there, {want} for this run)")
        info = dict(state["done"][stage])
        self._finish(stage, 0.0, **{k: v for k, v in info.items() if k != "wall_s"},
                     shared_from=str(shared), shared_wall_s=info.get("wall_s", 0.0))
        print(f"[{stage}] shared: read from {shared} (world model {want})", flush=True)

    def _resumed_wall(self, stage: str) -> float:
        """Wall time a stage had already spent before an interruption (kept in its checkpoint)."""
        return getattr(self, "_wall_before", {}).get(stage, 0.0)

    # -- stage: data -----------------------------------------------------------------------------
    def stage_data(self) -> dict:
        cfg = self.cfg
        t0 = time.time()
        ds = load_dataset(cfg.env, source=cfg.data_source, path=cfg.data_path)
        if self.world.is_main:
            self._check_data_fingerprint(ds)
        if cfg.max_transitions is not None:
            ds = subset_episodes(ds, cfg.max_transitions, cfg.seed)
        if cfg.episode_fraction < 1.0:
            ds = subset_episode_fraction(ds, cfg.episode_fraction, cfg.seed)
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
        # Windows as the world model's training tensors (normalized).
        w = make_windows(ds, cfg.world_model.horizon, cfg.gamma, self.family.rtg_scale)
        if len(w) == 0:
            raise RunError(f"{cfg.env}: no episode is at least {cfg.world_model.horizon} steps "
                           f"long; the dataset cannot train a horizon-"
                           f"{cfg.world_model.horizon} world model")
        m, t_len = w.states.shape[:2]
        o, a = ds.obs_dim, ds.act_dim
        x0 = np.zeros((m, t_len, o + a + 1), np.float32)                      # [M, T, C]
        x0[:, :, :o] = self.state_norm.normalize(w.states)
        x0[:, 0, o:o + a] = w.first_actions
        x0[:, :, -1] = self.reward_norm.normalize(w.rewards[..., None])[..., 0]
        self.windows = {"x0": torch.from_numpy(x0).to(self.device),
                        "returns": torch.from_numpy(w.returns_to_go).to(self.device),
                        "actions": torch.from_numpy(w.first_actions).to(self.device)}
        self.real_rtg = w.returns_to_go
        return {"transitions": len(ds), "windows": m, "source": ds.source,
                "load_s": round(time.time() - t0, 2)}

    def _check_data_fingerprint(self, ds: OfflineDataset) -> None:
        """Refuse to resume on other data than the run started on; runs saved before
        fingerprints existed have theirs recorded now."""
        cfg, identity = self.cfg, self.state["identity"]
        old = identity.get("data")
        path = cfg.data_path if cfg.data_source == "d4rl" else None
        fp = data_fingerprint(ds, path, known=old if isinstance(old, dict) else None)
        why = fingerprint_difference(old, fp) if isinstance(old, dict) else None
        if why:
            raise RunError(f"--out {self.out} was started on other data ({why}); restore the "
                           f"data it started on to resume it, or choose another --out")
        if fp != old:
            identity["data"] = fp
            if self.progress_path.exists():
                write_json(self.progress_path, self.state)

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
        idm_cfg = dataclasses.replace(cfg.idm, seed=cfg.seed)
        idm, report = train_inverse_dynamics(self.state_norm.normalize(ds.observations),
                                             self.state_norm.normalize(ds.next_observations),
                                             ds.actions, idm_cfg, device=self.device)
        bad = nonfinite_tensors({"held-out MSE": report.heldout_mse, "train MSE": report.train_mse,
                                 "weights": idm.state_dict()})
        if bad:
            raise RunError(f"[idm] the inverse dynamics model's {bad[0]} became NaN or inf by step "
                           f"{idm_cfg.n_steps} (not saved); rerun in another --out with a lower "
                           f"learning rate (--set idm.lr=..., now {cfg.idm.lr:g})")
        atomic_torch_save({"model": idm.state_dict(), "report": dataclasses.asdict(report)},
                          self.out / "idm.pt")
        self.metrics.log("idm", idm_cfg.n_steps, heldout_action_mse=report.heldout_mse,
                         train_action_mse=report.train_mse)
        print(f"[idm] held-out action MSE {report.heldout_mse:.4f} (action variance "
              f"{report.heldout_action_var:.4f})", flush=True)
        return {"heldout_action_mse": report.heldout_mse,
                "heldout_action_var": report.heldout_action_var}

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

    def stage_world_model(self) -> dict:
        ckpt_path = self.out / "world_model_ckpt.pt"
        ck = None
        if ckpt_path.exists():
            ck = load_checkpoint(ckpt_path, "world_model", ("trainer", "batch_generator"))
        self._release_workers({"checkpoint": ck})     # under torchrun: the other ranks join
        return self._train_world_model(ck)

    def _train_world_model(self, ck: dict | None) -> dict:
        """The world-model loop, on every rank under torchrun (rank 0 alone logs and writes)."""
        cfg, world, main = self.cfg, self.world, self.world.is_main
        model = self.new_world_model()
        trainer_cfg = WorldModelTrainerConfig(lr=cfg.wm_lr, seed=cfg.seed + 2, ema=cfg.wm_ema,
                                              bf16=cfg.wm_bf16)
        if world.active:
            if cfg.wm_batch_size % world.size:
                raise RunError(f"[world_model] the batch of {cfg.wm_batch_size} windows does not "
                               f"split over {world.size} processes; launch a world size that "
                               f"divides it, or --set wm_batch_size=...")
            # The CUDA-graph step does not capture DDP's gradient all-reduce yet: data-parallel
            # training runs the eager step on every backend.
            trainer = WorldModelTrainer(model, trainer_cfg, shard=world.shard)
        else:
            trainer_cls = FastWorldModelTrainer if cfg.backend == "fast" else WorldModelTrainer
            trainer = trainer_cls(model, trainer_cfg)
        batch_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 3)
        ckpt_path = self.out / "world_model_ckpt.pt"
        wall_before = 0.0
        if ck is not None:
            with reading(ckpt_path, "world_model"):
                trainer.load_state_dict(ck["trainer"])
                batch_gen.set_state(ck["batch_generator"])
            wall_before = ck.get("wall_s", 0.0)
            if main:
                self.metrics.truncate_after("world_model", trainer.step)
                print(f"[world_model] resumed at step {trainer.step:,}", flush=True)
        n_params = sum(p.numel() for p in model.parameters())
        path = getattr(trainer, "path_description", "reference (eager PyTorch)")
        if world.active:
            path = (f"DistributedDataParallel over {world.size} processes, "
                    f"{cfg.wm_batch_size // world.size} windows each (eager step)")
        if main:
            print(f"[world_model] temporal U-Net {n_params / 1e6:.2f}M parameters, "
                  f"{cfg.wm_steps:,} steps at batch {cfg.wm_batch_size}"
                  f"{' in bf16 autocast' if cfg.wm_bf16 else ''}; training path: {path}",
                  flush=True)
        # Windows stay on the device; each step draws its batch there (inside the step's CUDA
        # graph on the fast path).
        batcher = WindowBatcher(self.windows["x0"], self.windows["returns"],
                                self.windows["actions"], cfg.wm_batch_size, batch_gen,
                                shard=world.shard)
        prog = Progress("world_model", cfg.wm_steps, trainer.step, cfg.progress_every_s)
        t0, losses, last_loss = time.time(), [], float("nan")
        nan_advice = (f"(not saved); rerun in another --out with a lower learning rate (--set "
                      f"wm_lr=..., now {cfg.wm_lr:g})")
        with deferred_stop():     # SIGINT/SIGTERM: checkpoint at the next step boundary, stop
            while trainer.step < cfg.wm_steps:
                out = trainer.train_step(batcher)
                losses.append(out["loss"])  # a float, or a device tensor (fast path: no sync)
                step = trainer.step
                if step % 100 == 0 or step == cfg.wm_steps:
                    # the global batch's loss: the mean over ranks (all ranks see the same value)
                    last_loss = float(distributed.mean_over_ranks(
                        torch.stack([torch.as_tensor(v) for v in losses]).mean(), world))
                    if not np.isfinite(last_loss):
                        raise RunError(f"[world_model] the loss became {last_loss} by step "
                                       f"{step} {nan_advice}")
                    if main:
                        self.metrics.log("world_model", step, loss=last_loss)
                    losses = []
                if main:
                    prog.update(step, loss=last_loss)
                stopping = distributed.any_rank(stop_requested(), world, self.device)
                if not main:
                    if stopping:
                        raise Interrupted(signal.SIGTERM)
                    continue
                if (step % cfg.wm_checkpoint_every == 0 or step == cfg.wm_steps
                        or stopping):
                    state = trainer.state_dict()
                    bad = nonfinite_tensors(state)
                    if bad:
                        raise RunError(f"[world_model] {bad[0]} became NaN or inf by step "
                                       f"{step} {nan_advice}")
                    atomic_torch_save({"trainer": state, "batch_generator": batch_gen.get_state(),
                                       "wall_s": wall_before + time.time() - t0}, ckpt_path)
                    if stopping and not stop_requested():    # another rank was signalled
                        raise Interrupted(signal.SIGTERM)
                    raise_if_stopped()
        if not main:
            return {}
        atomic_torch_save({"ema_model": trainer.ema.model.state_dict()},
                          self.out / "world_model.pt")
        self._wall_before = {"world_model": wall_before}
        return {"steps": trainer.step, "parameters": n_params}

    def load_world_model(self) -> DiffusionWorldModel:
        path = self.products_dir / "world_model.pt"
        ck = load_checkpoint(path, "world_model", ("ema_model",))
        model = self.new_world_model()
        with reading(path, "world_model"):
            model.load_state_dict(ck["ema_model"])
        return model.eval()

    # -- stage: generation -----------------------------------------------------------------------
    def stage_generation(self) -> dict:
        cfg, ds = self.cfg, self.dataset
        model, idm = self.load_world_model(), self.load_idm()
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 4)
        rng = np.random.default_rng(cfg.seed + 4)
        n = cfg.n_synthetic_starts
        rows = rng.choice(len(ds), n, replace=n > len(ds))
        s0 = torch.as_tensor(self.state_norm.normalize(ds.observations[rows]), device=self.device)
        a0 = torch.as_tensor(ds.actions[rows], device=self.device)
        g = torch.full((n,), cfg.resolved_target_return(), device=self.device)
        print(f"[generation] {n:,} starts, target return {cfg.resolved_target_return():.2f}, "
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
                           f"lower --set wm_lr=... (now {cfg.wm_lr:g}) or another --target-return "
                           f"(now {cfg.resolved_target_return():g})")
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
                "clipped_fraction": clipped, "dropped_clipped_terminals": dropped,
                "transitions_per_s": rate, **replay}

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
              f"{s['reward_rmse']:.4f} (real reward std {rep['real_reward_std']:.4f}); "
              f"dynamics_check.json has it by window step", flush=True)
        self.metrics.log("generation", len(syn["rewards"]), replay_state_error=s["state_error"],
                         replay_still_error=rep["still_error"],
                         replay_reward_rmse=s["reward_rmse"])
        return {"replay_state_error": s["state_error"], "replay_still_error": rep["still_error"],
                "replay_reward_rmse": s["reward_rmse"]}

    # -- stage: offline RL -----------------------------------------------------------------------
    def _rl_setup(self):
        cfg, ds = self.cfg, self.dataset
        real = Transitions.from_numpy(ds.observations, ds.actions, ds.rewards,
                                      ds.next_observations, ds.terminals.astype(np.float32))
        syn = None
        if cfg.synthetic_ratio > 0:
            z = load_arrays(self.products_dir / "synthetic.npz", "generation", SYNTHETIC_KEYS)
            actions = self._synthetic_actions(z)
            syn = Transitions.from_numpy(z["observations"], actions, z["rewards"],
                                         z["next_observations"], z["terminals"])
        mean, std = compute_obs_stats(ds.observations)
        fast = cfg.backend == "fast"
        if cfg.algo == "td3bc":
            agent = (FastTD3BC if fast else TD3BC)(
                ds.obs_dim, ds.act_dim, dataclasses.replace(cfg.td3bc, seed=cfg.seed),
                self.device, mean, std)
            batch_size = cfg.td3bc.batch_size
        else:
            agent = (FastIQL if fast else IQL)(ds.obs_dim, ds.act_dim, dataclasses.replace(
                cfg.iql, seed=cfg.seed, max_steps=cfg.rl_steps), self.device, mean, std)
            batch_size = cfg.iql.batch_size
        parts = []
        for t in (real, syn):
            if t is None:
                parts.append(None)
                continue
            t = t.normalized(mean, std)
            if cfg.algo == "iql" and cfg.iql.normalize_reward:
                t = t.scaled_rewards(self.iql_scale)
            parts.append(t.to(self.device))
        sampler = MixedSampler(parts[0], parts[1], cfg.synthetic_ratio, batch_size,
                               torch.Generator(device=self.device).manual_seed(cfg.seed + 5))
        return agent, sampler

    def _synthetic_actions(self, syn: dict) -> np.ndarray:
        """The synthetic rows' actions: the IDM's (DAWM), or, for the action-label ablation,
        a BC policy's or uniform noise on the same states and rewards; the relabelling and its
        simulator replay are measured once per process (deterministic: seeded)."""
        cfg = self.cfg
        if cfg.synthetic_actions == "idm":
            return syn["actions"]
        if getattr(self, "_relabelled", None) is None:
            idm_cfg = dataclasses.replace(cfg.idm, seed=cfg.seed + 7)
            actions, info = action_labels.relabel(
                cfg.synthetic_actions, syn, self.state_norm.normalize, self.dataset.observations,
                self.dataset.actions, idm_cfg, cfg.seed + 7, self.device)
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

    @property
    def iql_scale(self) -> float:
        return iql_reward_scale(self.dataset.rewards, self.dataset.episode_ends)

    def evaluate(self, agent, episodes: int, seed: int) -> dict:
        ds = self.dataset
        res = evaluate_policy(agent.act, ds.eval_env_id, episodes, seed)
        scores, label = normalized_score(self.family.name, res.returns)
        out = {"return_mean": float(res.returns.mean()), "return_std": float(res.returns.std()),
               "score_mean": float(scores.mean()), "score_std": float(scores.std()),
               "reference": label, "returns": res.returns.tolist()}
        if ds.ref_min_score is not None and ds.ref_max_score is not None:
            s2, label2 = normalized_score(self.family.name, res.returns, ds.ref_min_score,
                                          ds.ref_max_score)
            out.update(dataset_score_mean=float(s2.mean()), dataset_score_std=float(s2.std()),
                       dataset_reference=label2)
        return out

    def stage_rl(self) -> dict:
        cfg = self.cfg
        agent, sampler = self._rl_setup()
        ckpt_path = self.out / "rl_ckpt.pt"
        step, wall_before = 0, 0.0
        if ckpt_path.exists():
            ck = load_checkpoint(ckpt_path, "rl", ("agent", "sampler", "step"))
            with reading(ckpt_path, "rl"):
                agent.load_state_dict(ck["agent"])
                sampler.load_state_dict(ck["sampler"])
                step, wall_before = int(ck["step"]), float(ck.get("wall_s", 0.0))
                if not 0 <= step <= cfg.rl_steps:
                    raise ValueError(f"update {step} is outside [0, {cfg.rl_steps}]")
            self.metrics.truncate_after("rl", step)
            print(f"[rl] resumed at update {step:,}", flush=True)
        path = getattr(agent, "path_description", "reference (eager PyTorch)")
        print(f"[rl] {cfg.algo} for {cfg.rl_steps:,} updates, batch {sampler.batch_size} "
              f"({sampler.n_synthetic} synthetic + {sampler.n_real} real); update path: {path}",
              flush=True)
        prog = Progress("rl", cfg.rl_steps, step, cfg.progress_every_s, unit="updates")
        t0, last_score = time.time(), float("nan")
        acc: dict[str, list] = {}
        lrs = [f.name for f in dataclasses.fields(getattr(cfg, cfg.algo)) if f.name.endswith("_lr")]

        def check_finite(what: dict, step: int) -> None:
            bad = nonfinite_tensors(what)
            if bad:
                raise RunError(f"[rl] {bad[0]} became NaN or inf by update {step} (not saved); "
                               f"rerun in another --out with lower learning rates (" +
                               ", ".join(f"--set {cfg.algo}.{k}=..., now "
                                         f"{getattr(getattr(cfg, cfg.algo), k):g}" for k in lrs)
                               + ")")

        with deferred_stop():     # SIGINT/SIGTERM: checkpoint at the next update boundary, stop
            while step < cfg.rl_steps:
                prev = step
                if hasattr(agent, "update_from") and cfg.rl_steps - step >= agent.updates_per_call:
                    log, n = agent.update_from(sampler)   # fast path: a whole cadence per call
                else:
                    log, n = agent.update(sampler.sample()), 1
                step += n
                crossed = lambda every: step // every != prev // every or step == cfg.rl_steps
                for k, v in log.items():
                    acc.setdefault(k, []).append(v)
                if crossed(1000):
                    means = {k: float(torch.stack(v).mean()) for k, v in acc.items()}
                    check_finite({f"the {k}": v for k, v in means.items()}, step)
                    self.metrics.log("rl", step, **means)
                    acc = {}
                if crossed(cfg.eval_every):
                    check_finite({"agent": agent.state_dict()}, step)
                    ev = self.evaluate(agent, cfg.eval_episodes, seed=cfg.seed * 1000 + step)
                    last_score = ev["score_mean"]
                    self.metrics.log("rl", step, eval_score=ev["score_mean"],
                                     eval_return=ev["return_mean"])
                    print(f"[rl] update {step:,}: normalized score {ev['score_mean']:.1f} ± "
                          f"{ev['score_std']:.1f} (return {ev['return_mean']:.0f})", flush=True)
                prog.update(step, score=last_score)
                if crossed(cfg.rl_checkpoint_every) or stop_requested():
                    state = agent.state_dict()
                    check_finite({"agent": state}, step)
                    atomic_torch_save({"agent": state, "sampler": sampler.state_dict(),
                                       "step": step, "wall_s": wall_before + time.time() - t0},
                                      ckpt_path)
                    raise_if_stopped()
        state = agent.state_dict()
        check_finite({"agent": state}, step)
        atomic_torch_save({"agent": state}, self.out / "agent.pt")
        self._wall_before = {"rl": wall_before}
        relabel_info = getattr(self, "_relabelled", (None, {}))[1]
        return {"updates": step, **relabel_info}

    # -- stage: evaluation -----------------------------------------------------------------------
    def stage_evaluation(self) -> dict:
        cfg = self.cfg
        agent, _ = self._rl_setup()
        path = self.out / "agent.pt"
        ck = load_checkpoint(path, "rl", ("agent",))
        with reading(path, "rl"):
            agent.load_state_dict(ck["agent"])
        ev = self.evaluate(agent, cfg.final_eval_episodes, seed=10_000_019 + cfg.seed)
        print(f"[evaluation] {cfg.final_eval_episodes} episodes on {self.dataset.eval_env_id}: "
              f"normalized score {ev['score_mean']:.1f} ± {ev['score_std']:.1f} "
              f"(return {ev['return_mean']:.0f} ± {ev['return_std']:.0f}; {ev['reference']})",
              flush=True)
        self.metrics.log("evaluation", 0, score=ev["score_mean"], return_mean=ev["return_mean"])
        return ev

    # -- results ---------------------------------------------------------------------------------
    def results(self) -> dict:
        cfg, done = self.cfg, self.state["done"]
        ev = done["evaluation"]
        res = {
            "env": cfg.env, "algo": cfg.algo, "seed": cfg.seed, "preset": cfg.preset,
            "backend": cfg.backend, "device": str(self.device),
            "dataset_source": self.dataset.source, "dataset_transitions": len(self.dataset),
            "eval_env": self.dataset.eval_env_id,
            "synthetic_ratio": cfg.synthetic_ratio,
            "final_score_mean": ev["score_mean"], "final_score_std": ev["score_std"],
            "final_return_mean": ev["return_mean"], "final_return_std": ev["return_std"],
            "final_eval_episodes": cfg.final_eval_episodes,
            "score_reference": ev["reference"],
            "action_consistency_mse": done["generation"].get("action_consistency_mse"),
            "one_step_state_mse": done["generation"].get("one_step_state_mse"),
            "copy_state_mse": done["generation"].get("copy_state_mse"),
            "synthetic_clipped_fraction": done["generation"].get("clipped_fraction"),
            "replay_state_error": done["generation"].get("replay_state_error"),
            "replay_still_error": done["generation"].get("replay_still_error"),
            "replay_reward_rmse": done["generation"].get("replay_reward_rmse"),
            "idm_heldout_action_mse": done["idm"].get("heldout_action_mse"),
            "synthetic_transitions": done["generation"].get("synthetic_transitions", 0),
            "generation_transitions_per_s": done["generation"].get("transitions_per_s"),
            "wall_time_s": {s: done[s]["wall_s"] for s in STAGES if s in done},
            # what a report needs to tell runs of one setting from runs of another
            "world_model_fingerprint": (world_model_fingerprint(cfg) if cfg.synthetic_ratio > 0
                                        else None),
            "world_model_dir": cfg.world_model_dir,
            "shared_wall_time_s": {s: done[s]["shared_wall_s"] for s in WORLD_MODEL_STAGES
                                   if "shared_wall_s" in done.get(s, {})},
            "synthetic_actions": cfg.synthetic_actions,
            "label_action_mse": done["rl"].get("label_action_mse"),
            "label_replay_state_error": done["rl"].get("label_replay_state_error"),
            "code": code_version(),
            "config": cfg.to_dict(),
        }
        for k in ("dataset_score_mean", "dataset_score_std", "dataset_reference"):
            if k in ev:
                res[k] = ev[k]
        write_json(self.out / "results.json", res)
        from dawm_fast.plots import write_plots
        write_plots(self.out, self.metrics.read(), self.dataset, self.cfg.synthetic_ratio,
                    self.products_dir / "synthetic.npz")
        return res
