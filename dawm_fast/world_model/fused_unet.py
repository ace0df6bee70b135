"""Fused blocks of the temporal U-Net, swapped in for the reference blocks.

``FusedConv1dBlock`` and ``FusedResidualBlock`` hold the very modules (conv, norm, embed_proj,
residual) of the block they replace, so the parameters and the state_dict stay the same, and
``TemporalUNet.forward`` stays the one description of the topology. What changes is how one
block computes the same function:

* the bias add, GroupNorm, Mish and the ResidualTemporalBlock's embedding add (block1) or
  residual add (block2) are one ``dawm_fast.ops.groupnorm_mish`` call per Conv1dBlock (the
  convolution runs without its bias);
* a "same" convolution over a short horizon (T < k: the deepest levels, where the widest
  channels and most of the FLOPs are) is one GEMM with a banded matrix, exact and 2.5x fewer
  FLOPs than the padded conv at T = 2 (``banded_max_horizon`` says where); longer horizons keep
  cuDNN / mkldnn. For inference each block keeps its banded matrix and rebuilds it, in place,
  when its weight's version changes.

``fuse_blocks_(module)`` swaps the blocks of a module in place (the fast trainer does this to
the model it trains); ``fused_copy(unet)`` swaps them in a copy that shares the parameters (the
fast sampler, which must not change the caller's model).
"""
from __future__ import annotations

import copy
import threading
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from dawm_fast.kernels.groupnorm_mish import groupnorm_mish_reference
from dawm_fast.world_model.unet import Conv1dBlock, ResidualTemporalBlock


def banded_weight(weight: torch.Tensor, padding: int, t: int) -> torch.Tensor:
    """A stride-1 conv1d over exactly t steps as one dense matrix [out_ch * t, in_ch * t]: row
    (o, s), column (c, u) holds weight[o, c, u - s + padding], zero where that tap falls outside
    the kernel. Built from slices of the zero-padded kernel, so it is differentiable. (Measured on
    an H200, world-model step at batch 256: 6.70 ms with this build, 7.93 ms with a gather of taps
    plus a custom backward of three kernels, fewer kernels but slow index_select and short sums.)"""
    cout, cin, _ = weight.shape
    wp = F.pad(weight, (t, t))                                   # [out_ch, in_ch, k + 2t]
    # Row block s: tap u - s + padding of input u is column t + padding - s + u of wp.
    rows = [wp[:, :, t + padding - s: 2 * t + padding - s] for s in range(t)]
    return torch.stack(rows, dim=1).reshape(cout * t, cin * t)   # [(o, s), (c, u)]


def conv1d_banded(x: torch.Tensor, matrix: torch.Tensor, out_ch: int) -> torch.Tensor:
    """x [B, in_ch, T] @ banded matrix [out_ch*T, in_ch*T]^T -> [B, out_ch, T], already in
    layout. It multiplies T*T weights per channel pair where the padded conv multiplies k*T."""
    b, cin, t = x.shape
    return (x.reshape(b, cin * t) @ matrix.t()).view(b, out_ch, t)


def same_padding(conv: nn.Conv1d) -> int | None:
    """The padding of a stride-1, undilated, ungrouped "same" conv, else None."""
    pad = conv.padding[0] if isinstance(conv.padding, tuple) else conv.padding
    k = conv.weight.shape[2]
    if (not isinstance(pad, int) or conv.stride != (1,) or conv.dilation != (1,)
            or conv.groups != 1 or 2 * pad != k - 1):
        return None
    return pad


def banded_max_horizon(device: torch.device, kernel_size: int, training: bool) -> int:
    """Longest horizon whose "same" convolutions run as banded GEMMs. A banded GEMM multiplies
    T*T weights per channel pair, the padded conv k*T: fewer for every T < k. Measured on the CPU
    (1 thread, other cores idle; benchmarks/test_conv_forms.py): inference 1.2-4x faster than
    mkldnn's conv for every T < k; forward + backward clearly faster at T <= k // 2 (1.2-1.5x),
    mixed between. On a GPU every T < k for training (one cuBLAS GEMM instead of cuDNN's
    tiny-horizon convolutions: without them an H200 world-model step took 8.3 ms instead of 6.6),
    and T <= 2(k - 1) for inference: at T = 8, k = 5 cuDNN runs its convolution in NHWC with
    layout transposes around it that cost more than the banded GEMM's 1.6x FLOPs (H200 sampling
    +19% at batch 256, +4% at 4096; benchmarks/profile_step.py)."""
    if device.type == "cpu" and training:
        return kernel_size // 2
    if device.type == "cuda" and not training:
        return 2 * (kernel_size - 1)
    return kernel_size - 1


