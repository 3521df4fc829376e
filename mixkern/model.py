"""Model-level API, in the style of torchao's ``quantize_(model, config)``.

    report = mixkern.quantize_model(model, calib_batches, QuantConfig(bits=4.4))
    mixkern.save_quantized(model, "out/", report)
    model = mixkern.load_quantized("out/")            # mixkern.lm and Hugging Face models rebuild themselves
    model = mixkern.load_quantized("out/", skeleton)  # any other model: pass its unquantized skeleton

``quantize_model`` quantizes every row of every quantizable ``nn.Linear`` at 4 and at 8
bits once, scores every output feature (:mod:`mixkern.quantize.salience`), chooses the
8-bit features under the budget (:mod:`mixkern.quantize.allocation`), and swaps each layer
for a :class:`MixLinear` that holds a :class:`~mixkern.PackedWeight` (a row selection of
the two quantizations) and calls ``mixkern.gemm``.  Hugging Face models (transformers
``PreTrainedModel``): the loss is the model's own (``labels``), only the linears inside its
decoder layers are quantized, and checkpoints carry its ``config.json`` so that loading
builds it on the meta device and assigns the saved tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass

import torch
from torch import nn

from ._progress import progress
from .format import FORMAT_VERSION, GROUP_SIZES, READABLE_FORMAT_VERSIONS, PackedWeight, WeightFormat
from .fusion import FusedMixLinear, fuse_projections
from .linear import MixLinear
from .quantize.allocation import allocate, average_bits, check_bits_budget
from .quantize.salience import all_precisions, feature_salience, quantizable_linears
from .quantize.weights import eight_bit_index
from .safetensors_io import read_safetensors, write_safetensors

CHECKPOINT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "mixkern_config.json", "model.safetensors"


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize a model.  Budget: ``bits`` (average bits per weight over the quantized
    layers, every stored byte counted) or ``fraction`` of 8-bit features; ``fraction=0.1``
    when neither is given.  ``second_order`` names the salience estimator
    (:mod:`mixkern.quantize.salience`): ``mixllm`` (MixLLM's, streamed), ``fisher`` (streamed)
    or ``hessian`` (exact, small models only)."""
    bits: float | None = None
    fraction: float | None = None
    method: str = "global"  # global (MixLLM), local (per-layer top-k), random
    group_size: int = 128
    skip: tuple[str, ...] = ("lm_head", "embed")  # layers whose qualified name contains one stay as they are
    floor: float = 0.0  # per-layer minimum fraction of 8-bit features (global only)
    cap: float = 1.0  # per-layer maximum fraction (global only)
    second_order: str = "mixllm"  # the salience estimator: mixllm, fisher or hessian
    # progressive or mixllm: both run on CPU and GPU.  mixllm is the more accurate (README "The
    # format"); progressive stays the default while its GPU kernels are the faster ones
    format: str = "progressive"
    seed: int = 0

    def budget(self) -> dict:
        if self.bits is not None and self.fraction is not None:
            raise ValueError("QuantConfig takes bits or fraction, not both")
        return {"bits": self.bits} if self.bits is not None else {"fraction": 0.1 if self.fraction is None else self.fraction}


@dataclass
class QuantReport:
    """What quantize_model did: the config, per-layer 8-bit indices, the bits, and the
    seconds each step took (``quantize``: both precisions of every row; ``salience``;
    ``allocate``; ``pack``: row selection and the module swap)."""
    config: QuantConfig
    eight_bit: dict[str, list[int]]
    shapes: dict[str, tuple[int, int]]
    average_bits: float
    fraction_8bit: float
    salience: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    seconds: dict[str, float] = field(default_factory=dict)


def _parent(model: nn.Module, name: str):
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def is_hf_model(model: nn.Module) -> bool:
    """A transformers ``PreTrainedModel`` (checked without importing transformers)."""
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(model, transformers.PreTrainedModel)


