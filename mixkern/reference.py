"""Exact reference semantics of ``mixkern.gemm``: the contract every kernel matches.

Integer products are summed exactly (float64 matmuls of integers below 2**53 are exact,
so they stand in for the kernels' int32 accumulators); every float step is done in
float32 in the order the format's docstring (:mod:`mixkern.format`) gives.  A kernel may
reorder float32 steps (split-K for the group-float format, say) but must stay within
:func:`tolerance`, which also bounds this reference against a float64 evaluation.
"""

from __future__ import annotations

import torch

from ._checks import ACTIVATION_DTYPES, check_tensor
from .format import PackedWeight, WeightFormat
from .quantize.activations import quantize_activation

FP32_EPS = 2.0**-24  # unit roundoff of float32
OUT_EPS = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}


def _int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact a @ b.T for int8 operands, as float64 (exact below 2**53)."""
    return a.to(torch.float64) @ b.to(torch.float64).T


def _fma32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 fused multiply-add (one rounding); exact here because a*b is exact in float64."""
    return (a.to(torch.float64) * b.to(torch.float64) + c.to(torch.float64)).to(torch.float32)


def group_partial_sums(xq: torch.Tensor, w8: torch.Tensor, group_size: int) -> torch.Tensor:
    """Exact per-group integer sums acc[m, n, g] = sum_{k in g} xq[m, k] * w8[n, k] (float64)."""
    m, k = xq.shape
    g = k // group_size
    xg = xq.to(torch.float64).reshape(m, g, group_size).transpose(0, 1)  # (G, M, gs)
    wg = w8.to(torch.float64).reshape(-1, g, group_size).transpose(0, 1)  # (G, N, gs)
    return torch.bmm(xg, wg.transpose(1, 2)).permute(1, 2, 0)  # (M, N, G)


def reference_gemm_quantized(xq: torch.Tensor, a: torch.Tensor, pw: PackedWeight, out_dtype: torch.dtype) -> torch.Tensor:
    """y from already-quantized activations (xq int8 (M, K), a float32 (M,))."""
    m, n = xq.shape[0], pw.shape[0]
    y = torch.empty(m, n, dtype=torch.float32, device=xq.device)
    a = a.to(torch.float32)[:, None]
    rows4 = pw.int8_rows4()
    if pw.format is WeightFormat.PROGRESSIVE:
        w8 = torch.empty(pw.shape, dtype=torch.int8, device=xq.device)
        w8[pw.idx4] = rows4
        w8[pw.idx8] = pw.qweight8
        acc = _int_matmul(xq, w8).to(torch.float32)  # == float32(int32 accumulator)
        return ((acc * a) * pw.row_scales()[None, :]).to(out_dtype)
    # group-float: 4-bit rows accumulate scaled group partial sums in float32, in group order
    partial = group_partial_sums(xq, rows4, pw.group_size).to(torch.float32)  # (M, N4, G)
    scales = pw.scales4.to(torch.float32)
    t = torch.zeros(m, rows4.shape[0], dtype=torch.float32, device=xq.device)
    for g in range(pw.num_groups):
        t = _fma32(partial[:, :, g], scales[None, :, g], t)
    y[:, pw.idx4] = t * a
    acc8 = _int_matmul(xq, pw.qweight8).to(torch.float32)
    y[:, pw.idx8] = (acc8 * a) * pw.scale8[None, :]
    return y.to(out_dtype)


def reference_gemm(x: torch.Tensor, pw: PackedWeight) -> torch.Tensor:
    """y = x @ W.T exactly as mixkern's kernels compute it; x (M, K) fp16/bf16, y in x's dtype."""
    check_tensor(x, "x", ACTIVATION_DTYPES, ndim=2)
    if x.shape[1] != pw.shape[1]:
        raise ValueError(f"x has K={x.shape[1]} but the weight has in_features={pw.shape[1]}")
    xq, a = quantize_activation(x)
    return reference_gemm_quantized(xq, a, pw.to(x.device), x.dtype)


def float64_gemm_quantized(xq: torch.Tensor, a: torch.Tensor, pw: PackedWeight) -> torch.Tensor:
    """The same function with exact integer sums and float64 scaling: the ideal result.

    y = a[m] * s[n] * acc[m, n] (PROGRESSIVE and 8-bit rows), a[m] * sum_g sg[n, g] * acc_g[m, n]
    (group-float 4-bit rows); only the final few float64 products and sums round.
    """
    a64 = a.to(torch.float64)[:, None]
    rows4 = pw.int8_rows4()
    y = torch.empty(xq.shape[0], pw.shape[0], dtype=torch.float64, device=xq.device)
    y[:, pw.idx8] = a64 * _int_matmul(xq, pw.qweight8) * pw.scale8.to(torch.float64)[None]
    if pw.format is WeightFormat.PROGRESSIVE:
        y[:, pw.idx4] = a64 * _int_matmul(xq, rows4) * pw.chan_scale4.to(torch.float64)[None]
    else:
        partial = group_partial_sums(xq, rows4, pw.group_size)
        y[:, pw.idx4] = a64 * (partial * pw.scales4.to(torch.float64)[None]).sum(dim=2)
    return y


def tolerance(xq: torch.Tensor, a: torch.Tensor, pw: PackedWeight, out_dtype: torch.dtype) -> torch.Tensor:
    """Elementwise bound on |y - y_float64| for the reference and for every conforming kernel.

    One rounding to the output dtype (half an ulp, doubled so two conforming results may
    round to neighbouring values), plus float32 rounding of the epilogue: 4 roundings of
    |y| for PROGRESSIVE / 8-bit rows, (G + 3) roundings of sum_g |a * acc_g * s_g| for
    group-float 4-bit rows (any summation order), plus float32 subnormal slack.
    """
    y64 = float64_gemm_quantized(xq, a, pw).abs()
    magnitude = y64.clone()
    if pw.format is WeightFormat.GROUP_FLOAT and pw.idx4.numel():
        partial = group_partial_sums(xq, pw.int8_rows4(), pw.group_size).abs()  # (M, N4, G)
        mag4 = (partial * pw.scales4.to(torch.float64).abs()[None]).sum(dim=2) * a.to(torch.float64)[:, None]
        magnitude[:, pw.idx4] = mag4 * (pw.num_groups + 3) / 4
    out_eps = OUT_EPS[out_dtype]
    return 2 * out_eps * y64 + 4 * FP32_EPS * magnitude + 2.0**-126 + (2.0**-24 if out_dtype == torch.float16 else 0)
