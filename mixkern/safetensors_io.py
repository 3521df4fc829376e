"""Checkpoint tensors through the ``safetensors`` package, with mixkern's error contract.

Thin on purpose: ``safetensors`` reads and writes the format; this adds a name filter for
reading part of a file, and turns the library's ``SafetensorError`` (a plain Exception)
into the ``ValueError`` every mixkern loader raises for a truncated or malformed file.
"""

from __future__ import annotations

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file


def write_safetensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (moved to the CPU, made contiguous) with string ``metadata``.  Tensors
    that share storage (tied embeddings) are each written whole: loaders re-tie by name."""
    out, seen = {}, set()
    for n, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        shared = t.numel() and t.untyped_storage().data_ptr() in seen
        seen.add(t.untyped_storage().data_ptr())
        out[n] = t.clone() if shared else t
    save_file(out, path, metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None)


def read_safetensors(path: str, keep=lambda name: True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """({name: tensor} of the names ``keep`` accepts, metadata).  Raises ValueError on a
    truncated or malformed file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {n: f.get_tensor(n) for n in f.keys() if keep(n)}, dict(f.metadata() or {})
    except SafetensorError as e:
        raise ValueError(f"{path}: not a readable safetensors file (truncated or malformed?): {e}") from None
