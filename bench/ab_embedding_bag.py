"""Side-by-side timing of the CUDA embedding bag (forward, the dense
backward: plan + reduce, and the backward fused with a row-sparse AdamW
update) in two builds of the torch-free core library, on the same GPU and
inputs.

    python bench/ab_embedding_bag.py OLD/libmemkernels_core.so NEW/libmemkernels_core.so

As bench/ab_pk_select.py: each build is called through the C ABI on torch
tensors, the builds' outputs must be equal bit for bit, and the calls are
interleaved and timed with CUDA events (medians). The shape is the paper's
(N=1M rows, D=4096, T=4096 bags, bf16 values, fp32 weights, int64 indices) at
B=32 and 128. The fused update ("update": lr 1e-3, weight decay 0.01, fp32
moments, applied in place to each build's own copy of the table and moments)
is timed on copies that drift from call to call, then run once more from the
same starting table and zero moments, and the builds' tables, moments and
weights' gradients must be equal bit for bit. The argument structs are this
tree's (memkernels.capi); a
baseline build of an older ABI reads the fields it knows (fields are only
ever appended). Without a GPU it runs the same comparison on the CPU, by
default at a small shape; --N, --D, --T, --B, --dtype, --reps and
--forward-only / --no-update choose others (e.g. an A/B of a CPU kernel
change).
"""
import argparse
import ctypes as C
import statistics
import sys
import time

import torch

from memkernels.capi import BF16, F32, I64, EmbeddingBagBwdArgs, EmbeddingBagFwdArgs, RowUpdate

MK_OPT_ADAM = 1


def load(path):
    lib = C.CDLL(path)
    for name in ("mk_embedding_bag_forward", "mk_embedding_bag_backward_workspace_size",
                 "mk_embedding_bag_backward_plan", "mk_embedding_bag_backward_reduce"):
        getattr(lib, name).restype = C.c_int
    return lib


def check(status, what):
    assert status == 0, f"{what} returned {status}"


def device_of(t):
    return 1 if t.is_cuda else 0  # MK_CUDA, MK_CPU


_DTYPES = {"bfloat16": (torch.bfloat16, BF16), "float32": (torch.float32, F32)}
_MK_DTYPE = {t: mk for t, mk in _DTYPES.values()}


def forward(lib, values, idx, w, out, stream):
    N, D = values.shape
    T, B = idx.shape
    a = EmbeddingBagFwdArgs(N, D, T, B, _MK_DTYPE[values.dtype], I64, values.data_ptr(), D,
                            idx.data_ptr(), w.data_ptr(), out.data_ptr(), 0, None, None, 0)
    check(lib.mk_embedding_bag_forward(C.byref(a), device_of(values), stream), "forward")


def plan_and_reduce(lib, a, values, ws, stream):
    """Sizes the workspace (ws[0], grown when short), plans and reduces;
    returns the workspace bytes the call asked for."""
    size = C.c_size_t(0)
    dev = device_of(values)
    check(lib.mk_embedding_bag_backward_workspace_size(C.byref(a), dev, C.byref(size)), "workspace size")
    if ws[0] is None or ws[0].numel() < size.value:
        ws[0] = None  # freed before the larger one is taken
        ws[0] = torch.empty(max(1, size.value), dtype=torch.uint8, device=values.device)
    p = C.c_void_p(ws[0].data_ptr())
    check(lib.mk_embedding_bag_backward_plan(C.byref(a), p, size, dev, stream), "plan")
    check(lib.mk_embedding_bag_backward_reduce(C.byref(a), p, size, dev, stream), "reduce")
    return size.value


def backward(lib, values, idx, w, gout, gv, gw, ws, stream):
    N, D = values.shape
    T, B = idx.shape
    a = EmbeddingBagBwdArgs(N, D, T, B, _MK_DTYPE[values.dtype], I64, values.data_ptr(), D,
                            idx.data_ptr(), w.data_ptr(), gout.data_ptr(), gw.data_ptr(), gv.data_ptr(), None, None,
                            0, None, 0)
    plan_and_reduce(lib, a, values, ws, stream)


def backward_update(lib, values, idx, w, gout, gw, m, v, ws, stream):
    """The backward with an AdamW update of the touched rows (in place)."""
    N, D = values.shape
    T, B = idx.shape
    u = RowUpdate(MK_OPT_ADAM, 1e-3, 0.9, 0.999, 1e-8, 0.01, 0.0, 1, 0, 0, m.data_ptr(), v.data_ptr(), 0, None,
                  None, 0)
    a = EmbeddingBagBwdArgs(N, D, T, B, _MK_DTYPE[values.dtype], I64, values.data_ptr(), D,
                            idx.data_ptr(), w.data_ptr(), gout.data_ptr(), gw.data_ptr(), None, None, None,
                            0, C.cast(C.pointer(u), C.c_void_p), 0)
    return plan_and_reduce(lib, a, values, ws, stream)


