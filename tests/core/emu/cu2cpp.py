"""Turns a CUDA source of the core into C++ for the CPU emulation
(tests/core/emu/README.md).

Three rewrites, nothing else; line numbers are kept (#line), so compiler
messages point into the .cu file:
  kernel<<<grid, block[, smem[, stream]]>>>(args);
      -> ::emu::launch_kernel((const void*)&kernel, ::emu::LaunchCfg{grid, block, smem, stream},
                              [=]() mutable { kernel(args); });
     (nullptr for the address of a template kernel left to deduction), and
     the kernel's __launch_bounds__ as the largest block the launch may ask for
  extern __shared__ [__align__(n)] T name[];
      -> T* name = reinterpret_cast<T*>(::emu::dynamic_smem());
  after the last #include: #include "cuda_emu_types.h" (CUDA's 16-bit types).

usage: python cu2cpp.py IN.cu OUT.cpp
"""

import os
import re
import sys

LAUNCH_BOUNDS = re.compile(r"__global__\s+void\s+__launch_bounds__\s*\(([^)]*)\)\s*(\w+)\s*\(")
TEMPLATE_KERNEL = re.compile(r"template\s*<[^{;]*?>\s*__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(")
EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([\w\s:]+?)\s+(\w+)\s*\[\s*\]\s*;")


def _match_back(text, end, open_ch, close_ch):
    """Index of the open_ch matching the close_ch at text[end]."""
    depth = 0
    for i in range(end, -1, -1):
        if text[i] == close_ch:
            depth += 1
        elif text[i] == open_ch:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced %s%s before offset %d" % (open_ch, close_ch, end))


def _match_forward(text, start, open_ch, close_ch):
    """Index of the close_ch matching the open_ch at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_ch:
            depth += 1
        elif text[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced %s%s after offset %d" % (open_ch, close_ch, start))


def rewrite_launches(text):
    # Kernels whose template arguments a launch may leave to deduction: their
    # address is only known for a template-id (the launch's key for
    # cudaFuncSetAttribute; nullptr otherwise).
    deduced = set(TEMPLATE_KERNEL.findall(text))
    # A kernel's __launch_bounds__: a launch with more threads per block fails
    # on a GPU, so the emulation refuses it too.
    bounds = {name: expr.split(",")[0].strip() for expr, name in LAUNCH_BOUNDS.findall(text)}
    out = []
    pos = 0
    while True:
        lt = text.find("<<<", pos)
        if lt < 0:
            out.append(text[pos:])
            return "".join(out)
        # The callee: an identifier, possibly qualified, possibly a template-id.
        j = lt - 1
        while j >= 0 and text[j].isspace():
            j -= 1
        if text[j] == ">":
            j = _match_back(text, j, "<", ">") - 1
        while j >= 0 and (text[j].isalnum() or text[j] in "_:"):
            j -= 1
        callee_start = j + 1
        callee = text[callee_start:lt].strip()
        gt = text.find(">>>", lt)
        cfg = text[lt + 3:gt]
        k = gt + 3
        while text[k].isspace():
            k += 1
        if text[k] != "(":
            raise ValueError("a launch without arguments at offset %d" % lt)
        close = _match_forward(text, k, "(", ")")
        args = text[k + 1:close]
        key = "nullptr" if callee in deduced else "(const void*)&%s" % callee
        name = callee.split("<")[0].split("::")[-1].strip()
        limit = "unsigned(%s)" % bounds[name] if name in bounds else "1024u"
        out.append(text[pos:callee_start])
        out.append("::emu::launch_kernel(%s, ::emu::LaunchCfg{%s}, [=]() mutable { %s(%s); }, %s)"
                   % (key, cfg, callee, args, limit))
        pos = close + 1


def convert(text, path):
    text = EXTERN_SHARED.sub(lambda m: "%s* %s = reinterpret_cast<%s*>(::emu::dynamic_smem());"
                             % (m.group(1).strip(), m.group(2), m.group(1).strip()), text)
    text = rewrite_launches(text)
    lines = text.split("\n")
    last = max([i for i, l in enumerate(lines) if l.lstrip().startswith("#include")] or [-1])
    src = path.replace("\\", "/")
    head = ['#line 1 "%s"' % src]
    if last >= 0:
        lines = (lines[:last + 1] + ['#include "cuda_emu_types.h"', '#line %d "%s"' % (last + 2, src)]
                 + lines[last + 1:])
    return "\n".join(head + lines)


def main(argv):
    src, dst = argv[1], argv[2]
    with open(src) as f:
        text = f.read()
    result = convert(text, os.path.abspath(src))
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    with open(dst, "w") as f:
        f.write(result)


if __name__ == "__main__":
    main(sys.argv)