def _epilogue(conv_out: torch.Tensor, bias: torch.Tensor, gamma: torch.Tensor,
              beta: torch.Tensor, num_groups: int, eps: float, emb_add: torch.Tensor | None,
              residual: torch.Tensor | None) -> torch.Tensor:
    """The ``groupnorm_mish`` op, except on the CPU where a gradient is needed or under bf16:
    the op's CPU kernel is fp32 inference only, so there the plain-PyTorch reference runs (the
    CPU fast path trains with the reference's arithmetic)."""
    tensors = (conv_out, bias, gamma, beta, emb_add, residual)
    if conv_out.device.type == "cpu" and (
            any(t is not None and t.dtype != torch.float32 for t in tensors)
            or (torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                for t in tensors))):
        return groupnorm_mish_reference(conv_out, bias, gamma, beta, num_groups, eps,
                                        emb_add=emb_add, residual=residual)
    from dawm_fast import ops     # lazy: dawm_fast.ops imports the world model package
    conv_out, bias, gamma, beta, emb_add, residual = (None if t is None else t.contiguous()
                                                      for t in tensors)
    return ops.groupnorm_mish(conv_out, bias, gamma, beta, num_groups, eps, emb_add, residual)


class FusedConv1dBlock(Conv1dBlock):
    """``Conv1dBlock`` (+ the residual block's adds) with its epilogue as one op; holds the
    replaced block's conv, norm and act, so parameters and state_dict are the same."""

    def __init__(self, block: Conv1dBlock):
        nn.Module.__init__(self)
        self.conv, self.norm, self.act = block.conv, block.norm, block.act
        self.train(block.training)
        # Inference only: (version key, banded matrix) of this block's conv. Not module state:
        # derived from the weight, and rebuilt when the weight changes.
        self._banded: tuple[tuple, torch.Tensor] | None = None

    def _banded_key(self, t: int) -> tuple:
        w = self.conv.weight
        return (w.data_ptr(), w._version, w.dtype, w.device, t)

    def banded_matrix(self, t: int) -> torch.Tensor:
        """The conv's banded matrix for horizon t: built fresh where autograd needs it (inside a
        captured training step that means: rebuilt by every replay), else this block's cached
        one, rebuilt in place when the weight's version changed."""
        w, pad = self.conv.weight, same_padding(self.conv)
        if torch.is_grad_enabled() and w.requires_grad:
            return banded_weight(w, pad, t)
        key = self._banded_key(t)
        if self._banded is not None and self._banded[0] == key:
            return self._banded[1]
        if w.is_cuda and torch.cuda.is_current_stream_capturing():
            # Not cached inside a capture: the graph then builds the matrix itself every replay.
            return banded_weight(w, pad, t)
        with torch.no_grad():
            fresh = banded_weight(w, pad, t)
            old = self._banded[1] if self._banded is not None else None
            if old is not None and old.shape == fresh.shape and old.device == fresh.device \
                    and old.dtype == fresh.dtype:
                fresh = old.copy_(fresh)          # same memory: a captured graph reads it
        self._banded = (key, fresh)
        return fresh

    def refresh_banded_(self) -> None:
        """Rebuild a cached banded matrix whose weight changed since (an optimizer step, an EMA
        update, load_state_dict), in place. A CUDA graph replay reads the cached memory without
        running this block's Python, so whoever replays a graph over this block calls it first
        (eager calls rebuild on lookup)."""
        if self._banded is not None:
            t = self._banded[0][-1]
            if self._banded[0] != self._banded_key(t):
                self.banded_matrix(t)

    def conv_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``F.conv1d(x, conv.weight)`` without the bias, x [B, in_ch, T] -> [B, out_ch, T], in
        its cheapest exact form: a banded GEMM for short horizons, else ``F.conv1d``."""
        conv, w = self.conv, self.conv.weight
        training = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
        if same_padding(conv) is not None and \
                x.shape[2] <= banded_max_horizon(x.device, w.shape[2], training):
            return conv1d_banded(x, self.banded_matrix(x.shape[2]), w.shape[0])
        return F.conv1d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)

    def forward(self, x: torch.Tensor, emb_add: torch.Tensor | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """Mish(GroupNorm(conv(x))) [+ emb_add[:, :, None]] [+ residual]: x [B, in_ch, T] ->
        [B, out_ch, T]."""
        norm = self.norm
        return _epilogue(self.conv_forward(x), self.conv.bias, norm.weight, norm.bias,
                         norm.num_groups, norm.eps, emb_add, residual)


class _SharedMish(threading.local):
    """Mish(emb) once per embedding tensor. Every residual block of one U-Net forward gets the
    same emb and applies Mish to it first (its embed_proj is Mish -> Linear); the fused blocks
    share one Mish node, so under autograd the blocks' gradients are summed before the Mish's
    backward (one backward instead of one per block). The recorded runs
    (tests/test_recorded_runs.py) hold the fast path to exactly that summation order."""

    def __init__(self):
        self.emb: weakref.ref | None = None
        self.out: torch.Tensor | None = None

    def __call__(self, emb: torch.Tensor) -> torch.Tensor:
        if self.emb is None or self.emb() is not emb:
            self.emb, self.out = weakref.ref(emb), F.mish(emb)
        return self.out


class FusedResidualBlock(ResidualTemporalBlock):
    """``ResidualTemporalBlock`` whose embedding add and residual add ride in the fused
    epilogues of its two Conv1dBlocks; holds the replaced block's modules."""

    _mish = _SharedMish()

    def __init__(self, block: ResidualTemporalBlock):
        nn.Module.__init__(self)
        self.block1 = FusedConv1dBlock(block.block1)
        self.block2 = FusedConv1dBlock(block.block2)
        self.embed_proj, self.residual = block.embed_proj, block.residual
        self.train(block.training)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # x: [B, in_ch, T], emb: [B, embed_dim]
        _, linear = self.embed_proj             # Mish -> Linear, the Mish shared (_SharedMish)
        emb_add = linear(self._mish(emb))                                # [B, out_ch]
        h = self.block1(x, emb_add=emb_add)                              # [B, out_ch, T]
        return self.block2(h, residual=self.residual(x))


