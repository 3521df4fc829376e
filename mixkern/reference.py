"""Exact reference semantics of ``mixkern.gemm``: the contract every kernel matches.

Integer products are summed exactly (float64 matmuls of integers below 2**53 are exact,
so they stand in for the kernels' int32 accumulators); every float step is done in
float32 in the order the format's docstring (:mod:`mixkern.format`) gives, the fused
multiply-adds of the mixllm format with one rounding (:func:`fma32`).  A kernel may reorder
float32 steps (split-K for the mixllm format, say) but must stay within :func:`tolerance`,
which also bounds this reference against a float64 evaluation (:func:`float64_gemm_quantized`).
"""

from __future__ import annotations

import torch

from ._checks import ACTIVATION_DTYPES, check_tensor
from .format import PackedWeight, WeightFormat
from .quantize.activations import quantize_activation

FP32_EPS = 2.0**-24  # unit roundoff of float32
FP32_TINY = 2.0**-126  # smallest normal float32: below it float32 rounds absolutely
OUT_EPS = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}


def _int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact a @ b.T for int8 operands, as float64 (exact below 2**53)."""
    return a.to(torch.float64) @ b.to(torch.float64).T


def fma32(p: torch.Tensor, c: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """float32 fmaf(p, c, acc) with one rounding, for p an integer below 2**29 (float64) and
    c, acc float32: p * c is exact in float64; the sum is taken exactly (two-sum) and rounded
    to odd at 53 bits, after which rounding to float32 is the correctly rounded result
    (no double-rounding error: 53 >= 24 + 2)."""
    prod, acc64 = p.to(torch.float64) * c.to(torch.float64), acc.to(torch.float64)
    s = prod + acc64
    back = s - prod
    err = (prod - (s - back)) + (acc64 - back)  # s + err == prod + acc64 exactly
    even = (s.view(torch.int64) & 1) == 0
    nudge = (err != 0) & even & torch.isfinite(s)  # inexact and even: step to the odd neighbour toward err
    s = torch.where(nudge, torch.nextafter(s, torch.where(err > 0, torch.inf, -torch.inf).to(s)), s)
    return s.to(torch.float32)


def group_partial_sums(xq: torch.Tensor, w8: torch.Tensor, group_size: int) -> torch.Tensor:
    """Exact per-group integer sums acc[m, n, g] = sum_{k in g} xq[m, k] * w8[n, k] (float64)."""
    m, k = xq.shape
    g = k // group_size
    xg = xq.to(torch.float64).reshape(m, g, group_size).transpose(0, 1)  # (G, M, gs)
    wg = w8.to(torch.float64).reshape(-1, g, group_size).transpose(0, 1)  # (G, N, gs)
    return torch.bmm(xg, wg.transpose(1, 2)).permute(1, 2, 0)  # (M, N, G)


def act_group_weight_scales(pw: PackedWeight) -> tuple[torch.Tensor, int]:
    """MIXLLM: (each row's weight scale per activation group, float32 (N, J), the group A):
    a weight group of 256 covers two activation groups of 128."""
    span = pw.format.act_group_size(pw.group_size)
    return pw.group_scales().repeat_interleave(pw.group_size // span, dim=1), span


def _act_scales(a: torch.Tensor, pw: PackedWeight) -> tuple[torch.Tensor, torch.Tensor, int]:
    """MIXLLM: (a (M, J) float32, weight scales per activation group (N, J) float32, A)."""
    span = pw.format.act_group_size(pw.group_size)
    if a.dim() != 2 or a.shape[1] * span != pw.in_features:
        raise ValueError(f"{pw.format.value} needs per-(token, group of {span}) activation scales of shape "
                         f"(M, {pw.in_features // span}); got {tuple(a.shape)} (quantize_activation(x, group_size={span}))")
    return (a.to(torch.float32), *act_group_weight_scales(pw))


def mixllm_accumulate(xq: torch.Tensor, a: torch.Tensor, w: torch.Tensor, s: torch.Tensor, span: int,
                      int_matmul=_int_matmul, split_k: int = 1) -> torch.Tensor:
    """float32 (M, N) accumulator of the mixllm contract from decoded operands: xq int8 (M, K),
    a float32 (M, J), w int8 (N, K) (q - z or q8), s float32 (N, J) each row's weight scale per
    activation group of ``span``; groups in increasing k.  ``int_matmul(xq_j, w_j)`` is any exact
    integer matmul (a fast path passes int32 tensor products: the partials are below 2**21).
    ``split_k`` K slices (dividing J): each slice runs the chain from 0 over its own groups and
    the slices' float32 accumulators are added in slice order (:mod:`mixkern.format`)."""
    groups = a.shape[1]
    if groups % split_k:
        raise ValueError(f"split_k={split_k} does not divide the {groups} activation groups")
    total = None
    for first in range(0, groups, groups // split_k):
        acc = torch.zeros(xq.shape[0], w.shape[0], dtype=torch.float32, device=xq.device)
        for j in range(first, first + groups // split_k):
            cols = slice(j * span, (j + 1) * span)
            c = a[:, j, None] * s[None, :, j]  # float32 multiply: one rounding
            acc = fma32(int_matmul(xq[:, cols].contiguous(), w[:, cols].contiguous()), c, acc)
        total = acc if total is None else total + acc  # float32 add: one rounding
    return total


def reference_gemm_quantized(xq: torch.Tensor, a: torch.Tensor, pw: PackedWeight, out_dtype: torch.dtype,
                             split_k: int = 1) -> torch.Tensor:
    """y from already-quantized activations: xq int8 (M, K) and a float32, (M,) for
    PROGRESSIVE, (M, K // A) for MIXLLM (:meth:`WeightFormat.act_group_size`).  ``split_k``:
    MIXLLM's K slices (a split-K kernel's fp32 order); PROGRESSIVE's integer sums are exact in
    any order, so it ignores it."""
    if pw.format is WeightFormat.MIXLLM:
        a, s, span = _act_scales(a, pw)
        return mixllm_accumulate(xq, a, pw.int8_rows(), s, span, split_k=split_k).to(out_dtype)
    acc = _int_matmul(xq, pw.int8_rows()).to(torch.float32)  # == float32(int32 accumulator)
    return ((acc * a.to(torch.float32)[:, None]) * pw.row_scales()[None, :]).to(out_dtype)


def quantize_for(x: torch.Tensor, pw: PackedWeight, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The activation quantization ``pw``'s format prescribes: per token, or per (token, group)."""
    return quantize_activation(x, group_size=pw.format.act_group_size(pw.group_size), check=check)


def reference_gemm(x: torch.Tensor, pw: PackedWeight) -> torch.Tensor:
    """y = x @ W.T exactly as mixkern's kernels compute it; x (M, K) fp16/bf16, y in x's dtype."""
    check_tensor(x, "x", ACTIVATION_DTYPES, ndim=2)
    if x.shape[1] != pw.shape[1]:
        raise ValueError(f"x has K={x.shape[1]} but the weight has in_features={pw.shape[1]}")
    xq, a = quantize_for(x, pw)
    return reference_gemm_quantized(xq, a, pw.to(x.device), x.dtype)


FLOAT64_TERMS_PER_SLICE = 2**27  # 1 GiB: mixllm's float64 terms are (M, N, K / A)


def token_slices(m: int, pw: PackedWeight):
    """Row slices of M tokens small enough that :func:`float64_gemm_quantized` and
    :func:`tolerance` of one slice hold at most :data:`FLOAT64_TERMS_PER_SLICE` float64 terms
    (a checker of large M runs them slice by slice)."""
    groups = pw.shape[1] // (pw.format.act_group_size(pw.group_size) or pw.shape[1])
    step = max(1, FLOAT64_TERMS_PER_SLICE // (pw.shape[0] * groups))
    return [slice(i, i + step) for i in range(0, m, step)]


def _terms64(xq: torch.Tensor, a: torch.Tensor, pw: PackedWeight) -> torch.Tensor:
    """MIXLLM: the float64 terms a[m, j] * s[n, j] * p[m, n, j], shape (M, N, J)."""
    a, s, span = _act_scales(a, pw)
    partial = group_partial_sums(xq, pw.int8_rows(), span)
    return partial * (a.to(torch.float64)[:, None, :] * s.to(torch.float64)[None])


def float64_gemm_quantized(xq: torch.Tensor, a: torch.Tensor, pw: PackedWeight) -> torch.Tensor:
    """The same function with exact integer sums and float64 scaling: the ideal result.

    PROGRESSIVE: a[m] * s[n] * acc[m, n]; MIXLLM: sum_j a[m, j] * s[n, j] * p[m, n, j];
    only the final few float64 products and sums round.
    """
    if pw.format is WeightFormat.MIXLLM:
        return _terms64(xq, a, pw).sum(dim=2)
    acc = _int_matmul(xq, pw.int8_rows())
    return a.to(torch.float64)[:, None] * acc * pw.row_scales().to(torch.float64)[None]


def tolerance(xq: torch.Tensor, a: torch.Tensor, pw: PackedWeight, out_dtype: torch.dtype) -> torch.Tensor:
    """Elementwise bound on |y - y_float64| for the reference and for every conforming kernel.

    One rounding to the output dtype (half an ulp, doubled so two conforming results may
    round to neighbouring values), plus float32 rounding: PROGRESSIVE, 4 roundings of |y|
    (two multiplies, slack); MIXLLM, (J + 3) roundings of sum_j |a_j s_j p_j| (J products and
    any order of the J-term sum, split-K partials included), plus float32 subnormal slack
    (J + 1 absolute roundings: a * s may be subnormal for bf16 inputs).
    """
    if pw.format is WeightFormat.MIXLLM:
        terms = _terms64(xq, a, pw)
        y64, groups = terms.sum(dim=2).abs(), terms.shape[2]
        fp32 = (groups + 3) * FP32_EPS * terms.abs().sum(dim=2) + (groups + 1) * 2.0**21 * 2.0**-149
    else:
        y64 = float64_gemm_quantized(xq, a, pw).abs()
        fp32 = 4 * FP32_EPS * y64
    out_eps = OUT_EPS[out_dtype]
    return 2 * out_eps * y64 + fp32 + FP32_TINY + (2.0**-24 if out_dtype == torch.float16 else 0)
