"""Compares the machine code (SASS) of every CUDA kernel in two builds, kernel
by kernel, ignoring addresses, encodings and the per-file names of anonymous
namespaces. A structural change (files moved, helpers shared) should leave
every kernel identical; this proves it without a GPU.

    python bench/sass_diff.py OLD.so NEW.so [--show NAME_SUBSTRING]

Build both with the same arch, e.g. the core library:
    cmake -S . -B build -DMEMKERNELS_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 && cmake --build build
Exit status 0 when every kernel is identical and both builds have the same
kernels, 1 otherwise. cuobjdump comes from CUDA_HOME/bin, PATH, or the copy
triton ships.
"""

import argparse
import difflib
import glob
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List


def cuobjdump() -> str:
    for cand in (os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump"),
                 shutil.which("cuobjdump") or ""):
        if cand and os.path.exists(cand):
            return cand
    for base in sys.path:
        hits = glob.glob(os.path.join(base, "triton", "backends", "nvidia", "bin", "cuobjdump"))
        if hits:
            return hits[0]
    sys.exit("sass_diff: cuobjdump not found (CUDA_HOME/bin, PATH, or triton's copy)")


def demangle(names: List[str]) -> List[str]:
    exe = shutil.which("c++filt")
    if exe is None:
        return names
    out = subprocess.run([exe], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def kernels(lib: str) -> Dict[str, List[str]]:
    """Demangled kernel name -> its instructions (text only)."""
    text = subprocess.run([cuobjdump(), "-sass", lib], capture_output=True, text=True, check=True).stdout
    raw: Dict[str, List[str]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"\s+Function : (\S+)", line)
        if m:
            current = m.group(1)
            raw[current] = []
        elif current and re.match(r"\s+/\*[0-9a-f]{4}\*/", line):
            raw[current].append(re.sub(r"/\*[0-9a-f]+\*/", "", line).split(";")[0].strip())
    names = list(raw)
    return {d: raw[n] for n, d in zip(names, demangle(names))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--show", default=None, help="print the instruction diff of kernels whose name contains this")
    args = p.parse_args(argv)
    old, new = kernels(args.old), kernels(args.new)
    same = [k for k in old if k in new and old[k] == new[k]]
    differ = [k for k in old if k in new and old[k] != new[k]]
    only_old = sorted(set(old) - set(new))
    only_new = sorted(set(new) - set(old))
    print(f"{len(old)} kernels in {args.old}, {len(new)} in {args.new}: {len(same)} identical, "
          f"{len(differ)} differ, {len(only_old)} only in the old build, {len(only_new)} only in the new one")
    for k in differ:
        n_diff = sum(1 for a, b in zip(old[k], new[k]) if a != b) + abs(len(old[k]) - len(new[k]))
        print(f"  differs ({n_diff} instructions): {k}")
        if args.show and args.show in k:
            for line in difflib.unified_diff(old[k], new[k], "old", "new", lineterm="", n=2):
                print("    " + line)
    for k in only_old:
        print(f"  only old: {k}")
    for k in only_new:
        print(f"  only new: {k}")
    return 0 if not differ and not only_old and not only_new else 1


if __name__ == "__main__":
    sys.exit(main())
