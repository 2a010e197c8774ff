"""Side-by-side timing of the CUDA product-key selection (mk_pk_select) and
of the fused top-k (mk_pk_topk_fused, bf16) in two builds of the torch-free
core library, on the same GPU and inputs.

    python bench/ab_pk_select.py OLD/libmemkernels_core.so NEW/libmemkernels_core.so

Builds a core library from another commit with CMake (for example in a git
worktree) to compare a kernel change against its parent in one process: the
half-scores are the same tensors, both results must be equal bit for bit,
and each build is timed with CUDA events (median of interleaved calls).
"""
import ctypes as C
import statistics
import sys

import torch


class SelectArgs(C.Structure):
    _fields_ = [("num_tokens", C.c_int64), ("num_heads", C.c_int64), ("num_keys", C.c_int64), ("k", C.c_int64),
                ("scores1", C.c_void_p), ("scores2", C.c_void_p),
                ("scores_stride_t", C.c_int64), ("scores_stride_h", C.c_int64),
                ("out_scores", C.c_void_p), ("out_indices", C.c_void_p), ("num_threads", C.c_int)]


class FusedArgs(C.Structure):
    _fields_ = [("num_tokens", C.c_int64), ("num_heads", C.c_int64), ("num_keys", C.c_int64),
                ("half_dim", C.c_int64), ("k", C.c_int64), ("dtype", C.c_int),
                ("query", C.c_void_p), ("keys", C.c_void_p), ("out_scores", C.c_void_p), ("out_indices", C.c_void_p)]


def load(path):
    lib = C.CDLL(path)
    lib.mk_struct_size.restype = C.c_size_t
    lib.mk_struct_size.argtypes = [C.c_char_p]
    assert C.sizeof(SelectArgs) == lib.mk_struct_size(b"mk_pk_select_args"), path
    assert C.sizeof(FusedArgs) == lib.mk_struct_size(b"mk_pk_topk_args"), path
    lib.mk_pk_select.restype = C.c_int
    lib.mk_pk_select.argtypes = [C.POINTER(SelectArgs), C.c_int, C.c_void_p]
    lib.mk_pk_topk_fused.restype = C.c_int
    lib.mk_pk_topk_fused.argtypes = [C.POINTER(FusedArgs), C.c_int, C.c_void_p]
    return lib


def run_fused(lib, q, keys, k, out_s, out_i):
    T, H, dk = q.shape
    a = FusedArgs(T, H, keys.shape[2], dk // 2, k, 2, q.data_ptr(), keys.data_ptr(), out_s.data_ptr(),
                  out_i.data_ptr())  # dtype 2: MK_BF16
    st = lib.mk_pk_topk_fused(C.byref(a), 1, C.c_void_p(torch.cuda.current_stream().cuda_stream))
    assert st == 0, f"mk_pk_topk_fused returned {st}"


def timed(libs, call, outs, reps):
    """Median CUDA-event time of call(lib, *out) for each build, interleaved."""
    times = [[] for _ in libs]
    for rep in range(reps + 3):
        for i, lib in enumerate(libs):  # interleaved, so drift hits both
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            call(lib, *outs[i])
            e1.record()
            e1.synchronize()
            if rep >= 3:
                times[i].append(e0.elapsed_time(e1))
    return [statistics.median(t) for t in times]


def run(lib, s1, s2, k, out_s, out_i):
    T, H, n = s1.shape
    a = SelectArgs(T, H, n, k, s1.data_ptr(), s2.data_ptr(), H * n, n, out_s.data_ptr(), out_i.data_ptr(), 0)
    st = lib.mk_pk_select(C.byref(a), 1, C.c_void_p(torch.cuda.current_stream().cuda_stream))
    assert st == 0, f"mk_pk_select returned {st}"


def main(paths, shapes=((4096, 4, 1024, 32), (4096, 4, 1024, 16), (4096, 4, 1024, 64), (4096, 4, 1024, 128),
                       (4096, 4, 512, 32), (4096, 4, 4096, 32), (4096, 4, 8192, 64), (4096, 4, 16384, 32)),
         fused_shapes=((4096, 4, 1024, 32), (4096, 4, 1024, 16), (4096, 4, 4096, 32)), reps=30):
    libs = [load(p) for p in paths]
    g = torch.Generator(device="cuda").manual_seed(0)
    print(f"{'T':>6}{'H':>3}{'n_keys':>7}{'k':>5}" + "".join(f"{'build ' + str(i) + ' ms':>14}" for i in range(len(libs)))
          + "   ratio (first / last)   equal")
    for T, H, n, k in shapes:
        s1 = torch.randn(T, H, n, generator=g, device="cuda") * 8
        s2 = torch.randn(T, H, n, generator=g, device="cuda") * 8
        outs = [(torch.empty(T, H, k, device="cuda"), torch.empty(T, H, k, device="cuda", dtype=torch.int64))
                for _ in libs]
        med = timed(libs, lambda lib, o_s, o_i: run(lib, s1, s2, k, o_s, o_i), outs, reps)
        equal = all(torch.equal(outs[0][j], o[j]) for o in outs[1:] for j in (0, 1))
        print(f"{T:>6}{H:>3}{n:>7}{k:>5}" + "".join(f"{m:>14.4f}" for m in med)
              + f"   {med[0] / med[-1]:>8.2f}x            {equal}")
    # The fused top-k (bf16 query [T, H, Dk] and keys [H, 2, n, Dk/2]).
    print("mk_pk_topk_fused, bf16, Dk = 512")
    for T, H, n, k in fused_shapes:
        q = torch.randn(T, H, 512, generator=g, device="cuda").bfloat16()
        keys = torch.randn(H, 2, n, 256, generator=g, device="cuda").bfloat16()
        outs = [(torch.empty(T, H, k, device="cuda"), torch.empty(T, H, k, device="cuda", dtype=torch.int64))
                for _ in libs]
        med = timed(libs, lambda lib, o_s, o_i: run_fused(lib, q, keys, k, o_s, o_i), outs, reps)
        equal = all(torch.equal(outs[0][j], o[j]) for o in outs[1:] for j in (0, 1))
        print(f"{T:>6}{H:>3}{n:>7}{k:>5}" + "".join(f"{m:>14.4f}" for m in med)
              + f"   {med[0] / med[-1]:>8.2f}x            {equal}")


if __name__ == "__main__":
    main(sys.argv[1:])
