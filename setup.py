"""Build of the memkernels torch extension (memkernels._C).

CPU kernels are always built. CUDA kernels are built when torch is a CUDA
build and a CUDA toolkit is found (CUDA_HOME, default /usr/local/cuda); the
decision never depends on whether a GPU is visible. Environment switches:

  MEMKERNELS_CUDA=0      CPU-only build
  MEMKERNELS_CUDA=1      CUDA required: fail if it cannot be built
  TORCH_CUDA_ARCH_LIST   honoured; default "8.0;9.0" when unset and no GPU is visible
  MEMKERNELS_PTXAS_VERBOSE=1  print ptxas register/spill reports

A CUDA build whose nvcc step fails fails the install: there is no silent
fallback to CPU-only.
"""

import glob
import os
import shlex
import subprocess
import sys
import tempfile

# torch.utils.cpp_extension reads CUDA_HOME when imported; an nvcc found on PATH
# outside the toolkit folder would mislead it, so prefer the standard folder.
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ:
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    switch = os.environ.get("MEMKERNELS_CUDA", "").strip()
    possible = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if switch == "0":
        return False
    if switch == "1":
        if not possible:
            sys.exit(
                "memkernels: MEMKERNELS_CUDA=1 but CUDA cannot be built: torch.version.cuda="
                f"{torch.version.cuda!r}, CUDA_HOME={cpp_extension.CUDA_HOME!r}"
            )
        return True
    if not possible:
        print(
            "memkernels: building CPU kernels only (torch.version.cuda="
            f"{torch.version.cuda!r}, CUDA_HOME={cpp_extension.CUDA_HOME!r})",
            file=sys.stderr,
        )
    return possible


def shared_libstdcxx_link_args():
    """Link flags that make the extension use the process's shared libstdc++.

    Some toolchains link libstdc++ statically into shared objects (a
    -static-libstdc++ in their specs). In a torch extension that puts a second
    C++ runtime into a process whose torch uses the shared one, and formatting
    a number into an error message then crashes. Probe: link a tiny shared
    object with the compiler the build uses; if it does not depend on
    libstdc++.so, name the shared library explicitly, ahead of the driver's
    static one."""
    cxx = shlex.split(os.environ.get("CXX", "c++"))
    with tempfile.TemporaryDirectory() as d:
        src, out = os.path.join(d, "probe.cpp"), os.path.join(d, "probe.so")
        with open(src, "w") as f:
            f.write("#include <sstream>\nstd::string f(long x) { std::ostringstream s; s << x; return s.str(); }\n")
        try:
            done = subprocess.run(cxx + ["-shared", "-fPIC", src, "-o", out], capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return []
        if done.returncode != 0:
            return []
        with open(out, "rb") as f:
            if b"libstdc++.so" in f.read():
                return []
    print("memkernels: the C++ compiler links libstdc++ statically into shared objects; "
          "linking the shared libstdc++.so.6 instead", file=sys.stderr)
    return ["-l:libstdc++.so.6"]


def nvidia_include_dirs():
    """Headers torch's CUDA headers include (cusparse.h, cublas_v2.h) ship in pip packages."""
    dirs = []
    for base in sys.path:
        dirs += glob.glob(os.path.join(base, "nvidia", "cu*", "include"))
        dirs += glob.glob(os.path.join(base, "nvidia", "*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


def sources(*patterns):
    """Repository-relative paths of the files matching the patterns: the
    layout is the source list (CMakeLists.txt globs the same core files)."""
    return sorted(os.path.relpath(p, ROOT) for pat in patterns for p in glob.glob(os.path.join(ROOT, pat)))


def extension():
    with_cuda = want_cuda()
    cpu_sources = sources("csrc/core/*.cpp", "csrc/torch/*.cpp")
    cxx = ["-O3", "-fopenmp", "-fvisibility=hidden"]
    defines = [
        ("MK_VERSION", f'"{VERSION}"'),
        ("MK_TORCH_VERSION", f'"{torch.__version__}"'),
    ]
    kwargs = dict(
        name="memkernels._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"] + shared_libstdcxx_link_args(),
        py_limited_api=False,
    )
    if not with_cuda:
        kwargs["sources"] = cpu_sources
        kwargs["extra_compile_args"] = {"cxx": cxx}
        kwargs["define_macros"] = defines
        return cpp_extension.CppExtension(**kwargs), False

    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.device_count() == 0:
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPUs")
    defines += [
        ("MK_WITH_CUDA", "1"),
        ("MK_CUDA_ARCHS", f'"{archs}"'),
        ("MK_CUDA_VERSION", f'"{torch.version.cuda}"'),
    ]
    nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
    nvcc += [f"-D{k}={v}" for k, v in defines]
    if os.environ.get("MEMKERNELS_PTXAS_VERBOSE") == "1":
        nvcc += ["-Xptxas", "-v"]
    kwargs["sources"] = cpu_sources + sources("csrc/core/*.cu")
    kwargs["include_dirs"] += nvidia_include_dirs()
    kwargs["extra_compile_args"] = {"cxx": cxx, "nvcc": nvcc}
    kwargs["define_macros"] = defines
    return cpp_extension.CUDAExtension(**kwargs), True


ext, _ = extension()

setup(
    version=VERSION,
    ext_modules=[ext],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
