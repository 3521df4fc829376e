"""Fused projections: sibling MixLinears that read one input run as one GEMM.

Llama/Qwen/Mistral decoder layers call ``q_proj``, ``k_proj``, ``v_proj`` on the same hidden
states, and ``gate_proj``, ``up_proj`` on the same input.  Unfused, each is its own
MixLinear: the activation is quantized and a kernel launched once per projection.

    mixkern.fuse_projections(model)                  # after quantize_model or load_quantized
    model = mixkern.load_quantized("q/", fuse=True)  # the same, on loading

:func:`fuse_projections` leaves the model's forward code as it is.  The siblings' rows go
into one :class:`FusedMixLinear` (:meth:`PackedWeight.concat_rows`), registered on their
parent as, e.g., ``q_k_v_proj``; each sibling's name then holds a :class:`ProjectionSlice`.
The first sibling called computes the fused output, the others take their columns of it.
Every output feature is computed on its own, so outputs equal the unfused model's bit for bit.
A sibling without bias returns its columns as a view of the fused output (not contiguous:
``.contiguous()`` where code needs it; transformers' Llama/Qwen/Mistral layers do not).

The sibling cache (one *round* per fused group) holds the input, its version counter and
shape, and the fused output.  A sibling reuses the round only for that very tensor, unmodified
(same version); anything else (another input, an in-place write, a sibling called twice)
computes afresh.  The round is dropped as soon as every sibling has taken its columns, so no
output outlives a forward pass (unless a model calls only some siblings: then the last round
waits for the next call).  Inputs without a version counter (``torch.inference_mode``
tensors) cannot be checked: each sibling then runs its own rows (unfused speed, same bits);
use ``torch.no_grad()``, as ``generate`` does, to fuse in eager mode.

Under ``torch.compile`` (fullgraph too, as far as MixLinear itself traces) the round lives in
the traced program: Dynamo records it as a side effect, so the graph holds one
``mixkern.gemm`` per group and no round is left behind.  There the
key is the traced tensor and its shape: Dynamo turns ``_version`` into a data-dependent value
it cannot branch on, so an in-place write to the shared input *between two siblings' calls
inside one compiled region* would not be seen (transformers' attention and MLP code never
writes there).  AOTAutograd does not deduplicate identical op calls in inference graphs, so
"every sibling computes, the compiler merges" would not fuse.

Checkpoints: :func:`~mixkern.save_quantized` refuses a fused model (its state names differ
from the architecture's); :func:`unfuse_projections` restores the MixLinears exactly.
Projections with different inputs (cross-attention's q from the decoder, k/v from the
encoder) stay correct but compute every sibling's rows per input: pass ``groups=`` without them.
"""

from __future__ import annotations

import os
from itertools import accumulate
from typing import NamedTuple

import torch
from torch import nn

from .format import PackedWeight
from .linear import MixLinear

DEFAULT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class _Round(NamedTuple):
    """One fused output, as each part's columns, and the input it belongs to; ``taken``: the
    parts that had their columns.  Immutable (a new round per part taken), so that Dynamo
    records a plain attribute write."""
    x: torch.Tensor
    version: int | None  # None under torch.compile
    shape: torch.Size
    parts: tuple  # views of the fused output, one per part (split once per round)
    taken: frozenset


