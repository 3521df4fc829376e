"""The linear-layer shapes of real decoder LLMs, from their configs: what every kernel must run.

A Llama-style decoder layer has q, k, v, o, gate, up and down projections; serving stacks
also fuse q/k/v and gate/up into one weight each, and tensor parallelism shards them
(column-parallel q/k/v/gate/up split output features, row-parallel o/down split input
features).  :func:`layer_shapes` derives the (N, K) of each from a config; :data:`CONFIGS`
holds the published numbers of common models (written here, nothing downloads).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DecoderConfig:
    """The numbers that fix a decoder layer's linear shapes."""
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_hf(cls, path: str) -> "DecoderConfig":
        """From a Hugging Face ``config.json`` (or a directory holding one)."""
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        try:
            with open(path) as f:
                c = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read a config.json at {path}: {e}") from None
        c = c.get("text_config", c)  # multimodal wrappers keep the decoder's numbers here
        try:
            hidden, inter, heads = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"]
        except KeyError as e:
            raise ValueError(f"{path} has no {e}: need a decoder config.json "
                             "(hidden_size, intermediate_size, num_attention_heads)") from None
        kv = c.get("num_key_value_heads") or heads
        return cls(hidden, inter, heads, kv, c.get("head_dim") or hidden // heads)


CONFIGS = {  # hidden, intermediate, attention heads, kv heads, head dim (the models' published configs)
    "llama2-7b": DecoderConfig(4096, 11008, 32, 32, 128),
    "llama2-13b": DecoderConfig(5120, 13824, 40, 40, 128),
    "llama2-70b": DecoderConfig(8192, 28672, 64, 8, 128),
    "llama3-8b": DecoderConfig(4096, 14336, 32, 8, 128),
    "llama3-70b": DecoderConfig(8192, 28672, 64, 8, 128),
    "mistral-7b": DecoderConfig(4096, 14336, 32, 8, 128),
    "mixtral-8x7b": DecoderConfig(4096, 14336, 32, 8, 128),  # each expert's gate/up/down
    "qwen2.5-0.5b": DecoderConfig(896, 4864, 14, 2, 64),
    "qwen2.5-1.5b": DecoderConfig(1536, 8960, 12, 2, 128),
    "qwen2.5-3b": DecoderConfig(2048, 11008, 16, 2, 128),
    "qwen2.5-7b": DecoderConfig(3584, 18944, 28, 4, 128),
    "qwen2.5-14b": DecoderConfig(5120, 13824, 40, 8, 128),
    "qwen2.5-32b": DecoderConfig(5120, 27648, 40, 8, 128),
    "qwen2.5-72b": DecoderConfig(8192, 29568, 64, 8, 128),
    "phi3-mini": DecoderConfig(3072, 8192, 32, 32, 96),
    "phi3-medium": DecoderConfig(5120, 17920, 40, 10, 128),
    "gemma2-2b": DecoderConfig(2304, 9216, 8, 4, 256),
    "gemma2-9b": DecoderConfig(3584, 14336, 16, 8, 256),
    "gemma2-27b": DecoderConfig(4608, 36864, 32, 16, 128),
}
TP_SIZES = (1, 2, 4, 8)


def resolve(name_or_path: str) -> DecoderConfig:
    """A preset name of :data:`CONFIGS`, or a HF config.json path (file or directory)."""
    if name_or_path in CONFIGS:
        return CONFIGS[name_or_path]
    if os.path.exists(name_or_path):
        return DecoderConfig.from_hf(name_or_path)
    raise ValueError(f"{name_or_path!r} is neither a preset ({', '.join(CONFIGS)}) nor a config.json path")


def layer_shapes(c: DecoderConfig, tp: int = 1) -> dict[str, tuple[int, int]]:
    """{projection: (N, K)} of one rank at tensor-parallel size ``tp``, fused q/k/v and gate/up
    included.  K/V heads fewer than ``tp`` are replicated (one per rank), as serving stacks do.
    Raises ValueError when ``tp`` does not divide the heads or the intermediate size."""
    if c.heads % tp or c.intermediate % tp or (c.kv_heads % tp and tp % c.kv_heads):
        raise ValueError(f"tensor parallel {tp} does not divide heads {c.heads} / kv heads {c.kv_heads} / "
                         f"intermediate {c.intermediate}")
    q, kv = c.heads // tp * c.head_dim, max(1, c.kv_heads // tp) * c.head_dim
    inter = c.intermediate // tp
    return {"q": (q, c.hidden), "kv": (kv, c.hidden), "qkv": (q + 2 * kv, c.hidden),
            "o": (c.hidden, c.heads // tp * c.head_dim), "gate_up": (2 * inter, c.hidden),
            "up": (inter, c.hidden), "down": (c.hidden, inter)}


def unique_shapes(c: DecoderConfig, tp: int = 1) -> list[tuple[int, int]]:
    """The distinct (N, K) of :func:`layer_shapes`, in layer order."""
    return list(dict.fromkeys(layer_shapes(c, tp).values()))


@dataclass(frozen=True)
class Sharding:
    """One model at one tensor-parallel size: its per-rank shapes and the largest group size
    that divides every K (None, with the reason, where it cannot be sharded or grouped)."""
    model: str
    tp: int
    shapes: tuple[tuple[int, int], ...] = ()
    group_size: int | None = None
    reason: str = ""


def shardings(group_sizes=(128, 64)) -> list[Sharding]:
    """Every preset of :data:`CONFIGS` at every TP size of :data:`TP_SIZES`."""
    out = []
    for name, c in CONFIGS.items():
        for tp in TP_SIZES:
            try:
                shapes = tuple(unique_shapes(c, tp))
            except ValueError as e:
                out.append(Sharding(name, tp, reason=str(e)))
                continue
            g = next((g for g in group_sizes if all(k % g == 0 for _, k in shapes)), None)
            reason = "" if g else f"a shard's K ({sorted({k for _, k in shapes})}) is no multiple of {group_sizes}"
            out.append(Sharding(name, tp, shapes, g, reason))
    return out