def select_rows(all4: PackedWeight, all8: PackedWeight, eight_bit_features) -> PackedWeight:
    """The PackedWeight ``quantize_weight(w, eight_bit_features)`` makes, from the all-4-bit
    and all-8-bit packings of w (quantization is row by row, so this is a row selection)."""
    n = all4.shape[0]
    if all4.idx8.numel() or all8.idx4.numel() or all4.shape != all8.shape:
        raise ValueError("select_rows needs the all-4-bit and the all-8-bit packing of one weight")
    idx8 = eight_bit_index(eight_bit_features, n).to(all4.device)
    is8 = torch.zeros(n, dtype=torch.bool, device=all4.device)
    is8[idx8] = True
    idx4 = (~is8).nonzero().flatten()
    return PackedWeight(shape=all4.shape, group_size=all4.group_size, format=all4.format,
                        idx4=idx4.to(torch.int32), idx8=idx8.to(torch.int32), qweight4=all4.qweight4[idx4],
                        zeros4=all4.zeros4[idx4], scales4=all4.scales4[idx4],
                        chan_scale4=None if all4.chan_scale4 is None else all4.chan_scale4[idx4],
                        qweight8=all8.qweight8[idx8], scale8=all8.scale8[idx8])


def check_lm_batch(batch) -> None:
    """Raise ValueError unless ``batch`` is what the default calibration loss can use."""
    fix = ("the default calibration loss needs (B, L + 1) integer token-id batches (or Hugging Face dict batches "
           "with input_ids); for other models or data pass quantize_model(..., loss_fn=lambda model, batch: "
           "<scalar loss>)")
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        ids = batch.get("input_ids")
        if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dim() != 2:
            raise ValueError(f"{fix}; got a dict batch without 2-D integer input_ids")
    elif not isinstance(batch, torch.Tensor) or batch.dtype.is_floating_point or batch.dtype == torch.bool \
            or batch.dim() != 2 or batch.shape[1] < 2:
        got = (f"a {str(batch.dtype).removeprefix('torch.')} tensor of shape {tuple(batch.shape)}"
               if isinstance(batch, torch.Tensor) else f"a {type(batch).__name__}")
        raise ValueError(f"{fix}; got {got}")


def lm_loss(model: nn.Module, batch) -> torch.Tensor:
    """The default calibration loss: a Hugging Face model's own loss (``labels`` = the
    input ids, which it shifts), else next-token cross-entropy (:func:`mixkern.lm.next_token_loss`)."""
    check_lm_batch(batch)
    if is_hf_model(model):
        inputs = dict(batch) if not isinstance(batch, torch.Tensor) else {"input_ids": batch}
        inputs.setdefault("labels", inputs["input_ids"])
        loss = getattr(model(**inputs, use_cache=False), "loss", None)
        if loss is None:
            raise ValueError(f"{type(model).__name__} returned no loss for labels=: pass loss_fn= to quantize_model")
        return loss
    from .lm import next_token_loss
    try:
        return next_token_loss(model, batch)
    except (RuntimeError, TypeError, IndexError) as e:
        said = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{type(model).__name__} is not a token LM the default calibration loss can use "
                         f"(model(ids[:, :-1]) -> (B, L, vocab) logits); it raised: {said}; pass loss_fn= to "
                         f"quantize_model") from None


def quantize_model(model: nn.Module, calib_batches, config: QuantConfig = QuantConfig(), loss_fn=None,
                   salience: dict[str, torch.Tensor] | None = None, packs: dict | None = None) -> QuantReport:
    """Quantize ``model`` in place; returns the :class:`QuantReport`.

    ``loss_fn(model, batch)`` is the calibration loss (default :func:`lm_loss`: (B, L + 1)
    token batches or HF dict batches).  Random allocation needs no data; pass ``salience`` to
    reuse scores across budgets and ``packs`` ({layer: (all-4-bit, all-8-bit) PackedWeight})
    to reuse the quantization itself.  For a Hugging Face model only the linears inside its
    decoder layers are quantized.
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
    in_features = {n: s[1] for n, s in shapes.items()}
    if "bits" in budget:  # knowable before any work
        check_bits_budget(shapes, budget["bits"], config.group_size, config.format)
    needs_data = salience is None and config.method != "random"
    if needs_data:
        calib_batches = list(calib_batches)
        if loss_fn is None and calib_batches:
            check_lm_batch(calib_batches[0])
    seconds = {}
    t0 = time.perf_counter()
    packs = dict(packs or {})
    todo = [(n, m) for n, m in layers.items() if n not in packs]
    for name, lin in progress(todo, "quantize rows (4- and 8-bit)") if todo else ():
        packs[name] = all_precisions(lin.weight, config.group_size, config.format)
    seconds["quantize"] = time.perf_counter() - t0
    if salience is None:
        t0 = time.perf_counter()
        if config.method == "random":
            salience = {n: torch.zeros(s[0], dtype=torch.float64) for n, s in shapes.items()}
        else:
            salience = feature_salience(model, calib_batches, loss_fn or lm_loss, layers, config.group_size,
                                        config.second_order, config.format, packs)
        seconds["salience"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    chosen = allocate(salience, **budget, in_features=in_features, method=config.method,
                      group_size=config.group_size, format=config.format, floor=config.floor, cap=config.cap,
                      seed=config.seed)
    seconds["allocate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for name, lin in progress(list(layers.items()), "pack"):
        parent, child = _parent(model, name)
        setattr(parent, child, MixLinear(select_rows(*packs[name], chosen[name]), lin.bias))
    seconds["pack"] = time.perf_counter() - t0
    counts = {n: len(v) for n, v in chosen.items()}
    return QuantReport(config, {n: v.tolist() for n, v in chosen.items()}, shapes,
                       average_bits(shapes, counts, config.group_size, config.format),
                       sum(counts.values()) / sum(s[0] for s in shapes.values()), salience, seconds)


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def _non_persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers state_dict leaves out (rotary tables and the like), saved so that a model
    built on the meta device can be completed without running its initializers."""
    saved = set(model.state_dict())
    return {name: b for name, b in model.named_buffers() if name not in saved and b is not None}


