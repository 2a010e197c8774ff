"""Per-kernel GPU time of the main ops at the paper shapes (torch.profiler).

    python bench/profile_kernels.py [OUT_DIR]

Prints, per op, the kernels that ran and their total device time over a few
calls, so a change can be aimed at the kernel that costs the most. Writes
profile.txt into OUT_DIR when given. CUDA only.
"""
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import memkernels


def _profile(name, fn, calls=5):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=70)
    return f"== {name} ({calls} calls)\n{table}\n"


def main(out_dir=None):
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    T, H, n, Dk, k = 4096, 4, 1024, 512, 32
    q = torch.randn(T, H, Dk, generator=g, device=dev, dtype=torch.bfloat16)
    keys = torch.randn(H, 2, n, Dk // 2, generator=g, device=dev, dtype=torch.bfloat16)
    reports = []
    for impl in ("auto", "fused"):
        reports.append(_profile(f"pk_topk forward impl={impl} T={T} H={H} n_keys={n} Dk={Dk} k={k} bf16",
                                lambda impl=impl: memkernels.pk_topk(q, keys, k, impl=impl)))
    qg, kg = q.clone().requires_grad_(), keys.clone().requires_grad_()
    gs = torch.randn(T, H, k, generator=g, device=dev)

    def pk_fwd_bwd():
        s, _ = memkernels.pk_topk(qg, kg, k)
        torch.autograd.grad(s, (qg, kg), gs)

    reports.append(_profile("pk_topk forward+backward (auto)", pk_fwd_bwd))

    N, D, Te, B = 1 << 20, 4096, 4096, 32
    values = torch.randn(N, D, generator=g, device=dev, dtype=torch.bfloat16).requires_grad_()
    idx = torch.randint(0, N, (Te, B), generator=g, device=dev)
    w = torch.randn(Te, B, generator=g, device=dev).requires_grad_()
    gout = torch.randn(Te, D, generator=g, device=dev, dtype=torch.bfloat16)

    def eb(sparse):
        out = memkernels.embedding_bag(values, idx, w, sparse=sparse, check_indices=False)
        torch.autograd.grad(out, (values, w), gout)

    reports.append(_profile(f"embedding_bag forward+backward dense N={N} D={D} T={Te} B={B} bf16", lambda: eb(False)))
    reports.append(_profile("embedding_bag forward+backward sparse", lambda: eb(True)))
    text = "".join(reports)
    print(text)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "profile.txt"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
