"""A fast CPU evaluation path, bit-identical to ``mixkern.gemm``'s CPU reference.

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
"""

from __future__ import annotations

import torch
from torch import nn

from ..format import PackedWeight, WeightFormat
from ..linear import MixLinear
from ..quantize.activations import quantize_activation
from ..reference import act_group_weight_scales, mixllm_accumulate

MAX_K = (2**31 - 1) // (127 * 127)  # int32 accumulators cannot overflow below this K


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


def gemm_decoded(x: torch.Tensor, d: dict[str, torch.Tensor], n: int, group_size: int) -> torch.Tensor:
    """``mixkern.gemm(x, pw)`` from ``decoded_rows(pw)``; x (M, K) fp16/bf16, y in x's dtype."""
    if "w8" in d:  # progressive: per-token activations, one int32 accumulator over K
        xq, a = quantize_activation(x)
        return ((int_matmul(xq, d["w8"]) * a.to(torch.float32)[:, None]) * d["row_scale"][None, :]).to(x.dtype)
    span = WeightFormat.MIXLLM.act_group_size(group_size)
    xq, a = quantize_activation(x, group_size=span)
    return mixllm_accumulate(xq, a, d["w"], d["act_scale"], span, int_matmul).to(x.dtype)


class CPUMixLinear(MixLinear):
    """A :class:`MixLinear` that keeps its rows decoded (int8, one byte a weight more) and
    runs :func:`gemm_decoded`: same outputs, an order of magnitude faster on CPU.  The decoded
    rows are non-persistent buffers: checkpoints are unchanged."""

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None = None):
        super().__init__(packed, bias)
        for name, t in decoded_rows(packed).items():
            self.register_buffer(f"decoded_{name}", t, persistent=False)

    @classmethod
    def from_mixlinear(cls, layer: MixLinear) -> "CPUMixLinear":
        return cls(layer.packed, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"MixLinear expects {self.in_features} input features, got shape {tuple(x.shape)}")
        dtype = x.dtype if x.dtype in (torch.float16, torch.bfloat16) else torch.float16  # as MixLinear
        d = {n.removeprefix("decoded_"): b for n, b in self._buffers.items() if n.startswith("decoded_")}
        y = gemm_decoded(x.reshape(-1, self.in_features).to(dtype), d, self.out_features, self.group_size)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)


def use_cpu_gemm(model: nn.Module) -> nn.Module:
    """Swap every MixLinear of ``model`` for a :class:`CPUMixLinear` (in place; same outputs)."""
    for name, m in list(model.named_modules()):
        if type(m) is MixLinear:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, CPUMixLinear.from_mixlinear(m))
    return model