class FusedMixLinear(MixLinear):
    """A MixLinear over the concatenated rows of sibling projections (no bias: each
    :class:`ProjectionSlice` adds its own).  ``forward(x)`` gives all siblings' columns."""

    def __init__(self, parts: list[MixLinear], names: tuple[str, ...]):
        super().__init__(PackedWeight.concat_rows([p.packed for p in parts]))
        self.names = tuple(names)
        self.sizes = tuple(p.out_features for p in parts)
        self.eight_bit_counts = tuple(p.idx8.numel() for p in parts)
        ends = list(accumulate(self.sizes))
        self.columns = tuple(zip([0, *ends[:-1]], ends))
        self._round: _Round | None = None

    def part_columns(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """Part ``part``'s columns of the fused output for ``x``, from this round when it
        belongs to ``x`` (see the module docstring)."""
        compiling = torch.compiler.is_compiling()
        if not compiling and x.is_inference():
            return self._own_rows(x, part)
        version = None if compiling else x._version
        r = self._round
        if r is None or r.x is not x or r.version != version or r.shape != x.shape or part in r.taken:
            r = _Round(x, version, x.shape, self(x).split(self.sizes, dim=-1), frozenset())
        taken = r.taken | {part}
        self._round = None if len(taken) == len(self.sizes) else _Round(r.x, r.version, r.shape, r.parts, taken)
        return r.parts[part]

    def _own_rows(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """One part alone, for inputs whose version cannot be checked: a MixLinear over its rows
        (views of the fused buffers, no copy), so the math is MixLinear's own."""
        return MixLinear(self.packed.split_rows(self.sizes, self.eight_bit_counts, check=False)[part])(x)

    def parts(self) -> list[PackedWeight]:
        """The siblings' own weights again (validated)."""
        return self.packed.split_rows(self.sizes, self.eight_bit_counts)

    def extra_repr(self) -> str:
        return f"{'+'.join(self.names)}: " + super().extra_repr()


class ProjectionSlice(nn.Module):
    """Stands where one fused sibling (``q_proj``, ...) stood: its columns of the shared
    :class:`FusedMixLinear` output, plus its own bias (same name in the state dict)."""

    def __init__(self, fused: FusedMixLinear, part: int, bias: nn.Parameter | None):
        super().__init__()
        object.__setattr__(self, "fused", fused)  # not a child: the parent owns it, once
        self.part, self.name = part, fused.names[part]
        self.in_features, self.out_features = fused.in_features, fused.sizes[part]
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The part's columns of the fused output as a *view* (rows strided by the fused width,
        as vLLM's split of its merged projections): HF attention's ``.view(..., heads, head_dim)``
        and the MLP's elementwise ops read it in place.  A copy to a contiguous tensor cost more
        than the copy's bytes: 48 us of 162 for gate/up at 512 tokens, and at 16 tokens five
        launches, 13 us a Llama-3-8B layer (H100, docs/serving.md)."""
        y = self.fused.part_columns(x, self.part)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        start, stop = self.fused.columns[self.part]
        return f"{self.name}: columns {start}:{stop} of {'+'.join(self.fused.names)}, bias={self.bias is not None}"


def fused_name(names: tuple[str, ...]) -> str:
    """The fused module's attribute: q_proj, k_proj, v_proj -> q_k_v_proj; no shared suffix -> a_b."""
    suffix = os.path.commonprefix([n[::-1] for n in names])[::-1]
    suffix = suffix[suffix.find("_"):] if "_" in suffix else ""
    return "_".join(n[:len(n) - len(suffix)] for n in names) + suffix


def _check_groups(groups) -> tuple[tuple[str, ...], ...]:
    groups = [groups] if isinstance(groups, str) else list(groups)
    if any(isinstance(g, str) for g in groups):
        raise TypeError("groups is a list of name tuples, e.g. [('q_proj', 'k_proj', 'v_proj'), "
                        "('gate_proj', 'up_proj')]")
    groups = tuple(tuple(g) for g in groups)
    for g in groups:
        if len(g) < 2 or len(set(g)) != len(g) or not all(isinstance(n, str) and n and "." not in n for n in g):
            raise ValueError(f"fuse group {g}: needs two or more distinct child names (no dots)")
    names = [n for g in groups for n in g]
    if len(set(names)) != len(names):
        raise ValueError(f"fuse groups {groups} name a child twice")
    return groups


def _fuse_group(module: nn.Module, where: str, group: tuple[str, ...]) -> bool:
    """Fuse ``group`` among ``module``'s children if all of them are plain MixLinears."""
    children = [module._modules.get(n) for n in group]
    if not all(type(c) is MixLinear for c in children):  # absent, unquantized, or already fused / sharded
        return False
    name = fused_name(group)
    if hasattr(module, name):
        raise ValueError(f"{where or 'the model'} already has an attribute {name!r}: cannot fuse {group} there")
    try:
        fused = FusedMixLinear(children, group)
    except ValueError as e:
        raise ValueError(f"{where or 'the model'}: cannot fuse {group}: {e}") from None
    module.add_module(name, fused)
    for part, (n, child) in enumerate(zip(group, children)):
        setattr(module, n, ProjectionSlice(fused, part, child.bias))
    return True


def fuse_projections(model: nn.Module, groups=None) -> int:
    """Fuse sibling MixLinears that read one input in place; returns how many groups were fused.

    ``groups``: tuples of child names (default :data:`DEFAULT_GROUPS`: q/k/v and gate/up); a
    group fuses wherever all its names are plain MixLinear children of one module.  Siblings
    must share in_features, group size, format and device (ValueError otherwise).  A given
    ``groups`` entry that fuses nothing is an error (a typo, or a model not quantized yet)."""
    explicit = groups is not None
    groups = _check_groups(DEFAULT_GROUPS if groups is None else groups)
    counts = dict.fromkeys(groups, 0)
    for where, module in list(model.named_modules()):
        for group in groups:
            counts[group] += _fuse_group(module, where, group)
    unused = [g for g, c in counts.items() if not c]
    if explicit and unused:
        raise ValueError(f"no module of {type(model).__name__} has plain MixLinear children named {unused[0]} "
                         "(quantize first; CPUMixLinear and tensor-parallel layers are not fused)")
    return sum(counts.values())


def unfuse_projections(model: nn.Module) -> int:
    """Undo :func:`fuse_projections` in place (the original MixLinears, bit for bit); returns
    how many groups were unfused."""
    count = 0
    for module in list(model.modules()):
        for attr, fused in list(module._modules.items()):
            if not isinstance(fused, FusedMixLinear):
                continue
            for name, packed in zip(fused.names, fused.parts()):
                setattr(module, name, MixLinear(packed, getattr(module, name).bias))
            delattr(module, attr)
            count += 1
    return count
