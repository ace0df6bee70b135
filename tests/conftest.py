import os

import numpy as np
import pytest
import torch

# Tests run on CPU with one thread each: the suite must fit a 2-core CI machine.
torch.set_num_threads(1)


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
