"""The whole pipeline's configuration: one dataclass, three presets.

Every choice the DAWM paper leaves open (horizon, widths, mixing ratio, guidance weight, step
counts) is a field here, printed at the start of a run and saved with it (``config.json``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

from dawm_fast.data.normalizers import CDFNormalizer, GaussianNormalizer
from dawm_fast.data.windows import PAST_FALL_REWARDS
from dawm_fast.data.tasks import parse_task
from dawm_fast.rl.iql import IQLConfig, iql_config_for
from dawm_fast.rl.td3bc import TD3BCConfig
from dawm_fast.sampling.generate import SamplingConfig
from dawm_fast.world_model.action_labels import ACTION_SOURCES
from dawm_fast.world_model.fall_classifier import SYNTHETIC_TERMINALS, FallClassifierConfig
from dawm_fast.world_model import (DiffusionScheduleConfig, EMAConfig, InverseDynamicsConfig,
                                   TemporalUNetConfig, WorldModelConfig, WorldModelTrainerConfig)

PRESETS = ("smoke", "cpu", "paper")
ALGOS = ("td3bc", "iql")
# "auto": fast where it runs, else reference (dawm_fast.backends.resolve_backend says which and
# why); a saved config always holds the resolved one.
BACKENDS = ("auto", "reference", "fast")
# The layout of config.json. Older layouts are read through migrate_config_dict.
CONFIG_VERSION = 6

TARGET_MODES = ("fixed", "own")     # PipelineConfig.target_mode

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
    backend: str = "auto"                 # auto | reference | fast (resolved before a run)
    device: str = "cpu"                   # torch device the run uses
    data_source: str = "auto"             # auto | minari | d4rl | embedded
    data_path: str | None = None          # D4RL .hdf5 file for data_source="d4rl"
    max_transitions: int | None = None    # use only the first N transitions (None: all)
    # Keep a seeded random share of the dataset's whole episodes (the run's seed draws them), for
    # the little-data setting where augmentation gains are largest (SynthER). 1.0: all.
    episode_fraction: float = 1.0
    # The one discount: of the world model's return-to-go and of the RL agents' TD targets.
    gamma: float = 0.99
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
    # Train the world model also on windows that run past a fall (data.windows): without them it
    # never sees a fallen state, and its synthetic windows fall about half as often as the data
    # (hopper-medium-replay, benchmarks/RESULTS.md). Runs saved before layout 3 trained without.
    windows_past_falls: bool = True
    # The reward of the steps after the fall in those windows: "hold" (the falling step's own) or
    # "zero" (an absorbing state's; layout 3). Generation cuts a window at its fall, so these
    # rewards are never used; they only shape what the reward channel learns. With zeros the
    # synthetic rewards were further from the simulator's (hopper-medium-replay seed 0: RMSE 0.21
    # vs 0.15 held, fast hops 0.15 too low vs 0.06; benchmarks/RESULTS.md).
    past_fall_reward: str = "hold"
    # steps, batch, learning rate, EMA, bf16 autocast and checkpoint cadence of its training
    wm_training: WorldModelTrainerConfig = field(default_factory=WorldModelTrainerConfig)
    # -- generation ------------------------------------------------------------------------------
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    n_synthetic_starts: int = 200_000     # real (s_t, a_t) starts; each gives up to T-1 transitions
    target_return: float | None = None    # normalized g for guidance; None: per-task default
    # How each start's guidance target g is set: "fixed" (every start the same g: target_return,
    # else the per-task default, the middle of DWM's ranges) or "own" (the start's own discounted
    # return-to-go in the data, the g the world model saw beside that start in training, times
    # target_gain). DWM's ranges were set for D4RL's data: on the embedded datasets the default
    # sits at or above the largest return-to-go in the data (walker2d-medium-replay 0.7 vs max
    # 0.70, halfcheetah-medium-replay 0.5 vs 0.39), and guidance that far out bends the dynamics:
    # generated next states worth more, under a plain critic, than those their (s, a) reach in
    # the simulator, and fewer falls (benchmarks/guidance_diagnosis.py, RESULTS.md). "own" is
    # the default since layout 6 (tuned on walker2d-medium-replay, held-out seed 3: RESULTS.md).
    target_mode: str = "own"
    target_gain: float = 1.0
    # Read the idm / world_model / generation products from this run directory instead of making
    # them (a sweep trains one world model per task, seed and world-model settings and shares it
    # across algorithms and ratios); it must have the same world_model_fingerprint. A relative
    # path is taken from the working directory.
    world_model_dir: str | None = None
    # -- offline RL ------------------------------------------------------------------------------
    rl_steps: int = 1_000_000             # gradient updates (the horizon of IQL's actor LR decay)
    synthetic_ratio: float = 0.5          # share of each batch drawn from synthetic data; 0 = plain
    # Who labels the synthetic transitions' inferred actions: "idm" (DAWM); "bc" or "random" are
    # the referee's ablation (a BC policy on the synthetic state, uniform noise), same world
    # model, states and rewards (world_model/action_labels.py).
    synthetic_actions: str = "idm"
    # Which synthetic transitions are falls: "health" (the generated next state fails the env's
    # health check; layouts <= 4) or "classifier" (that, or a classifier on (s, a) trained on
    # the real data says so; the rest of the window is dropped). The health check alone missed
    # half the falls the simulator sees (world_model/fall_classifier.py). Applied when the RL
    # stage loads the synthetic data, before any action relabelling: the world model and its
    # generation are shared with "health" runs.
    synthetic_terminals: str = "classifier"
    fall_classifier: FallClassifierConfig = field(default_factory=FallClassifierConfig)
    td3bc: TD3BCConfig = field(default_factory=TD3BCConfig)
    iql: IQLConfig = field(default_factory=IQLConfig)
    rl_checkpoint_every: int = 10_000
    eval_every: int = 50_000              # updates between evaluations during training
    eval_episodes: int = 10               # episodes per evaluation during training
    final_eval_episodes: int = 10         # episodes of the final evaluation
    progress_every_s: float = 10.0        # seconds between progress lines

    def target_description(self) -> str:
        """The guidance target in words, for logs."""
        if self.target_mode == "own":
            return f"each start's own return-to-go x {self.target_gain:g}"
        return f"{self.resolved_target_return():.2f} for every start"

    def resolved_target_return(self) -> float:
        return self.target_return if self.target_return is not None else \
            default_target_return(self.env)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "config_version": CONFIG_VERSION}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    def identity(self) -> dict:
        """What makes two runs the same run (an --out dir holds exactly one)."""
        return {k: getattr(self, k) for k in ("env", "algo", "preset", "seed", "backend",
                                              "data_source", "synthetic_ratio",
                                              "synthetic_actions",
                                              "episode_fraction")}


# The fields that decide the synthetic data and nothing else (a plain run, synthetic ratio 0,
# reads none of them), and with the data's own fields all that the world-model stages (idm,
# world_model, generation) produce: two configs that agree on WORLD_MODEL_FIELDS make the same
# world model and synthetic data, whatever their algorithm, synthetic ratio or RL settings.
SYNTHETIC_DATA_FIELDS = ("idm", "state_normalizer", "world_model", "windows_past_falls",
                         "past_fall_reward", "wm_training", "sampling", "n_synthetic_starts", "target_return",
                         "target_mode", "target_gain")
# Decide the synthetic data the RL stage trains on, after the world model made it (so not part
# of the world model's fingerprint); a plain run reads none of them either.
SYNTHETIC_LABEL_FIELDS = ("synthetic_terminals", "fall_classifier")
WORLD_MODEL_FIELDS = ("env", "seed", "backend", "data_source", "data_path", "max_transitions",
                      "episode_fraction", "gamma") + SYNTHETIC_DATA_FIELDS


# The synthetic-data fields that act at generation only: world models that differ in these alone
# share one trained IDM and diffusion model (experiments/reuse.py trains it once).
GENERATION_FIELDS = ("sampling", "n_synthetic_starts", "target_return", "target_mode",
                     "target_gain")


def world_model_training_fingerprint(cfg: "PipelineConfig") -> str:
    """A short hash of everything that decides a run's trained IDM and world model (not what it
    generates with them)."""
    d = cfg.to_dict()
    key = {k: d[k] for k in WORLD_MODEL_FIELDS if k not in GENERATION_FIELDS}
    key["wm_training"] = {k: v for k, v in key["wm_training"].items()
                          if k != "checkpoint_every"}      # the cadence never decided the model
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]


def world_model_fingerprint(cfg: "PipelineConfig") -> str:
    """A short hash of everything that decides a run's world model and synthetic data.

    It hashes those values in config layout 1, so that a refactor of the config does not orphan
    the world models sweeps have already trained (their directories are named by it)."""
    d = cfg.to_dict()
    key = {k: d[k] for k in WORLD_MODEL_FIELDS
           if k not in ("wm_training", "target_return", "target_mode", "target_gain")}
    key["idm"] = {**key["idm"], "seed": 0}          # layout 1 kept an unused idm.seed of 0
    key.update({old: d["wm_training"][new] for old, new in _V1_WORLD_MODEL_TRAINING.items()
                if old != "wm_checkpoint_every"})   # the cadence never decided the model
    # fixed targets hash as layout 1 did (one number), so their world models keep their names
    key["target_return"] = (cfg.resolved_target_return() if cfg.target_mode == "fixed"
                            else {"own_times": cfg.target_gain})
    if not key["windows_past_falls"] or key["past_fall_reward"] == "zero":
        del key["past_fall_reward"]                 # layout 3's only way
    if not key["windows_past_falls"]:
        del key["windows_past_falls"]               # layouts 1-2 had only these windows
    blob = json.dumps(key, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


# -- older config layouts ------------------------------------------------------------------------
# Layout 1 (before config_version) kept the world model's training settings as flat wm_* fields,
# and copies of values owned elsewhere: the discount in td3bc/iql, IQL's decay horizon
# (iql.max_steps, always rl_steps), and seeds of 0 that the pipeline overwrote where used.
_V1_WORLD_MODEL_TRAINING = {"wm_steps": "steps", "wm_batch_size": "batch_size", "wm_lr": "lr",
                            "wm_bf16": "bf16", "wm_ema": "ema",
                            "wm_checkpoint_every": "checkpoint_every"}
_V1_DROPPED = {"td3bc": ("gamma", "seed"), "iql": ("gamma", "seed", "max_steps"),
               "idm": ("seed",)}


class ConfigMigrationError(ValueError):
    pass


def migrate_config_dict(d: dict) -> dict:
    """A saved config (config.json, or results.json's "config") in today's layout. Every step
    from one layout to the next is here, in order; values a layout left implicit are made
    explicit as the code of that time used them."""
    d = dict(d)
    version = d.pop("config_version", 1)
    if not isinstance(version, int) or version > CONFIG_VERSION:
        raise ConfigMigrationError(f"config layout {version!r} is newer than this dawm_fast "
                                   f"understands ({CONFIG_VERSION}); upgrade dawm_fast")
    if version < 2:
        # Runs saved before a field existed did what they did then: states scaled with the CDF
        # (their normalizer file says "cdf" too) and step-0 rewards generated.
        d.setdefault("state_normalizer", "cdf")
        if "sampling" in d:
            d["sampling"] = {"real_first_reward": False, **d["sampling"]}
        training = {new: d.pop(old) for old, new in _V1_WORLD_MODEL_TRAINING.items() if old in d}
        if training:
            d["wm_training"] = {**d.get("wm_training", {}), **training}
        for group, names in _V1_DROPPED.items():
            if not isinstance(d.get(group), dict):
                continue
            d[group] = sub = dict(d[group])
            gamma = sub.pop("gamma", None) if "gamma" in names else None
            if gamma is not None and gamma != d.get("gamma", 0.99):
                # the agent discounted with its own copy: not expressible in one value
                raise ConfigMigrationError(f"this run's {group}.gamma ({gamma}) differs from its "
                                           f"gamma ({d.get('gamma', 0.99)}); it cannot be resumed "
                                           f"or compared by this dawm_fast")
            for name in names:
                sub.pop(name, None)
    if version < 3:
        # Layouts 1-2: the world model trained on windows whole inside an episode only.
        d.setdefault("windows_past_falls", False)
    if version < 4:
        # Layout 3: the steps after a fall had reward 0.
        d.setdefault("past_fall_reward", "zero")
    if version < 5:
        # Layouts <= 4: synthetic falls were the generated states' health check alone.
        d.setdefault("synthetic_terminals", "health")
    if version < 6:
        # Layouts <= 5: every start was guided toward one fixed target return.
        d.setdefault("target_mode", "fixed")
    return d


def config_differences(a: dict, b: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """`key: A vs B` for every (dotted, nested) setting two saved configs disagree on, both read
    in today's layout first (normalized_config_dict); top-level keys in `ignore` are skipped."""
    return dict_differences(normalized_config_dict(a), normalized_config_dict(b), ignore)


def normalized_config_dict(d: dict) -> dict:
    """A saved config as today's code reads it: today's layout, fields it lacks at their
    defaults then (migrate_config_dict) or now, tuples as JSON lists."""
    return json.loads(json.dumps(config_from_dict(d).to_dict()))


def dict_differences(a: dict, b: dict, ignore: tuple[str, ...] = (), prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if k in ignore:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += dict_differences(va, vb, (), f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} vs {vb!r}")
    return out


def _parse_value(text: str):
    """A --set value: JSON where it parses (numbers, true/false, null, lists), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_overrides(cfg: "PipelineConfig", assignments: list[str]) -> "PipelineConfig":
    """`cfg` with `KEY=VALUE` assignments applied; KEY may be dotted into a nested config
    (`td3bc.alpha=2.5`, `sampling.guidance_weight=1.2`). Raises ValueError naming a bad one."""
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. synthetic_ratio=0.25")
        value = _parse_value(text)
        if key in _V1_WORLD_MODEL_TRAINING:      # a layout-1 name (e.g. in an older sweep.json)
            key = f"wm_training.{_V1_WORLD_MODEL_TRAINING[key]}"
        cfg = _set_path(cfg, key.split("."), value, key)
    return cfg


def _set_path(obj, path: list[str], value, full_key: str):
    names = {f.name for f in dataclasses.fields(obj)}
    if path[0] not in names:
        raise ValueError(f"--set {full_key}: unknown field {path[0]!r} of "
                         f"{type(obj).__name__}; valid: {', '.join(sorted(names))}")
    current = getattr(obj, path[0])
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"--set {full_key}: {path[0]!r} has no fields")
        return dataclasses.replace(obj, **{path[0]: _set_path(current, path[1:], value,
                                                               full_key)})
    if dataclasses.is_dataclass(current):
        raise ValueError(f"--set {full_key}: {path[0]!r} is a group of settings; set one of its "
                         f"fields ({full_key}.FIELD=VALUE)")
    if isinstance(current, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and (current is None or isinstance(current, bool))
    elif isinstance(current, (int, float)) and not isinstance(current, bool):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
            (isinstance(current, float) or isinstance(value, int))
        if ok and isinstance(current, float):
            value = float(value)
    elif isinstance(current, tuple):
        ok = isinstance(value, list)
        value = tuple(value) if ok else value
    else:   # a string, or an optional field that is None now
        ok = value is None or current is None or isinstance(value, type(current))
    if not ok:
        raise ValueError(f"--set {full_key}: {value!r} is not a valid value (the current value "
                         f"is {current!r})")
    return dataclasses.replace(obj, **{path[0]: value})


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
            wm_training=WorldModelTrainerConfig(steps=12_000, ema=EMAConfig(start_step=500),
                                                checkpoint_every=1_000),
            sampling=SamplingConfig(batch_size=1024), n_synthetic_starts=40_000,
            rl_steps=100_000, rl_checkpoint_every=5_000, eval_every=20_000, eval_episodes=5,
            iql=iql)
    else:  # smoke: every stage runs, in well under two minutes
        cfg = PipelineConfig(
            env=env, algo=algo, preset=preset, max_transitions=20_000,
            idm=InverseDynamicsConfig(n_steps=300, hidden=64),
            fall_classifier=FallClassifierConfig(n_steps=300, hidden=64),
            world_model=pipeline_world_model(unet=TemporalUNetConfig(dim=16, dim_mults=(1, 2),
                                                                     embed_hidden_mult=2)),
            wm_training=WorldModelTrainerConfig(steps=200, ema=EMAConfig(start_step=50),
                                                checkpoint_every=100),
            sampling=SamplingConfig(batch_size=512), n_synthetic_starts=1_000,
            rl_steps=600, rl_checkpoint_every=200, eval_every=300, eval_episodes=2,
            final_eval_episodes=2, progress_every_s=5.0,
            td3bc=TD3BCConfig(hidden=64), iql=dataclasses.replace(iql, hidden=64))
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise ValueError(f"unknown config field {k!r}")
        setattr(cfg, k, v)
    return cfg


def config_from_dict(d: dict) -> PipelineConfig:
    """Inverse of PipelineConfig.to_dict (nested dataclasses rebuilt, tuples restored), for
    configs saved in any layout (migrate_config_dict). Raises ConfigMigrationError."""
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
    return build(PipelineConfig, migrate_config_dict(d))


# Seeds feed numpy's legacy seeding (below 2**32) and offsets such as seed * 1000 + step.
SEED_RANGE = (0, 2**31 - 1)


def config_problems(cfg: PipelineConfig, name=lambda field: field) -> list[str]:
    """Every value of `cfg` a run cannot use, one sentence each with the valid range (empty when
    all is well). Rules by kind, over every field, nested ones included: floats finite; learning
    rates > 0; step, batch, episode and interval counts >= 1; shares within [0, 1]; the seed
    within SEED_RANGE. `name` turns a dotted field into what the user typed (a CLI flag)."""
    problems = []

    def bad(field: str, value, valid: str) -> None:
        problems.append(f"{name(field)} must be {valid}, got {value!r}")

    def walk(obj, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            v, key = getattr(obj, f.name), prefix + f.name
            if dataclasses.is_dataclass(v):
                walk(v, key + ".")
                continue
            if v is None or isinstance(v, (bool, str, tuple)):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                bad(key, v, "a finite number")
            elif key == "seed":
                if not SEED_RANGE[0] <= v <= SEED_RANGE[1]:
                    bad(key, v, f"an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}]")
            elif f.name == "lr" or f.name.endswith("_lr"):
                if not v > 0:
                    bad(key, v, "> 0")
            elif f.name in ("synthetic_ratio", "holdout_frac", "dropout", "temperature"):
                if not 0 <= v <= 1:
                    bad(key, v, "in [0, 1]")
            elif f.name in ("gamma", "episode_fraction"):
                if not 0 < v <= 1:
                    bad(key, v, "in (0, 1]")
            elif (f.name.endswith(("steps", "every", "episodes", "batch_size", "starts"))
                  or f.name.startswith("n_") or f.name in ("max_transitions", "hidden")):
                if not v >= 1:
                    bad(key, v, "at least 1")
    walk(cfg, "")
    if cfg.synthetic_actions not in ACTION_SOURCES:
        problems.append(f"{name('synthetic_actions')} must be one of "
                        f"{', '.join(ACTION_SOURCES)}, got {cfg.synthetic_actions!r}")
    if cfg.synthetic_terminals not in SYNTHETIC_TERMINALS:
        problems.append(f"{name('synthetic_terminals')} must be one of "
                        f"{', '.join(SYNTHETIC_TERMINALS)}, got {cfg.synthetic_terminals!r}")
    if not 0 < cfg.fall_classifier.threshold < 1:
        problems.append(f"{name('fall_classifier.threshold')} must be in (0, 1), got "
                        f"{cfg.fall_classifier.threshold!r}")
    if cfg.target_mode not in TARGET_MODES:
        problems.append(f"{name('target_mode')} must be one of {', '.join(TARGET_MODES)}, got "
                        f"{cfg.target_mode!r}")
    if cfg.target_mode == "own" and cfg.target_return is not None:
        problems.append(f"{name('target_return')} is one fixed target for every start; it "
                        f"needs target_mode=fixed (the --target-return flag sets both)")
    if not cfg.target_gain > 0:
        problems.append(f"{name('target_gain')} must be > 0, got {cfg.target_gain!r}")
    if cfg.past_fall_reward not in PAST_FALL_REWARDS:
        problems.append(f"{name('past_fall_reward')} must be one of "
                        f"{', '.join(PAST_FALL_REWARDS)}, got {cfg.past_fall_reward!r}")
    return problems
