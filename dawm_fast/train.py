"""`python -m dawm_fast.train --env walker2d-medium-expert`: the whole DAWM pipeline.

Stages: data -> IDM -> world model -> generation -> RL -> evaluation, each with progress and a
checkpoint. Re-running with the same --out resumes (from the last finished stage, and mid-stage
from the last checkpoint). Writes DIR/results.json, DIR/metrics.csv and DIR/plots/*.png.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

import torch

from dawm_fast import distributed
from dawm_fast.backends import BackendUnavailable, resolve_backend
from dawm_fast.config import (ALGOS, BACKENDS, PRESETS, STATE_NORMALIZERS, ConfigMigrationError,
                              apply_overrides, config_differences, config_problems,
                              preset_config, with_state_normalizer)
from dawm_fast.data import SOURCES, TASK_NAMES, DatasetError, UnknownTaskError
from dawm_fast.ops import ExtensionUnavailable
from dawm_fast.run_io import RunError, die, stop_signals
from dawm_fast.step_graphs import GraphCaptureError
from dawm_fast.run_lock import BUSY_EXIT_CODE, LOCK_NAME, RunDirBusy, run_dir_lock
from dawm_fast.rl.buffer import MixedSampler
from dawm_fast.world_model.scheduler import PREDICTION_TYPES


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dawm_fast.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="walker2d-medium-expert",
                   help="dataset name: {halfcheetah,hopper,walker2d}-{medium,medium-replay,"
                        "medium-expert,expert}")
    p.add_argument("--algo", default="td3bc", help=f"one of {', '.join(ALGOS)}")
    p.add_argument("--preset", default=None,
                   help=f"one of {', '.join(PRESETS)} (default: paper with a GPU, cpu without)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="run directory (default runs/<env>_<algo>_<preset>_ratio<r>_seed<seed>)")
    p.add_argument("--backend", default=None,
                   help=f"one of {', '.join(BACKENDS)} (default auto: fast where the C++ "
                        f"extension runs, else reference; resuming keeps the run's own)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    p.add_argument("--data-source", default="auto", help=f"one of {', '.join(SOURCES)}")
    p.add_argument("--data-path", default=None, help="D4RL .hdf5 file (with --data-source d4rl)")
    p.add_argument("--synthetic-ratio", type=float, default=None,
                   help="share of each RL batch from synthetic data (0 = plain offline RL)")
    p.add_argument("--rl-steps", type=int, default=None)
    p.add_argument("--wm-steps", type=int, default=None)
    p.add_argument("--target-return", type=float, default=None,
                   help="guide every start toward this normalized return-to-go (default: "
                        "each start toward its own return-to-go in the data, target_mode=own)")
    p.add_argument("--until", default=None,
                   help="stop after this stage (data, idm, world_model, generation, rl); "
                        "rerun without it to continue")
    p.add_argument("--prediction-type", default=None, choices=PREDICTION_TYPES,
                   help="what the world model's network predicts: the noise (epsilon, as DWM) or "
                        "the clean window (sample); default per preset")
    p.add_argument("--state-normalizer", default=None, choices=STATE_NORMALIZERS,
                   help="how the world model scales states: gaussian (standardized, no x0 "
                        "clip; the default) or cdf (quantiles onto [-1, 1] with the x0 clip, as "
                        "DWM)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--bf16", action="store_true",
                   help="world-model training and sampling under bf16 autocast (fp32 weights, "
                        "Adam and DDIM state); for GPUs with bf16 tensor cores, off by default")
    p.add_argument("--bc-real-only", action="store_true",
                   help="TD3+BC: the BC term imitates the real rows of each batch only, not the "
                        "IDM-inferred actions of the synthetic ones (the critic uses both)")
    p.add_argument("--generated-first-reward", action="store_true",
                   help="keep the world model's step-0 reward instead of the dataset's r_t (the "
                        "first transition's (s_t, a_t) is real, so by default its reward is too)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config field (dotted for nested ones), e.g. --set "
                        "synthetic_ratio=0.25 --set td3bc.alpha=2.5; repeatable; applied last")
    p.add_argument("--world-model-dir", default=None,
                   help="read the idm / world-model / generation products from this run "
                        "directory (same task, seed and world-model settings) instead of "
                        "training them; a sweep shares one world model this way")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    if args.env not in TASK_NAMES:
        die(f"unknown --env {args.env!r}; valid: {', '.join(TASK_NAMES)}")
    if args.algo not in ALGOS:
        die(f"unknown --algo {args.algo!r}; valid: {', '.join(ALGOS)}")
    if args.backend is not None and args.backend not in BACKENDS:
        die(f"unknown --backend {args.backend!r}; valid: {', '.join(BACKENDS)}")
    if args.data_source not in SOURCES:
        die(f"unknown --data-source {args.data_source!r}; valid: {', '.join(SOURCES)}")
    has_cuda = torch.cuda.is_available()
    device = args.device or ("cuda" if has_cuda else "cpu")
    if device.startswith("cuda") and not has_cuda:
        die(f"--device {device} asked for a GPU but torch sees none "
            f"(torch {torch.__version__}); use --device cpu")
    preset = args.preset or ("paper" if device.startswith("cuda") else "cpu")
    if preset not in PRESETS:
        die(f"unknown --preset {preset!r}; valid: {', '.join(PRESETS)}")
    overrides = {"seed": args.seed, "backend": args.backend or "auto", "device": device,
                 "data_source": args.data_source, "data_path": args.data_path}
    for name in ("synthetic_ratio", "rl_steps", "target_return"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.target_return is not None:
        overrides["target_mode"] = "fixed"      # one target for every start
    if not 0.0 <= overrides.get("synthetic_ratio", 0.0) <= 1.0:
        die(f"--synthetic-ratio must be in [0, 1], got {args.synthetic_ratio}")
    cfg = preset_config(preset, args.env, args.algo, **overrides)
    if args.wm_steps is not None:
        cfg.wm_training = dataclasses.replace(cfg.wm_training, steps=args.wm_steps)
    if args.prediction_type is not None:
        wm = cfg.world_model
        cfg.world_model = dataclasses.replace(wm, schedule=dataclasses.replace(
            wm.schedule, prediction_type=args.prediction_type))
    if args.state_normalizer is not None:
        cfg = with_state_normalizer(cfg, args.state_normalizer)
    if args.bc_real_only:
        if cfg.algo != "td3bc":
            die(f"--bc-real-only is a TD3+BC option; --algo is {cfg.algo}")
        cfg.td3bc = dataclasses.replace(cfg.td3bc, bc_rows=MixedSampler.real_rows(
            cfg.td3bc.batch_size, cfg.synthetic_ratio))
    if args.generated_first_reward:
        cfg.sampling = dataclasses.replace(cfg.sampling, real_first_reward=False)
    if args.bf16:
        cfg.wm_training = dataclasses.replace(cfg.wm_training, bf16=True)
        cfg.sampling = dataclasses.replace(cfg.sampling, bf16=True)
    try:
        cfg = apply_overrides(cfg, args.set)
    except ValueError as e:
        die(str(e))
    if args.world_model_dir is not None:
        cfg.world_model_dir = args.world_model_dir
    return cfg


# config fields the user sets with a flag of their own (any other one: --set FIELD=VALUE)
_FLAGS = {"seed": "--seed", "rl_steps": "--rl-steps", "wm_training.steps": "--wm-steps",
          "target_return": "--target-return", "synthetic_ratio": "--synthetic-ratio"}


def check_values(args: argparse.Namespace, cfg) -> None:
    """Refuse non-finite and out-of-range values before anything is written."""
    problems = config_problems(cfg, lambda f: _FLAGS.get(f, f"--set {f}=..."))
    if args.threads is not None and args.threads < 1:
        problems.insert(0, f"--threads must be at least 1, got {args.threads}")
    if problems:
        die("; ".join(problems))


def prepare_out_dir(out: Path) -> None:
    """--out must be (or become) a directory this user can write."""
    if out.exists() and not out.is_dir():
        die(f"--out {out} is a file, not a directory; choose a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        die(f"--out {out} cannot be created ({e.strerror or type(e).__name__}"
            f"{': ' + str(e.filename) if e.filename else ''}); choose a writable place")
    if not os.access(out, os.W_OK | os.X_OK):
        die(f"--out {out} is not writable by this user; choose a writable place")


def check_out_dir(out: Path, cfg, backend_given: bool):
    """An --out dir holds one run: resuming needs the same settings, other files are not ours.
    Returns `cfg`, with the run's own backend when --backend was not given."""
    if not any(p.name != LOCK_NAME for p in out.iterdir()):
        return cfg
    saved = out / "config.json"
    if not saved.exists():
        if (out / "progress.json").exists():
            die(f"{saved} is missing, so the settings of the run in {out} are unknown; choose "
                f"another --out (or delete {out} to start over)")
        die(f"--out {out} is not empty and holds no dawm_fast run; choose an empty or new "
            f"directory")
    try:
        old = json.loads(saved.read_text())
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
        if not backend_given and isinstance(old.get("backend"), str):
            # resuming with the default keeps the backend the run started with
            cfg = dataclasses.replace(cfg, backend=old["backend"])
        diff = config_differences(old, cfg.to_dict(), ignore=("device",))
    except ConfigMigrationError as e:
        die(f"{saved}: {e}")
    except Exception as e:
        die(f"{saved} is corrupt ({type(e).__name__}: {str(e)[:100]}); choose another --out or "
            f"delete {out}")
    if diff:
        shown = ", ".join(d.replace(" vs ", " there vs ", 1) + " now" for d in diff[:4])
        die(f"--out {out} holds another run ({shown}); rerun with its settings to resume it, "
            f"or choose another --out")
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = build_config(args)
    check_values(args, cfg)
    from dawm_fast.pipeline import STAGES

    if args.until is not None and args.until not in STAGES:
        die(f"unknown --until {args.until!r}; valid: {', '.join(STAGES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        backend, why = resolve_backend(cfg.backend, cfg.device)
    except BackendUnavailable as e:
        die(f"{e}; use --backend reference (plain eager PyTorch) or --backend auto")
    cfg = dataclasses.replace(cfg, backend=backend)
    out = args.out or Path("runs") / (f"{cfg.env}_{cfg.algo}_{cfg.preset}_ratio"
                                      f"{cfg.synthetic_ratio:g}_seed{cfg.seed}")
    world = distributed.world_from_env()      # torchrun: data-parallel world-model training
    if world.active:
        cfg.device = distributed.device_for(world, cfg.device)
        distributed.init(world, cfg.device)
        if not world.is_main:
            return _run_worker(cfg, out, world)
    prepare_out_dir(out)
    # One owner per run directory, from before anything is written into it to the end.
    try:
        with run_dir_lock(out), stop_signals():
            return _run(args, cfg, out, why)
    except RunDirBusy as e:
        die(str(e), BUSY_EXIT_CODE)


def _run_worker(cfg, out: Path, world) -> int:
    """A rank other than 0 under torchrun: it joins the world-model stage and writes nothing."""
    from dawm_fast.pipeline import Pipeline

    try:
        with stop_signals(), open(os.devnull, "w") as quiet, \
                contextlib.redirect_stdout(quiet):       # rank 0 speaks for the run
            Pipeline(cfg, out, world).world_model_worker()
    except (RunError, DatasetError, UnknownTaskError) as e:
        die(f"rank {world.rank}: {e}")
    except KeyboardInterrupt as e:
        return 128 + getattr(e, "signum", signal.SIGINT)
    finally:
        distributed.shutdown()
    return 0


def _run(args: argparse.Namespace, cfg, out: Path, backend_why: str) -> int:
    from dawm_fast.pipeline import Pipeline

    resolved = cfg.backend
    cfg = check_out_dir(out, cfg, backend_given=args.backend is not None)
    why = backend_why if cfg.backend == resolved else f"the run in {out} started with it"
    world = distributed.world_from_env()
    ranks = f" | {world.size} processes (torchrun)" if world.active else ""
    print(f"dawm_fast | env {cfg.env} | algo {cfg.algo} | preset {cfg.preset} | seed {cfg.seed} | "
          f"backend {cfg.backend} ({why}) | device {cfg.device} ({torch.get_num_threads()} CPU "
          f"threads) | data source {cfg.data_source} | synthetic ratio {cfg.synthetic_ratio} | "
          f"out {out}{ranks}", flush=True)
    if cfg.wm_training.bf16 and not cfg.device.startswith("cuda"):
        print("note: --bf16 on a CPU runs, but slower than fp32 on CPUs without bf16 matrix units; "
              "it is meant for GPUs", flush=True)
    try:
        res = Pipeline(cfg, out, world).run(until=args.until)
    except (RunError, DatasetError, UnknownTaskError) as e:
        die(str(e))
    except (GraphCaptureError, ExtensionUnavailable) as e:
        # a run's backend is part of its identity: the reference path starts a run of its own
        die(f"{e}; rerun with --backend reference (plain eager PyTorch) and a new --out")
    except KeyboardInterrupt as e:     # SIGINT or SIGTERM (Interrupted), alike
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"\ninterrupted ({signal.Signals(signum).name}): nothing finished is lost; rerun the "
              f"same command to resume from the last checkpoint in {out}", file=sys.stderr,
              flush=True)
        return 128 + signum
    finally:
        distributed.shutdown()
    if res is None:
        print(f"stopped after stage {args.until}; rerun without --until to continue in {out}",
              flush=True)
        return 0
    print(f"done: normalized score {res['final_score_mean']:.1f} ± {res['final_score_std']:.1f} "
          f"({res['score_reference']}); data: {res['dataset_source']}; results in "
          f"{out / 'results.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
