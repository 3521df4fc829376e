"""A fast CPU evaluation path, bit-identical to ``mixkern.gemm``'s CPU reference (or, for
mixllm layers with ``exact=False``, within the format's tolerance of it: faster still).

The reference (:mod:`mixkern.reference`) unpacks the 4-bit codes on every call and sums
the integer products as float64 matmuls: exact, but for a 1.5B model it is the whole cost
of a perplexity run.  Here the int8 operand of every row (``(q - z) * s2``, ``q - z`` or
``q8``) is decoded once, and the integer sums are int8 x int8 -> int32 matmuls
(``torch._int_mm``, VNNI on x86): the kernels' own int32 accumulator, exact while
K * 127 * 127 < 2**31 (K < 133,000).  Converting an exact integer to float32 rounds the
same way from int32 as from the reference's float64, and the epilogue repeats the
reference's float32 steps in its order, so the result equals the reference bit for bit
(the tests check equality, not a tolerance).  On a 2-core CPU a 512 x 1536 x 8960 layer
takes 0.09 s here, 1.2 s in the reference, 0.28 s as an fp32 ``nn.Linear``.

The mixllm format's exact epilogue is a per-group fp32 FMA chain that CPUs do not vectorize
(:func:`mixkern.reference.fma32` emulates each fused step with ~12 float64 ops): 2.0 s for
a 512-token x 1536 -> 8960 layer, 0.30 s for 8960 -> 1536 (70 groups), 4.5 s for a
Qwen2.5-1.5B decoder layer.  ``exact=False`` (:func:`mixllm_float64`, for evaluation) keeps
the int32 group sums and scales and sums them in float64: 0.070 s and 0.062 s, 0.22 s a
decoder layer (as fast as fp32 ``nn.Linear``), not bit-exact but nearer the float64 ideal
than the fp32 chain and far inside the format's bound (:func:`mixkern.reference.tolerance`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..format import PackedWeight, WeightFormat
from ..linear import MixLinear
from ..quantize.activations import quantize_activation
from ..reference import act_group_weight_scales, mixllm_accumulate

MAX_K = (2**31 - 1) // (127 * 127)  # int32 accumulators cannot overflow below this K
TILE_ELEMENTS = 2**18  # mixllm_float64's float64 accumulator tile (2 MB): ~10x faster than one 512 x 8960 tile


def int_matmul(xq: torch.Tensor, w8: torch.Tensor) -> torch.Tensor:
    """Exact ``xq @ w8.T`` for int8 xq (M, K) and w8 (N, K), as float32 (int32 accumulation)."""
    if xq.shape[1] > MAX_K:
        raise ValueError(f"K={xq.shape[1]} could overflow an int32 accumulator (max {MAX_K})")
    return torch._int_mm(xq, w8.T).to(torch.float32)


def decoded_rows(pw: PackedWeight) -> dict[str, torch.Tensor]:
    """The int8 operands and float32 scales a gemm needs, decoded once from ``pw``."""
    if pw.format is WeightFormat.PROGRESSIVE:
        w8 = torch.empty(pw.shape, dtype=torch.int8, device=pw.device)
        w8[pw.idx4.long()] = pw.int8_rows4()
        w8[pw.idx8.long()] = pw.qweight8
        return {"w8": w8, "row_scale": pw.row_scales()}
    scales, _ = act_group_weight_scales(pw)  # MIXLLM: one weight scale per activation group
    return {"w": pw.int8_rows(), "act_scale": scales}


def mixllm_float64(xq: torch.Tensor, a: torch.Tensor, w: torch.Tensor, s: torch.Tensor, span: int) -> torch.Tensor:
    """float64 (M, N) ``sum_j a[m, j] * s[n, j] * p[m, n, j]`` from mixllm_accumulate's operands.

    Not the format's fp32 FMA chain, so not bit-exact: perplexity does not need that chain's
    rounding, and this costs one int8 matmul and three float64 passes per group.  The partials
    p are exact (int32, |p| < 2**21), p * a is exact in float64 (21 + 24 bits), times s rounds
    once and the J-term sum J - 1 times: |y - float64 ideal| <= J * 2**-53 * sum_j |terms|, any
    summation order, 2**29 times inside the bound's float32 share ((J + 3) * 2**-24); no float64
    subnormals.  The result differs from the exact chain by ~1e-7 relative before the output
    rounding, i.e. in a few output elements in 10,000, by one ulp.
    """
    m, n, groups = xq.shape[0], w.shape[0], a.shape[1]
    wg = w.reshape(n, groups, span).transpose(0, 1).contiguous()  # (J, N, A): each group's rows contiguous
    xg, a64, s64 = xq.reshape(m, groups, span), a.to(torch.float64), s.to(torch.float64)
    rows = max(1, TILE_ELEMENTS // max(n, 1))  # token tiles keep the float64 accumulator in cache
    return torch.cat([_mixllm_tile(xg[i:i + rows], a64[i:i + rows], wg, s64) for i in range(0, max(m, 1), rows)])


def _mixllm_tile(xg: torch.Tensor, a64: torch.Tensor, wg: torch.Tensor, s64: torch.Tensor) -> torch.Tensor:
    """One token tile of :func:`mixllm_float64`; xg (T, J, A) int8, wg (J, N, A) int8."""
    acc = torch.zeros(xg.shape[0], wg.shape[1], dtype=torch.float64, device=xg.device)
    for j in range(wg.shape[0]):  # A <= 128: an int32 accumulator cannot overflow
        p = torch._int_mm(xg[:, j].contiguous(), wg[j].T).to(torch.float64)
        acc += p.mul_(a64[:, j, None]).mul_(s64[None, :, j])
    return acc


def gemm_decoded(x: torch.Tensor, d: dict[str, torch.Tensor], n: int, group_size: int,
                 exact: bool = True) -> torch.Tensor:
    """``mixkern.gemm(x, pw)`` from ``decoded_rows(pw)``; x (M, K) fp16/bf16, y in x's dtype.
    ``exact=False`` runs mixllm rows through :func:`mixllm_float64` (within the format's
    tolerance, not bit-exact); progressive rows are bit-exact either way (already fast)."""
    if "w8" in d:  # progressive: per-token activations, one int32 accumulator over K
        xq, a = quantize_activation(x)
        return ((int_matmul(xq, d["w8"]) * a.to(torch.float32)[:, None]) * d["row_scale"][None, :]).to(x.dtype)
    span = WeightFormat.MIXLLM.act_group_size(group_size)
    xq, a = quantize_activation(x, group_size=span)
    if not exact:
        return mixllm_float64(xq, a, d["w"], d["act_scale"], span).to(x.dtype)
    return mixllm_accumulate(xq, a, d["w"], d["act_scale"], span, int_matmul).to(x.dtype)


class CPUMixLinear(MixLinear):
    """A :class:`MixLinear` that keeps its rows decoded (int8, one byte a weight more) and
    runs :func:`gemm_decoded`: same outputs, an order of magnitude faster on CPU.  The decoded
    rows are non-persistent buffers: checkpoints are unchanged.  ``exact=False``: mixllm rows
    take the float64 path (:func:`mixllm_float64`), for evaluation; default bit-exact."""

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None = None, exact: bool = True):
        super().__init__(packed, bias)
        self.exact = exact
        for name, t in decoded_rows(packed).items():
            self.register_buffer(f"decoded_{name}", t, persistent=False)

    @classmethod
    def from_mixlinear(cls, layer: MixLinear, exact: bool = True) -> "CPUMixLinear":
        return cls(layer.packed, layer.bias, exact)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"MixLinear expects {self.in_features} input features, got shape {tuple(x.shape)}")
        dtype = x.dtype if x.dtype in (torch.float16, torch.bfloat16) else torch.float16  # as MixLinear
        d = {n.removeprefix("decoded_"): b for n, b in self._buffers.items() if n.startswith("decoded_")}
        y = gemm_decoded(x.reshape(-1, self.in_features).to(dtype), d, self.out_features, self.group_size, self.exact)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.exact else ", exact=False")


def use_cpu_gemm(model: nn.Module, exact: bool = True) -> nn.Module:
    """Swap every MixLinear of ``model`` for a :class:`CPUMixLinear` (in place; same outputs,
    or with ``exact=False`` mixllm outputs within the format's tolerance, for perplexity runs)."""
    for name, m in list(model.named_modules()):
        if type(m) is MixLinear:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child,
                    CPUMixLinear.from_mixlinear(m, exact))
    return model
