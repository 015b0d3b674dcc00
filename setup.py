"""Builds tlstm._C: the C++ CPU kernels always, the CUDA kernels when they can be built.

Environment switches:
  TLSTM_CPU_ONLY=1      build without the CUDA sources even where nvcc and a CUDA torch exist
  TLSTM_REQUIRE_CUDA=1  fail instead of silently building CPU-only (CI uses it)
  TORCH_CUDA_ARCH_LIST  GPU targets; defaults to "8.0;9.0" when no GPU is visible

The CPU kernels are compiled for the target's baseline and, per vector extension (AVX2, AVX-512),
once more in functions that the running CPU selects (csrc/cpu/cpu_capability.h): no build flag
decides the instruction set.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

# torch decides CUDA_HOME when cpp_extension is imported; a wrapper script named nvcc on the
# PATH (as on this project's machines) makes it guess the wrong root, so name the toolkit first.
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ:
    for root in ("/usr/local/cuda",):
        if os.path.exists(os.path.join(root, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = root

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _cuda_wanted():
    if _flag("TLSTM_CPU_ONLY"):
        return False
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if _flag("TLSTM_REQUIRE_CUDA") and not possible:
        raise RuntimeError(
            "TLSTM_REQUIRE_CUDA=1 but the CUDA sources cannot be built: "
            f"torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME}"
        )
    return possible


def _cxx_flags():
    # -fno-trapping-math (as torch itself builds) lets GCC vectorize the branch-free cell math
    # (csrc/fast_math.h); neither flag changes a result.
    flags = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
    if sys.platform.startswith("linux"):
        # at::parallel_for is OpenMP code inlined from ATen's headers: without -fopenmp it runs
        # serially. The libgomp.so.1 it links is the one torch has already loaded.
        flags.append("-fopenmp")
    return flags


def _link_flags():
    return ["-fopenmp"] if sys.platform.startswith("linux") else []


def _cuda_include_dirs():
    # cublas_v2.h and cusparse.h come with the nvidia-* wheels that the CUDA torch depends on.
    try:
        import nvidia
    except ImportError:
        return []
    dirs = []
    for base in nvidia.__path__:
        dirs += sorted(glob.glob(os.path.join(base, "cu*", "include")))
        dirs += sorted(glob.glob(os.path.join(base, "*", "include")))
    return [d for d in dirs if os.path.exists(os.path.join(d, "cublas_v2.h"))][:1]


def _cublas_link_args():
    """The CUDA kernels call cuBLAS directly (the per-step GEMMs): link the libcublas that torch
    itself loads, from the nvidia-* wheels or else from the toolkit. Only the soname is
    recorded, so at run time the copy torch has already loaded serves."""
    candidates = []
    try:
        import nvidia
        for base in nvidia.__path__:
            candidates += sorted(glob.glob(os.path.join(base, "cu*", "lib", "libcublas.so*")))
            candidates += sorted(glob.glob(os.path.join(base, "cublas", "lib", "libcublas.so*")))
    except ImportError:
        pass
    if CUDA_HOME:
        candidates += sorted(glob.glob(os.path.join(CUDA_HOME, "lib64", "libcublas.so*")))
    if not candidates:
        raise RuntimeError("tlstm's CUDA kernels need libcublas; none found in the nvidia-* "
                           f"wheels or under CUDA_HOME={CUDA_HOME}")
    return [candidates[0]]


def _extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx_flags = _cxx_flags()  # the C++ standard comes from torch
    if not _cuda_wanted():
        return CppExtension(
            "tlstm._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=_link_flags()
        )
    if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    sources += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    return CUDAExtension(
        "tlstm._C",
        sources,
        include_dirs=_cuda_include_dirs(),
        define_macros=[("TLSTM_WITH_CUDA", "1")],
        extra_compile_args={
            "cxx": cxx_flags,
            "nvcc": ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "--threads", "2"],
        },
        extra_link_args=_link_flags() + _cublas_link_args(),
    )


class _BuildExtension(BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)):
    """Compiles in build/ of the source tree, kept between builds: pip's editable install would
    otherwise compile in a new temporary directory every time, rebuilding every source (about
    ten minutes with the CUDA files) where ninja recompiles only what changed."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(HERE, "build", "objects")


setup(
    packages=find_packages(include=["tlstm", "tlstm.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": _BuildExtension},
)
