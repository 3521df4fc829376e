"""``MixLinear``: the ``nn.Linear`` replacement that holds a PackedWeight and calls ``mixkern.gemm``."""

from __future__ import annotations

from dataclasses import fields

import torch
from torch import nn

from .format import PackedWeight
from .ops import gemm


class MixLinear(nn.Module):
    """``y = x W^T + b`` with W a PackedWeight: per-token int8 activations, 4-/8-bit weights.

    Computes in x's dtype when it is fp16 or bf16, else in fp16 (result cast back).
    """

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = packed.shape[1], packed.shape[0]
        self.group_size, self.format = packed.group_size, packed.format
        for name, t in packed.tensors().items():
            self.register_buffer(name, t)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def _apply(self, fn, recurse=True):
        """Device moves apply to the packed tensors; dtype casts (``model.half()``) do not: the
        format fixes their dtypes (fp32 scales stay fp32)."""
        fixed = {n: b for n, b in self._buffers.items() if b is not None and b.is_floating_point()}
        for n in fixed:
            del self._buffers[n]
        try:
            super()._apply(fn, recurse)
        finally:
            for n, b in fixed.items():
                moved = fn(b)
                self._buffers[n] = moved if moved.dtype == b.dtype else b.to(moved.device)
        return self

    @property
    def packed(self) -> PackedWeight:
        """The PackedWeight view of the buffers (follows .to(device))."""
        tensors = {f.name: getattr(self, f.name) for f in fields(PackedWeight) if f.name in self._buffers}
        return PackedWeight.unchecked(shape=(self.out_features, self.in_features), group_size=self.group_size,
                                      format=self.format, chan_scale4=tensors.pop("chan_scale4", None), **tensors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"MixLinear expects {self.in_features} input features, got shape {tuple(x.shape)}")
        dtype = x.dtype if x.dtype in (torch.float16, torch.bfloat16) else torch.float16
        y = gemm(x.reshape(-1, self.in_features).to(dtype), self.packed)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        p = self.packed
        return (f"in_features={self.in_features}, out_features={self.out_features}, 8-bit features={p.idx8.numel()}, "
                f"group_size={self.group_size}, {p.bits_per_weight:.3f} bits/weight")
