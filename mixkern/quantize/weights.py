"""Weight quantizers: fp weights + a choice of 8-bit output features -> PackedWeight.

4-bit groups are asymmetric with the range widened to include 0 (so the zero point is
always a code in [0, 15]); each group picks the clipping ratio in ``CLIP_RATIOS`` that
minimizes its squared reconstruction error (ratio 1.0 is plain min/max, so the search
never does worse than min/max).  8-bit rows are symmetric: per channel with an fp32 scale
(``progressive``), per (channel, group) with an fp16 scale (``mixllm``, MixLLM's configuration).
"""

from __future__ import annotations


import torch

from .._checks import WEIGHT_DTYPES, check_finite, check_tensor
from ..format import LEVEL1_MAX, PackedWeight, WeightFormat, check_in_features, field_layout
from ..packing import pack_int4

CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
INT4_MAX = 15
INT8_MAX = 127
FP16_MAX = 65504.0
FP16_TINY = 2.0**-24  # smallest positive fp16 (subnormal)
ROW_CHUNK = 2048  # rows quantized at once: bounds the clip search's memory to ~ROW_CHUNK*K*40 bytes


def eight_bit_index(eight_bit_features, n: int) -> torch.Tensor:
    """Normalize None / 'all' / bool mask (N,) / index list into sorted unique int64 indices."""
    if eight_bit_features is None:
        return torch.empty(0, dtype=torch.int64)
    if isinstance(eight_bit_features, str):
        if eight_bit_features != "all":
            raise ValueError(f"eight_bit_features: the only string accepted is 'all', got {eight_bit_features!r}")
        return torch.arange(n)
    idx = torch.as_tensor(eight_bit_features).cpu()
    if idx.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    if idx.dtype == torch.bool:
        if idx.shape != (n,):
            raise ValueError(f"eight_bit_features mask must have shape ({n},), got {tuple(idx.shape)}")
        return idx.nonzero().flatten()
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dim() > 1:
        raise TypeError("eight_bit_features must be None, 'all', a bool mask or a 1-D sequence of ints")
    idx = idx.flatten().to(torch.int64)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"eight_bit_features indices must lie in [0, {n}), got [{int(idx.min())}, {int(idx.max())}]")
    uniq = torch.unique(idx)
    if uniq.numel() != idx.numel():
        raise ValueError("eight_bit_features has repeated indices")
    return uniq


