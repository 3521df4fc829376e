"""A small decoder-only LM that mixkern trains itself on the shipped corpus.

No pretrained causal LM ships inside any package these machines can install (see
docs/quantize.md for what was checked), so the accuracy experiments use this one:
a Llama-style decoder (RMSNorm, causal attention, SwiGLU MLP, every projection an
``nn.Linear`` without bias) over byte tokens, trained deterministically on the King
James Bible (:mod:`mixkern.corpus`) by ``python -m mixkern.lm --out DIR``.  A checkpoint
is a directory with ``config.json`` and ``model.safetensors``.  ``--preset`` picks the size:
``cpu-small`` (minutes on a 2-core CPU, the default without a GPU) or ``h100`` (the model of
docs/quantize.md, the default with one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import corpus
from ._cli import check_output_dir, error, positive
from ._progress import progress
from .safetensors_io import read_safetensors, write_safetensors


@dataclass(frozen=True)
class LMConfig:
    vocab: int = 256
    d_model: int = 512
    n_layers: int = 8
    n_heads: int = 8
    d_ff: int = 1536
    seq_len: int = 256


class Block(nn.Module):
    def __init__(self, c: LMConfig):
        super().__init__()
        self.n_heads = c.n_heads
        self.attn_norm, self.mlp_norm = nn.RMSNorm(c.d_model), nn.RMSNorm(c.d_model)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(c.d_model, c.d_model, bias=False) for _ in range(4))
        self.gate_proj, self.up_proj = nn.Linear(c.d_model, c.d_ff, bias=False), nn.Linear(c.d_model, c.d_ff, bias=False)
        self.down_proj = nn.Linear(c.d_ff, c.d_model, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        h = self.attn_norm(x)
        q, k, v = (p(h).view(b, t, self.n_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.o_proj(a)
        h = self.mlp_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class TinyLM(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab, config.d_model)
        self.pos = nn.Embedding(config.seq_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))


def next_token_loss(model: nn.Module, seqs: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting seqs[:, 1:] from seqs[:, :-1] (natural log)."""
    logits = model(seqs[:, :-1])
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), seqs[:, 1:].reshape(-1))


@torch.no_grad()
def perplexity(model: nn.Module, seqs: torch.Tensor, batch: int = 16, desc: str = "perplexity") -> float:
    """exp(mean next-token cross-entropy) over all (seq_len) positions of every sequence."""
    device = next(model.parameters(), seqs).device
    total, count = 0.0, 0
    for i in progress(range(0, len(seqs), batch), desc, total=math.ceil(len(seqs) / batch)):
        s = seqs[i:i + batch].to(device)
        total += next_token_loss(model, s).item() * s[:, 1:].numel()
        count += s[:, 1:].numel()
    return math.exp(total / count)


def save_model(model: TinyLM, directory: str, extra: dict | None = None) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"architecture": "mixkern.lm.TinyLM", **asdict(model.config), **(extra or {})}, f, indent=1)
    write_safetensors(os.path.join(directory, "model.safetensors"),
                      {k: v.float() for k, v in model.state_dict().items()})


def load_model(directory: str) -> TinyLM:
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory} has no config.json: not a mixkern.lm checkpoint (python -m mixkern.lm --out DIR makes one)")
    with open(path) as f:
        cfg = json.load(f)
    if cfg.get("architecture") != "mixkern.lm.TinyLM":
        raise ValueError(f"{path}: architecture {cfg.get('architecture')!r} is not mixkern.lm.TinyLM")
    model = TinyLM(LMConfig(**{k: cfg[k] for k in LMConfig.__dataclass_fields__}))
    state, _ = read_safetensors(os.path.join(directory, "model.safetensors"))
    model.load_state_dict(state)
    return model.eval()


@dataclass(frozen=True)
class Preset:
    """A model size and training length for one kind of machine (``--preset``)."""
    config: LMConfig
    steps: int
    batch: int
    lr: float
    about: str


