"""Training steps captured as CUDA graphs: the fast path of world-model training and RL updates.

A training step here (draw a batch on the device, forward, loss, backward, optimizer step) is a few
hundred small kernels; eager PyTorch spends most of the step launching them. ``StepGraph`` records
one step into a CUDA graph and replays it, so a step costs one graph launch.

Capture protocol (PyTorch's "whole-network capture"): run the step a few times on a side stream so
that every lazy allocation (optimizer moments, cuBLAS workspaces, Triton compilation) happens
before capture; capture one step; then put back every piece of state the warm-up steps changed
(parameters, buffers, optimizer moments, generator states). The first replay is therefore exactly
step 1 of the run the eager path would have done: same weights, same random draws.

Random numbers inside the graph come from the caller's generators, registered with the graph
(graph-safe Philox: each replay advances the generator's offset exactly as the eager step would).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import torch

class GraphCaptureError(RuntimeError):
    """A training step could not be captured as a CUDA graph (the caller says what to do)."""


def make_fused(optimizer: torch.optim.Optimizer, capturable: bool) -> torch.optim.Optimizer:
    """Switch an Adam/AdamW optimizer in place to its fused kernel (one launch for all parameters;
    CPU and CUDA) and, with ``capturable`` (CUDA only), to the graph-capturable form: state steps
    on the parameters' device and the learning rate a device tensor (so an LR schedule can change
    it between replays). Needed again after ``load_state_dict``, which restores the saved flags."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise TypeError(f"only Adam/AdamW steps are fused, got {type(optimizer).__name__}")
    for group in optimizer.param_groups:
        dev = group["params"][0].device
        group["capturable"] = capturable
        group["fused"] = True
        group["foreach"] = None
        if not capturable:
            continue
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=dev)
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and isinstance(state.get("step"), torch.Tensor) and state["step"].device != dev:
                state["step"] = state["step"].to(dev, torch.float32)
    return optimizer


def portable_optimizer_state(state: dict) -> dict:
    """An optimizer state_dict that loads into a plain (eager, non-fused) optimizer too: the
    capture flags off and the learning rate a float. Resuming on either backend then works."""
    state = copy.deepcopy(state)
    for group in state["param_groups"]:
        group["capturable"] = False
        group["fused"] = None
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = float(group["lr"])
    return state


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[tuple[dict, str]]:
    return [(st, k) for st in optimizer.state.values() for k, v in st.items()
            if isinstance(v, torch.Tensor)]


class StepGraph:
    """``step_fn()`` captured once, replayed per call.

    step_fn: runs one training step; it must read its inputs from tensors that live across calls
        (static buffers, device-resident datasets) and return a tuple/dict of tensors (the static
        outputs, overwritten by every replay). It must not synchronize with the host.
    modules, optimizers, generators: all the state the step changes; the warm-up changes are
        undone after capture. Optimizers must be Adam/AdamW made capturable (``make_fused``):
        their fresh state is zeros, which is how a new moment is restored.
    host_state: (get, set) callables for host-side counters the step advances (e.g. an update
        counter), restored after the warm-up like the tensors.
    stage: named in errors ("world_model", "rl").
    """

    def __init__(self, step_fn: Callable[[], object], *, modules: Sequence[torch.nn.Module],
                 optimizers: Sequence[torch.optim.Optimizer],
                 generators: Sequence[torch.Generator], stage: str,
                 host_state: tuple[Callable[[], object], Callable[[object], None]] | None = None,
                 warmup_steps: int = 2):
        self.step_fn = step_fn
        self.modules = list(modules)
        self.optimizers = list(optimizers)
        self.generators = list(generators)
        self.stage = stage
        self.host_state = host_state
        self.warmup_steps = warmup_steps
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs = None

    def _module_tensors(self) -> Iterable[torch.Tensor]:
        for m in self.modules:
            yield from m.parameters()
            yield from m.buffers()

    def capture(self) -> None:
        tensors = list(self._module_tensors())
        saved_tensors = [t.detach().clone() for t in tensors]
        saved_opt = [[(st, k, st[k].clone()) for st, k in _optimizer_tensors(o)]
                     for o in self.optimizers]
        known_states = [set(map(id, o.state.values())) for o in self.optimizers]
        saved_gens = [g.get_state() for g in self.generators]
        saved_host = self.host_state[0]() if self.host_state else None
        graph = torch.cuda.CUDAGraph()
        try:
            if not hasattr(graph, "register_generator_state"):
                raise GraphCaptureError(
                    f"{self.stage}: this torch ({torch.__version__}) cannot capture random draws "
                    f"from a user generator in a CUDA graph (needs torch >= 2.5)")
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup_steps):
                    self.step_fn()
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            for g in self.generators:
                graph.register_generator_state(g)
            with torch.cuda.graph(graph):
                outputs = self.step_fn()
        except GraphCaptureError:
            raise
        except Exception as exc:   # an op that cannot be captured, out of memory, ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise GraphCaptureError(
                f"{self.stage}: capturing the training step as a CUDA graph failed "
                f"({type(exc).__name__}: {first[:200]})") from exc
        finally:
            torch.cuda.synchronize()
            with torch.no_grad():
                for t, s in zip(tensors, saved_tensors):
                    t.copy_(s)
                for o, saved, known in zip(self.optimizers, saved_opt, known_states):
                    for st, k, v in saved:
                        st[k].copy_(v)
                    for st in o.state.values():        # created by the warm-up: fresh = zeros
                        if id(st) not in known:
                            for v in st.values():
                                if isinstance(v, torch.Tensor):
                                    v.zero_()
            for g, s in zip(self.generators, saved_gens):
                g.set_state(s)
            if self.host_state:
                self.host_state[1](saved_host)
            torch.cuda.synchronize()
        self.graph, self.outputs = graph, outputs

    def __call__(self):
        """One step: capture on first use, then replay. Returns the static outputs."""
        if self.graph is None:
            self.capture()
        self.graph.replay()
        return self.outputs
