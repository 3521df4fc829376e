"""Whole Hugging Face Llama/Qwen2-style models in tensor-parallel form: from a quantized model
(:func:`shard_model`) or straight from a ``save_quantized`` checkpoint (:func:`load_sharded`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..format import PackedWeight, WeightFormat
from ..linear import MixLinear
from ..model import WEIGHTS_FILE, _sha256, read_checkpoint_config
from .layers import ColumnParallelMixLinear, RowParallelMixLinear, group_rank
from .sharding import COLUMN, ROW, ROWS4, ROWS8, _packed, shard_plan

COLUMN_LAYERS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROW_LAYERS = ("o_proj", "down_proj")
KV_LAYERS = ("k_proj", "v_proj")


@dataclass(frozen=True)
class LayerPlan:
    """How one linear of a decoder layer is split: along ``dim`` (COLUMN or ROW) into ``blocks``
    blocks; rank r of ``world`` ranks holds block ``r * blocks // world`` (fewer blocks than
    ranks: K/V heads, each block replicated on ``world / blocks`` ranks)."""
    dim: int
    blocks: int

    def block(self, rank: int, world: int) -> int:
        return rank * self.blocks // world


def _heads(config) -> tuple[int, int]:
    """(attention heads, key/value heads) of a Hugging Face decoder config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None)
    if not isinstance(heads, int):
        raise ValueError("tensor-parallel models need a Hugging Face Llama/Qwen2-style model (a config with "
                         f"num_attention_heads); got config {type(config).__name__}")
    return heads, getattr(text, "num_key_value_heads", None) or heads


def plan_layers(config, layers: dict[str, tuple[int, int, int]], world_size: int) -> dict[str, LayerPlan]:
    """{name: LayerPlan} for a Llama/Qwen2-style model's quantized layers ({name: (N, K, group size)}):
    q/k/v/gate/up column-parallel (K/V heads fewer than ranks replicated), o/down row-parallel,
    any other layer whole on every rank.  Raises ValueError naming what does not split, before
    anything is sharded or sent."""
    heads, kv = _heads(config)
    if heads % world_size or (kv % world_size and world_size % kv):
        raise ValueError(f"tensor-parallel size {world_size} must divide the {heads} attention heads and divide, "
                         f"or be a multiple of, the {kv} key/value heads")
    no_rows = torch.empty(0, dtype=torch.int32)
    plans = {}
    for name, (n, k, group_size) in layers.items():
        leaf = name.rpartition(".")[2]
        if leaf in COLUMN_LAYERS:
            plan = LayerPlan(COLUMN, min(kv, world_size) if leaf in KV_LAYERS else world_size)
        elif leaf in ROW_LAYERS:
            plan = LayerPlan(ROW, world_size)
        else:
            continue
        try:
            shard_plan((n, k), group_size, no_rows, no_rows, 0, plan.blocks, plan.dim)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        plans[name] = plan
    return plans


def _localize_attention(model: nn.Module, world_size: int) -> None:
    """Give each sharded attention module its local head counts (HF reshapes q/k/v by head_dim,
    so only the query-per-key/value-head ratio is stored)."""
    heads, kv = _heads(model.config)
    local = {"num_heads": heads // world_size, "num_key_value_heads": max(1, kv // world_size)}
    for m in model.modules():
        if isinstance(getattr(m, "q_proj", None), ColumnParallelMixLinear) and hasattr(m, "num_key_value_groups"):
            m.num_key_value_groups = local["num_heads"] // local["num_key_value_heads"]
            for attr, value in local.items():  # older or other attention classes keep these too
                if hasattr(m, attr):
                    setattr(m, attr, value)


def shard_model(model: nn.Module, process_group=None) -> nn.Module:
    """Turn a quantized Hugging Face Llama/Qwen2-style model (every rank holding the whole model)
    into this rank's tensor-parallel form, in place: q/k/v/gate/up become
    :class:`ColumnParallelMixLinear` (outputs stay sharded), o/down :class:`RowParallelMixLinear`,
    and attention modules get their local head counts; embeddings, norms and the head stay whole."""
    _, world = group_rank(process_group)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, MixLinear)
              and not isinstance(m, (ColumnParallelMixLinear, RowParallelMixLinear))}
    if not layers:
        raise ValueError("the model has no unsharded MixLinear layers: quantize it first (mixkern.quantize_model)")
    plans = plan_layers(getattr(model, "config", None),
                        {n: (m.out_features, m.in_features, m.group_size) for n, m in layers.items()}, world)
    for name, plan in plans.items():
        kind = ColumnParallelMixLinear if plan.dim == COLUMN else RowParallelMixLinear
        model.set_submodule(name, kind.from_unsharded(layers[name], process_group, blocks=plan.blocks))
    _localize_attention(model, world)
    return model


