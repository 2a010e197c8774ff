"""A small decoder-only language model with memory layers against dense
models, on a synthetic biography corpus (memkernels.examples.bios).

    python -m memkernels.examples.lm --preset tiny|cpu|capacity|gpu [--seed 0,1,2] [--out DIR]

Three models train on the same sentences for the same steps:

- ``dense``: a pre-norm transformer (attention through
  ``scaled_dot_product_attention``, GELU feed-forward blocks);
- ``memory``: the same, with the feed-forward block of the chosen layers
  replaced by ``ProductKeyMemory`` layers (Memory+) that share one value
  pool, at the dense model's FLOPs per token (the replaced blocks' dense twin
  is a feed-forward block of equal FLOPs);
- ``dense_2x``: the dense model with wider feed-forward blocks, so twice its
  FLOPs per token.

The value pool trains with memkernels' fused row-sparse Adam inside the
backward; everything else with AdamW. Periodically, and at the end, each
model answers every question of the corpus: exact match of the attribute
token after questions in the phrasings it trained on, and in phrasings held
out of training. It prints progress, then a table and, with all three
models, the issue's targets judged on the run (``targets``), and with
``--out`` writes ``lm.json`` and ``lm.png`` (loss and held-out accuracy
against steps and against training FLOPs). At these sizes one run's outcome
swings by tens of points with the seed: ``--seed 0,1,2,3,4`` trains every
model once per seed and ends with each model's mean, minimum and maximum
(``lm_seeds.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..bench.plots import MISSING, pyplot
from ..nn import ProductKeyMemory, ValuePool, param_groups
from ..optim import SparseRowOptimizer
from .bios import BioConfig, BioCorpus, make_corpus, pad_batch


@dataclass
class ModelConfig:
    dim: int = 64
    layers: int = 2
    heads: int = 4
    ffn_hidden: int = 256  # every dense block's width, unless overridden per layer
    memory_layers: Tuple[int, ...] = ()  # layers whose feed-forward block is a memory layer
    n_keys: int = 32
    mem_heads: int = 2
    knn: int = 8
    k_dim: int = 32
    layer_hidden: Dict[int, int] = field(default_factory=dict)  # per-layer dense width overrides
    # "learned": a position embedding added to the tokens'; "rope": rotary
    # positions in attention only, so the residual stream (and a memory
    # layer's query) carries no absolute position.
    position: str = "learned"


@dataclass
class Preset:
    corpus: BioConfig
    model: ModelConfig
    steps: int
    batch: int
    lr: float = 3e-3
    value_lr: float = 3e-2
    eval_every: int = 100
    eval_limit: int = 0  # facts asked at the evaluations before the last (0: all); the last asks all
    schedule: str = "constant"  # after warm-up: "constant" or "cosine" (decay to 0)
    value_optimizer: str = "adam"  # the SparseRowOptimizer algorithm of the value pool


PRESETS: Dict[str, Preset] = {
    # The test suite's: a few seconds per model on a 2-core CPU. Every model
    # stores all 128 facts; it checks the pipeline, not which model wins.
    "tiny": Preset(BioConfig(people=64, attributes=("birth_year", "city"), first_names=24, last_names=24,
                             values_per_attribute=32, bios_per_fact=2),
                   ModelConfig(dim=48, layers=2, heads=4, ffn_hidden=96, memory_layers=(1,), n_keys=32,
                               mem_heads=2, knn=8, k_dim=32),
                   steps=400, batch=64, lr=1e-2, value_lr=3e-3, eval_every=100),
    # About a minute for the three models on a 2-core CPU: 1024 facts, more
    # than the dense models store in 1500 steps; rotary positions
    # (docs/lm_example.md).
    "cpu": Preset(BioConfig(people=512, attributes=("birth_year", "city"), first_names=48, last_names=48,
                            values_per_attribute=32, bios_per_fact=2),
                  ModelConfig(dim=48, layers=2, heads=4, ffn_hidden=96, memory_layers=(1,), n_keys=32,
                              mem_heads=2, knn=8, k_dim=32, position="rope"),
                  steps=1500, batch=64, lr=1e-2, value_lr=3e-3, eval_every=150),
    # Minutes per model on one CPU thread: 8192 facts, a tenth of the people
    # written about 8 times as often, a model small enough that the dense
    # twin does not store them all, the memory layer in layer 0 (16k slots,
    # 4 heads; docs/lm_example.md: "A capacity regime").
    "capacity": Preset(BioConfig(people=4096, attributes=("birth_year", "city"), first_names=64, last_names=64,
                                 values_per_attribute=64, bios_per_fact=2, popular_fraction=0.1, popular_factor=8,
                                 question_phrasings=4),
                       ModelConfig(dim=32, layers=2, heads=4, ffn_hidden=32, memory_layers=(0,), n_keys=128,
                                   mem_heads=4, knn=8, k_dim=64),
                       steps=5000, batch=256, lr=1e-2, value_lr=3e-2, eval_every=1250, eval_limit=2048),
    # A GPU run (never run on a GPU yet): the `capacity` preset's model and
    # corpus rules on twice the people (16,384 facts, 128 x 96 names), 10,000
    # steps of 256, with knn 32 and rotary positions. On the CPU (one thread,
    # seed 0; docs/lm_example.md): memory 96.2 / 95.6 %, dense 50.6 / 32.7 %
    # (trained / held-out phrasings), 21-46 minutes per model.
    "gpu": Preset(BioConfig(people=8192, attributes=("birth_year", "city"), first_names=128, last_names=96,
                            values_per_attribute=64, bios_per_fact=2, popular_fraction=0.1, popular_factor=8,
                            question_phrasings=4),
                  ModelConfig(dim=32, layers=2, heads=4, ffn_hidden=32, memory_layers=(0,), n_keys=128,
                              mem_heads=4, knn=32, k_dim=64, position="rope"),
                  steps=10000, batch=256, lr=1e-2, value_lr=3e-2, eval_every=1250, eval_limit=2048),
}


# ---- the model ------------------------------------------------------------------------


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x)))


def rope_angles(max_len: int, head_dim: int, base: float = 10000.0) -> Tuple[Tensor, Tensor]:
    """cos and sin [max_len, head_dim / 2] of the rotary angles."""
    half = head_dim // 2
    freq = base ** (-torch.arange(half, dtype=torch.float32) / half)
    angle = torch.arange(max_len, dtype=torch.float32)[:, None] * freq[None]
    return angle.cos(), angle.sin()


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary positions on x [..., L, head_dim]: each pair (x_i, x_{i+half})
    turned by position * frequency_i."""
    half = x.shape[-1] // 2
    cos, sin = cos[:x.shape[-2]], sin[:x.shape[-2]]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mixer: nn.Module):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.ln2 = nn.LayerNorm(dim)
        self.mixer = mixer  # FeedForward or ProductKeyMemory

    def forward(self, x: Tensor, rope: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, L, D))
        return x + self.mixer(self.ln2(x))


