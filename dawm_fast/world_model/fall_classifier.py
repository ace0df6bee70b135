"""Which synthetic transitions are falls: a classifier on (s, a) trained on the real data.

Generation marks a transition terminal when its generated next state fails the env's health
check. A fall is a threshold crossing (hopper: torso height <= 0.7 or |angle| >= 0.2), and the
world model's next states sit on the healthy side of it more often than the simulator's do:
replayed in the simulator, about half of the synthetic transitions that fall were not marked
(hopper-medium-replay, seed 0: 0.55% of rows missed, 0.05% made up; benchmarks/RESULTS.md). An
unmarked fall is a transition whose critic target bootstraps from a state the agent never gets
to act in, which inflates values exactly where falls happen.

The fall is decided by (s, a) (MuJoCo is deterministic), so a classifier on the real data's
(s, a) -> terminal catches most of what the health check misses, without the simulator. A
transition is terminal if either says so; the rest of its window (steps after the fall the
model imagined the robot continuing) is dropped, as generation does for a health-check fall.
It runs when the RL stage loads the synthetic data, so the world model and its generation are
shared with runs that label falls by the health check alone (``synthetic_terminals``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dawm_fast.evaluation.dynamics_check import window_positions
from dawm_fast.rl.networks import mlp

SYNTHETIC_TERMINALS = ("health", "classifier")
# The RL stage seeds the classifier with the run's seed + this (its own stream, apart from the
# run's other seeded draws); benchmarks/fall_labels.py reproduces it.
SEED_OFFSET = 8


@dataclass(frozen=True)
class FallClassifierConfig:
    hidden: int = 256                   # hidden width
    n_hidden: int = 2                   # hidden layers (ReLU)
    lr: float = 3e-4                    # Adam learning rate
    batch_size: int = 256               # minibatch size
    n_steps: int = 5_000                # gradient steps
    holdout_frac: float = 0.05          # share of real transitions held out for the report
    # P(fall) above which a transition is a fall. A missed fall inflates the critic near falls,
    # a made-up one only makes it cautious there; 0.5 measured 0.15% missed / 0.26% made up per
    # synthetic row against the health check's 0.55% / 0.05% (hopper-medium-replay seed 0).
    threshold: float = 0.5


def train_fall_classifier(obs_norm: np.ndarray, actions: np.ndarray, terminals: np.ndarray,
                          cfg: FallClassifierConfig, device, *, seed: int):
    """P(fall | s, a) from normalized real observations, actions and terminal flags. Returns
    (predict: (obs_norm, actions) -> [N] probabilities, report dict with held-out recall and
    false alarms per row). ``seed`` seeds the split, the init and the minibatches."""
    n = len(obs_norm)
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = int(round(cfg.holdout_frac * n))
    hold, train = perm[:n_hold], perm[n_hold:]
    x = torch.as_tensor(np.concatenate([obs_norm, actions], 1).astype(np.float32), device=device)
    y = torch.as_tensor(terminals.astype(np.float32), device=device)
    with torch.random.fork_rng(devices=[]):   # seeded init without touching the global RNG
        torch.manual_seed(seed)
        net = mlp(x.shape[1], 1, cfg.hidden, cfg.n_hidden).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gen = torch.Generator(device=device).manual_seed(seed)
    train_t = torch.as_tensor(train, device=device)
    for _ in range(cfg.n_steps):
        rows = train_t[torch.randint(0, len(train_t), (min(cfg.batch_size, len(train_t)),),
                                     device=device, generator=gen)]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x[rows])[:, 0], y[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()

    @torch.no_grad()
    def predict(o: np.ndarray, a: np.ndarray) -> np.ndarray:
        inp = torch.as_tensor(np.concatenate([o, a], 1).astype(np.float32), device=device)
        return torch.cat([torch.sigmoid(net(c)[:, 0]) for c in inp.split(65536)]).cpu().numpy() \
            if len(inp) else np.zeros(0, np.float32)

    p = predict(obs_norm[hold], actions[hold]) > cfg.threshold
    fell = terminals[hold] > 0.5
    report = {"classifier_heldout_recall": float(p[fell].mean()) if fell.any() else None,
              "classifier_heldout_false_alarms": float(np.mean(p & ~fell)) if n_hold else None,
              "classifier_heldout_fall_rate": float(fell.mean()) if n_hold else None}
    return predict, report


def label_falls(syn: dict, fall_probability: np.ndarray, threshold: float) -> tuple[dict, dict]:
    """Synthetic arrays with a transition also terminal where P(fall) > threshold, and every
    later step of its window dropped. Returns (new arrays, counts)."""
    pos = window_positions(syn["observations"], syn["next_observations"])
    was = syn["terminals"] > 0.5
    now = was | (fall_probability > threshold)
    window = np.cumsum(pos == 0) - 1                                   # [N] window index
    prior = np.cumsum(now) - now                                       # terminals before row i
    before = prior > prior[pos == 0][window]        # one of them in row i's own window
    keep = ~before
    out = {k: v[keep] for k, v in syn.items()}
    out["terminals"] = now[keep].astype(syn["terminals"].dtype)
    # A health-check fall after a classifier fall in the same window goes with the dropped rows:
    # the classifier put the fall earlier. So the falls left (one per window at most) can be
    # fewer than the two counts' sum.
    return out, {"falls_marked_by_health_check": int(was.sum()),
                 "falls_added_by_classifier": int((now & ~was & keep).sum()),
                 "rows_dropped_after_falls": int((~keep).sum()),
                 "synthetic_falls": int(now[keep].sum())}


def classify_synthetic_falls(syn: dict, real: dict, normalize, cfg: FallClassifierConfig, device,
                             *, seed: int) -> tuple[dict, dict]:
    """The synthetic arrays relabelled: a classifier trained on the real arrays (observations,
    actions, terminals), ``normalize`` applied to observations, then ``label_falls``. Returns
    (arrays, info: the classifier's held-out report and the label counts). Data without a
    single fall (halfcheetah) has nothing to learn: the arrays come back as they are."""
    if not np.any(real["terminals"]):
        return syn, {"fall_classifier": "no falls in the real data: nothing to learn"}
    predict, info = train_fall_classifier(normalize(real["observations"]), real["actions"],
                                          real["terminals"], cfg, device, seed=seed)
    labelled, counts = label_falls(syn, predict(normalize(syn["observations"]), syn["actions"]),
                                   cfg.threshold)
    return labelled, {**info, **counts}
