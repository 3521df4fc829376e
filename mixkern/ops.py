"""``mixkern.gemm(x, packed_w)``: the public GEMM, a real torch op (``torch.ops.mixkern.gemm``).

The op takes the PackedWeight's tensors flat (ops take tensors and scalars), so it traces
under ``torch.compile`` and captures in CUDA graphs through its fake implementation.  It runs
the exact reference implementation on CPU; on CUDA the TileLang kernels of :mod:`mixkern.kernels`
(both formats).

It is registered with ``torch.library.Library`` (schema + one Python kernel per device + a
fake), not ``torch.library.custom_op``: custom_op wraps every eager call in an autograd
wrapper and a dynamo frame (~60 us a call on an H100 host, and its first call imports
torch._dynamo).  Here an eager call is the C++ dispatcher and one Python kernel.

Autograd: the op is not differentiable (weights are packed integers; there is no backward).
Its Autograd key falls through, so ``torch.ops.mixkern.gemm`` itself records nothing and its
output never requires grad.  :func:`gemm` and :class:`~mixkern.MixLinear` (through
:func:`call`) instead give the output a node whose backward raises, when grad mode is on and
x requires grad: a training loop gets an error, not a silently missing gradient (in eager
mode; under torch.compile the output simply does not require grad).
"""

from __future__ import annotations

import functools

import torch

from ._checks import ACTIVATION_DTYPES, check_finite, check_tensor
from .format import PackedWeight, WeightFormat
from .reference import quantize_for, reference_gemm_quantized

FORMAT_IDS = {WeightFormat.PROGRESSIVE: 0, WeightFormat.MIXLLM: 1}
FORMATS_BY_ID = {v: k for k, v in FORMAT_IDS.items()}
SCHEMA = ("gemm(Tensor x, Tensor idx4, Tensor idx8, Tensor qweight4, Tensor zeros4, Tensor scales4, "
          "Tensor? chan_scale4, Tensor qweight8, Tensor scale8, SymInt n, SymInt group_size, SymInt format_id) -> Tensor")

# Operator registration is process-global in torch; this object owns it, so it must live as
# long as the process (dropping it would deregister the op).
LIBRARY = torch.library.Library("mixkern", "DEF")
LIBRARY.define(SCHEMA)


def _packed_from_args(n, k, group_size, format_id, idx4, idx8, qweight4, zeros4, scales4, chan_scale4, qweight8, scale8):
    return PackedWeight.unchecked(
        shape=(n, k), group_size=group_size, format=FORMATS_BY_ID[format_id], idx4=idx4, idx8=idx8,
        qweight4=qweight4, zeros4=zeros4, scales4=scales4, chan_scale4=chan_scale4, qweight8=qweight8, scale8=scale8,
    )


def _gemm_cpu(x, idx4, idx8, qweight4, zeros4, scales4, chan_scale4, qweight8, scale8, n, group_size, format_id):
    """CPU: the exact reference (the executable form of :mod:`mixkern.format`).  Autograd falls
    through to here, so the torch ops inside would record a graph: no_grad keeps them out."""
    pw = _packed_from_args(n, x.shape[1], group_size, format_id, idx4, idx8, qweight4, zeros4, scales4,
                           chan_scale4, qweight8, scale8)
    with torch.no_grad():
        xq, a = quantize_for(x, pw, check=False)
        return reference_gemm_quantized(xq, a, pw, x.dtype)


@functools.cache
def _launcher():
    """The CUDA launcher module, imported on first use: tilelang loads only when a GPU runs the
    op (and a cached call is cheaper than an import statement on every call)."""
    from .kernels import launch
    return launch


def prepare_launch(m: int, k: int, dtype: torch.dtype, device: torch.device, weight_args: tuple):
    """``launch(x) -> y`` for :func:`weight_args` on CUDA and M tokens of ``dtype``, prepared
    once (:func:`mixkern.kernels.launch.prepare`): the op's CUDA kernel without the
    dispatcher, the schedule pick and the weight-argument build on every call."""
    *tensors, n, group_size, format_id = weight_args
    return _launcher().prepare(m, k, dtype, device, *tensors, n, group_size, FORMATS_BY_ID[format_id])


def _gemm_cuda(x, idx4, idx8, qweight4, zeros4, scales4, chan_scale4, qweight8, scale8, n, group_size, format_id):
    """CUDA: the TileLang kernels, on the flat arguments (no PackedWeight built per call)."""
    return _launcher().gemm_flat(x, idx4, idx8, qweight4, zeros4, scales4, chan_scale4, qweight8, scale8, n, group_size,
                     FORMATS_BY_ID[format_id])


def _gemm_fake(x, idx4, idx8, qweight4, zeros4, scales4, chan_scale4, qweight8, scale8, n, group_size, format_id):
    return x.new_empty((x.shape[0], n))


LIBRARY.impl("gemm", _gemm_cpu, "CPU")
LIBRARY.impl("gemm", _gemm_cuda, "CUDA")
LIBRARY.impl("gemm", torch.library.fallthrough_kernel, "Autograd")  # not differentiable: see the module docstring
torch.library.register_fake("mixkern::gemm", _gemm_fake, lib=LIBRARY)
GEMM = torch.ops.mixkern.gemm.default  # the OpOverload: calling it skips the OpOverloadPacket layer


class _NoBackward(torch.autograd.Function):
    """The op, recorded by autograd only so that a backward through it fails loudly."""

    @staticmethod
    def forward(ctx, x, *weight_args):
        return GEMM(x, *weight_args)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("mixkern.gemm has no backward (packed integer weights, inference only); run the "
                           "quantized model under torch.no_grad(), or keep layers you train as nn.Linear")


def call(x: torch.Tensor, weight_args: tuple) -> torch.Tensor:
    """The op on contiguous x and :func:`weight_args`, without input checks (the hot path of
    :class:`~mixkern.MixLinear`); a backward through the result raises (module docstring).
    Under torch.compile the op's own no-grad semantics apply (dynamo would trace the raise)."""
    if x.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _NoBackward.apply(x, *weight_args)
    return GEMM(x, *weight_args)


WEIGHT_TENSORS = ("idx4", "idx8", "qweight4", "zeros4", "scales4", "chan_scale4", "qweight8", "scale8")


def weight_args(w) -> tuple:
    """The op's arguments after x, for a PackedWeight or anything with its attributes (a
    MixLinear's buffers; a missing chan_scale4 is None): what a layer caches per call."""
    return (*(getattr(w, name, None) for name in WEIGHT_TENSORS), w.out_features, w.group_size,
            FORMAT_IDS[w.format])


def op_args(x: torch.Tensor, pw: PackedWeight) -> tuple:
    """The flat argument tuple of ``torch.ops.mixkern.gemm`` for (x, pw)."""
    return (x, *weight_args(pw))


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

    Activations are quantized to int8 inside the op, per token (``progressive``) or per
    (token, group) (``mixllm``); see :mod:`mixkern.format`.
    """
    check_gemm_inputs(x, packed_w)
    return call(x.contiguous(), weight_args(packed_w))
