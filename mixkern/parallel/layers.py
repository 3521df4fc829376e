"""Row-parallel numerics and the column-/row-parallel MixLinear layers (contract: the package docstring)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from .._checks import ACTIVATION_DTYPES, check_tensor
from ..format import PackedWeight, WeightFormat
from ..linear import MixLinear
from ..quantize.activations import quantize_activation, token_amax
from ..reference import FP32_EPS, OUT_EPS, float64_gemm_quantized, quantize_for, reference_gemm_quantized, tolerance
from .sharding import COLUMN, ROW, _block, shard, shard_layer


def quantize_with_amax(x: torch.Tensor, amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(xq, a) of a K slice ``x`` quantized with the scale of whole tokens whose max |x| is ``amax``:
    the same rule, so the slice's codes equal the unsharded quantization's."""
    return quantize_activation(x, check=False, amax=amax.to(torch.float32))


def quantize_slice(x: torch.Tensor, amax: torch.Tensor, packed: PackedWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """(xq, a) of this rank's K slice, equal to the unsharded quantization's slice: per token
    with the whole token's ``amax``; MIXLLM per (token, group), groups lying inside the slice."""
    if packed.format is WeightFormat.MIXLLM:
        return quantize_for(x, packed, check=False)
    return quantize_with_amax(x, amax)


def partial_gemm(xq: torch.Tensor, a: torch.Tensor, packed: PackedWeight) -> torch.Tensor:
    """float32 (M, N): the format's epilogue over this K slice, not yet rounded to the output dtype."""
    return reference_gemm_quantized(xq, a, packed, torch.float32)


def row_parallel_gemm(x: torch.Tensor, packed: PackedWeight, process_group=None) -> torch.Tensor:
    """The unsharded ``mixkern.gemm`` from this rank's K slice ``x`` (M, K/P) and K shard ``packed``:
    global per-token scale (MAX all-reduce), float32 partials summed by all-reduce, one cast."""
    check_tensor(x, "x", ACTIVATION_DTYPES, ndim=2)
    if x.shape[1] != packed.in_features:
        raise ValueError(f"x has K={x.shape[1]} but this rank's shard has in_features={packed.in_features}")
    if x.device != packed.device:
        raise ValueError(f"x is on {x.device} but the shard is on {packed.device}; move one with .to()")
    amax = token_amax(x)
    dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=process_group)
    if x.device.type == "cpu" and not bool(torch.isfinite(amax).all()):  # every rank sees the same amax: all raise
        bad = int((~torch.isfinite(amax)).nonzero()[0])
        raise ValueError(f"x contains NaN or Inf (token {bad}, on at least one rank)")
    y = partial_gemm(*quantize_slice(x, amax, packed), packed)
    dist.all_reduce(y, op=dist.ReduceOp.SUM, group=process_group)
    return y.to(x.dtype)


def row_parallel_tolerance(xq: torch.Tensor, a: torch.Tensor, packed: PackedWeight, out_dtype: torch.dtype,
                           world_size: int) -> torch.Tensor:
    """Elementwise bound on |y - y_float64| of the row-parallel op over ``world_size`` ranks
    (the package docstring derives it); xq, a and ``packed`` are the unsharded operands.
    MIXLLM's own bound already allows any order of its per-group sum, ranks' partials included."""
    if packed.format is WeightFormat.MIXLLM:
        return tolerance(xq, a, packed, out_dtype)
    gamma = (world_size - 1) * FP32_EPS / (1 - (world_size - 1) * FP32_EPS)
    part_tol = part_mag = 0
    for rank in range(world_size):
        k0, k1 = _block(xq.shape[1], rank, world_size, packed.group_size, "K (input features)")
        xq_r, w_r = xq[:, k0:k1], shard(packed, rank, world_size, ROW)
        part_tol = part_tol + tolerance(xq_r, a, w_r, torch.float32)
        part_mag = part_mag + float64_gemm_quantized(xq_r, a, w_r).abs()
    out_eps = OUT_EPS[out_dtype]
    err = part_tol + gamma * (part_mag + part_tol)
    slack = 2.0**-24 if out_dtype == torch.float16 else 0.0  # fp16 subnormal rounding, as in tolerance()
    return 2 * out_eps * float64_gemm_quantized(xq, a, packed).abs() + (1 + out_eps) * err + slack


