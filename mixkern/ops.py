"""``mixkern.gemm(x, packed_w)``: the public GEMM, a real torch op (``torch.ops.mixkern.gemm``).

The op takes the PackedWeight's tensors flat (custom ops take tensors and scalars), so it
traces under ``torch.compile`` through its fake implementation.  It runs the exact
reference implementation on CPU; on CUDA the TileLang kernels of :mod:`mixkern.kernels`.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._checks import ACTIVATION_DTYPES, check_finite, check_tensor
from .format import PackedWeight, WeightFormat
from .quantize.activations import quantize_activation
from .reference import reference_gemm_quantized

FORMAT_IDS = {WeightFormat.PROGRESSIVE: 0, WeightFormat.GROUP_FLOAT: 1}
FORMATS_BY_ID = {v: k for k, v in FORMAT_IDS.items()}


def _packed_from_args(n, k, group_size, format_id, idx4, idx8, qweight4, zeros4, scales4, chan_scale4, qweight8, scale8):
    return PackedWeight.unchecked(
        shape=(n, k), group_size=group_size, format=FORMATS_BY_ID[format_id], idx4=idx4, idx8=idx8,
        qweight4=qweight4, zeros4=zeros4, scales4=scales4, chan_scale4=chan_scale4, qweight8=qweight8, scale8=scale8,
    )


@torch.library.custom_op("mixkern::gemm", mutates_args=())
def _gemm_op(
    x: torch.Tensor,
    idx4: torch.Tensor,
    idx8: torch.Tensor,
    qweight4: torch.Tensor,
    zeros4: torch.Tensor,
    scales4: torch.Tensor,
    chan_scale4: Optional[torch.Tensor],
    qweight8: torch.Tensor,
    scale8: torch.Tensor,
    n: int,
    group_size: int,
    format_id: int,
) -> torch.Tensor:
    pw = _packed_from_args(n, x.shape[1], group_size, format_id, idx4, idx8, qweight4, zeros4, scales4,
                           chan_scale4, qweight8, scale8)
    xq, a = quantize_activation(x, check=False)
    return reference_gemm_quantized(xq, a, pw, x.dtype)


@_gemm_op.register_kernel("cuda")
def _gemm_cuda(x, idx4, idx8, qweight4, zeros4, scales4, chan_scale4, qweight8, scale8, n, group_size, format_id):
    from .kernels.launch import gemm_cuda  # imports tilelang only when a GPU runs the op

    pw = _packed_from_args(n, x.shape[1], group_size, format_id, idx4, idx8, qweight4, zeros4, scales4,
                           chan_scale4, qweight8, scale8)
    return gemm_cuda(x, pw)


@_gemm_op.register_fake
def _gemm_fake(x, idx4, idx8, qweight4, zeros4, scales4, chan_scale4, qweight8, scale8, n, group_size, format_id):
    return x.new_empty((x.shape[0], n))


def op_args(x: torch.Tensor, pw: PackedWeight) -> tuple:
    """The flat argument tuple of ``torch.ops.mixkern.gemm`` for (x, pw)."""
    return (x, pw.idx4, pw.idx8, pw.qweight4, pw.zeros4, pw.scales4, pw.chan_scale4, pw.qweight8, pw.scale8,
            pw.shape[0], pw.group_size, FORMAT_IDS[pw.format])


def check_gemm_inputs(x, pw) -> None:
    """Raise TypeError/ValueError naming the first problem with (x, pw)."""
    if not isinstance(pw, PackedWeight):
        raise TypeError(f"packed_w must be a mixkern.PackedWeight (see mixkern.quantize_weight), got {type(pw).__name__}")
    check_tensor(x, "x", ACTIVATION_DTYPES, ndim=2)
    if x.shape[1] != pw.in_features:
        raise ValueError(f"x has K={x.shape[1]} but packed_w has in_features={pw.in_features}")
    if x.device != pw.device:
        raise ValueError(f"x is on {x.device} but packed_w is on {pw.device}; move one with .to()")
    # A NaN/Inf check needs the data on the host: done eagerly on CPU; on GPUs and under
    # torch.compile a non-finite x instead makes its whole output row non-finite (a[m] is).
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        check_finite(x, "x")


def gemm(x: torch.Tensor, packed_w: PackedWeight) -> torch.Tensor:
    """y = x @ W.T for x (M, K) fp16/bf16 and a PackedWeight W (N, K); y (M, N) in x's dtype.

    Activations are quantized per token to int8 inside the op; see :mod:`mixkern.format`.
    """
    check_gemm_inputs(x, packed_w)
    return torch.ops.mixkern.gemm(*op_args(x.contiguous(), packed_w))
