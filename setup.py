"""Build script. Package metadata lives in pyproject.toml; this file exists for the C++/CUDA
extension (csrc/), which is compiled against the torch already installed beside the package."""
from setuptools import setup

setup()
