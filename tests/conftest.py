import os
import shutil


def _no_nvidia_gpu() -> bool:
    """True when no CUDA device can be visible: every device hidden, or no NVIDIA driver at all."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return True
    return not (os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")
                or shutil.which("nvidia-smi"))


# Must run before anything imports ``dawm_fast.kernels``: triton.jit reads TRITON_INTERPRET when a kernel is
# defined, and only interpreter-built kernels accept CPU tensors. Decided without importing torch
# (no CUDA initialisation in the pytest process); setdefault lets an explicit TRITON_INTERPRET win.
if _no_nvidia_gpu():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import numpy as np
import pytest
import torch

# Tests run on CPU with one thread each: the suite must fit a 2-core CI machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def strict_fp32():
    """Tests compare implementations in strict fp32. On a GPU PyTorch's defaults let cuDNN
    convolutions use TF32 (~1e-3 relative noise, seen: 4.6e-4 between two conv paths of one U-Net
    on an H200), which is a precision choice, not a bug; benchmarks turn TF32 on themselves."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def minari_store(tmp_path, monkeypatch):
    """A private, empty Minari store for the test."""
    root = tmp_path / "minari"
    root.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture
def rng():
    return np.random.default_rng(int.from_bytes(os.urandom(4), "little"))


@pytest.fixture(scope="session")
def untrained_sampling_model():
    """make(obs_dim, act_dim, device="cpu", **unet_config) -> a seeded, untrained world model
    (horizon 8) in eval mode whose final layer is scaled down: a small eps keeps untrained samples
    spread out instead of all at +-1, so sampling comparisons see real values."""
    from dawm_fast.world_model import DiffusionWorldModel, TemporalUNetConfig, WorldModelConfig

    def make(obs_dim: int, act_dim: int, device: str = "cpu", **unet_config):
        torch.manual_seed(0)
        m = DiffusionWorldModel(obs_dim, act_dim, WorldModelConfig(
            horizon=8, unet=TemporalUNetConfig(**unet_config))).to(device).eval()
        with torch.no_grad():
            m.unet.final_conv.weight.mul_(0.01)
            m.unet.final_conv.bias.mul_(0.01)
        return m
    return make