def fuse_blocks_(module: nn.Module) -> nn.Module:
    """Swap every ResidualTemporalBlock and Conv1dBlock below ``module`` for its fused form, in
    place (same parameters, same state_dict); returns ``module``."""
    for name, child in module.named_children():
        if isinstance(child, (FusedResidualBlock, FusedConv1dBlock)):
            continue
        if isinstance(child, ResidualTemporalBlock):
            module.add_module(name, FusedResidualBlock(child))
        elif isinstance(child, Conv1dBlock):
            module.add_module(name, FusedConv1dBlock(child))
        else:
            fuse_blocks_(child)
    return module


def _sharing_copy(module: nn.Module) -> nn.Module:
    """A copy of the module tree holding the same parameter and buffer tensors."""
    twin = copy.copy(module)
    twin._parameters = dict(module._parameters)
    twin._buffers = dict(module._buffers)
    twin._modules = {name: None if child is None else _sharing_copy(child)
                     for name, child in module._modules.items()}
    return twin


def fused_copy(module: nn.Module) -> nn.Module:
    """``module`` with fused blocks, sharing its parameters (an update of either is seen by
    both); ``module`` itself is unchanged."""
    return fuse_blocks_(_sharing_copy(module))


def refresh_banded_(module: nn.Module) -> None:
    """``FusedConv1dBlock.refresh_banded_`` for every fused block below ``module``."""
    for m in module.modules():
        if isinstance(m, FusedConv1dBlock):
            m.refresh_banded_()
