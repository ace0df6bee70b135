"""Offline RL on real + synthetic transitions: TD3+BC and IQL (CORL hyperparameters)."""
from dawm_fast.rl.buffer import (MixedSampler, Transitions, compute_obs_stats, episode_returns,
                                 iql_reward_scale)
from dawm_fast.rl.iql import IQL, IQLConfig, iql_config_for
from dawm_fast.rl.td3bc import TD3BC, TD3BCConfig

__all__ = ["Transitions", "MixedSampler", "compute_obs_stats", "episode_returns",
           "iql_reward_scale", "TD3BC", "TD3BCConfig", "IQL", "IQLConfig", "iql_config_for"]
