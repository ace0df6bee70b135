"""The whole pipeline's configuration: one dataclass, three presets.

Every choice the DAWM paper leaves open (horizon, widths, mixing ratio, guidance weight, step
counts) is a field here, printed at the start of a run and saved with it (``config.json``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from dawm_fast.data.normalizers import CDFNormalizer, GaussianNormalizer
from dawm_fast.data.tasks import parse_task
from dawm_fast.rl.iql import IQLConfig, iql_config_for
from dawm_fast.rl.td3bc import TD3BCConfig
from dawm_fast.sampling.generate import SamplingConfig
from dawm_fast.world_model import (DiffusionScheduleConfig, EMAConfig, InverseDynamicsConfig,
                                   TemporalUNetConfig, WorldModelConfig)

PRESETS = ("smoke", "cpu", "paper")
ALGOS = ("td3bc", "iql")
BACKENDS = ("reference", "fast")

# Normalized target return-to-go (g / task scale) used for guidance at sampling time: the middle of
# the ranges DWM reports (REFERENCE.md), by env and dataset kind.
_TARGET_RETURN = {
    ("walker2d", "medium-expert"): 0.9, ("walker2d", "expert"): 0.9,
    ("hopper", "medium-expert"): 0.8, ("hopper", "expert"): 0.8,
    ("halfcheetah", "medium-expert"): 0.7, ("halfcheetah", "expert"): 0.7,
    ("halfcheetah", "medium"): 0.5, ("halfcheetah", "medium-replay"): 0.5,
}


# The world model's network predicts the clean window x0 ("sample"), not the noise as in DWM. With
# K = 5 the noisiest level has sqrt(alpha) ~ 0.01, so an eps-network's x0 there is its eps error
# magnified ~100x, clipped: measured on the cpu preset (benchmarks/RESULTS.md), the eps world model
# put 31% of generated state values at the clip bound (action consistency 0.61); the x0 one 2.8%
# (0.049). `--prediction-type epsilon` gives DWM's parameterization.
# States are standardized, not mapped through DWM's CDF normalizer (see PipelineConfig.
# state_normalizer), so there is no [-1, 1] range to clip x0 to.
PIPELINE_SCHEDULE = DiffusionScheduleConfig(prediction_type="sample", clip_sample=False)


def pipeline_world_model(**fields) -> WorldModelConfig:
    return WorldModelConfig(schedule=PIPELINE_SCHEDULE, **fields)


# state_normalizer name -> class (fit on the dataset's states)
STATE_NORMALIZERS = {"cdf": CDFNormalizer, "gaussian": GaussianNormalizer}


def with_state_normalizer(cfg: "PipelineConfig", name: str) -> "PipelineConfig":
    """`cfg` with states scaled by `name` and the x0 clip to match: on for the CDF's [-1, 1]
    range, off for standardized states (which have no such range; an x0-predicting network
    needs no clip)."""
    if name not in STATE_NORMALIZERS:
        raise ValueError(f"unknown state normalizer {name!r}; valid: {', '.join(STATE_NORMALIZERS)}")
    wm = cfg.world_model
    return dataclasses.replace(cfg, state_normalizer=name, world_model=dataclasses.replace(
        wm, schedule=dataclasses.replace(wm.schedule, clip_sample=name == "cdf")))


def default_target_return(task: str) -> float:
    family, kind = parse_task(task)
    return _TARGET_RETURN.get((family.name, kind), 0.7)


@dataclass
class PipelineConfig:
    env: str = "walker2d-medium-expert"   # dataset name
    algo: str = "td3bc"                   # td3bc | iql
    preset: str = "cpu"                   # smoke | cpu | paper (sizes below)
    seed: int = 0
    backend: str = "reference"            # sampling backend: reference | fast
    device: str = "cpu"                   # torch device the run uses
    data_source: str = "auto"             # auto | minari | d4rl | embedded
    data_path: str | None = None          # D4RL .hdf5 file for data_source="d4rl"
    max_transitions: int | None = None    # use only the first N transitions (None: all)
    gamma: float = 0.99                   # discount of the return-to-go and of the RL agents
    # -- inverse dynamics ------------------------------------------------------------------------
    idm: InverseDynamicsConfig = field(default_factory=InverseDynamicsConfig)
    # -- world model -----------------------------------------------------------------------------
    # How states are scaled for the world model: "gaussian" (per-dimension standardization) or
    # "cdf" (DWM: per-dimension quantiles onto [-1, 1]); change it with with_state_normalizer,
    # which sets the x0 clip to match. Not DWM's choice, on purpose: the CDF stretches each
    # dimension's last quantile bin (0.1% of the data) over its whole tail, so a small error
    # near +-1 is a large error in the state, and the loss does not see it. Replayed in the
    # simulator (cpu preset, walker2d-medium-expert, benchmarks/RESULTS.md), the CDF world
    # model's synthetic next states were off the true dynamics by a standardized MSE of 0.27
    # ("nothing moves": 0.105), the standardized one's by 0.056. Rewards: min-max to [-1, 1].
    state_normalizer: str = "gaussian"
    world_model: WorldModelConfig = field(default_factory=pipeline_world_model)
    wm_steps: int = 2_000_000             # DWM: 2e6 iterations at batch 64
    wm_batch_size: int = 64
    wm_lr: float = 1e-4
    wm_bf16: bool = False                 # bf16 autocast in world-model training (fp32 master)
    wm_ema: EMAConfig = field(default_factory=EMAConfig)
    wm_checkpoint_every: int = 5_000
    # -- generation ------------------------------------------------------------------------------
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    n_synthetic_starts: int = 200_000     # real (s_t, a_t) starts; each gives up to T-1 transitions
    target_return: float | None = None    # normalized g for guidance; None: per-task default
    # -- offline RL ------------------------------------------------------------------------------
    rl_steps: int = 1_000_000             # gradient updates
    synthetic_ratio: float = 0.5          # share of each batch drawn from synthetic data; 0 = plain
    td3bc: TD3BCConfig = field(default_factory=TD3BCConfig)
    iql: IQLConfig = field(default_factory=IQLConfig)
    rl_checkpoint_every: int = 10_000
    eval_every: int = 50_000              # updates between evaluations during training
    eval_episodes: int = 10               # episodes per evaluation during training
    final_eval_episodes: int = 10         # episodes of the final evaluation
    progress_every_s: float = 10.0        # seconds between progress lines

    def resolved_target_return(self) -> float:
        return self.target_return if self.target_return is not None else \
            default_target_return(self.env)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    def identity(self) -> dict:
        """What makes two runs the same run (an --out dir holds exactly one)."""
        return {k: getattr(self, k) for k in ("env", "algo", "preset", "seed", "backend",
                                              "data_source", "synthetic_ratio")}


def preset_config(preset: str, env: str, algo: str, **overrides) -> PipelineConfig:
    """The sizes of a preset; `overrides` are PipelineConfig fields set on top."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    parse_task(env)
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; valid algos: {', '.join(ALGOS)}")
    iql = iql_config_for(env)
    if preset == "paper":
        # DWM scale (REFERENCE.md): Decision Diffuser's U-Net, 2e6 world-model steps, 1e6 RL steps.
        cfg = PipelineConfig(env=env, algo=algo, preset=preset, iql=iql)
    elif preset == "cpu":
        # The whole walker2d-medium-expert pipeline in about an hour on 2 CPU cores: a smaller
        # U-Net (same blocks), fewer steps. Sized from measurements in MACHINE-NOTES.md.
        cfg = PipelineConfig(
            env=env, algo=algo, preset=preset,
            idm=InverseDynamicsConfig(n_steps=10_000),
            world_model=pipeline_world_model(unet=TemporalUNetConfig(dim=32, dim_mults=(1, 2, 4))),
            wm_steps=12_000, wm_ema=EMAConfig(start_step=500), wm_checkpoint_every=1_000,
            sampling=SamplingConfig(batch_size=1024), n_synthetic_starts=40_000,
            rl_steps=100_000, rl_checkpoint_every=5_000, eval_every=20_000, eval_episodes=5,
            iql=dataclasses.replace(iql, max_steps=100_000))
    else:  # smoke: every stage runs, in well under two minutes
        cfg = PipelineConfig(
            env=env, algo=algo, preset=preset, max_transitions=20_000,
            idm=InverseDynamicsConfig(n_steps=300, hidden=64),
            world_model=pipeline_world_model(unet=TemporalUNetConfig(dim=16, dim_mults=(1, 2),
                                                                     embed_hidden_mult=2)),
            wm_steps=200, wm_ema=EMAConfig(start_step=50), wm_checkpoint_every=100,
            sampling=SamplingConfig(batch_size=512), n_synthetic_starts=1_000,
            rl_steps=600, rl_checkpoint_every=200, eval_every=300, eval_episodes=2,
            final_eval_episodes=2, progress_every_s=5.0,
            td3bc=TD3BCConfig(hidden=64), iql=dataclasses.replace(iql, hidden=64, max_steps=600))
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise ValueError(f"unknown config field {k!r}")
        setattr(cfg, k, v)
    return cfg


def config_from_dict(d: dict) -> PipelineConfig:
    """Inverse of PipelineConfig.to_dict (nested dataclasses rebuilt, tuples restored)."""
    def build(cls, values):
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            v = values[f.name]
            if dataclasses.is_dataclass(f.default_factory() if f.default_factory is not
                                        dataclasses.MISSING else f.default):
                sub = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                       else f.default)
                v = build(type(sub), v)
            elif isinstance(v, list):
                v = tuple(v)
            kwargs[f.name] = v
        return cls(**kwargs)
    # Runs saved before a field existed did what they did then; resuming one must not silently
    # switch it: states scaled with the CDF (its normalizer file says "cdf" too), step-0 rewards
    # generated.
    d = {"state_normalizer": "cdf", **d}
    if "sampling" in d:
        d["sampling"] = {"real_first_reward": False, **d["sampling"]}
    return build(PipelineConfig, d)
