"""Build script. Package metadata lives in pyproject.toml; this file exists for the C++/CUDA
extension (csrc/), which is compiled against the torch already installed beside the package.

* ``pip install -e .`` (isolated build, the default): torch is not importable in pip's build
  environment on purpose (pyproject requires only setuptools), so no extension is built here; the
  package JIT-compiles csrc/ on first use against the user's torch (dawm_fast/ops/loader.py).
* ``pip install --no-build-isolation -e .``: torch is importable, so ``dawm_fast._C`` is compiled
  now (CUDAExtension when torch has CUDA and a CUDA toolkit is found, else CppExtension).

Environment switches: DAWM_FAST_BUILD_EXT=0 skips the extension, =1 makes "torch not importable"
an error; DAWM_FAST_CUDA=0 builds CPU-only, =1 requires the CUDA build; TORCH_CUDA_ARCH_LIST is
honoured (default "9.0+PTX": Hopper, plus PTX for newer GPUs); MAX_JOBS bounds parallel compiles.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from setuptools import find_namespace_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _load_sources_module():
    # By path: importing the dawm_fast package here would need its dependencies (torch).
    spec = importlib.util.spec_from_file_location("_dawm_fast_sources",
                                                  ROOT / "dawm_fast" / "ops" / "_sources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCES = _load_sources_module()
CSRC = ROOT / "csrc"


class BuildPyWithSources(build_py):
    """Copies csrc/ into the built package as dawm_fast/_csrc, so an installed wheel still has the
    sources for the JIT build. An editable install reads csrc/ from the checkout instead."""

    def run(self):
        super().run()
        if self.editable_mode:
            return
        dst = Path(self.build_lib) / "dawm_fast" / "_csrc"
        for src in CSRC.rglob("*"):
            if src.is_file() and src.suffix in SOURCES.SOURCE_SUFFIXES:
                target = dst / src.relative_to(CSRC)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target)


def _extension_setup() -> tuple[list, dict]:
    """(ext_modules, cmdclass additions) for the ahead-of-time build, or ([], {}) to skip it."""
    want = SOURCES.env_flag("DAWM_FAST_BUILD_EXT")
    if want is False:
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        if want:
            raise RuntimeError("DAWM_FAST_BUILD_EXT=1 but torch is not importable in this build "
                               "environment; install torch first and use "
                               "`pip install --no-build-isolation .`") from None
        print("dawm_fast: torch is not importable here (isolated build); the C++ extension "
              "will be compiled on first use instead")
        return [], {}

    with_cuda, why = SOURCES.cuda_build(torch, cpp_extension)
    print(f"dawm_fast: building dawm_fast._C with{'' if with_cuda else 'out'} CUDA ({why})")
    sources = [str(p.relative_to(ROOT)) for p in SOURCES.source_files(CSRC, with_cuda)]
    cxx = list(SOURCES.CXX_FLAGS)
    kwargs = dict(include_dirs=[str(CSRC)])
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", SOURCES.DEFAULT_CUDA_ARCH_LIST)
        cxx.append(f"-D{SOURCES.CUDA_DEFINE}")
        ext = cpp_extension.CUDAExtension(
            "dawm_fast._C", sources,
            extra_compile_args={"cxx": cxx, "nvcc": list(SOURCES.NVCC_FLAGS)}, **kwargs)
    else:
        ext = cpp_extension.CppExtension("dawm_fast._C", sources,
                                         extra_compile_args={"cxx": cxx}, **kwargs)
    source_hash = SOURCES.source_hash(CSRC)

    class BuildExtension(cpp_extension.BuildExtension):
        """Also records the hash of the compiled sources beside the module, so the loader can
        tell when an editable checkout's csrc/ has moved on (it then JIT-builds instead)."""

        def run(self):
            super().run()
            ext_path = Path(self.get_ext_fullpath("dawm_fast._C"))
            (ext_path.parent / SOURCES.HASH_FILE).write_text(source_hash + "\n")

    return [ext], {"build_ext": BuildExtension}


# The Triton kernels live in the top-level kernels/ folder of the source tree (they import nothing
# of dawm_fast) and install as dawm_fast.kernels: a top-level module named `kernels` would collide
# with the PyPI package of that name.
PACKAGES = find_namespace_packages(include=["dawm_fast", "dawm_fast.*"]) + ["dawm_fast.kernels"]
PACKAGE_DIR = {"dawm_fast.kernels": "kernels"}

ext_modules, ext_cmdclass = _extension_setup()
setup(packages=PACKAGES, package_dir=PACKAGE_DIR, ext_modules=ext_modules,
      cmdclass={"build_py": BuildPyWithSources, **ext_cmdclass})
