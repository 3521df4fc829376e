"""PackedWeight shards: where a rank's block lies in the unsharded tensors, and the shard itself."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..format import PackedWeight, WeightFormat

COLUMN, ROW = 0, 1  # the ``dim`` of shard(): output features, input features
ROWS4, ROWS8 = ("qweight4", "zeros4", "scales4", "chan_scale4"), ("qweight8", "scale8")


@dataclass(frozen=True)
class ShardPlan:
    """Where one shard lies in the unsharded tensors: its shape, its local index vectors,
    the index tuple of each payload field, and of the bias."""
    shape: tuple[int, int]
    idx4: torch.Tensor
    idx8: torch.Tensor
    slices: dict[str, tuple]
    bias: tuple


def _block(size: int, rank: int, world_size: int, unit: int, what: str) -> tuple[int, int]:
    """[start, end) of ``rank``'s contiguous block; ValueError unless the blocks are whole units."""
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
    if size % world_size or (size // world_size) % unit:
        need = f"a multiple of {unit}" if unit > 1 else "whole"
        raise ValueError(f"cannot split {what}={size} over {world_size} ranks: {size}/{world_size} = "
                         f"{size / world_size:g} is not {need}" + (f" (group_size={unit})" if unit > 1 else ""))
    step = size // world_size
    return rank * step, (rank + 1) * step


def shard_plan(shape, group_size: int, idx4: torch.Tensor, idx8: torch.Tensor, rank: int, world_size: int,
               dim: int, format: WeightFormat = WeightFormat.PROGRESSIVE) -> ShardPlan:
    """The :class:`ShardPlan` of ``rank``'s shard; dim 0 splits output features into equal
    blocks (N % world_size must be 0), dim 1 splits K at group boundaries (MIXLLM's 8-bit
    scales are per K-group, so they split with K; PROGRESSIVE's are per row)."""
    n, k = shape
    every = (slice(None),)
    if dim == COLUMN:
        n0, n1 = _block(n, rank, world_size, 1, "N (output features)")
        # idx4/idx8 ascending: a block's 4-bit rows are one run of the 4-bit payload, its 8-bit rows one of the 8-bit
        (lo4, hi4), (lo8, hi8) = (torch.searchsorted(idx, torch.tensor([n0, n1], dtype=idx.dtype, device=idx.device)).tolist()
                                  for idx in (idx4, idx8))
        slices = {**dict.fromkeys(ROWS4, (slice(lo4, hi4),)), **dict.fromkeys(ROWS8, (slice(lo8, hi8),))}
        return ShardPlan((n1 - n0, k), idx4[lo4:hi4] - n0, idx8[lo8:hi8] - n0, slices, (slice(n0, n1),))
    if dim != ROW:
        raise ValueError(f"dim must be 0 (column-parallel: output features) or 1 (row-parallel: K), got {dim!r}")
    k0, k1 = _block(k, rank, world_size, group_size, "K (input features)")
    g0, g1 = k0 // group_size, k1 // group_size
    slices = {"qweight4": (slice(None), slice(k0 // 2, k1 // 2)), "zeros4": (slice(None), slice(g0, g1)),
              "scales4": (slice(None), slice(g0, g1)), "qweight8": (slice(None), slice(k0, k1)),
              "chan_scale4": every,
              "scale8": (slice(None), slice(g0, g1)) if format is WeightFormat.MIXLLM else every}
    return ShardPlan((n, k1 - k0), idx4, idx8, slices, every)


def _packed(plan: ShardPlan, group_size: int, format: WeightFormat, read) -> PackedWeight:
    """The shard as a validated PackedWeight; ``read(field, index)`` fetches one payload slice."""
    tensors = {name: read(name, index) for name, index in plan.slices.items()
               if name != "chan_scale4" or format is WeightFormat.PROGRESSIVE}
    return PackedWeight(shape=plan.shape, group_size=group_size, format=format, idx4=plan.idx4.clone(),
                        idx8=plan.idx8.clone(), chan_scale4=tensors.pop("chan_scale4", None), **tensors)


def _own(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy: a shard must not keep the unsharded tensor's memory alive."""
    return t.clone(memory_format=torch.contiguous_format)


def shard(packed: PackedWeight, rank: int, world_size: int, dim: int) -> PackedWeight:
    """``rank``'s shard of ``packed`` for tensor parallelism over ``world_size`` ranks.

    dim 0 (column-parallel): output features ``[rank * N/P, (rank + 1) * N/P)``; N must divide
    evenly (uneven blocks would make all-gathers ragged), else ValueError naming the numbers.
    dim 1 (row-parallel): input features ``[rank * K/P, (rank + 1) * K/P)``; K/P must be a
    multiple of the group size, else ValueError.  The shard owns its memory."""
    return shard_layer(packed, None, rank, world_size, dim)[0]


def shard_layer(packed: PackedWeight, bias: torch.Tensor | None, rank: int, world_size: int,
                dim: int) -> tuple[PackedWeight, torch.Tensor | None]:
    """:func:`shard` and the bias that goes with it (column: this block's; row: the whole bias)."""
    plan = shard_plan(packed.shape, packed.group_size, packed.idx4, packed.idx8, rank, world_size, dim, packed.format)
    local = _packed(plan, packed.group_size, packed.format, lambda name, index: _own(getattr(packed, name)[index]))
    return local, None if bias is None else _own(bias.detach()[plan.bias])
