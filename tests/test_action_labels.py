"""The action-label ablation: only the IDM's actions are replaced, window starts keep the real a_t."""
import numpy as np
import pytest

from dawm_fast.evaluation.dynamics_check import window_positions
from dawm_fast.world_model.action_labels import relabel
from dawm_fast.world_model.idm import InverseDynamicsConfig


def synthetic_windows(rng, lengths, o=3, a=2):
    """Rows stored window by window: each row's observation is the previous row's next one."""
    obs, nxt, acts = [], [], []
    for n in lengths:
        states = rng.normal(size=(n + 1, o)).astype(np.float32)
        obs.append(states[:-1])
        nxt.append(states[1:])
        acts.append(rng.uniform(-1, 1, (n, a)).astype(np.float32))
    return {"observations": np.concatenate(obs), "next_observations": np.concatenate(nxt),
            "actions": np.concatenate(acts)}


def test_window_positions_found_from_the_state_chain(rng):
    syn = synthetic_windows(rng, [3, 1, 7, 2])
    pos = window_positions(syn["observations"], syn["next_observations"])
    assert pos.tolist() == [0, 1, 2, 0, 0, 1, 2, 3, 4, 5, 6, 0, 1]


@pytest.mark.parametrize("source", ["random", "bc"])
def test_relabel_replaces_only_inferred_actions(rng, source):
    syn = synthetic_windows(rng, [4, 5, 3])
    real_obs = rng.normal(size=(500, 3)).astype(np.float32)
    real_act = np.clip(0.5 * real_obs[:, :2], -1, 1).astype(np.float32)   # a simple policy
    new, info = relabel(source, syn, lambda s: s, real_obs, real_act,
                        InverseDynamicsConfig(n_steps=600, hidden=64), seed=3, device="cpu")
    starts = window_positions(syn["observations"], syn["next_observations"]) == 0
    np.testing.assert_array_equal(new[starts], syn["actions"][starts])
    assert (new[~starts] != syn["actions"][~starts]).all()
    assert np.abs(new).max() <= 1 and info["relabelled_rows"] == 9
    assert info["synthetic_actions"] == source and info["label_action_mse"] > 0
    if source == "bc":        # the BC policy learned the data's policy on the synthetic states
        np.testing.assert_allclose(new[~starts], np.clip(0.5 * syn["observations"][~starts, :2], -1, 1),
                                   atol=0.2)
    if source == "bc":
        return      # seeded like the IDM; the cheap source checks the seeding
    again, _ = relabel(source, syn, lambda s: s, real_obs, real_act,
                       InverseDynamicsConfig(n_steps=600, hidden=64), seed=3, device="cpu")
    np.testing.assert_array_equal(new, again)                     # seeded
    with pytest.raises(ValueError, match="unknown synthetic action source"):
        relabel("oracle", syn, lambda s: s, real_obs, real_act, InverseDynamicsConfig(), 0, "cpu")