def quantize_rows_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: w (R, K) float32 -> (q int8, s float32 (R,)); all-zero rows get s = 1."""
    amax = w.abs().amax(dim=1)
    s = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    q = torch.round(w / s[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, s


def _asymmetric_groups(v: torch.Tensor, target: torch.Tensor, make_scale, clip_search: bool):
    """Best-ratio asymmetric 4-bit quantization of groups v (R, G, gs), float32.

    ``make_scale(span)`` turns a float range into a representable scale (fp16-rounded, or
    an integer); ``target`` is what the reconstruction is scored against.  The range is
    widened to include 0 so the zero point is a code.  Returns codes uint8 (R, G, gs),
    zeros (R, G) uint8 and scales (R, G) float32.
    """
    lo = v.amin(dim=2).clamp(max=0)
    hi = v.amax(dim=2).clamp(min=0)
    best = None
    for ratio in CLIP_RATIOS if clip_search else (1.0,):
        s = make_scale((hi - lo) * ratio)
        z = torch.round(-lo * ratio / s).clamp_(0, INT4_MAX)
        q = (torch.round(v / s[..., None]) + z[..., None]).clamp_(0, INT4_MAX)
        err = ((q - z[..., None]) * s[..., None] - target).square_().sum(dim=2)
        if best is None:
            best = (err, q, z, s)
            continue
        better = err < best[0]
        best = (torch.where(better, err, best[0]), torch.where(better[..., None], q, best[1]),
                torch.where(better, z, best[2]), torch.where(better, s, best[3]))
    _, q, z, s = best
    return q.to(torch.uint8), z.to(torch.uint8), s


def _fp16_scale(span: torch.Tensor, levels: int = INT4_MAX) -> torch.Tensor:
    """span / levels as a positive float16 value (returned in float32, exact)."""
    s = span / levels
    if bool((s > FP16_MAX).any()):
        raise ValueError(f"weights too large for float16 group scales (a group spans more than {levels} * 65504)")
    return s.clamp(min=FP16_TINY).to(torch.float16).to(torch.float32)


def quantize_groups_int8(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per (row, group): w (R, K) float32 -> (q int8 (R, K), s float16 (R, G)).
    The scale is rounded *up* to fp16 before the codes are taken: no code clips, so every
    weight is within half a step of s."""
    r, k = w.shape
    groups = w.reshape(r, k // group_size, group_size)
    amax = groups.abs().amax(dim=2)
    s = _fp16_scale(amax, INT8_MAX)
    up = torch.nextafter(s.half(), torch.full_like(s, torch.inf, dtype=torch.float16)).float()
    s = torch.where(s < amax / INT8_MAX, up, s)
    q = torch.round(groups / s[..., None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.reshape(r, k), s.to(torch.float16)


def _int_scale(span: torch.Tensor) -> torch.Tensor:
    return torch.ceil(span / INT4_MAX).clamp_(1, 16)


def _quantize_rows_mixllm(w: torch.Tensor, group_size: int, clip_search: bool):
    r, k = w.shape
    groups = w.reshape(r, k // group_size, group_size)
    q, z, s = _asymmetric_groups(groups, groups, _fp16_scale, clip_search)
    return q.reshape(r, k), z, s.to(torch.float16), None


def _quantize_rows_progressive(w: torch.Tensor, group_size: int, clip_search: bool):
    r, k = w.shape
    amax = w.abs().amax(dim=1)
    s1 = torch.where(amax > 0, amax / LEVEL1_MAX, torch.ones_like(amax))
    unrounded = w / s1[:, None]
    w8 = torch.round(unrounded).clamp_(-LEVEL1_MAX, LEVEL1_MAX)
    # Level two quantizes the integers w8 (what the kernel multiplies) but is scored against
    # the unrounded w / s1, so the clip search minimizes the error of the real weight.
    shape = (r, k // group_size, group_size)
    q, z, s2 = _asymmetric_groups(w8.reshape(shape), unrounded.reshape(shape), _int_scale, clip_search)
    return q.reshape(r, k), z, s2.to(torch.uint8), s1


def quantize_weight(
    w: torch.Tensor,
    eight_bit_features=None,
    group_size: int = 128,
    format: WeightFormat | str = WeightFormat.PROGRESSIVE,
    clip_search: bool = True,
) -> PackedWeight:
    """Quantize w (N, K) (fp16/bf16/fp32, y = x @ w.T) into a :class:`PackedWeight`.

    eight_bit_features: None (all 4-bit), "all", a bool mask of shape (N,), or indices.
    format: "progressive" (default) or "mixllm" (MixLLM's configuration); see :mod:`mixkern.format`.
    Runs on w's device, ROW_CHUNK rows at a time.
    """
    check_tensor(w, "w", WEIGHT_DTYPES, ndim=2)
    fmt = WeightFormat.parse(format)
    n, k = w.shape
    check_in_features(k, group_size)
    check_finite(w, "w")
    idx8 = eight_bit_index(eight_bit_features, n).to(w.device)
    is8 = torch.zeros(n, dtype=torch.bool, device=w.device)
    is8[idx8] = True
    idx4 = (~is8).nonzero().flatten()
    idx8 = idx8.to(torch.int32)
    idx4 = idx4.to(torch.int32)

    quantize_rows = _quantize_rows_progressive if fmt is WeightFormat.PROGRESSIVE else _quantize_rows_mixllm
    parts = [quantize_rows(w[idx4[i : i + ROW_CHUNK]].float(), group_size, clip_search)
             for i in range(0, idx4.numel(), ROW_CHUNK)]
    if parts:
        codes, zeros, scales, chan = (torch.cat(p) if p[0] is not None else None for p in zip(*parts))
    else:  # every row is 8-bit
        empty = {name: torch.empty(shape, dtype=dtype, device=w.device)
                 for name, (dtype, shape) in field_layout(fmt, 0, 0, k, group_size).items()}
        codes = torch.empty(0, k, dtype=torch.uint8, device=w.device)
        zeros, scales, chan = empty["zeros4"], empty["scales4"], empty.get("chan_scale4")
    w8 = w[idx8].float()
    q8, s8 = quantize_rows_int8(w8) if fmt is WeightFormat.PROGRESSIVE else quantize_groups_int8(w8, group_size)
    return PackedWeight(
        shape=(n, k), group_size=group_size, format=fmt, idx4=idx4, idx8=idx8,
        qweight4=pack_int4(codes), zeros4=zeros, scales4=scales, chan_scale4=chan,
        qweight8=q8, scale8=s8,
    )