def _base_model(model: nn.Module, directory: str) -> dict | None:
    """How to rebuild the unquantized architecture: TinyLM's dataclass config, or a Hugging
    Face model's class and its ``config.json``/``generation_config.json`` as HF writes them."""
    if is_hf_model(model):
        model.config.save_pretrained(directory)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(directory)
        import transformers
        return {"architecture": "transformers", "class": type(model).__name__, "config_file": "config.json",
                "transformers_version": transformers.__version__}
    config = getattr(model, "config", None)
    if config is not None and is_dataclass(config):
        return {"architecture": "mixkern.lm.TinyLM", **asdict(config)}
    return None


def save_quantized(model: nn.Module, directory: str, report: QuantReport, base_config: dict | None = None) -> None:
    """Write ``model.safetensors`` (every tensor of the model, packed weights included) and
    ``mixkern_config.json`` (versions, budget, per-layer indices, and a sha256 per tensor);
    for a Hugging Face model also its ``config.json`` and ``generation_config.json``.
    A fused model (:func:`~mixkern.fuse_projections`) is refused: checkpoints hold the
    architecture's own layers, so that any mixkern loads them and ``fuse=`` stays a choice."""
    fused = next((n for n, m in model.named_modules() if isinstance(m, FusedMixLinear)), None)
    if fused is not None:
        raise ValueError(f"save_quantized: {fused} is fused (mixkern.fuse_projections); save the unfused model: "
                         "mixkern.unfuse_projections(model) first, or save before fusing and load with "
                         "load_quantized(..., fuse=True)")
    os.makedirs(directory, exist_ok=True)
    buffers = _non_persistent_buffers(model)
    state = {**model.state_dict(), **buffers}
    if base_config is None:
        base_config = _base_model(model, directory)
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, MixLinear):
            layers[name] = {"shape": [m.out_features, m.in_features], "group_size": m.group_size,
                            "format": m.format.value, "eight_bit_features": m.idx8.tolist(),
                            "bias": m.bias is not None}
    cfg = {"mixkern_checkpoint": CHECKPOINT_VERSION, "packed_format_version": FORMAT_VERSION,
           "quant_config": {**asdict(report.config), "skip": list(report.config.skip)},
           "average_bits": report.average_bits, "fraction_8bit": report.fraction_8bit,
           "base_model": base_config, "layers": layers, "buffers": sorted(buffers),
           "sha256": {k: _sha256(v) for k, v in state.items()}}
    write_safetensors(os.path.join(directory, WEIGHTS_FILE), state, {"format": "pt", "mixkern_checkpoint": str(CHECKPOINT_VERSION)})
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(cfg, f, indent=1)


