"""Model-level API, in the style of torchao's ``quantize_(model, config)``.

    report = mixkern.quantize_model(model, calib_batches, QuantConfig(bits=4.4))
    mixkern.save_quantized(model, "out/", report)
    model = mixkern.load_quantized("out/")            # a mixkern.lm checkpoint rebuilds itself
    model = mixkern.load_quantized("out/", skeleton)  # any other model: pass its unquantized skeleton

``quantize_model`` scores every output feature of every quantizable ``nn.Linear``
(:mod:`mixkern.quantize.salience`), chooses the 8-bit features under the budget
(:mod:`mixkern.quantize.allocation`), and swaps each layer for a :class:`MixLinear`
that holds a :class:`~mixkern.PackedWeight` and calls ``mixkern.gemm``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from ._progress import progress
from .format import FORMAT_VERSION, GROUP_SIZES, PackedWeight, WeightFormat
from .linear import MixLinear
from .quantize import quantize_weight
from .quantize.allocation import allocate, average_bits
from .quantize.salience import feature_salience, quantizable_linears
from .safetensors_io import read_safetensors, write_safetensors

CHECKPOINT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "mixkern_config.json", "model.safetensors"


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize a model.  Budget: ``bits`` (average bits per weight over the quantized
    layers, every stored byte counted) or ``fraction`` of 8-bit features; ``fraction=0.1``
    when neither is given."""
    bits: float | None = None
    fraction: float | None = None
    method: str = "global"  # global (MixLLM), local (per-layer top-k), random
    group_size: int = 128
    skip: tuple[str, ...] = ("lm_head", "embed")  # layers whose qualified name contains one stay as they are
    floor: float = 0.0  # per-layer minimum fraction of 8-bit features (global only)
    cap: float = 1.0  # per-layer maximum fraction (global only)
    second_order: str = "hessian"  # or "fisher"
    format: str = "progressive"
    seed: int = 0

    def budget(self) -> dict:
        if self.bits is not None and self.fraction is not None:
            raise ValueError("QuantConfig takes bits or fraction, not both")
        return {"bits": self.bits} if self.bits is not None else {"fraction": 0.1 if self.fraction is None else self.fraction}


@dataclass
class QuantReport:
    """What quantize_model did: the config, per-layer 8-bit indices, and the bits."""
    config: QuantConfig
    eight_bit: dict[str, list[int]]
    shapes: dict[str, tuple[int, int]]
    average_bits: float
    fraction_8bit: float
    salience: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def _parent(model: nn.Module, name: str):
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def quantize_model(model: nn.Module, calib_batches, config: QuantConfig = QuantConfig(), loss_fn=None,
                   salience: dict[str, torch.Tensor] | None = None) -> QuantReport:
    """Quantize ``model`` in place; returns the :class:`QuantReport`.

    ``loss_fn(model, batch)`` is the calibration loss (default: next-token cross-entropy of
    (B, L + 1) token batches, :func:`mixkern.lm.next_token_loss`).  Random allocation needs
    no data; pass ``salience`` to reuse scores across budgets.
    """
    if config.group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {config.group_size}")
    budget = config.budget()
    layers = quantizable_linears(model, config.skip)
    bad = {n: tuple(m.weight.shape) for n, m in layers.items() if m.in_features % config.group_size}
    if bad:
        raise ValueError(f"in_features must be a multiple of group_size={config.group_size}: {bad}; skip these layers")
    if not layers:
        raise ValueError("no nn.Linear layers to quantize (check QuantConfig.skip)")
    shapes = {n: tuple(m.weight.shape) for n, m in layers.items()}
    if salience is None:
        if config.method == "random":
            salience = {n: torch.zeros(s[0], dtype=torch.float64) for n, s in shapes.items()}
        else:
            if loss_fn is None:
                from .lm import next_token_loss
                loss_fn = next_token_loss
            salience = feature_salience(model, calib_batches, loss_fn, layers, config.group_size,
                                        config.second_order, config.format)
    chosen = allocate(salience, **budget, in_features={n: s[1] for n, s in shapes.items()}, method=config.method,
                      group_size=config.group_size, format=config.format, floor=config.floor, cap=config.cap,
                      seed=config.seed)
    for name, lin in progress(list(layers.items()), "quantize"):
        packed = quantize_weight(lin.weight.detach(), chosen[name].tolist(), config.group_size, config.format)
        parent, child = _parent(model, name)
        setattr(parent, child, MixLinear(packed, lin.bias))
    counts = {n: len(v) for n, v in chosen.items()}
    return QuantReport(config, {n: v.tolist() for n, v in chosen.items()}, shapes,
                       average_bits(shapes, counts, config.group_size, config.format),
                       sum(counts.values()) / sum(s[0] for s in shapes.values()), salience)


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def save_quantized(model: nn.Module, directory: str, report: QuantReport, base_config: dict | None = None) -> None:
    """Write ``model.safetensors`` (every tensor of the model, packed weights included) and
    ``mixkern_config.json`` (versions, budget, per-layer indices, and a sha256 per tensor)."""
    os.makedirs(directory, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items()}
    if base_config is None and hasattr(model, "config"):
        base_config = {"architecture": "mixkern.lm.TinyLM", **asdict(model.config)}
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, MixLinear):
            layers[name] = {"shape": [m.out_features, m.in_features], "group_size": m.group_size,
                            "format": m.format.value, "eight_bit_features": m.idx8.tolist(),
                            "bias": m.bias is not None}
    cfg = {"mixkern_checkpoint": CHECKPOINT_VERSION, "packed_format_version": FORMAT_VERSION,
           "quant_config": {**asdict(report.config), "skip": list(report.config.skip)},
           "average_bits": report.average_bits, "fraction_8bit": report.fraction_8bit,
           "base_model": base_config, "layers": layers, "sha256": {k: _sha256(v) for k, v in state.items()}}
    write_safetensors(os.path.join(directory, WEIGHTS_FILE), state, {"format": "pt", "mixkern_checkpoint": str(CHECKPOINT_VERSION)})
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(cfg, f, indent=1)