class LM(nn.Module):
    """Token and position embeddings, pre-norm blocks, a final norm and an
    output head tied to the token embedding."""

    def __init__(self, vocab: int, max_len: int, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.position not in ("learned", "rope"):
            raise ValueError(f"ModelConfig.position must be 'learned' or 'rope'; got {cfg.position!r}")
        if cfg.position == "rope" and (cfg.dim // cfg.heads) % 2:
            raise ValueError(f"rotary positions need an even head width; got {cfg.dim // cfg.heads}")
        self.tok = nn.Embedding(vocab, cfg.dim)
        self.pos = nn.Embedding(max_len, cfg.dim) if cfg.position == "learned" else None
        if cfg.position == "rope":
            cos, sin = rope_angles(max_len, cfg.dim // cfg.heads)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.pool = ValuePool(cfg.n_keys**2, cfg.dim) if cfg.memory_layers else None
        blocks = []
        for i in range(cfg.layers):
            if i in cfg.memory_layers:
                mixer = ProductKeyMemory(cfg.dim, n_keys=cfg.n_keys, heads=cfg.mem_heads, knn=cfg.knn,
                                         k_dim=cfg.k_dim, values=self.pool)
            else:
                mixer = FeedForward(cfg.dim, cfg.layer_hidden.get(i, cfg.ffn_hidden))
            blocks.append(Block(cfg.dim, cfg.heads, mixer))
        self.blocks = nn.ModuleList(blocks)
        self.ln_f = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.tok.weight, std=0.02)
        if self.pos is not None:
            nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.tok(ids)
        rope = None
        if self.pos is not None:
            x = x + self.pos(torch.arange(ids.shape[1], device=ids.device))
        else:
            rope = (self.rope_cos, self.rope_sin)
        for b in self.blocks:
            x = b(x, rope)
        return self.ln_f(x) @ self.tok.weight.T

    def flops_per_token(self, context: int) -> int:
        """Forward FLOPs per token (2 per multiply-add): attention projections,
        attention over ``context`` positions, each block's feed-forward or
        memory layer, and the output head."""
        d = self.cfg.dim
        total = 2 * d * self.tok.num_embeddings  # output head
        for b in self.blocks:
            total += 2 * d * 3 * d + 2 * d * d + 2 * 2 * context * d
            if isinstance(b.mixer, ProductKeyMemory):
                total += b.mixer.flops_per_token()
            else:
                total += 2 * 2 * d * b.mixer.up.out_features
        return total


def model_configs(base: ModelConfig, vocab: int, context: int) -> Dict[str, ModelConfig]:
    """The three models: memory; dense at the memory model's FLOPs (each
    memory layer's block replaced by a feed-forward block of equal FLOPs);
    dense_2x at twice the dense model's FLOPs (every feed-forward block
    widened by the same amount)."""
    memory = base
    probe = LM(vocab, context, memory)
    equal = {i: max(1, round(probe.blocks[i].mixer.flops_per_token() / (4 * base.dim))) for i in base.memory_layers}
    dense = replace(base, memory_layers=(), layer_hidden=equal)
    dense_flops = LM(vocab, context, dense).flops_per_token(context)
    extra = max(1, round(dense_flops / (4 * base.dim * base.layers)))  # 4*d*extra*layers more FLOPs
    hidden2 = {i: dense.layer_hidden.get(i, base.ffn_hidden) + extra for i in range(base.layers)}
    dense2 = replace(dense, layer_hidden=hidden2)
    return {"dense": dense, "memory": memory, "dense_2x": dense2}


# ---- training and evaluation ----------------------------------------------------------


@torch.no_grad()
def answer_accuracy(model: LM, prompts: List[List[int]], answers: List[int], device, batch: int = 512) -> float:
    """Exact match: the most likely next token after each prompt is its answer."""
    was_training = model.training
    model.eval()
    hits = 0
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        ids = pad_batch(chunk).to(device)
        last = torch.tensor([len(p) - 1 for p in chunk], device=device)
        logits = model(ids)[torch.arange(len(chunk), device=device), last]
        hits += (logits.argmax(-1).cpu() == torch.tensor(answers[i:i + batch])).sum().item()
    model.train(was_training)
    return hits / max(1, len(prompts))


class SentenceTable:
    """Every training sentence, padded, on the device once. A batch is
    gathered there and cut to its longest sentence (the host knows the
    lengths): the same ids as ``pad_batch`` of the picked sentences, without
    a host-to-device copy that waits for the device. With the loss read only
    at evaluations, a training step is written not to synchronise (not yet
    run on a GPU, and no graph capture proves it)."""

    def __init__(self, sentences: List[List[int]], pad: int, device):
        self.table = pad_batch(sentences, pad).to(device)
        self.lengths = torch.tensor([len(s) for s in sentences])

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, pick: Tensor) -> Tensor:
        """ids [len(pick), longest picked] of the sentences ``pick`` (a CPU tensor)."""
        width = int(self.lengths[pick].max())
        rows = pick.pin_memory().to(self.table.device, non_blocking=True) if self.table.is_cuda else pick
        return self.table[rows, :width]

    def targets(self, pick: Tensor) -> int:
        """Next-token targets in the batch that are not padding."""
        return int((self.lengths[pick] - 1).sum())


def train_model(name: str, model: LM, corpus: BioCorpus, preset: Preset, device, seed: int,
                context: int, log=print, compile: bool = False) -> Dict[str, object]:
    groups = param_groups(model, lr=preset.lr, weight_decay=0.01, value_lr=preset.value_lr)
    opt = torch.optim.AdamW([g for g in groups if not g.get("memory_values")], betas=(0.9, 0.98))
    value_opt = None
    for g in groups:
        if g.get("memory_values"):
            value_opt = SparseRowOptimizer(g["params"], preset.value_optimizer, lr=preset.value_lr, betas=(0.9, 0.98))
    for b in model.blocks:
        if isinstance(b.mixer, ProductKeyMemory):
            b.mixer.fuse_value_updates(value_opt)  # a shared pool: the same hook each time
    if preset.schedule not in ("constant", "cosine"):
        raise ValueError(f"Preset.schedule must be 'constant' or 'cosine'; got {preset.schedule!r}")
    warmup = max(1, preset.steps // 20)

    def lr_scale(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if preset.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, preset.steps - warmup)))

    scheds = [torch.optim.lr_scheduler.LambdaLR(opt, lr_scale)]
    if value_opt is not None:
        scheds.append(torch.optim.lr_scheduler.LambdaLR(value_opt, lr_scale))
    flops_per_token = model.flops_per_token(context)
    # Compiled, the fused value lookups stay outside the graph (docs/optim.md);
    # evaluation runs eagerly.
    forward = torch.compile(model, dynamic=True) if compile else model
    g = torch.Generator().manual_seed(seed)
    data = SentenceTable(corpus.train, corpus.pad, device)
    history: Dict[str, List[float]] = {"step": [], "tokens": [], "train_flops": [], "loss": [],
                                       "acc_train_phrasing": [], "acc_held_out": []}
    tokens = 0
    t0 = time.perf_counter()
    running = None  # the running loss, on the device, in fp64 (as Python floats would be)
    for step in range(1, preset.steps + 1):
        pick = torch.randint(0, len(data), (preset.batch,), generator=g)
        ids = data.batch(pick)
        logits = forward(ids[:, :-1])
        target = ids[:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=corpus.pad)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # the value pool is updated inside the backward
        opt.step()
        if value_opt is not None:
            value_opt.step()  # nothing left to apply (fused); keeps the scheduler's order
        for s in scheds:
            s.step()
        tokens += data.targets(pick)
        last = loss.detach().double()
        running = last if running is None else 0.9 * running + 0.1 * last
        if step % preset.eval_every == 0 or step == preset.steps:
            n = preset.eval_limit if preset.eval_limit and step < preset.steps else len(corpus.facts)
            acc_t = answer_accuracy(model, corpus.eval_prompts["train_phrasing"][:n],
                                    corpus.eval_answers["train_phrasing"][:n], device)
            acc_h = answer_accuracy(model, corpus.eval_prompts["held_out"][:n], corpus.eval_answers["held_out"][:n],
                                    device)
            loss_now = float(running)
            for key, value in (("step", step), ("tokens", tokens), ("train_flops", 3 * flops_per_token * tokens),
                               ("loss", loss_now), ("acc_train_phrasing", acc_t), ("acc_held_out", acc_h)):
                history[key].append(value)
            log(f"  [{name:>8}] step {step:5d}/{preset.steps}  loss {loss_now:6.3f}  "
                f"acc (trained phrasings) {100 * acc_t:5.1f}%  (held-out phrasings) {100 * acc_h:5.1f}%  "
                f"({time.perf_counter() - t0:6.1f} s)")
    return {"history": history, "seconds": time.perf_counter() - t0, "flops_per_token": flops_per_token,
            "params": sum(p.numel() for p in model.parameters()),
            "acc_train_phrasing": history["acc_train_phrasing"][-1], "acc_held_out": history["acc_held_out"][-1],
            "loss": history["loss"][-1]}