def timed(fn, device):
    if device == "cpu":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    fn()
    e1.record()
    e1.synchronize()
    return e0.elapsed_time(e1)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("libs", nargs="+", help="libmemkernels_core.so of each build (the first is the baseline)")
    gpu = torch.cuda.is_available()
    ap.add_argument("--N", type=int, default=(1 << 20) if gpu else (1 << 14))
    ap.add_argument("--D", type=int, nargs="+", default=[4096] if gpu else [64])
    ap.add_argument("--T", type=int, default=4096 if gpu else 256)
    ap.add_argument("--B", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--dtype", choices=sorted(_DTYPES), default="bfloat16")
    ap.add_argument("--reps", type=int, default=10 if gpu else 3)
    ap.add_argument("--forward-only", action="store_true")
    ap.add_argument("--no-update", action="store_true", help="skip the backward fused with an update")
    args = ap.parse_args(argv)
    libs = [load(p) for p in args.libs]
    device = "cuda" if gpu else "cpu"
    dtype = _DTYPES[args.dtype][0]
    stream = C.c_void_p(torch.cuda.current_stream().cuda_stream if gpu else None)
    g = torch.Generator(device=device).manual_seed(0)
    parts = ("forward",) if args.forward_only else ("forward", "backward")
    if not args.forward_only and not args.no_update:
        parts += ("update",)
    print(f"device {device} (threads {torch.get_num_threads()}): N={args.N} T={args.T}, {args.dtype} values, "
          f"fp32 weights, int64 indices; medians of {args.reps} interleaved calls")
    print(f"{'D':>6}{'B':>5}{'part':>10}" + "".join(f"{'build ' + str(i) + ' ms':>14}" for i in range(len(libs)))
          + "   ratio (first / last)   equal")
    for D in args.D:
        values = torch.randn(args.N, D, generator=g, device=device).to(dtype)
        for B in args.B:
            run_case(libs, values, B, args.T, args.reps, tuple(p for p in parts if p != "update"), g, stream)
            if "update" in parts:
                run_update_case(libs, values, B, args.T, args.reps, g, stream)
        del values


def run_case(libs, values, B, T, reps, parts, g, stream):
    device = values.device.type
    N, D = values.shape
    idx = torch.randint(0, N, (T, B), generator=g, device=device)
    w = torch.rand(T, B, generator=g, device=device)
    gout = torch.randn(T, D, generator=g, device=device).to(values.dtype)
    outs = [torch.empty(T, D, device=device, dtype=values.dtype) for _ in libs]
    gvs = [torch.empty(N, D, device=device, dtype=values.dtype) for _ in libs] if "backward" in parts else []
    gws = [torch.empty(T, B, device=device) for _ in libs]
    wss = [[None] for _ in libs]
    times = {part: [[] for _ in libs] for part in parts}
    for rep in range(reps + 2):
        for i, lib in enumerate(libs):  # interleaved, so drift hits both
            tf = timed(lambda: forward(lib, values, idx, w, outs[i], stream), device)
            if rep >= 2:
                times["forward"][i].append(tf)
            if gvs:
                gvs[i].fill_(float("nan"))  # stale rows would show in the comparison
                tb = timed(lambda: backward(lib, values, idx, w, gout, gvs[i], gws[i], wss[i], stream), device)
                if rep >= 2:
                    times["backward"][i].append(tb)
    equal = {"forward": all(torch.equal(outs[0], o) for o in outs[1:])}
    if gvs:
        equal["backward"] = all(torch.equal(gvs[0], a) and torch.equal(gws[0], b) for a, b in zip(gvs[1:], gws[1:]))
        assert not torch.isnan(gvs[-1]).any(), "a gradient row was left unwritten"
    for part in parts:
        med = [statistics.median(t) for t in times[part]]
        print(f"{D:>6}{B:>5}{part:>10}" + "".join(f"{m:>14.4f}" for m in med)
              + f"   {med[0] / med[-1]:>8.2f}x            {equal[part]}")
    if device == "cuda":
        del gvs, outs, wss
        torch.cuda.empty_cache()


def run_update_case(libs, values, B, T, reps, g, stream):
    device = values.device.type
    N, D = values.shape
    if device == "cuda":
        # Each build's table and two fp32 moments, and a capacity-form
        # workspace of up to min(N, T*B) fp32 rows in older builds.
        need = len(libs) * N * D * (values.element_size() + 8) + min(N, T * B) * D * 4
        free = torch.cuda.mem_get_info()[0]
        if need > 0.9 * free:
            print(f"{D:>6}{B:>5}{'update':>10}   skipped: needs {need / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free")
            return
    idx = torch.randint(0, N, (T, B), generator=g, device=device)
    w = torch.rand(T, B, generator=g, device=device)
    gout = torch.randn(T, D, generator=g, device=device).to(values.dtype)
    tables = [values.clone() for _ in libs]
    ms = [torch.zeros(N, D, device=device) for _ in libs]
    vs = [torch.zeros(N, D, device=device) for _ in libs]
    gws = [torch.empty(T, B, device=device) for _ in libs]
    wss = [[None] for _ in libs]
    times = [[] for _ in libs]
    ws_bytes = [0 for _ in libs]
    for rep in range(reps + 2):
        for i, lib in enumerate(libs):
            def call(i=i, lib=lib):
                ws_bytes[i] = backward_update(lib, tables[i], idx, w, gout, gws[i], ms[i], vs[i], wss[i], stream)
            t = timed(call, device)
            if rep >= 2:
                times[i].append(t)
    for i, lib in enumerate(libs):  # once more from the same start, for the comparison
        tables[i].copy_(values)
        ms[i].zero_()
        vs[i].zero_()
        backward_update(lib, tables[i], idx, w, gout, gws[i], ms[i], vs[i], wss[i], stream)
    equal = all(torch.equal(tables[0], t) and torch.equal(ms[0], m) and torch.equal(vs[0], v) and
                torch.equal(gws[0], gw) for t, m, v, gw in zip(tables[1:], ms[1:], vs[1:], gws[1:]))
    moved = int((tables[-1] != values).any(dim=1).sum())
    med = [statistics.median(t) for t in times]
    print(f"{D:>6}{B:>5}{'update':>10}" + "".join(f"{m:>14.4f}" for m in med)
          + f"   {med[0] / med[-1]:>8.2f}x            {equal}   (rows moved {moved}; workspace MB "
          + " / ".join(f"{b / 2**20:.0f}" for b in ws_bytes) + ")")
    if device == "cuda":
        del tables, ms, vs, wss
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1:])
