"""Per-token symmetric int8 activation quantization: the exact rule every kernel reproduces.

For row m of x (computed in float32 from fp16/bf16 input, which is exact):
    amax[m] = max_k |x[m, k]|
    a[m]    = amax[m] / 127                      (fp32, IEEE round-to-nearest division)
    xq[m,k] = clamp(rint(x[m, k] / a[m]), -127, 127)   (fp32 division, round half to even)
A row of zeros gets a[m] = 0 and xq = 0.  A row holding NaN or Inf (accepted only with
``check=False``, as the GPU op does) gets a[m] = +inf, so every output of that token is
non-finite and no other token is touched; its xq is unspecified.
"""

from __future__ import annotations

import torch

from .._checks import ACTIVATION_DTYPES, check_finite, check_tensor

INT8_MAX = 127


def token_amax(x: torch.Tensor) -> torch.Tensor:
    """float32 (M,) max |x| per token, a NaN counted as +inf (as the kernels do)."""
    return torch.nan_to_num(x.to(torch.float32).abs().amax(dim=1), nan=float("inf"))


def quantize_activation(x: torch.Tensor, *, check: bool = True,
                        amax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) fp16/bf16 -> (xq int8 (M, K), a float32 (M,)) with x ~= a[:, None] * xq.

    ``amax`` (float32 (M,)): each token's max |x| over a longer row than ``x`` (a K slice of a
    row-parallel layer whose ranks share the whole token's scale); default: ``x``'s own."""
    if check:
        check_tensor(x, "x", ACTIVATION_DTYPES + (torch.float32,), ndim=2)
        check_finite(x, "x")
    xf = x.to(torch.float32)
    if amax is None:
        amax = token_amax(xf)
    elif amax.shape != (x.shape[0],) or amax.dtype != torch.float32:
        raise ValueError(f"amax must be float32 of shape ({x.shape[0]},), got {amax.dtype} {tuple(amax.shape)}")
    a = amax / torch.full_like(amax, INT8_MAX)  # tensor / tensor: a true division (CUDA turns / scalar into * 1/scalar)
    safe = torch.where(a > 0, a, torch.ones_like(a))
    xq = torch.round(xf / safe[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return xq, a
