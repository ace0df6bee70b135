"""Config layouts: each value in one place, older layouts read through one migration, and world
model fingerprints that survive the move (sweeps name their shared world models by them)."""
import dataclasses
import json
from pathlib import Path

import pytest

from dawm_fast.config import (CONFIG_VERSION, ConfigMigrationError, apply_overrides,
                              config_differences, config_from_dict, migrate_config_dict,
                              preset_config, world_model_fingerprint)

# A DAWM run of the #18 program, saved by the code before config_version existed (layout 1):
# its config and the fingerprint of the world model it read.
LAYOUT_1_RUN = (Path(__file__).parent.parent / "benchmarks" / "results" / "p1-medium-replay" /
                "rl" / "hopper-medium-replay_td3bc_dawm_seed0" / "results.json")


@pytest.fixture(scope="module")
def layout_1():
    res = json.loads(LAYOUT_1_RUN.read_text())
    assert "config_version" not in res["config"] and "wm_steps" in res["config"]
    return res


def test_a_layout_1_config_reads_as_todays_preset(layout_1):
    cfg = config_from_dict(layout_1["config"])
    want = preset_config("cpu", "hopper-medium-replay", "td3bc", seed=0, backend="reference",
                         synthetic_ratio=0.5, world_model_dir=layout_1["config"]["world_model_dir"],
                         windows_past_falls=False, past_fall_reward="zero",
                         synthetic_terminals="health", target_mode="fixed")
    assert cfg == want
    assert cfg.wm_training.steps == 12_000 and cfg.wm_training.ema.start_step == 500
    assert cfg.wm_training.checkpoint_every == 1_000 and cfg.wm_training.lr == 1e-4


def test_fingerprints_survive_the_new_layout(layout_1):
    cfg = config_from_dict(layout_1["config"])
    assert world_model_fingerprint(cfg) == layout_1["world_model_fingerprint"]
    # and a setting that decides the world model still changes it
    other = dataclasses.replace(cfg, wm_training=dataclasses.replace(cfg.wm_training, lr=2e-4))
    assert world_model_fingerprint(other) != layout_1["world_model_fingerprint"]
    # the RL side does not
    rl_only = dataclasses.replace(cfg, rl_steps=7, td3bc=dataclasses.replace(cfg.td3bc, alpha=1.0))
    assert world_model_fingerprint(rl_only) == layout_1["world_model_fingerprint"]


def test_layout_2_trained_without_windows_past_falls_and_keeps_its_fingerprint():
    today = preset_config("cpu", "hopper-medium-replay", "iql", seed=1)
    assert today.windows_past_falls
    d = json.loads(json.dumps(today.to_dict()))
    d["config_version"] = 2
    del d["windows_past_falls"], d["past_fall_reward"], d["target_mode"], d["target_gain"]
    old = config_from_dict(d)
    assert not old.windows_past_falls
    assert config_differences(d, today.to_dict()) == ["past_fall_reward: 'zero' vs 'hold'",
                                                      "target_mode: 'fixed' vs 'own'",
                                                      "windows_past_falls: False vs True"]
    # what layout 2 hashed (every world-model field it had) names the same directory today...
    assert world_model_fingerprint(old) == _layout_2_fingerprint(d)
    # ...and the new windows make another world model
    assert world_model_fingerprint(today) != world_model_fingerprint(old)


def _layout_2_fingerprint(d: dict) -> str:
    import hashlib

    key = {k: d[k] for k in ("env", "seed", "backend", "data_source", "data_path",
                             "max_transitions", "episode_fraction", "gamma", "idm",
                             "state_normalizer", "world_model", "sampling",
                             "n_synthetic_starts")}
    key["idm"] = {**key["idm"], "seed": 0}
    key.update({"wm_steps": d["wm_training"]["steps"], "wm_batch_size": d["wm_training"]["batch_size"],
                "wm_lr": d["wm_training"]["lr"], "wm_bf16": d["wm_training"]["bf16"],
                "wm_ema": d["wm_training"]["ema"]})
    key["target_return"] = config_from_dict(d).resolved_target_return()
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]


def test_saved_configs_round_trip_in_todays_layout():
    cfg = preset_config("smoke", "walker2d-medium-expert", "iql", seed=3, backend="fast")
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["config_version"] == CONFIG_VERSION
    assert config_from_dict(d) == cfg
    assert config_differences(d, cfg.to_dict()) == []