PRESETS = {
    # Runs the whole pipeline in minutes on 2 CPU cores (0.64 s a step when idle); 1.2 M training bytes reach
    # bigram-level text (held-out perplexity ~9 per byte).  K = 256 keeps the all-4-bit cost (4.34
    # bits/weight) under the README's --bits 4.4; narrower layers would not fit that budget.
    "cpu-small": Preset(LMConfig(d_model=256, n_layers=4, n_heads=4, d_ff=768), steps=300, batch=16, lr=1e-3,
                        about="d 256, 4 layers, 300 steps of 16 sequences: about 3.5 min on 2 idle CPU cores"),
    # The model of docs/quantize.md (held-out perplexity ~2.4 per byte); 29 s a step on 2 CPU cores.
    "h100": Preset(LMConfig(), steps=3000, batch=64, lr=1e-3,
                   about="d 512, 8 layers, 3000 steps of 64 sequences: about 1.5 min on an H100"),
}


def train(config: LMConfig, steps: int, batch: int = 64, lr: float = 1e-3, seed: int = 0,
          device: str = "cpu") -> tuple[TinyLM, list[float]]:
    """AdamW with warm-up and cosine decay on random windows of the train split; deterministic per seed."""
    torch.manual_seed(seed)
    model = TinyLM(config).to(device)
    toks = corpus.tokens("train")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    losses = []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
    bar = progress(range(steps), "train")
    for _ in bar:
        start = torch.randint(0, toks.numel() - config.seq_len - 1, (batch,), generator=gen)
        seqs = toks.long()[start[:, None] + torch.arange(config.seq_len + 1)].to(device)
        with autocast:
            loss = next_token_loss(model, seqs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix_str(f"loss {losses[-1]:.3f}", refresh=False)
    return model.eval(), losses


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mixkern.lm", description="Train the byte-level TinyLM on the KJV corpus.",
        epilog="presets: " + "; ".join(f"{name}: {ps.about}" for name, ps in PRESETS.items())
               + ". --steps/--batch/--lr/--d-model/--layers/--d-ff override the preset's values.")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--preset", choices=list(PRESETS),
                   help="model size and training length (default: h100 when a CUDA GPU is present, else cpu-small)")
    p.add_argument("--steps", type=positive(int))
    p.add_argument("--batch", type=positive(int), help="sequences of 256 bytes per step")
    p.add_argument("--d-model", type=positive(int), help="width; one attention head per 64")
    p.add_argument("--layers", type=positive(int))
    p.add_argument("--d-ff", type=positive(int))
    p.add_argument("--lr", type=positive(float), help="peak learning rate (AdamW, warm-up then cosine decay)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    preset_name = args.preset or ("h100" if device == "cuda" else "cpu-small")
    preset = PRESETS[preset_name]
    base = preset.config
    d_model = args.d_model or base.d_model
    config = LMConfig(d_model=d_model, n_layers=args.layers or base.n_layers, d_ff=args.d_ff or base.d_ff,
                      n_heads=base.n_heads if args.d_model is None else max(1, d_model // 64))
    steps, batch, lr = args.steps or preset.steps, args.batch or preset.batch, args.lr or preset.lr
    try:
        if config.d_model % config.n_heads:
            raise ValueError(f"--d-model {d_model} does not split evenly into {config.n_heads} attention heads (one per 64): use a multiple of 64")
        check_output_dir(args.out, "--out")
        corpus.kjv_path()  # the training text, before building anything
    except (ValueError, FileNotFoundError) as e:
        return error(e)
    n = sum(p.numel() for p in TinyLM(config).parameters())
    print(f"training a {n / 1e6:.1f} M-parameter TinyLM (preset {preset_name}: {preset.about}) for {steps} steps "
          f"of {batch} x {config.seq_len} bytes on {device}", file=sys.stderr)
    t0 = time.perf_counter()
    model, losses = train(config, steps, batch, lr, seed=args.seed, device=device)
    seconds = time.perf_counter() - t0
    ppl = perplexity(model, corpus.sequences(corpus.tokens("test"), config.seq_len, 64))
    save_model(model, args.out, {"corpus": f"{corpus.PACKAGE}=={corpus.VERSION}", "preset": preset_name, "steps": steps,
                                 "batch": batch, "lr": lr, "seed": args.seed, "train_seconds": round(seconds), "device": device,
                                 "final_train_loss": sum(losses[-50:]) / len(losses[-50:])})
    print(f"trained {n / 1e6:.1f} M parameters for {steps} steps in {seconds:.0f}s on {device}; "
          f"held-out perplexity (64 x {config.seq_len} bytes) {ppl:.3f}; wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
