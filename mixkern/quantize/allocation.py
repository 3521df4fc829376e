"""Choosing which output features get 8 bits, across all layers at once.

The score of a feature is the estimated harm of storing it in 4 instead of 8 bits;
``allocate_global`` ranks every feature of every layer together and gives 8 bits to the
top ones.  ``output_error_proxy`` is a data-light score (expected output-error increase
under calibration activations); loss-based salience plugs into the same allocator.
"""

from __future__ import annotations

import torch

from ..format import WeightFormat
from .weights import quantize_weight


def output_error_proxy(w: torch.Tensor, x: torch.Tensor, group_size: int = 128,
                       format: WeightFormat | str = WeightFormat.PROGRESSIVE) -> torch.Tensor:
    """Per output feature: sum_k E[x_k^2] * (err4[n, k]^2 - err8[n, k]^2), float64 (N,).

    The expected increase of the squared output error of feature n when its weights are
    4-bit rather than 8-bit, treating input channels as uncorrelated.
    """
    wf = w.to(torch.float64)
    err4 = quantize_weight(w, None, group_size, format).dequantize(torch.float64) - wf
    err8 = quantize_weight(w, "all", group_size, format).dequantize(torch.float64) - wf
    energy = x.to(torch.float64).square().mean(dim=0)
    return (err4.square() - err8.square()) @ energy


def allocate_global(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Top ``round(fraction * total features)`` features over all layers -> {layer: sorted indices}."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction of 8-bit features must lie in [0, 1], got {fraction}")
    names = list(scores)
    flat = torch.cat([scores[n].flatten().to(torch.float64).cpu() for n in names])
    count = round(fraction * flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.topk(flat, count).indices] = True  # ties break by position, deterministically
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = chosen[start : start + size].nonzero().flatten()
        start += size
    return out
