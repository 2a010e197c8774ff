"""Build of the memkernels torch extension (memkernels._C).

CPU kernels are always built. CUDA kernels are built when torch is a CUDA
build and a CUDA toolkit is found (CUDA_HOME, default /usr/local/cuda); the
decision never depends on whether a GPU is visible. A CUDA build whose nvcc
step fails fails the install: there is no silent fallback to CPU-only. The
environment switches are in the README's table (Build switches).

A wheel is compiled against one torch's C++ ABI, so its version carries a
local tag naming the CUDA and torch it was built with (0.1.0+cu130torch2.14,
0.1.0+cputorch2.14) and it requires that torch series (torch>=2.14,<2.15). The
sdist carries neither: installing it compiles against the torch at hand.
"""

import glob
import os
import re
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
from setuptools import Extension, setup  # noqa: E402
from setuptools.command.build_py import build_py  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.abspath(__file__))
# setuptools.build_meta runs this file with the command in argv.
BUILDING_SDIST = "sdist" in sys.argv


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


def jax_include_dir():
    """The XLA FFI headers of the installed jax, when the JAX handlers are to
    be built: MEMKERNELS_JAX=1 requires jax, 0 skips them, unset builds them
    when jax is importable."""
    switch = os.environ.get("MEMKERNELS_JAX", "").strip()
    if switch == "0":
        return None
    try:
        import jax.ffi

        return jax.ffi.include_dir()
    except Exception as e:  # noqa: BLE001 - any failure means no headers
        if switch == "1":
            sys.exit(f"memkernels: MEMKERNELS_JAX=1 but jax's FFI headers are not available: {e}")
        print("memkernels: building without the JAX handlers (jax is not importable)", file=sys.stderr)
        return None


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


def nvcc_version():
    """(major, minor) of the toolkit's nvcc."""
    nvcc = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        sys.exit(f"memkernels: cannot run {nvcc}: {e}")
    m = re.search(r"release (\d+)\.(\d+)", out)
    if m is None:
        sys.exit(f"memkernels: cannot read the version of {nvcc}: {out!r}")
    return int(m.group(1)), int(m.group(2))


def default_cuda_archs(nvcc):
    """The default architecture list for this nvcc (csrc/cuda_archs.txt, which
    CMakeLists.txt reads too)."""
    with open(os.path.join(ROOT, "csrc", "cuda_archs.txt")) as f:
        for line in f:
            fields = line.split("#", 1)[0].split()
            if len(fields) == 2 and nvcc >= tuple(int(x) for x in fields[0].split(".")):
                return fields[1]
    sys.exit(f"memkernels: nvcc {nvcc[0]}.{nvcc[1]} is older than every line of csrc/cuda_archs.txt")


def torch_series():
    """(major, minor) of the torch this build compiles against."""
    return tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])


def local_tag(with_cuda):
    """cu130torch2.14 or cputorch2.14: what a wheel was compiled against."""
    major, minor = torch_series()
    device = "cu" + torch.version.cuda.replace(".", "") if with_cuda else "cpu"
    return f"{device}torch{major}.{minor}"


def requirements():
    """A wheel needs the torch series it was compiled against; the sdist any
    torch with the APIs it uses (it compiles against the one installed)."""
    if BUILDING_SDIST:
        return ["torch>=2.11", "numpy"]
    major, minor = torch_series()
    return [f"torch>={major}.{minor},<{major}.{minor + 1}", "numpy"]


def git_commit():
    """The source tree's commit (with "-dirty" for uncommitted changes to
    tracked files), or None outside a git checkout (an sdist)."""
    if not os.path.isdir(os.path.join(ROOT, ".git")):
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


class BuildPyWithCommit(build_py):
    """Also installs the C ABI header as memkernels/include/memkernels.h
    (memkernels.capi.include_dir()), and writes memkernels/BUILD_COMMIT, so a
    bench result from an installed package can name the code it ran (the
    extension's compile flags stay the same from commit to commit: no
    rebuild)."""

    def run(self):
        super().run()
        include = os.path.join(self.build_lib, "memkernels", "include")
        os.makedirs(include, exist_ok=True)
        self.copy_file(os.path.join(ROOT, "csrc", "core", "memkernels.h"), os.path.join(include, "memkernels.h"))
        commit = git_commit()
        if commit:
            target = os.path.join(self.build_lib, "memkernels", "BUILD_COMMIT")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w") as f:
                f.write(commit + "\n")


def sources(*patterns):
    """Repository-relative paths of the files matching the patterns: the
    layout is the source list (CMakeLists.txt globs the same core files)."""
    return sorted(os.path.relpath(p, ROOT) for pat in patterns for p in glob.glob(os.path.join(ROOT, pat)))


CORE_LIB = "libmemkernels_core.so"


