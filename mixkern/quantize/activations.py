"""Symmetric int8 activation quantization, per token or per (token, group): the exact rule
every kernel reproduces.

For row m of x (computed in float32 from fp16/bf16 input, which is exact) and each span j of
K (the whole row, or MixLLM's group of ``group_size`` channels: an outlier channel then only
coarsens its own group):
    amax[m, j] = max_{k in j} |x[m, k]|
    a[m, j]    = amax[m, j] / 127                       (fp32, IEEE round-to-nearest division)
    xq[m, k]   = clamp(rint(x[m, k] / a[m, j]), -127, 127)   (fp32 division, round half to even)
A span of zeros gets a = 0 and xq = 0.  A span holding NaN or Inf (accepted only with
``check=False``, as the GPU op does) gets a = +inf, so every output of that token is
non-finite and no other token is touched; its xq is unspecified.
"""

from __future__ import annotations

import torch

from .._checks import ACTIVATION_DTYPES, check_finite, check_tensor

INT8_MAX = 127
ACT_GROUP_SIZES = (64, 128)  # MixLLM's activation groups (see mixkern.format)


def token_amax(x: torch.Tensor) -> torch.Tensor:
    """float32 (M,) max |x| per token, a NaN counted as +inf (as the kernels do)."""
    return torch.nan_to_num(x.to(torch.float32).abs().amax(dim=1), nan=float("inf"), posinf=float("inf"))


def _per_row(xf: torch.Tensor, amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule above for float32 rows xf (R, L) with their amax (R,)."""
    a = amax / torch.full_like(amax, INT8_MAX)  # tensor / tensor: a true division (CUDA turns / scalar into * 1/scalar)
    safe = torch.where(a > 0, a, torch.ones_like(a))
    xq = torch.round(xf / safe[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return xq, a


def quantize_activation(x: torch.Tensor, *, group_size: int | None = None, check: bool = True,
                        amax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) fp16/bf16 -> (xq int8 (M, K), a float32) with x ~= a * xq per span.

    ``group_size`` None: one scale per token, a (M,); 64 or 128: one per (token, group of
    ``group_size`` channels), a (M, K // group_size) (MixLLM's activations).  ``amax``
    (float32 (M,), per token only): each token's max |x| over a longer row than ``x`` (a K
    slice of a row-parallel layer whose ranks share the whole token's scale)."""
    if check:
        check_tensor(x, "x", ACTIVATION_DTYPES + (torch.float32,), ndim=2)
        check_finite(x, "x")
    m, k = x.shape
    xf = x.to(torch.float32)
    if group_size is not None:
        if group_size not in ACT_GROUP_SIZES:
            raise ValueError(f"activation group_size must be None or one of {ACT_GROUP_SIZES}, got {group_size}")
        if k % group_size:
            raise ValueError(f"x has K={k}, not a multiple of the activation group_size={group_size}")
        if amax is not None:
            raise ValueError("amax= is per token; groups of a K slice need no shared scale (pass group_size only)")
        rows = xf.reshape(m * (k // group_size), group_size)  # every (token, group) is a row of its own
        xq, a = _per_row(rows, token_amax(rows))
        return xq.reshape(m, k), a.reshape(m, k // group_size)
    if amax is None:
        amax = token_amax(xf)
    elif amax.shape != (m,) or amax.dtype != torch.float32:
        raise ValueError(f"amax must be float32 of shape ({m},), got {amax.dtype} {tuple(amax.shape)}")
    return _per_row(xf, amax)


def dequantize_activation(xq: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """float64 (M, K) x the int8 codes and scales represent (exact): a per token or per group."""
    a64 = a.to(torch.float64)
    a64 = a64[:, None] if a64.dim() == 1 else a64.repeat_interleave(xq.shape[1] // a64.shape[1], dim=1)
    return a64 * xq.to(torch.float64)