def test_layout_1_and_today_compare_equal_and_differences_are_named(layout_1):
    old = layout_1["config"]
    now = config_from_dict(old).to_dict()
    assert config_differences(old, now) == []
    changed = dict(old, wm_lr=3e-4)
    assert config_differences(changed, now) == ["wm_training.lr: 0.0003 vs 0.0001"]


def test_each_value_has_one_place():
    d = preset_config("cpu", "hopper-medium-replay", "iql").to_dict()
    for group, names in {"td3bc": ("gamma", "seed"), "iql": ("gamma", "seed", "max_steps"),
                         "idm": ("seed",), "wm_training": ("seed",)}.items():
        assert not set(names) & set(d[group]), group
    assert not [k for k in d if k.startswith("wm_") and k != "wm_training"]


def test_a_layout_1_discount_that_differed_is_refused(layout_1):
    old = json.loads(json.dumps(layout_1["config"]))
    old["td3bc"]["gamma"] = 0.95
    with pytest.raises(ConfigMigrationError, match="td3bc.gamma"):
        migrate_config_dict(old)
    with pytest.raises(ConfigMigrationError, match="newer"):
        migrate_config_dict({"config_version": CONFIG_VERSION + 1})


def test_layout_1_override_names_still_apply():
    cfg = preset_config("smoke", "hopper-medium", "td3bc")
    cfg = apply_overrides(cfg, ["wm_steps=30", "wm_checkpoint_every=10", "wm_lr=2e-4"])
    assert (cfg.wm_training.steps, cfg.wm_training.checkpoint_every, cfg.wm_training.lr) == \
        (30, 10, 2e-4)


LAYOUT_3_WORLD_MODEL = (Path(__file__).parent.parent / "benchmarks" / "results" /
                        "p1-medium-replay-falls" / "wm" / "hopper-medium-replay_seed0_5f3b49ca11" /
                        "config.json")


def test_layout_3_trained_with_reward_zero_after_falls_and_keeps_its_fingerprint():
    from dawm_fast.config import config_problems

    saved = json.loads(LAYOUT_3_WORLD_MODEL.read_text())
    assert saved["config_version"] == 3 and "past_fall_reward" not in saved
    cfg = config_from_dict(saved)
    assert cfg.windows_past_falls and cfg.past_fall_reward == "zero"
    assert world_model_fingerprint(cfg) == "5f3b49ca11"          # its directory's name
    hold = dataclasses.replace(cfg, past_fall_reward="hold")
    assert world_model_fingerprint(hold) != "5f3b49ca11"
    # without windows past falls the reward after a fall does not exist: same model either way
    off = dataclasses.replace(cfg, windows_past_falls=False)
    assert world_model_fingerprint(dataclasses.replace(off, past_fall_reward="hold")) == \
        world_model_fingerprint(off)
    assert any("past_fall_reward must be one of" in p
               for p in config_problems(dataclasses.replace(cfg, past_fall_reward="last")))


def test_layout_4_labelled_falls_by_the_health_check_and_the_labels_leave_the_world_model():
    today = preset_config("cpu", "hopper-medium-replay", "td3bc", seed=2)
    assert today.synthetic_terminals == "classifier"
    d = json.loads(json.dumps(today.to_dict()))
    d["config_version"] = 4
    del d["synthetic_terminals"]
    old = config_from_dict(d)
    assert old.synthetic_terminals == "health"
    assert config_differences(d, today.to_dict()) == ["synthetic_terminals: 'health' vs "
                                                      "'classifier'"]
    # labelled when the RL stage loads the data: the same world model serves both
    assert world_model_fingerprint(old) == world_model_fingerprint(today)


def test_layout_5_guided_every_start_to_one_target():
    today = preset_config("cpu", "walker2d-medium-replay", "td3bc", seed=1)
    assert today.target_mode == "own"
    d = json.loads(json.dumps(today.to_dict()))
    d["config_version"] = 5
    del d["target_mode"], d["target_gain"]
    old = config_from_dict(d)
    assert (old.target_mode, old.target_gain) == ("fixed", 1.0)
    assert config_differences(d, today.to_dict()) == ["target_mode: 'fixed' vs 'own'"]
    # another synthetic data set, so another world-model directory; the same trained model
    assert world_model_fingerprint(old) != world_model_fingerprint(today)
    from dawm_fast.config import world_model_training_fingerprint
    assert world_model_training_fingerprint(old) == world_model_training_fingerprint(today)
