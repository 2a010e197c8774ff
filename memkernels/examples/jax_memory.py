"""A product-key memory layer in plain JAX (no Flax) on memkernels' FFI ops,
trained under ``jax.jit`` to memorise random key -> value pairs.

    python -m memkernels.examples.jax_memory

The layer: queries ``x @ W_q`` (``heads`` of ``k_dim``), ``pk_topk`` over two
sets of ``n_keys`` sub-keys, softmax over the ``knn`` scores of each head,
the weighted bag of the selected rows of the ``n_keys**2 x v_dim`` value
table, then ``@ W_o``. Gradients reach every parameter through the ops'
custom VJPs (a dense value-table gradient, fine at this size).
"""

from __future__ import annotations

import argparse
import time
from typing import Dict, List

import jax
import jax.numpy as jnp

from memkernels import jax as mkj


def init(key, dim: int = 32, n_keys: int = 16, heads: int = 2, knn: int = 8, k_dim: int = 16,
         v_dim: int = 32) -> Dict[str, jax.Array]:
    kq, kk, kv, ko = jax.random.split(key, 4)
    return {
        "w_q": jax.random.normal(kq, (dim, heads * k_dim)) / jnp.sqrt(dim),
        "keys": jax.random.uniform(kk, (heads, 2, n_keys, k_dim // 2), minval=-1, maxval=1) / jnp.sqrt(k_dim),
        "values": jax.random.normal(kv, (n_keys * n_keys, v_dim)) / jnp.sqrt(v_dim),
        "w_o": jax.random.normal(ko, (v_dim, dim)) / jnp.sqrt(v_dim),
    }


def memory(params: Dict[str, jax.Array], x: jax.Array, knn: int = 8) -> jax.Array:
    """``x [T, dim] -> [T, dim]``."""
    heads, _, _, half = params["keys"].shape
    T = x.shape[0]
    q = (x @ params["w_q"]).reshape(T, heads, 2 * half)
    q = q * jax.lax.rsqrt(jnp.mean(q * q, axis=-1, keepdims=True) + 1e-6)  # RMS-normalised queries
    scores, slots = mkj.pk_topk(q, params["keys"], knn)
    weights = jax.nn.softmax(scores, axis=-1).reshape(T, heads * knn)
    out = mkj.embedding_bag(params["values"], slots.reshape(T, heads * knn), weights)
    return out @ params["w_o"]


def train(steps: int = 200, seed: int = 0, pairs: int = 256, lr: float = 0.05, log_every: int = 0) -> List[float]:
    """Memorises ``pairs`` random (x -> y) pairs with Adam; returns the loss per step."""
    key = jax.random.PRNGKey(seed)
    kp, kx, ky = jax.random.split(key, 3)
    params = init(kp)
    dim = params["w_q"].shape[0]
    x = jax.random.normal(kx, (pairs, dim))
    y = jax.random.normal(ky, (pairs, dim))
    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)

    def loss_fn(p):
        return jnp.mean((memory(p, x) - y) ** 2)

    @jax.jit
    def step(p, m, v, t):
        loss, g = jax.value_and_grad(loss_fn)(p)
        m = jax.tree_util.tree_map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
        v = jax.tree_util.tree_map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
        c1, c2 = 1 - 0.9 ** t, 1 - 0.999 ** t
        p = jax.tree_util.tree_map(lambda w, a, b: w - lr * (a / c1) / (jnp.sqrt(b / c2) + 1e-8), p, m, v)
        return p, m, v, loss

    losses = []
    t0 = time.time()
    for t in range(1, steps + 1):
        params, m, v, loss = step(params, m, v, t)
        losses.append(float(loss))
        if log_every and t % log_every == 0:
            print(f"step {t:4d}  loss {losses[-1]:.4f}  ({time.time() - t0:.1f} s)", flush=True)
    return losses


def main(argv=None) -> List[float]:
    p = argparse.ArgumentParser(prog="python -m memkernels.examples.jax_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}; memkernels handlers: {', '.join(mkj.platforms())}")
    losses = train(args.steps, args.seed, log_every=max(1, args.steps // 10))
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {args.steps} steps")
    return losses


if __name__ == "__main__":
    main()
