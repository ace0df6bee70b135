"""The installed package: the Triton kernels are ``dawm_fast.kernels`` (the source tree keeps them
in its top-level kernels/ folder), and nothing named ``kernels`` is importable at the top level
(a PyPI package has that name)."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_kernels_install_under_the_package_namespace(tmp_path):
    code = ("import importlib.util, dawm_fast.kernels as k\n"
            "assert importlib.util.find_spec('kernels') is None, "
            "importlib.util.find_spec('kernels').origin\n"
            "assert hasattr(k.ddim_update, 'ddim_update_reference')\n"
            "assert hasattr(k.groupnorm_mish, 'groupnorm_mish_reference')\n")
    # cwd outside the repository, and no PYTHONPATH: only what the install provides
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (REPO / "dawm_fast" / "kernels").exists()   # one copy: the top-level folder
