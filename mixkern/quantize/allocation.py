"""Choosing which output features get 8 bits, across all layers at once.

The score of a feature is the estimated harm of storing it in 4 instead of 8 bits;
``allocate`` (global) ranks every feature of every layer together and gives 8 bits to the
top ones that fit the budget, or per layer (local) or at random, the two baselines.
``output_error_proxy`` is a data-light score (expected output-error increase under
calibration activations); loss-based salience (:mod:`.salience`) plugs into the same allocator.
"""

from __future__ import annotations

import torch

from ..format import PackedWeight, WeightFormat
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


def average_bits(shapes: dict[str, tuple[int, int]], counts: dict[str, int], group_size: int = 128,
                 format=WeightFormat.PROGRESSIVE) -> float:
    """Exact bits per weight of these layers with ``counts[name]`` 8-bit features each (every
    stored byte counted, as ``PackedWeight.nbytes``)."""
    nbytes = weights = 0
    for name, (n, k) in shapes.items():
        c = counts.get(name, 0)
        nbytes += (n - c) * PackedWeight.feature_bytes(k, group_size, format, 4) + c * PackedWeight.feature_bytes(k, group_size, format, 8)
        weights += n * k
    return 8.0 * nbytes / weights


METHODS = ("global", "global-per-byte", "local", "random")


def _extra_bytes(k: int, group_size: int, format) -> int:
    """Bytes one K-long feature adds when stored in 8 rather than 4 bits."""
    return PackedWeight.feature_bytes(k, group_size, format, 8) - PackedWeight.feature_bytes(k, group_size, format, 4)


def check_bits_budget(shapes: dict[str, tuple[int, int]], bits: float, group_size: int = 128,
                      format=WeightFormat.PROGRESSIVE) -> None:
    """Raise ValueError if ``bits`` cannot pay for every feature of these layers in 4 bits."""
    lo = average_bits(shapes, {}, group_size, format)
    if bits < lo:
        raise ValueError(f"budget of {bits} bits/weight is below the all-4-bit cost {lo:.4f}")


def allocate(scores: dict[str, torch.Tensor], *, fraction: float | None = None, bits: float | None = None,
             in_features: dict[str, int] | None = None, method: str = "global", group_size: int = 128,
             format=WeightFormat.PROGRESSIVE, floor: float = 0.0, cap: float = 1.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Which features of which layers get 8 bits -> {layer: ascending int64 indices}.

    The budget is a ``fraction`` of all features, or an average ``bits`` per weight over
    these layers (every stored byte counted, as :func:`average_bits`; needs ``in_features``,
    each layer's K); exactly one.  ``method``:
      * ``global``: rank every feature of every layer by score and take, best first, each
        that still fits the budget (per layer at least ``floor`` and at most ``cap`` of its
        features; floors are served first);
      * ``global-per-byte``: the same, ranked by score per byte the feature's 8-bit form adds
        (needs ``in_features``): under a bits budget a long row (large K) must earn its cost;
      * ``local``: the same fraction in every layer, the top-scored features of each;
      * ``random``: the counts of ``local``, features drawn at random (``seed``).
    """
    if (fraction is None) == (bits is None):
        raise ValueError("give exactly one budget: fraction= (of features) or bits= (average bits per weight)")
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction of 8-bit features must lie in [0, 1], got {fraction}")
    if not 0.0 <= floor <= cap <= 1.0:
        raise ValueError(f"need 0 <= floor <= cap <= 1, got floor={floor}, cap={cap}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    for n, sc in scores.items():
        if sc.dim() != 1:
            raise ValueError(f"scores[{n!r}] must be 1-D (one score per output feature)")
        if not torch.isfinite(sc).all():
            raise ValueError(f"scores[{n!r}] holds NaN or Inf")
    shapes = {}
    if bits is not None or method == "global-per-byte":
        missing = [n for n in scores if not in_features or n not in in_features]
        if missing:
            raise ValueError(f"a bits budget and global-per-byte need in_features (K) for every layer; missing {missing[:3]}")
        shapes = {n: (sc.numel(), in_features[n]) for n, sc in scores.items()}
    if bits is not None:
        check_bits_budget(shapes, bits, group_size, format)
    if method.startswith("global"):
        if method == "global-per-byte":
            scores = {n: sc.double() / _extra_bytes(shapes[n][1], group_size, format) for n, sc in scores.items()}
        return _global(scores, fraction, bits, shapes, group_size, format, floor, cap)
    counts = _uniform_counts(scores, fraction, bits, shapes, group_size, format)
    out = {}
    gen = torch.Generator().manual_seed(seed)
    for n, sc in scores.items():
        if method == "local":
            idx = torch.topk(sc.double().cpu(), counts[n]).indices
        else:
            idx = torch.randperm(sc.numel(), generator=gen)[: counts[n]]
        out[n] = idx.sort().values
    return out


def _global(scores, fraction, bits, shapes, group_size, format, floor, cap):
    names = list(scores)
    sizes = [scores[n].numel() for n in names]
    flat = torch.cat([scores[n].flatten().to(torch.float64).cpu() for n in names])
    owner = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)]).tolist()
    local = torch.cat([torch.arange(s) for s in sizes]).tolist()
    order = torch.sort(flat, descending=True, stable=True).indices.tolist()  # ties break by position
    target = round(fraction * flat.numel()) if fraction is not None else flat.numel()
    extra = budget = None
    if bits is not None:  # bytes an 8-bit feature adds over its 4-bit form, and the bytes the budget leaves
        extra = [_extra_bytes(shapes[n][1], group_size, format) for n in names]
        budget = bits / 8.0 * sum(n_ * k_ for n_, k_ in shapes.values()) - sum(
            shapes[n][0] * PackedWeight.feature_bytes(shapes[n][1], group_size, format, 4) for n in names)
    chosen = [set() for _ in names]
    count, spent = 0, 0
    for limits in ([int(floor * s) for s in sizes], [int(round(cap * s)) for s in sizes]):
        for j in order:
            if count >= target:
                break
            i, f = owner[j], local[j]
            if f in chosen[i] or len(chosen[i]) >= limits[i]:
                continue
            if extra is not None:
                if spent + extra[i] > budget:
                    continue
                spent += extra[i]
            chosen[i].add(f)
            count += 1
    return {n: torch.tensor(sorted(chosen[i]), dtype=torch.long) for i, n in enumerate(names)}


def _uniform_counts(scores, fraction, bits, shapes, group_size, format):
    names = list(scores)
    if fraction is not None:
        return {n: round(fraction * scores[n].numel()) for n in names}
    lo, hi = 0.0, 1.0  # the largest common fraction whose (rounded-down) counts fit the bit budget
    for _ in range(50):
        mid = (lo + hi) / 2
        if average_bits(shapes, {n: int(mid * shapes[n][0]) for n in names}, group_size, format) <= bits:
            lo = mid
        else:
            hi = mid
    return {n: int(lo * shapes[n][0]) for n in names}
