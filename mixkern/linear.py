"""``MixLinear``: the ``nn.Linear`` replacement that holds a PackedWeight and calls ``mixkern.gemm``."""

from __future__ import annotations

import operator
from dataclasses import fields

import torch
from torch import nn

from ._checks import ACTIVATION_DTYPES
from .format import PackedWeight
from .ops import call, prepare_launch, weight_args

MAX_PREPARED = 64  # prepared CUDA launches one layer keeps (one per token count and dtype)


class MixLinear(nn.Module):
    """``y = x W^T + b`` with W a PackedWeight: per-token int8 activations, 4-/8-bit weights.

    Computes in x's dtype when it is fp16 or bf16, else in fp16 (result cast back).
    """

    # (the buffers the op arguments were built from, the arguments, their device, the prepared
    # CUDA launches by (M, dtype)): see _weight_args
    _op_cache = ((), None, None, None)

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
            self._op_cache = ((), None, None, None)  # let the old tensors go now, not at the next forward
        return self

    @property
    def packed(self) -> PackedWeight:
        """The PackedWeight view of the buffers (follows .to(device))."""
        tensors = {f.name: getattr(self, f.name) for f in fields(PackedWeight) if f.name in self._buffers}
        return PackedWeight.unchecked(shape=(self.out_features, self.in_features), group_size=self.group_size,
                                      format=self.format, chan_scale4=tensors.pop("chan_scale4", None), **tensors)

    def _weight_args(self) -> tuple[tuple, torch.device, dict | None]:
        """The op's weight arguments, their device and the prepared launches (None: trace the op),
        rebuilt only when a buffer object changed (``.to()``, ``load_state_dict(assign=True)``,
        assignment): the identity check costs well under a microsecond, a PackedWeight several
        (in-place copies keep the objects, and the launches see them: nothing to do)."""
        if torch.compiler.is_compiling():  # traced once: no cache to guard on
            return weight_args(self), self.qweight4.device, None
        buffers = tuple(self._buffers.values())
        built_from, args, device, launches = self._op_cache
        if len(buffers) != len(built_from) or not all(map(operator.is_, buffers, built_from)):
            args, device, launches = weight_args(self), self.qweight4.device, {}
            self._op_cache = (buffers, args, device, launches)
        return args, device, launches

    def _launch(self, launches: dict, x2: torch.Tensor, args: tuple) -> torch.Tensor:
        """Eager CUDA: the layer's launch for x2's token count and dtype, prepared on first use
        (:func:`mixkern.ops.prepare_launch`): ~10 us less host time a call than the op."""
        key = (x2.shape[0], x2.dtype)
        launch = launches.get(key)
        if launch is None:
            if len(launches) >= MAX_PREPARED:  # many prompt lengths: start over rather than grow
                launches.clear()
            launch = launches[key] = prepare_launch(key[0], self.in_features, x2.dtype, x2.device, args)
        return launch(x2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The hot path of every quantized model: checks only what is cheap (K, device, empty);
        the weight was validated when it was quantized or loaded."""
        shape = x.shape
        if shape[-1] != self.in_features:
            raise ValueError(f"MixLinear expects {self.in_features} input features, got shape {tuple(shape)}")
        args, device, launches = self._weight_args()
        if x.device != device:
            raise ValueError(f"x is on {x.device} but {type(self).__name__} is on {device}; move one with .to()")
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] == 0:
            raise ValueError(f"x is empty (shape {tuple(shape)})")
        if x.dtype not in ACTIVATION_DTYPES:  # computes in fp16, result cast back
            x2 = x2.to(torch.float16)
        if launches is not None and device.type == "cuda" and not (x.requires_grad and torch.is_grad_enabled()):
            y = self._launch(launches, x2, args)
        else:  # CPU, torch.compile, or a backward to refuse: the op
            y = call(x2.contiguous(), args)
        y = y.reshape(*shape[:-1], self.out_features)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        bias = self.bias
        return y if bias is None else y + (bias if bias.dtype == y.dtype else bias.to(y.dtype))

    def extra_repr(self) -> str:
        p = self.packed
        return (f"in_features={self.in_features}, out_features={self.out_features}, 8-bit features={p.idx8.numel()}, "
                f"group_size={self.group_size}, {p.bits_per_weight:.3f} bits/weight")
