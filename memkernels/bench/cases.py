"""Bench cases (shapes per op), the presets and scaling sweeps that list
them, and the written byte and FLOP counts each case's floor comes from."""

from __future__ import annotations

from dataclasses import dataclass

def embedding_bag_bytes(N: int, D: int, T: int, B: int, elt: int, idx: int, unique_rows: int, part: str) -> int:
    """The fewest bytes each part must move through memory.

    forward: every gathered row once (T*B*D), indices and fp32 weights, the
        output once.
    backward_sparse: grad_out once, each distinct value row read once (for the
        weights' gradient) and its gradient written once, indices and weights
        read, the weights' gradient written.
    backward_dense: as sparse, plus the dense gradient's untouched rows
        written (zeros): N*D in all instead of U*D.
    """
    pairs = T * B
    if part == "forward":
        return pairs * D * elt + pairs * (idx + 4) + T * D * elt
    common = T * D * elt + unique_rows * D * elt + pairs * (idx + 4) + pairs * 4
    if part == "backward_sparse":
        return common + unique_rows * D * elt
    if part == "backward_dense":
        return common + N * D * elt
    raise ValueError(part)


def pk_topk_counts(T: int, H: int, n: int, Dk: int, k: int, elt: int, part: str):
    """(bytes, FLOPs) pk_topk must move and do.

    forward: query and keys read once, scores (fp32) and slot ids (int64)
        written once; FLOPs of the two half-score products, 2*T*H*n*Dk (the
        selections are comparisons, not counted).
    backward (through the selected pairs): grad_scores and indices read,
        the selected key rows read (at most 2*k per token and head, counted as
        2*k), query read again and grad_query written, grad_keys written (dense,
        all of it); FLOPs 2 * 2 * T*H*2k*(Dk/2).
    """
    half = Dk // 2
    if part == "forward":
        return T * H * Dk * elt + H * 2 * n * half * elt + T * H * k * (4 + 8), 2 * T * H * n * Dk
    if part == "backward":
        nbytes = T * H * k * (4 + 8) + T * H * 2 * k * half * elt + 2 * T * H * Dk * elt + H * 2 * n * half * elt
        return nbytes, 4 * T * H * 2 * k * half
    raise ValueError(part)


@dataclass
class PKCase:
    name: str
    T: int
    H: int
    n_keys: int
    Dk: int
    k: int
    dtype: str


@dataclass
class LayerCase:
    name: str
    T: int
    dim: int
    n_keys: int
    heads: int
    knn: int
    k_dim: int
    dtype: str


def layer_flops(c: LayerCase) -> int:
    """Forward FLOPs of a Memory+ ProductKeyMemory layer (v_dim = dim):
    query projection, sub-key scores, weighted value bag, W_s and W_o."""
    per_token = (2 * c.dim * c.heads * c.k_dim + 2 * c.heads * c.n_keys * c.k_dim
                 + 2 * c.heads * c.knn * c.dim + 4 * c.dim * c.dim)
    return c.T * per_token


def layer_bytes(c: LayerCase, elt: int) -> int:
    """Fewest bytes of a layer forward: x read, the selected value rows
    gathered, the weights of the projections and the keys read, y written."""
    weights = (c.dim * c.heads * c.k_dim + c.heads * c.n_keys * c.k_dim + 2 * c.dim * c.dim) * elt
    return 2 * c.T * c.dim * elt + c.T * c.heads * c.knn * c.dim * elt + weights


@dataclass
class UpdateCase:
    """A training step of a value table: forward, backward and an Adam-type update."""
    name: str
    N: int
    D: int
    T: int
    B: int
    dtype: str


@dataclass
class EBCase:
    name: str
    N: int
    D: int
    T: int
    B: int
    dtype: str
    index_dtype: str = "int64"