def read_checkpoint_config(directory: str) -> dict:
    """mixkern_config.json of a ``save_quantized`` directory, versions checked (the weights
    file must exist beside it)."""
    cfg_path, w_path = os.path.join(directory, CONFIG_FILE), os.path.join(directory, WEIGHTS_FILE)
    for p in (cfg_path, w_path):
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p} is missing: not a mixkern checkpoint (save_quantized writes one)")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from None
    if cfg.get("mixkern_checkpoint") != CHECKPOINT_VERSION or cfg.get("packed_format_version") not in READABLE_FORMAT_VERSIONS:
        raise ValueError(f"{cfg_path}: checkpoint version {cfg.get('mixkern_checkpoint')} / packed format "
                         f"{cfg.get('packed_format_version')}; this mixkern reads {CHECKPOINT_VERSION} / "
                         f"{' or '.join(map(str, READABLE_FORMAT_VERSIONS))}")
    for name, info in (cfg.get("layers") or {}).items():  # a retired format fails here, naming the file
        try:
            WeightFormat.parse(info.get("format", WeightFormat.PROGRESSIVE))
        except ValueError as e:
            raise ValueError(f"{cfg_path}: layer {name}: {e}") from None
    return cfg


def _read_checkpoint(directory: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(mixkern_config, tensors), every version and checksum verified."""
    cfg, w_path = read_checkpoint_config(directory), os.path.join(directory, WEIGHTS_FILE)
    state, _ = read_safetensors(w_path)
    want = cfg.get("sha256", {})
    if set(want) != set(state):
        raise ValueError(f"{w_path}: tensors {sorted(set(want) ^ set(state))[:4]} do not match {CONFIG_FILE}")
    for name, t in state.items():
        if _sha256(t) != want[name]:
            raise ValueError(f"{w_path}: checksum mismatch for {name} (file corrupt or edited)")
    return cfg, state


def _skeleton(directory: str, base: dict) -> nn.Module:
    """The unquantized architecture without its weights: TinyLM (small, built normally) or a
    Hugging Face model built on the meta device (no memory for weights)."""
    if base.get("architecture") == "mixkern.lm.TinyLM":
        from .lm import LMConfig, TinyLM
        return TinyLM(LMConfig(**{k: base[k] for k in LMConfig.__dataclass_fields__}))
    if base.get("architecture") != "transformers":
        raise ValueError(f"{directory} holds a {base.get('architecture')!r} model: pass its unquantized skeleton")
    try:
        import transformers
    except ImportError:
        raise ModuleNotFoundError(f"{directory} holds a Hugging Face {base.get('class')}: pip install 'transformers>=5,<6'") from None
    cls = getattr(transformers, str(base.get("class")), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(f"{directory}: {base.get('class')!r} is not a transformers model class")
    config = transformers.AutoConfig.from_pretrained(directory)
    with torch.device("meta"):
        model = cls(config)
    if os.path.exists(os.path.join(directory, "generation_config.json")):
        model.generation_config = transformers.GenerationConfig.from_pretrained(directory)
    return model


def _swap_in_packed(skeleton: nn.Module, directory: str, cfg: dict, state: dict[str, torch.Tensor]) -> None:
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
        bias = state.get(prefix + "bias") if info["bias"] else None
        parent, child = _parent(skeleton, name)
        setattr(parent, child, MixLinear(packed, bias))


def load_quantized(directory: str, skeleton: nn.Module | None = None, fuse: bool = False) -> nn.Module:
    """Rebuild a quantized model; refuses corrupt, truncated or mismatched files with ValueError.

    Without ``skeleton`` the architecture comes from the checkpoint (a mixkern.lm TinyLM, or a
    Hugging Face model built on the meta device and filled with the saved tensors).  ``fuse``:
    apply :func:`~mixkern.fuse_projections` (q/k/v and gate/up in one GEMM each)."""
    cfg, state = _read_checkpoint(directory)
    if skeleton is None:
        skeleton = _skeleton(directory, cfg.get("base_model") or {})
    _swap_in_packed(skeleton, directory, cfg, state)
    buffers = set(cfg.get("buffers", []))
    missing, unexpected = skeleton.load_state_dict({k: v for k, v in state.items() if k not in buffers},
                                                   strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{directory}: state does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name in buffers:
        module, _, attr = name.rpartition(".")
        skeleton.get_submodule(module)._buffers[attr] = state[name]
    if is_hf_model(skeleton) and getattr(skeleton.config, "tie_word_embeddings", False):
        skeleton.tie_weights()
    left = [n for n, t in [*skeleton.named_parameters(), *skeleton.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{directory}: the checkpoint does not hold {left[:3]} (saved by an older mixkern?)")
    if fuse:
        fuse_projections(skeleton)
    return skeleton.eval()