def extensions():
    """The torch-free core as a shared library (memkernels/libmemkernels_core.so,
    the C ABI of csrc/core/memkernels.h: what the glue calls, and what other
    frameworks load), and the torch glue memkernels._C linked against it."""
    with_cuda = want_cuda()
    cxx = ["-O3", "-fopenmp", "-fvisibility=hidden"]
    defines = [("MK_VERSION", f'"{VERSION}"'), ("MK_TORCH_VERSION", f'"{torch.__version__}"')]
    link = ["-fopenmp"] + shared_libstdcxx_link_args()
    core = dict(name="memkernels.libmemkernels_core", sources=sources("csrc/core/*.cpp"),
                include_dirs=[os.path.join(ROOT, "csrc", "core")], extra_link_args=list(link),
                extra_compile_args={"cxx": cxx}, py_limited_api=False)
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip():
            os.environ["TORCH_CUDA_ARCH_LIST"] = default_cuda_archs(nvcc_version())
        archs = os.environ["TORCH_CUDA_ARCH_LIST"]
        defines += [
            ("MK_WITH_CUDA", "1"),
            ("MK_CUDA_ARCHS", f'"{archs}"'),
            ("MK_CUDA_VERSION", f'"{torch.version.cuda}"'),
        ]
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
        nvcc += [f"-D{k}={v}" for k, v in defines]
        if os.environ.get("NVCC_THREADS", "").strip():
            # nvcc compiles a file's architectures in parallel with --threads.
            nvcc += ["--threads", os.environ["NVCC_THREADS"].strip()]
        if os.environ.get("MEMKERNELS_PTXAS_VERBOSE") == "1":
            nvcc += ["-Xptxas", "-v"]
        core["sources"] += sources("csrc/core/*.cu")
        core["extra_compile_args"]["nvcc"] = nvcc
        # The CUDA runtime: torch's (already loaded, same soname) inside a torch
        # process; elsewhere the pip package nvidia-cuda-runtime's, then the system's.
        core["library_dirs"] = [os.path.join(cpp_extension.CUDA_HOME, "lib64")]
        core["libraries"] = ["cudart"]
        core["extra_link_args"] += ["-Wl,-rpath,$ORIGIN/../nvidia/cu13/lib:$ORIGIN/../nvidia/cuda_runtime/lib"]
    core["define_macros"] = list(defines)
    glue = cpp_extension.CppExtension(
        name="memkernels._C", sources=sources("csrc/torch/*.cpp"), include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=list(defines), extra_compile_args={"cxx": cxx},
        extra_link_args=link + ["-Wl,-rpath,$ORIGIN"], py_limited_api=False)
    exts = [Extension(**core), glue]
    xla = jax_include_dir() if not BUILDING_SDIST else None
    if xla is not None:
        # XLA FFI handlers over the core's C ABI (host code only: the CUDA
        # kernels stay in the core library); memkernels/jax.py registers them.
        jax_defines = [("MK_WITH_CUDA", "1")] if with_cuda else []
        jax_includes = [os.path.join(ROOT, "csrc", "core")]
        flags = ["-O2", "-std=c++17", "-isystem", xla]
        if with_cuda:
            flags += ["-isystem", os.path.join(cpp_extension.CUDA_HOME, "include")]
        exts.append(Extension(
            name="memkernels.libmemkernels_jax", sources=sources("csrc/jax/*.cc"), include_dirs=jax_includes,
            define_macros=jax_defines, extra_compile_args={"cxx": flags}, py_limited_api=False,
            extra_link_args=shared_libstdcxx_link_args() + ["-Wl,-rpath,$ORIGIN"], language="c++"))
    return exts, with_cuda


class BuildExt(cpp_extension.BuildExtension):
    """Builds the core library first, named libmemkernels_core.so (not a
    Python module name), then links memkernels._C against it; _C finds it
    next to itself at run time (rpath $ORIGIN)."""

    def get_ext_filename(self, fullname):
        parts = fullname.split(".")
        if parts[-1] in ("libmemkernels_core", "libmemkernels_jax"):
            return os.path.join(*parts[:-1], parts[-1] + ".so")
        return super().get_ext_filename(fullname)

    def build_extension(self, ext):
        if ext.name in ("memkernels._C", "memkernels.libmemkernels_jax"):
            core_dir = os.path.dirname(self.get_ext_fullpath("memkernels.libmemkernels_core"))
            ext.library_dirs = list(ext.library_dirs) + [core_dir]
            ext.extra_link_args = list(ext.extra_link_args) + [f"-l:{CORE_LIB}"]
        super().build_extension(ext)


ext_modules, built_with_cuda = extensions()

setup(
    version=VERSION if BUILDING_SDIST else f"{VERSION}+{local_tag(built_with_cuda)}",
    install_requires=requirements(),
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExt.with_options(use_ninja=True), "build_py": BuildPyWithCommit},
)