PRESETS = {
    # CPU-sized: the whole suite well under a minute.
    "quick": [
        EBCase("eb_cpu", 65536, 256, 2048, 128, "float32"),
        PKCase("pk_cpu", 1024, 4, 1024, 512, 32, "float32"),
        LayerCase("layer_cpu", 1024, 256, 256, 4, 32, 128, "float32"),
        UpdateCase("update_N=16k", 1 << 14, 64, 1024, 32, "float32"),
        UpdateCase("update_N=256k", 1 << 18, 64, 1024, 32, "float32"),
        UpdateCase("update_N=1M", 1 << 20, 64, 1024, 32, "float32"),
    ],
    # The design's reference shapes (GPU).
    "paper": [
        EBCase("eb_ref_bag32", 1 << 20, 4096, 4096, 32, "bfloat16"),
        EBCase("eb_ref_bag128", 1 << 20, 4096, 4096, 128, "bfloat16"),
        PKCase("pk_ref", 4096, 4, 1024, 512, 32, "bfloat16"),
        LayerCase("layer_ref", 4096, 4096, 1024, 4, 32, 512, "bfloat16"),
        # D=256 fp32 so that dense AdamW (table, gradient, two moments) still
        # fits at 16M rows (64 GB in all); larger tables skip on out-of-memory.
        UpdateCase("update_N=64k", 1 << 16, 256, 4096, 32, "float32"),
        UpdateCase("update_N=1M", 1 << 20, 256, 4096, 32, "float32"),
        UpdateCase("update_N=4M", 1 << 22, 256, 4096, 32, "float32"),
        UpdateCase("update_N=16M", 1 << 24, 256, 4096, 32, "float32"),
    ],
    # For the test suite: tiny, seconds.
    "tiny": [
        EBCase("eb_tiny", 1000, 24, 16, 4, "float32"),
        PKCase("pk_tiny", 16, 2, 64, 32, 8, "float32"),
        LayerCase("layer_tiny", 32, 32, 16, 2, 4, 16, "float32"),
        UpdateCase("update_tiny", 1000, 8, 16, 4, "float32"),
    ],
}


# (op, swept field, base case, values). The embedding-bag sweeps time the
# sparse backward (it should stay flat in N) against torch's sparse one.
SWEEPS = {
    "quick": [
        ("embedding_bag", "T", EBCase("eb_sweep", 1 << 16, 128, 512, 32, "float32"), [256, 512, 1024, 2048, 4096]),
        ("embedding_bag", "N", EBCase("eb_sweep", 1 << 16, 128, 1024, 32, "float32"), [1 << 12, 1 << 14, 1 << 16, 1 << 18]),
        ("embedding_bag", "D", EBCase("eb_sweep", 1 << 14, 128, 1024, 32, "float32"), [32, 64, 128, 256, 512]),
        ("pk_topk", "k", PKCase("pk_sweep", 256, 4, 512, 256, 32, "float32"), [8, 16, 32, 64]),
        ("pk_topk", "n_keys", PKCase("pk_sweep", 256, 4, 512, 256, 32, "float32"), [128, 256, 512, 1024]),
    ],
    "paper": [
        ("embedding_bag", "T", EBCase("eb_sweep", 1 << 20, 1024, 4096, 32, "bfloat16"), [1024, 2048, 4096, 8192, 16384]),
        ("embedding_bag", "N", EBCase("eb_sweep", 1 << 20, 1024, 4096, 32, "bfloat16"), [1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24]),
        ("embedding_bag", "D", EBCase("eb_sweep", 1 << 20, 1024, 4096, 32, "bfloat16"), [256, 512, 1024, 2048, 4096]),
        ("pk_topk", "k", PKCase("pk_sweep", 4096, 4, 1024, 512, 32, "bfloat16"), [8, 16, 32, 64, 128]),
        ("pk_topk", "n_keys", PKCase("pk_sweep", 4096, 4, 1024, 512, 32, "bfloat16"), [256, 512, 1024, 2048, 4096, 8192]),
    ],
    "tiny": [
        ("embedding_bag", "N", EBCase("eb_sweep", 1000, 16, 16, 4, "float32"), [100, 1000]),
        ("pk_topk", "k", PKCase("pk_sweep", 8, 2, 32, 16, 4, "float32"), [2, 4]),
    ],
}
