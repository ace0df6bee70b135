"""`--backend auto` resolves once, in one place, to a backend that runs here, and says why."""
import pytest

from dawm_fast import backends
from dawm_fast.ops import has_ops


def test_auto_picks_fast_on_the_cpu_where_the_extension_loads():
    backend, why = backends.resolve_backend("auto", "cpu")
    if has_ops():
        assert backend == "fast" and "C++ extension loads" in why
    else:
        assert backend == "reference" and "extension is unavailable" in why


def test_auto_falls_back_to_reference_and_fast_refuses_when_the_extension_is_missing(monkeypatch):
    def unavailable():
        raise backends.ExtensionUnavailable("no compiler\nmore detail")
    monkeypatch.setattr(backends, "load_extension", unavailable)
    backend, why = backends.resolve_backend("auto", "cpu")
    assert backend == "reference" and "no compiler" in why and "more detail" not in why
    with pytest.raises(backends.BackendUnavailable, match="no compiler"):
        backends.resolve_backend("fast", "cpu")
    assert backends.resolve_backend("reference", "cpu") == ("reference", "asked for")


def test_a_cpu_only_build_is_not_fast_on_a_gpu(monkeypatch):
    class CpuOnly:
        @staticmethod
        def with_cuda():
            return False
    monkeypatch.setattr(backends, "load_extension", lambda: CpuOnly)
    assert backends.resolve_backend("auto", "cuda") == (
        "reference", "auto: the C++ extension was built without CUDA")


def test_unknown_backend_is_refused():
    with pytest.raises(backends.BackendUnavailable, match="unknown backend 'quick'"):
        backends.resolve_backend("quick", "cpu")


def test_the_factory_gives_each_backend_its_agent_and_trainer():
    import numpy as np
    import torch

    from dawm_fast.rl.fast_updates import FastIQL, FastTD3BC
    from dawm_fast.rl.iql import IQL, IQLConfig
    from dawm_fast.rl.td3bc import TD3BC, TD3BCConfig
    from dawm_fast.world_model import (DiffusionWorldModel, TemporalUNetConfig, WorldModelConfig,
                                       WorldModelTrainer, WorldModelTrainerConfig)
    from dawm_fast.world_model.fast_training import FastWorldModelTrainer

    mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    kinds = {}
    for backend in ("reference", "fast"):
        for algo, cfg in (("td3bc", TD3BCConfig(hidden=8)), ("iql", IQLConfig(hidden=8))):
            agent = backends.rl_agent(backend, algo, 3, 2, cfg, torch.device("cpu"), mean, std,
                                      seed=1, gamma=0.9, total_steps=10)
            kinds[backend, algo] = type(agent)
            assert agent.gamma == 0.9 and isinstance(agent.path_description, str)
    assert kinds == {("reference", "td3bc"): TD3BC, ("reference", "iql"): IQL,
                     ("fast", "td3bc"): FastTD3BC, ("fast", "iql"): FastIQL}
    model = DiffusionWorldModel(3, 2, WorldModelConfig(horizon=4, unet=TemporalUNetConfig(
        dim=8, dim_mults=(1, 2))))
    cfg = WorldModelTrainerConfig()
    assert type(backends.world_model_trainer("reference", model, cfg, seed=0)) is \
        WorldModelTrainer
    assert type(backends.world_model_trainer("fast", model, cfg, seed=0)) is FastWorldModelTrainer


def test_a_sweep_keeps_the_backend_its_directory_was_made_with(tmp_path):
    import argparse
    import json

    from dawm_fast.sweep import sweep_backend
    args = argparse.Namespace(backend=None, out=tmp_path, device="cpu")
    assert sweep_backend(args) == backends.resolve_backend("auto", "cpu")[0]    # a new sweep
    (tmp_path / "sweep.json").write_text(json.dumps({"settings": {"backend": "reference"}}))
    assert sweep_backend(args) == "reference"                   # resumed: the sweep's own
    args.backend = "auto"
    assert sweep_backend(args) == backends.resolve_backend("auto", "cpu")[0]    # asked for
