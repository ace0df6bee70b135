"""Fast TD3+BC and IQL updates: the update (with its batch draw) as one CUDA graph.

Same hyperparameters, same arithmetic and the same random draws as ``TD3BC.update`` /
``IQL.update``; the difference is how the work reaches the GPU:

* the batch is drawn inside the graph from the device-resident ``MixedSampler`` (real and
  synthetic transitions on the device, indices from its generator);
* TD3+BC: one graph holds a whole cadence, ``policy_freq`` critic updates with the actor update and
  both target lerps on the last one, so the host-side ``total_it % policy_freq`` branch is baked
  into the graph instead of taken per update;
* IQL: one graph per update (V, Q + target lerp, policy); the actor's cosine LR schedule is host
  arithmetic, computed as in the reference and written into the fused Adam's device-tensor LR
  after each replay;
* Adam is the fused, capturable kernel (one launch for all parameters of a network).

``update_from(sampler)`` returns (log of the last update, number of updates done). On a CPU (no
graphs) it does one eager update with the fused Adam kernel.
"""
from __future__ import annotations

import torch

from dawm_fast.rl.buffer import MixedSampler
from dawm_fast.rl.iql import IQL
from dawm_fast.rl.td3bc import TD3BC
from dawm_fast.step_graphs import StepGraph, make_fused, portable_optimizer_state


class _GraphedAgent:
    """Shared plumbing: which optimizers are fused, the graph per sampler, portable checkpoints."""

    _optimizer_names: tuple[str, ...] = ()
    _module_names: tuple[str, ...] = ()

    def _init_fast(self) -> None:
        self.uses_graphs = self.device.type == "cuda"
        self._fuse_optimizers()
        self._graph: StepGraph | None = None
        self._graph_sampler: MixedSampler | None = None

    def _fuse_optimizers(self) -> None:
        for name in self._optimizer_names:
            make_fused(getattr(self, name), capturable=self.uses_graphs)

    @property
    def updates_per_call(self) -> int:
        """Updates one ``update_from`` call does at most."""
        return 1

    @property
    def path_description(self) -> str:
        if self.uses_graphs:
            return "fast (one CUDA graph per update cadence, batch drawn on the device, fused Adam)"
        return "fast on CPU (eager updates with fused Adam; CUDA graphs need a GPU)"

    def _graph_for(self, sampler: MixedSampler, body) -> StepGraph:
        if self._graph is None or self._graph_sampler is not sampler:
            modules = [getattr(self, n) for n in self._module_names]
            optimizers = [getattr(self, n) for n in self._optimizer_names]
            gens = [sampler.generator] + [g for g in self._generators()]
            self._graph = StepGraph(body, modules=modules, optimizers=optimizers, generators=gens,
                                    stage="rl", host_state=(lambda: self.total_it,
                                                            lambda v: setattr(self, "total_it", v)))
            self._graph_sampler = sampler
        return self._graph

    def _generators(self) -> list[torch.Generator]:
        return []

    def _portable(self, state: dict) -> dict:
        for name in self._optimizer_names:
            state[name] = portable_optimizer_state(state[name])
        return state

    def _after_load(self) -> None:
        self._graph = None              # optimizer state tensors were replaced
        self._fuse_optimizers()


class FastTD3BC(_GraphedAgent, TD3BC):
    _optimizer_names = ("actor_optimizer", "critic_optimizer")
    _module_names = ("actor", "critic", "actor_target", "critic_target")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_fast()

    def _generators(self) -> list[torch.Generator]:
        return [self.noise_generator]

    @property
    def updates_per_call(self) -> int:
        return self.cfg.policy_freq if self.uses_graphs else 1

    def update_from(self, sampler: MixedSampler) -> tuple[dict[str, torch.Tensor], int]:
        p = self.cfg.policy_freq
        if not self.uses_graphs or self.total_it % p:
            # CPU, or mid-cadence (a resume at an odd update): one eager update.
            return self.update(sampler.sample()), 1

        def cadence() -> dict[str, torch.Tensor]:
            log: dict[str, torch.Tensor] = {}
            for _ in range(p):
                log.update(self.update(sampler.sample()))
            return log

        out = self._graph_for(sampler, cadence)()
        self.total_it += p
        return {k: v.clone() for k, v in out.items()}, p

    def state_dict(self) -> dict:
        return self._portable(super().state_dict())

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._after_load()


class FastIQL(_GraphedAgent, IQL):
    _optimizer_names = ("actor_optimizer", "q_optimizer", "v_optimizer")
    _module_names = ("actor", "qf", "q_target", "vf")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_fast()

    def _sync_actor_lr(self) -> None:
        """Write the schedule's current LR (host float, reference arithmetic) into the optimizer."""
        lr = self.actor_lr_schedule.get_last_lr()[0]
        group = self.actor_optimizer.param_groups[0]
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(float(lr))
        else:
            group["lr"] = float(lr)

    def _fuse_optimizers(self) -> None:
        # The schedule must compute on host floats: detach it from the optimizer whose LR becomes
        # a device tensor by giving it a shadow optimizer that holds the same float LR.
        lr = self.actor_optimizer.param_groups[0]["lr"]
        shadow = torch.optim.SGD([torch.zeros(1)], lr=float(lr))
        shadow._opt_called = True   # it never steps; silences "scheduler.step() before optimizer"
        shadow.param_groups[0]["initial_lr"] = self.actor_optimizer.param_groups[0].get(
            "initial_lr", self.cfg.actor_lr)
        sched_state = self.actor_lr_schedule.state_dict()
        self.actor_lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            shadow, self.total_steps)
        self.actor_lr_schedule.load_state_dict(sched_state)
        shadow.param_groups[0]["lr"] = float(lr)
        super()._fuse_optimizers()

    def update_from(self, sampler: MixedSampler) -> tuple[dict[str, torch.Tensor], int]:
        if not self.uses_graphs:
            return self.update(sampler.sample()), 1
        out = self._graph_for(sampler, lambda: self._update_networks(sampler.sample()))()
        self.total_it += 1
        self.actor_lr_schedule.step()
        self._sync_actor_lr()
        return {k: v.clone() for k, v in out.items()}, 1

    def update(self, batch):
        log = super().update(batch)
        self._sync_actor_lr()
        return log

    def state_dict(self) -> dict:
        return self._portable(super().state_dict())

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._after_load()