def group_rank(process_group=None) -> tuple[int, int]:
    """(rank, world size) in ``process_group`` (None: the default group)."""
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized: call torch.distributed.init_process_group first")
    return dist.get_rank(process_group), dist.get_world_size(process_group)


class ColumnParallelMixLinear(MixLinear):
    """A MixLinear holding this rank's block of output features; x is replicated on every rank.

    ``gather_output``: all-gather the blocks into the whole output (else each rank keeps its
    block, the input of a following row-parallel layer).  ``bias`` is this block's."""

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None = None, *, process_group=None,
                 gather_output: bool = False):
        super().__init__(packed, bias)
        self.process_group, self.gather_output = process_group, gather_output

    @classmethod
    def from_unsharded(cls, layer: MixLinear, process_group=None, *, gather_output: bool = False,
                       blocks: int | None = None) -> "ColumnParallelMixLinear":
        """Shard ``layer`` into ``blocks`` blocks (default: one per rank); with fewer blocks than
        ranks (K/V heads fewer than ranks) rank r holds block ``r * blocks // world``, replicated."""
        rank, world = group_rank(process_group)
        blocks = blocks or world
        if gather_output and blocks != world:
            raise ValueError(f"gather_output needs one block per rank ({world}), got {blocks} blocks")
        packed, bias = shard_layer(layer.packed, layer.bias, rank * blocks // world, blocks, COLUMN)
        return cls(packed, bias, process_group=process_group, gather_output=gather_output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if not self.gather_output:
            return y
        parts = [torch.empty_like(y) for _ in range(dist.get_world_size(self.process_group))]
        dist.all_gather(parts, y.contiguous(), group=self.process_group)
        return torch.cat(parts, dim=-1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", output features sharded, gather_output={self.gather_output}"


class RowParallelMixLinear(MixLinear):
    """A MixLinear holding this rank's block of input features (K); outputs are all-reduced.

    ``input_is_parallel`` (default, as after a column-parallel layer): x is this rank's K
    slice; else x is whole and each rank takes its slice.  ``bias`` is whole, added once after
    the reduction.  Numerics: :func:`row_parallel_gemm` and the package docstring."""

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None = None, *, process_group=None,
                 input_is_parallel: bool = True):
        super().__init__(packed, bias)
        self.process_group, self.input_is_parallel = process_group, input_is_parallel

    @classmethod
    def from_unsharded(cls, layer: MixLinear, process_group=None, *, input_is_parallel: bool = True,
                       blocks: int | None = None) -> "RowParallelMixLinear":
        rank, world = group_rank(process_group)
        if blocks not in (None, world):
            raise ValueError(f"a row-parallel layer splits K into one block per rank ({world}), not {blocks}")
        packed, bias = shard_layer(layer.packed, layer.bias, rank, world, ROW)
        return cls(packed, bias, process_group=process_group, input_is_parallel=input_is_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank, world = group_rank(self.process_group)
        k = self.in_features * (1 if self.input_is_parallel else world)
        if x.shape[-1] != k:
            raise ValueError(f"RowParallelMixLinear expects {k} input features "
                             f"({'its K slice' if self.input_is_parallel else 'the whole K'}), got shape {tuple(x.shape)}")
        if not self.input_is_parallel:
            x = x[..., rank * self.in_features:(rank + 1) * self.in_features]
        dtype = x.dtype if x.dtype in ACTIVATION_DTYPES else torch.float16  # as MixLinear
        y = row_parallel_gemm(x.reshape(-1, self.in_features).to(dtype), self.packed, self.process_group)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", K sharded, outputs all-reduced"
