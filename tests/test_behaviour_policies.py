"""The committed behaviour policies meet the D4RL recipe: expert and medium returns on v5 envs."""
import json

import numpy as np
import pytest

from dawm_fast.behavior.export import collapses
from dawm_fast.data import embedded
from dawm_fast.data.numpy_policy import NumpyPolicy
from dawm_fast.data.tasks import ENV_FAMILIES

# Every committed policy file is checked against the recipe.
EXPERT_MIN_RETURN = {"walker2d": 4000.0, "hopper": 3000.0, "halfcheetah": 10000.0}


def committed_envs():
    return [e for e in ENV_FAMILIES if embedded.has_policies(e)]


def test_walker2d_policies_are_committed():
    """walker2d's embedded datasets ([1 of 5]) are part of every installation."""
    assert embedded.has_policies("walker2d")


@pytest.mark.parametrize("env", committed_envs())
def test_policy_metadata_meets_the_recipe(env):
    meta = json.loads(embedded.policy_files(env)[1].read_text())
    assert meta["expert_return"] >= EXPERT_MIN_RETURN[env]
    assert 1 / 3 - 0.02 <= meta["medium_return"] / meta["expert_return"] <= 1 / 2 + 0.02
    assert meta["replay"]["snapshot_steps"][-1] <= meta["medium_step"] == meta["replay"]["steps"]
    assert "online_td3" in meta["command"]


@pytest.mark.parametrize("env", committed_envs())
def test_expert_rollouts_score_as_experts(env):
    """Expert rollouts with the dataset's action noise (what the expert dataset is made of) reach
    the expert return bar on average, and none collapses (falls or flips: under 70% of the
    median)."""
    fam = ENV_FAMILIES[env]
    w = np.load(embedded.policy_files(env)[0])
    expert = NumpyPolicy({k.split("/", 1)[1]: w[k] for k in w.files if k.startswith("expert/")})
    episodes = embedded._rollout_episodes(fam, expert, 10_000, embedded.RECIPE.rollout_noise,
                                          seed=123, n_envs=5, progress=lambda n: None)
    returns = [float(np.sum(e["rewards"])) for e in episodes]
    assert np.mean(returns) >= EXPERT_MIN_RETURN[env], returns
    assert collapses(np.asarray(returns)) == 0, returns


KINDS = ("medium", "medium-replay", "expert", "medium-expert")


@pytest.mark.parametrize("env", committed_envs())
def test_every_name_generates_and_loads_at_small_size(env, tmp_path):
    """The real generation path from the committed policies (small sizes, a private Minari
    store): every dataset name loads offline, says it is the embedded data, has the env's
    shapes, and keeps terminals (falls) apart from timeouts."""
    from dawm_fast.data import load_dataset
    fam = ENV_FAMILIES[env]
    with embedded.small_store(tmp_path, steps=1500, replay_steps=2500):
        for kind in KINDS:
            ds = load_dataset(f"{env}-{kind}")
            n = len(ds.observations)
            assert n >= (2500 if kind in ("medium-replay", "medium-expert") else 1500), (kind, n)
            assert ds.source.startswith("embedded") and f"dawm_fast/{env}/" in ds.source
            assert ds.observations.shape == ds.next_observations.shape == (n, fam.obs_dim)
            assert ds.actions.shape == (n, fam.act_dim) and np.abs(ds.actions).max() <= 1
            assert not (ds.terminals & ds.timeouts).any()
            if fam.healthy_z is None:           # halfcheetah never terminates
                assert not ds.terminals.any()
            elif kind in ("medium", "medium-replay"):   # health-based falls are in the data
                assert ds.terminals.any(), kind