def load_quantized(directory: str, skeleton: nn.Module | None = None) -> nn.Module:
    """Rebuild a quantized model; refuses corrupt, truncated or mismatched files with ValueError."""
    cfg_path, w_path = os.path.join(directory, CONFIG_FILE), os.path.join(directory, WEIGHTS_FILE)
    for p in (cfg_path, w_path):
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p} is missing: not a mixkern checkpoint (save_quantized writes one)")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from None
    if cfg.get("mixkern_checkpoint") != CHECKPOINT_VERSION or cfg.get("packed_format_version") != FORMAT_VERSION:
        raise ValueError(f"{cfg_path}: checkpoint version {cfg.get('mixkern_checkpoint')} / packed format "
                         f"{cfg.get('packed_format_version')}; this mixkern reads {CHECKPOINT_VERSION} / {FORMAT_VERSION}")
    state, _ = read_safetensors(w_path)
    want = cfg.get("sha256", {})
    if set(want) != set(state):
        raise ValueError(f"{w_path}: tensors {sorted(set(want) ^ set(state))[:4]} do not match {CONFIG_FILE}")
    for name, t in state.items():
        if _sha256(t) != want[name]:
            raise ValueError(f"{w_path}: checksum mismatch for {name} (file corrupt or edited)")
    if skeleton is None:
        base = cfg.get("base_model") or {}
        if base.get("architecture") != "mixkern.lm.TinyLM":
            raise ValueError(f"{directory} holds a {base.get('architecture')!r} model: pass its unquantized skeleton")
        from .lm import LMConfig, TinyLM
        skeleton = TinyLM(LMConfig(**{k: base[k] for k in LMConfig.__dataclass_fields__}))
    for name, info in cfg["layers"].items():
        try:
            lin = skeleton.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{directory}: layer {name} does not exist in the given model") from None
        n, k = info["shape"]
        if not isinstance(lin, nn.Linear) or tuple(lin.weight.shape) != (n, k):
            raise ValueError(f"{directory}: layer {name} is {n}x{k} in the checkpoint, {lin} in the model")
        prefix = name + "."
        tensors = {f.name: state[prefix + f.name] for f in fields(PackedWeight) if prefix + f.name in state}
        packed = PackedWeight(shape=(n, k), group_size=info["group_size"], format=WeightFormat.parse(info["format"]),
                              chan_scale4=tensors.pop("chan_scale4", None), **tensors)  # validates
        if packed.idx8.tolist() != info["eight_bit_features"]:
            raise ValueError(f"{directory}: layer {name}'s 8-bit features differ from {CONFIG_FILE}")
        parent, child = _parent(skeleton, name)
        setattr(parent, child, MixLinear(packed, torch.zeros(n) if info["bias"] else None))
    missing, unexpected = skeleton.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{directory}: state does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return skeleton.eval()