def draw(result: Dict[str, object], path: str) -> Optional[str]:
    """lm.png: loss and held-out accuracy against steps and training FLOPs
    (None without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for name, r in result["models"].items():
        h = r["history"]
        label = f"{name} ({r['flops_per_token'] / 1e6:.2f} MFLOP/token)"
        for row, key, ylabel in ((0, "loss", "training loss (running)"),
                                 (1, "acc_held_out", "exact match, held-out phrasings")):
            ys = [100 * v for v in h[key]] if key.startswith("acc") else h[key]
            axes[row][0].plot(h["step"], ys, marker="o", ms=3, label=label)
            axes[row][1].plot(h["train_flops"], ys, marker="o", ms=3, label=label)
            axes[row][0].set_ylabel(ylabel + (" (%)" if key.startswith("acc") else ""))
    for row in range(2):
        axes[row][0].set_xlabel("step")
        axes[row][1].set_xlabel("training FLOPs")
        axes[row][1].set_xscale("log")
        for col in range(2):
            axes[row][col].grid(True, alpha=0.3)
            axes[row][col].legend(fontsize=7)
    c = result["corpus"]
    fig.suptitle(f"memory layers vs dense, preset {result['preset']}: {c['people']} people x "
                 f"{len(c['attributes'])} attributes, device {result['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(preset_name: str, device: str = "cpu", seed: int = 0, out: Optional[str] = None,
        steps: Optional[int] = None, models: Sequence[str] = ("dense", "memory", "dense_2x"),
        log=print, compile: bool = False) -> Dict[str, object]:
    preset = PRESETS[preset_name]
    if steps is not None:
        preset = replace(preset, steps=steps, eval_every=min(preset.eval_every, steps))
    dev = torch.device(device)
    corpus = make_corpus(replace(preset.corpus, seed=seed))
    context = max(len(s) for s in corpus.train + corpus.eval_prompts["held_out"])
    configs = model_configs(preset.model, len(corpus.vocab), context)
    log(f"memkernels LM example, preset {preset_name}, device {dev}: {corpus.config.people} people x "
        f"{len(corpus.config.attributes)} attributes = {len(corpus.facts)} facts, {len(corpus.train)} training "
        f"sentences, vocabulary {len(corpus.vocab)}, {preset.steps} steps of {preset.batch} sentences")
    result: Dict[str, object] = {"preset": preset_name, "device": str(dev), "seed": seed,
                                 "corpus": asdict(corpus.config) | {"facts": len(corpus.facts),
                                                                    "sentences": len(corpus.train),
                                                                    "vocab": len(corpus.vocab)},
                                 "train": {"steps": preset.steps, "batch": preset.batch, "lr": preset.lr,
                                           "value_lr": preset.value_lr, "value_optimizer": preset.value_optimizer,
                                           "schedule": preset.schedule,
                                           "compile": compile, "threads": torch.get_num_threads()},
                                 "models": {}}
    for name in models:
        cfg = configs[name]
        torch.manual_seed(seed)
        model = LM(len(corpus.vocab), context, cfg).to(dev)
        log(f"training {name}: {model.flops_per_token(context):,} FLOPs/token, "
            f"{sum(p.numel() for p in model.parameters()):,} parameters")
        r = train_model(name, model, corpus, preset, dev, seed, context, log=log, compile=compile)
        r["config"] = asdict(cfg)
        result["models"][name] = r
    base = result["models"].get("dense") or next(iter(result["models"].values()))
    dense_flops = base["flops_per_token"]  # the "vs dense" column (the first model's without dense)
    log("")
    log(f"{'model':<10}{'FLOPs/token':>13}{'vs dense':>10}{'params':>12}{'trained phr.':>14}{'held-out phr.':>15}"
        f"{'loss':>8}{'train s':>9}")
    for name, r in result["models"].items():
        log(f"{name:<10}{r['flops_per_token']:>13,}{r['flops_per_token'] / dense_flops:>9.2f}x{r['params']:>12,}"
            f"{100 * r['acc_train_phrasing']:>13.1f}%{100 * r['acc_held_out']:>14.1f}%{r['loss']:>8.3f}"
            f"{r['seconds']:>9.1f}")
    verdict = targets(result)
    if verdict is not None:
        result["targets"] = verdict
        met = lambda ok: "met" if ok else "not met"  # noqa: E731
        log(f"the issue's targets (held-out phrasings): memory - dense {100 * verdict['held_out_over_dense']:+.1f} "
            f"points (>= {100 * TARGETS['held_out_over_dense']:.0f}: {met(verdict['met']['over_dense'])}), "
            f"memory - dense_2x {100 * verdict['held_out_over_dense_2x']:+.1f} "
            f"(> 0: {met(verdict['met']['over_dense_2x'])}), the three models in {verdict['seconds']:.0f} s on "
            f"{dev} (< {TARGETS['seconds']:.0f} s, a GPU's target: {met(verdict['met']['time'])})")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "lm.json"), "w") as f:
            json.dump(result, f, indent=1)
        result["plot"] = draw(result, os.path.join(out, "lm.png"))
        if result["plot"] is None:
            log(MISSING)
    return result


# The targets for the `gpu` preset on a GPU: the memory model's
# held-out accuracy at least 30 points above the dense model of equal FLOPs
# and above dense_2x, all three models trained in under 5 minutes.
TARGETS = {"held_out_over_dense": 0.30, "seconds": 300.0}


def targets(result: Dict[str, object]) -> Optional[Dict[str, object]]:
    """The targets judged on one run of the three models (None without all
    three). ``seconds`` is the three models' training time, evaluations
    included."""
    m = result["models"]
    if not {"dense", "memory", "dense_2x"} <= set(m):
        return None
    over_dense = m["memory"]["acc_held_out"] - m["dense"]["acc_held_out"]
    over_2x = m["memory"]["acc_held_out"] - m["dense_2x"]["acc_held_out"]
    seconds = sum(m[k]["seconds"] for k in ("dense", "memory", "dense_2x"))
    return {"held_out_over_dense": over_dense, "held_out_over_dense_2x": over_2x, "seconds": seconds,
            "device": result["device"],
            # 1e-9: exactly 30 points (0.70 - 0.40 in floats is 0.2999...) is met.
            "met": {"over_dense": over_dense >= TARGETS["held_out_over_dense"] - 1e-9, "over_dense_2x": over_2x > 0,
                    "time": seconds < TARGETS["seconds"]}}


def summarize(results: Sequence[Dict[str, object]], log=print) -> Dict[str, object]:
    """Means over seeds: each model's accuracies (mean, min, max) and, per
    other model, in how many seeds the memory model answered more held-out
    questions."""
    models = list(results[0]["models"])
    summary: Dict[str, object] = {"seeds": [r["seed"] for r in results], "models": {}}
    for name in models:
        row = {}
        for key in ("acc_train_phrasing", "acc_held_out"):
            vals = [r["models"][name][key] for r in results]
            row[key] = {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals), "per_seed": vals}
        summary["models"][name] = row
    if "memory" in models:
        summary["memory_wins_held_out"] = {
            other: sum(r["models"]["memory"]["acc_held_out"] > r["models"][other]["acc_held_out"] for r in results)
            for other in models if other != "memory"}
    verdicts = [r.get("targets") for r in results]
    if all(v is not None for v in verdicts):
        summary["targets_met"] = {key: sum(v["met"][key] for v in verdicts) for key in verdicts[0]["met"]}
    log("")
    log(f"over {len(results)} seeds ({', '.join(str(s) for s in summary['seeds'])}): mean [min, max]")
    log(f"{'model':<10}{'trained phrasings':>26}{'held-out phrasings':>26}")
    for name, row in summary["models"].items():
        cells = "".join(f"{100 * row[k]['mean']:>11.1f}% [{100 * row[k]['min']:5.1f}, {100 * row[k]['max']:5.1f}]"
                        for k in ("acc_train_phrasing", "acc_held_out"))
        log(f"{name:<10}{cells}")
    for other, wins in summary.get("memory_wins_held_out", {}).items():
        log(f"memory answers more held-out questions than {other} in {wins} of {len(results)} seeds")
    for key, n in summary.get("targets_met", {}).items():
        log(f"target {key} met in {n} of {len(results)} seeds")
    return summary


def main(argv: Optional[Sequence[str]] = None):
    p = argparse.ArgumentParser(prog="python -m memkernels.examples.lm", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--seed", default="0",
                   help="a seed, or comma-separated seeds: each trains every model; several end with their means")
    p.add_argument("--steps", type=int, default=None, help="override the preset's training steps")
    p.add_argument("--models", default="dense,memory,dense_2x", help="comma-separated subset of the three models")
    p.add_argument("--compile", action="store_true", help="train through torch.compile (evaluation stays eager)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's); results depend on it (docs/lm_example.md)")
    p.add_argument("--out", default=None, help="folder for lm.json and lm.png (seed<S>/ in it for several seeds, "
                                               "and lm_seeds.json)")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in ("dense", "memory", "dense_2x")]
    if unknown or not models:
        p.error(f"--models: choose from dense, memory, dense_2x; got {args.models!r}")
    try:
        seeds = [int(s) for s in args.seed.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        p.error(f"--seed: one integer or distinct comma-separated integers; got {args.seed!r}")
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads: at least 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    log = lambda s: print(s, flush=True)  # noqa: E731
    if len(seeds) == 1:
        return run(args.preset, device, seeds[0], args.out, args.steps, models, log=log, compile=args.compile)
    results = []
    for seed in seeds:
        out = os.path.join(args.out, f"seed{seed}") if args.out else None
        results.append(run(args.preset, device, seed, out, args.steps, models, log=log, compile=args.compile))
        log("")
    summary = summarize(results, log=log)
    summary.update(preset=args.preset, device=device)
    if args.out:
        with open(os.path.join(args.out, "lm_seeds.json"), "w") as f:
            json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    main()