def _read_layer(f, name: str, info: dict, plan: LayerPlan, rank: int, world: int,
                check) -> tuple[PackedWeight, torch.Tensor | None]:
    """One quantized layer's shard and bias from the open checkpoint ``f``, reading only this
    rank's slices of the payload; ``check(key, tensor)`` verifies what is read whole."""
    prefix = name + "."
    idx4, idx8 = (check(prefix + field, f.get_tensor(prefix + field)) for field in ("idx4", "idx8"))
    if idx8.tolist() != info["eight_bit_features"]:
        raise ValueError(f"layer {name}'s 8-bit features differ from the checkpoint's config")
    fmt = WeightFormat.parse(info["format"])
    where = shard_plan(info["shape"], info["group_size"], idx4, idx8, plan.block(rank, world), plan.blocks, plan.dim,
                       fmt)
    packed = _packed(where, info["group_size"], fmt,
                     lambda field, index: f.get_slice(prefix + field)[index])
    return packed, f.get_slice(prefix + "bias")[where.bias] if info["bias"] else None


def _module(plan: LayerPlan | None, packed: PackedWeight, bias, process_group) -> MixLinear:
    """The layer that holds a shard: whole (no plan), column- or row-parallel."""
    if plan is None:
        return MixLinear(packed, bias)
    kind = ColumnParallelMixLinear if plan.dim == COLUMN else RowParallelMixLinear
    return kind(packed, bias, process_group=process_group)


def _check_layer(skeleton: nn.Module, name: str, shape) -> None:
    """ValueError unless the skeleton has an nn.Linear of this shape at ``name``."""
    n, k = shape
    try:
        lin = skeleton.get_submodule(name)
    except AttributeError:
        raise ValueError(f"layer {name} of the checkpoint does not exist in the model") from None
    if not isinstance(lin, nn.Linear) or tuple(lin.weight.shape) != (n, k):
        raise ValueError(f"layer {name} is {n}x{k} in the checkpoint, {lin} in the model")


def _fill(skeleton: nn.Module, cfg: dict, tensors: dict[str, torch.Tensor], sharded: set[str]) -> None:
    """Assign the whole (replicated) tensors to the skeleton, as ``load_quantized`` does, and
    check that nothing is left on the meta device."""
    buffers = set(cfg.get("buffers", []))
    missing, unexpected = skeleton.load_state_dict({k: v for k, v in tensors.items() if k not in buffers},
                                                   strict=False, assign=True)
    missing = [m for m in missing if m not in sharded]
    if missing or unexpected:
        raise ValueError(f"the checkpoint does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name in buffers:
        module, _, attr = name.rpartition(".")
        skeleton.get_submodule(module)._buffers[attr] = tensors[name]
    if getattr(getattr(skeleton, "config", None), "tie_word_embeddings", False):
        skeleton.tie_weights()
    left = [n for n, t in [*skeleton.named_parameters(), *skeleton.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"the checkpoint does not hold {left[:3]} (saved by an older mixkern?)")


def load_sharded(directory: str, process_group=None, skeleton: nn.Module | None = None) -> nn.Module:
    """``mixkern.load_quantized`` straight into this rank's tensor-parallel form (:func:`shard_model`'s
    result): each rank reads only its slices of the packed layers (safetensors ``get_slice``) and
    the whole of every other tensor.  Checksums cover every tensor outside the packed layers and
    every index vector; payloads and biases are read as slices, which a whole-tensor hash cannot check."""
    try:
        from safetensors import safe_open
    except ImportError:
        raise ModuleNotFoundError("load_sharded reads slices with the safetensors library: "
                                  "pip install safetensors") from None
    from ..model import _skeleton  # Hugging Face models built on the meta device
    rank, world = group_rank(process_group)
    cfg = read_checkpoint_config(directory)
    if skeleton is None:
        skeleton = _skeleton(directory, cfg.get("base_model") or {})
    layers = cfg["layers"]
    plans = plan_layers(getattr(skeleton, "config", None),
                        {n: (*i["shape"], i["group_size"]) for n, i in layers.items()}, world)
    path, want = os.path.join(directory, WEIGHTS_FILE), cfg.get("sha256", {})

    def check(key, t):
        if _sha256(t) != want[key]:
            raise ValueError(f"{path}: checksum mismatch for {key} (file corrupt or edited)")
        return t

    packed_keys = {f"{name}.{field}" for name in layers for field in (*ROWS4, *ROWS8, "idx4", "idx8", "bias")}
    with safe_open(path, framework="pt") as f:
        if set(f.keys()) != set(want):
            raise ValueError(f"{path}: tensors {sorted(set(want) ^ set(f.keys()))[:4]} do not match its config")
        for name, info in layers.items():
            _check_layer(skeleton, name, info["shape"])
            plan = plans.get(name)
            packed, bias = _read_layer(f, name, info, plan or LayerPlan(COLUMN, 1), rank, world, check)
            skeleton.set_submodule(name, _module(plan, packed, bias, process_group))
        whole = {key: check(key, f.get_tensor(key)) for key in f.keys() if key not in packed_keys}
    _fill(skeleton, cfg, whole, packed_keys)
    _localize_attention(skeleton, world)
    return skeleton.eval()
