"""PNG plots of a run: learning curve, world-model loss, real vs synthetic distributions."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_plots(out: Path, rows: list[dict], dataset, synthetic_ratio: float,
                synthetic_path: Path | None = None) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    written = []

    def series(stage, metric):
        pts = [(int(r["step"]), float(r["value"])) for r in rows
               if r["stage"] == stage and r["metric"] == metric]
        return np.array(pts).T if pts else None

    curve = series("rl", "eval_score")
    if curve is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(curve[0], curve[1], marker="o")
        ax.set_xlabel("RL updates")
        ax.set_ylabel("normalized score (D4RL reference, x100)")
        ax.set_title(f"{dataset.name}: learning curve (synthetic ratio {synthetic_ratio})")
        ax.grid(alpha=0.3)
        written.append(_save(fig, plot_dir / "learning_curve.png"))
    loss = series("world_model", "loss")
    if loss is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(loss[0], loss[1])
        ax.set_yscale("log")
        ax.set_xlabel("world-model steps")
        ax.set_ylabel("denoising loss (masked MSE)")
        ax.set_title("world-model training")
        ax.grid(alpha=0.3)
        written.append(_save(fig, plot_dir / "world_model_loss.png"))
    syn_path = synthetic_path or out / "synthetic.npz"
    if syn_path.exists():
        from dawm_fast.run_io import load_arrays      # checked: one line naming a bad file
        z = load_arrays(syn_path, "generation", ("observations", "rewards"))
        syn_obs, syn_rew = z["observations"], z["rewards"]
        if len(syn_rew):
            n_dims = min(5, dataset.obs_dim)
            fig, axes = plt.subplots(1, n_dims + 1, figsize=(3 * (n_dims + 1), 3))
            panels = [("reward", dataset.rewards, syn_rew)] + [
                (f"state[{d}]", dataset.observations[:, d], syn_obs[:, d]) for d in range(n_dims)]
            for ax, (name, real, syn) in zip(axes, panels):
                lo, hi = np.percentile(np.concatenate([real, syn]), [0.5, 99.5])
                bins = np.linspace(lo, hi if hi > lo else lo + 1, 50)
                ax.hist(real, bins, density=True, alpha=0.5, label="real")
                ax.hist(syn, bins, density=True, alpha=0.5, label="synthetic")
                ax.set_title(name)
            axes[0].legend()
            fig.suptitle(f"{dataset.name}: real vs synthetic")
            written.append(_save(fig, plot_dir / "real_vs_synthetic.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path
