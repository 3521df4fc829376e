"""Whole-model serving benchmark: a transformers decoder at a real model's shapes, fp16
against mixkern, in tokens/s (``python -m mixkern.bench --model NAME``; docs/serving.md).

    python -m mixkern.bench --model llama3-8b --layers 4 [--tp 8] [--context 1024] [--batches 1 8 32]

Weights are random (speed depends on shapes, not values; nothing downloads).  The fp16 model
is measured first; then its decoder-layer linears are replaced *in place* by MixLinears with
10% random 8-bit rows (peak memory: one model, not two), warmed up, optionally fused and
measured again.  Embeddings and ``lm_head`` stay fp16 in both, as in mixkern's checkpoints.

Modes: decode (one new token per sequence against a ``StaticCache`` holding ``--context``
tokens, so the KV cache has a fixed address) eager, under ``torch.compile(mode=
"reduce-overhead")`` and as a manually captured CUDA graph of one step; prefill of
``--prefill`` tokens (batch 1) and Hugging Face ``generate()`` (greedy), eager.  A mode that
fails reports ``failed: <reason>`` in its cell and the others still run.

Where the step is not dominated by the linears (few ``--layers``: the fp16 ``lm_head``; long
contexts: attention) or eager mode is host-bound, tokens/s alone hide what the kernels do, so
mode ``linears`` adds a second table per decode batch (and prefill): the same decoder-layer
linears called back to back in one CUDA graph (their GPU time, no host overhead), fp16 against
mixkern, their share of the whole step's GPU time (the CUDA-graph step), the fp16 ``lm_head``
on its own, and the host's time to issue one eager step.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ._cli import error, positive
from .shapes import CONFIGS, DecoderConfig, layer_shapes

SERVING = {  # preset -> (architecture, vocabulary, decoder layers): what shapes.CONFIGS leaves out
    "llama2-7b": ("llama", 32000, 32), "llama2-13b": ("llama", 32000, 40), "llama2-70b": ("llama", 32000, 80),
    "llama3-8b": ("llama", 128256, 32), "llama3-70b": ("llama", 128256, 80), "mistral-7b": ("llama", 32768, 32),
    "qwen2.5-0.5b": ("qwen2", 151936, 24), "qwen2.5-1.5b": ("qwen2", 151936, 28), "qwen2.5-3b": ("qwen2", 151936, 36),
    "qwen2.5-7b": ("qwen2", 152064, 28), "qwen2.5-14b": ("qwen2", 152064, 48), "qwen2.5-32b": ("qwen2", 152064, 64),
    "qwen2.5-72b": ("qwen2", 152064, 80), "tiny": ("llama", 1000, 2),
}
TINY = DecoderConfig(hidden=256, intermediate=512, heads=4, kv_heads=2, head_dim=64)  # CPU tests: the reference op
FRACTION_8BIT = 0.10
ROW_MODES = ("eager", "compile", "graph", "prefill", "generate")  # the tokens/s table's rows
MODES = (*ROW_MODES, "linears")  # linears: the linear-layer share table (linears_rows)
DECODE_MODES = ("eager", "compile", "graph")
WARM_CALLS = 3  # calls before timing: lazy cache allocation, compilation, CUDA-graph recording


@dataclass(frozen=True)
class Spec:
    """What to measure (the defaults keep llama3-8b --layers 4 under 8 minutes on an H100)."""
    batches: tuple[int, ...] = (1, 8, 32)
    context: int = 1024
    prefill: int = 2048
    prompt: int = 128
    new_tokens: int = 64
    steps: int = 20  # decode steps per timed run
    reps: int = 3  # timed runs; the median counts
    modes: tuple[str, ...] = MODES


def _base_config(name: str):
    """The full model's transformers config: a preset of :data:`SERVING` or a config.json."""
    import transformers
    if name in SERVING:
        arch, vocab, layers = SERVING[name]
        c = TINY if name == "tiny" else CONFIGS[name]
        cls = transformers.Qwen2Config if arch == "qwen2" else transformers.LlamaConfig
        return cls(hidden_size=c.hidden, intermediate_size=c.intermediate, num_attention_heads=c.heads,
                   num_key_value_heads=c.kv_heads, head_dim=c.head_dim, vocab_size=vocab, num_hidden_layers=layers,
                   max_position_embeddings=32768, pad_token_id=0)
    if not os.path.exists(name):
        raise ValueError(f"--model {name!r} is neither a serving preset ({', '.join(SERVING)}) nor a config.json path")
    try:
        return transformers.AutoConfig.from_pretrained(name)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot read a transformers config at {name}: {str(e).splitlines()[0]}") from None


def decoder_numbers(config) -> DecoderConfig:
    """The numbers of a transformers config that fix its decoder layers' linear shapes."""
    try:
        hidden, heads = config.hidden_size, config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        return DecoderConfig(hidden, config.intermediate_size, heads, kv, getattr(config, "head_dim", None) or hidden // heads)
    except AttributeError as e:
        raise ValueError(f"{type(config).__name__} is no decoder config ({e})") from None


def hf_config(name: str, tp: int = 1, layers: int | None = None):
    """The config of one tensor-parallel rank of ``name`` with ``layers`` decoder layers (default
    all): heads, intermediate size and vocabulary divided by ``tp`` (K/V heads fewer than ``tp``
    replicated), hidden size and head size kept, so its linears have the shapes of
    :func:`mixkern.shapes.layer_shapes` at ``tp``.  ValueError for an unknown model, a ``tp``
    that does not divide it or more layers than it has."""
    config = _base_config(name)
    c = decoder_numbers(config)
    layer_shapes(c, tp)  # raises when tp does not divide the heads or the intermediate size
    total = config.num_hidden_layers
    if layers is not None and not 1 <= layers <= total:
        raise ValueError(f"--layers {layers}: {name} has {total} decoder layers")
    n = layers or total
    for key, value in dict(num_attention_heads=c.heads // tp, num_key_value_heads=max(1, c.kv_heads // tp),
                           intermediate_size=c.intermediate // tp, head_dim=c.head_dim,
                           vocab_size=-(-config.vocab_size // tp), num_hidden_layers=n).items():
        setattr(config, key, value)
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[:n]
    return config


def build_model(config, device) -> nn.Module:
    """Random fp16 weights, built directly on ``device`` (no host copy of a large model)."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    return model.eval()


def quantize_decoder(model: nn.Module, fraction: float = FRACTION_8BIT, seed: int = 0) -> int:
    """Replace every decoder-layer nn.Linear by a MixLinear with ``fraction`` of its rows 8-bit,
    chosen at random, one layer at a time (each fp16 weight freed as its packed one arrives).
    No clipping search: quality does not matter for timing.  Returns how many were replaced."""
    from .linear import MixLinear
    from .model import _parent
    from .quantize import quantize_weight
    from .quantize.salience import quantizable_linears
    layers = quantizable_linears(model)
    gen = torch.Generator().manual_seed(seed)
    count = len(layers)
    for name in list(layers):
        lin = layers.pop(name)
        rows = torch.randperm(lin.out_features, generator=gen)[: round(fraction * lin.out_features)].tolist()
        parent, child = _parent(model, name)
        setattr(parent, child, MixLinear(quantize_weight(lin.weight.detach(), rows, clip_search=False), lin.bias))
        del lin
    return count


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _per_call(fn, calls: int, reps: int, device: torch.device, before=None, host_only: bool = False) -> float:
    """Median over ``reps`` runs of wall seconds per call, ``calls`` calls back to back, the
    device synced at both ends: what a serving loop sees, host overhead included.  With
    ``host_only`` the clock stops when the last call is *issued*, before the final sync."""
    times = []
    for _ in range(reps):
        if before:
            before()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if not host_only:
            _sync(device)
        times.append((time.perf_counter() - t0) / calls)
        _sync(device)
    return statistics.median(times)


def _set_length(cache, n: int) -> None:
    """Rewind (or advance) every layer of a StaticCache to hold ``n`` tokens, in place (the
    length tensors have fixed addresses, so a compiled or captured step sees the change)."""
    for layer in cache.layers:
        layer.cumulative_length.fill_(n)
        if hasattr(layer, "cumulative_length_int"):  # sliding-window layers
            layer.cumulative_length_int = n


def _compiled_step(model: nn.Module, kwargs: dict):
    """One decode step through ``torch.compile(mode="reduce-overhead")`` (CUDA graph trees on a GPU)."""
    compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)

    def step():
        torch.compiler.cudagraph_mark_step_begin()  # inference loop: each call a new step
        return compiled(**kwargs)
    return step


def _graph_step(eager, rewind):
    """One eager decode step captured in a CUDA graph.  The cache-length increment is a kernel
    in the graph, so replays advance the cache as eager steps do."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm on a side stream, as capture requires
        for _ in range(WARM_CALLS):
            eager()
    torch.cuda.current_stream().wait_stream(stream)
    rewind()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        eager()
    return graph.replay


def _decode_step(model: nn.Module, batch: int, spec: Spec):
    """(step, rewind, kwargs): one eager decode step of ``batch`` sequences, one new token each,
    against a StaticCache holding ``spec.context`` tokens, the rewind to that length (the cache
    has room for ``max(spec.steps, WARM_CALLS)`` steps after it) and the step's model arguments.
    Shared by every decode timing so that all of them time the same step; runs one step (the
    cache's lazy allocation)."""
    from transformers import StaticCache
    device = next(model.parameters()).device
    cache = StaticCache(config=model.config, max_cache_len=spec.context + max(spec.steps, WARM_CALLS) + 1)
    ids = torch.randint(model.config.vocab_size, (batch, 1), device=device)
    kwargs = dict(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)

    def eager():
        return model(**kwargs)

    def rewind():
        _set_length(cache, spec.context)
    eager()  # allocates the cache
    rewind()
    return eager, rewind, kwargs


def decode_seconds(model: nn.Module, batch: int, spec: Spec, how: str) -> float:
    """Seconds per decode step: ``batch`` sequences, one new token each, against a StaticCache
    holding ``spec.context`` tokens (rewound before every timed run).  ``how``: eager, compile
    or graph.  Attention reads the whole static cache, as compiled serving loops do."""
    device = next(model.parameters()).device
    eager, rewind, kwargs = _decode_step(model, batch, spec)
    step = {"eager": lambda: eager, "compile": lambda: _compiled_step(model, kwargs),
            "graph": lambda: _graph_step(eager, rewind)}[how]()
    rewind()
    for _ in range(WARM_CALLS):
        step()
    return _per_call(step, spec.steps, spec.reps, device, before=rewind)


def _prefill_step(model: nn.Module, spec: Spec):
    """One eager prefill of ``spec.prefill`` tokens of one sequence into a fresh cache (last logits only)."""
    from transformers import DynamicCache
    device = next(model.parameters()).device
    ids = torch.randint(model.config.vocab_size, (1, spec.prefill), device=device)

    def step():
        model(input_ids=ids, past_key_values=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
    return step


def prefill_seconds(model: nn.Module, spec: Spec) -> float:
    """Seconds to prefill ``spec.prefill`` tokens of one sequence into a fresh cache (last logits only)."""
    step = _prefill_step(model, spec)
    step()
    return _per_call(step, 1, spec.reps, next(model.parameters()).device)


def generate_seconds(model: nn.Module, spec: Spec) -> float:
    """Seconds per new token of greedy ``generate()``: ``spec.new_tokens`` after a
    ``spec.prompt``-token prompt, batch 1, the prompt's prefill included."""
    device = next(model.parameters()).device
    ids = torch.randint(model.config.vocab_size, (1, spec.prompt), device=device)
    mask = torch.ones_like(ids)

    def run(n: int):
        model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                       pad_token_id=0)
    run(2)
    return _per_call(lambda: run(spec.new_tokens), 1, spec.reps, device) / spec.new_tokens


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"failed: {type(e).__name__}" + (f": {text[0][:120]}" if text else "")


def measure(model: nn.Module, spec: Spec, modes=None) -> dict[tuple[str, int], float | str]:
    """{(mode, batch): seconds per forward (generate: per new token)} or the cell's text
    (``failed: <reason>``, ``n/a (CPU)``): a failing mode never stops the others."""
    device = next(model.parameters()).device
    out = {}
    for mode in (m for m in modes or spec.modes if m in ROW_MODES):
        for batch in spec.batches if mode in DECODE_MODES else (1,):
            if mode == "graph" and device.type != "cuda":
                out[mode, batch] = "n/a (CPU)"
                continue
            t0 = time.perf_counter()
            try:
                with torch.no_grad():  # not inference_mode: fused projections check input versions
                    out[mode, batch] = (decode_seconds(model, batch, spec, mode) if mode in DECODE_MODES
                                        else prefill_seconds(model, spec) if mode == "prefill"
                                        else generate_seconds(model, spec))
            except Exception as e:  # noqa: BLE001 -- one cell's failure, reported in the table
                out[mode, batch] = _one_line(e)
            finally:
                if mode == "compile":
                    torch._dynamo.reset()
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            v = out[mode, batch]
            print(f"  {mode} batch {batch}: " + (f"{v * 1e3:.3f} ms a forward" if isinstance(v, float) else v)
                  + f" ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
    return out


def host_seconds(model: nn.Module, mode: str, batch: int, spec: Spec) -> float:
    """CPU seconds per eager step (``mode`` decode or prefill) to *issue* it: the steps of a
    timed run back to back, as in the eager row, the clock stopped before waiting for the device
    (median of ``spec.reps`` runs): Python, transformers' bookkeeping, dispatch and launches.  An
    eager step takes about max(host, GPU), so where this is near the eager row and above the
    CUDA graph's step, the eager row measures the host, not the kernels.  When the GPU is the
    slower one, the launch queue fills and this rises towards the GPU time (the step was
    GPU-bound anyway).  On CPU the op computes as it is issued: this is the whole step."""
    device = next(model.parameters()).device
    if mode == "prefill":
        step, rewind, calls = _prefill_step(model, spec), None, WARM_CALLS
    else:
        step, rewind, _ = _decode_step(model, batch, spec)
        calls = spec.steps
    for _ in range(WARM_CALLS):
        step()
    return _per_call(step, calls, spec.reps, device, before=rewind, host_only=True)


def modules_seconds(calls: list[tuple[nn.Module, int]], device: torch.device, spec: Spec) -> float:
    """Seconds to run every ``(module, rows)`` of ``calls`` on a ``(rows, in_features)`` fp16
    input, back to back: replays of one CUDA graph on a GPU (the modules' GPU time with no host
    overhead, which the eager rows include), eager calls on CPU.  Modules of one input width
    share one input tensor, as q/k/v and gate/up share theirs in the forward, so fused
    projections (ProjectionSlice) compute one GEMM per group, as in the model."""
    inputs: dict[tuple[int, int], torch.Tensor] = {}
    for m, rows in calls:
        if (rows, m.in_features) not in inputs:
            inputs[rows, m.in_features] = torch.randn(rows, m.in_features, dtype=torch.float16, device=device)

    def step():
        for m, rows in calls:
            m(inputs[rows, m.in_features])
    step()
    if device.type == "cuda":
        step = _graph_step(step, lambda: None)
    for _ in range(WARM_CALLS):
        step()
    return _per_call(step, spec.steps, spec.reps, device)


def linear_names(model: nn.Module) -> list[str]:
    """The decoder-layer linears' qualified names in module order, read off the fp16 model.  After
    quantization (and fusion) the same names resolve to MixLinears (or ProjectionSlices of one
    fused GEMM), so both models' linears are timed as their forwards call them, biases included."""
    from .quantize.salience import quantizable_linears
    return list(quantizable_linears(model))


def breakdown(model: nn.Module, names: list[str], spec: Spec, head: bool = True) -> dict:
    """{(step, batch): {"linears", "lm_head", "host": seconds or the cell's text}} for every
    decode batch (step "decode") and, when prefill is measured, ("prefill", 1): the parts the
    linear-layer table is made of.  ``lm_head`` (fp16 in both models) only when ``head``.  The
    head gets ``batch`` rows in both steps (decode: one token a sequence; prefill keeps the
    last token's logits); the decoder linears get ``batch`` or ``spec.prefill`` rows."""
    device = next(model.parameters()).device
    linears = [model.get_submodule(n) for n in names]
    plan = [("decode", b) for b in spec.batches] + ([("prefill", 1)] if "prefill" in spec.modes else [])
    out = {}
    for step, batch in plan:
        rows = spec.prefill if step == "prefill" else batch
        parts = {"linears": lambda: modules_seconds([(m, rows) for m in linears], device, spec),
                 "lm_head": lambda: modules_seconds([(model.get_output_embeddings(), batch)], device, spec),
                 "host": lambda: host_seconds(model, step, batch, spec)}
        cell = out[step, batch] = {}
        for key, fn in parts.items():
            if key == "lm_head" and not head:
                continue
            try:
                with torch.no_grad():
                    cell[key] = fn()
            except Exception as e:  # noqa: BLE001 -- one cell's failure, reported in the table
                cell[key] = _one_line(e)
            finally:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        print(f"  {step} batch {batch}: " + ", ".join(
            f"{k} " + (f"{v * 1e3:.3f} ms" if isinstance(v, float) else v) for k, v in cell.items()),
            file=sys.stderr, flush=True)
    return out


def _linear_bytes(model: nn.Module) -> int:
    """Bytes of the decoder-layer linears (fp16 weights, or packed tensors once quantized), biases included."""
    from .linear import MixLinear
    from .quantize.salience import quantizable_linears
    lins = [m for m in model.modules() if isinstance(m, MixLinear)] or list(quantizable_linears(model).values())
    return sum(t.numel() * t.element_size() for m in lins for t in (*m.buffers(), *m.parameters()))


def _stage(text: str, t0: float) -> float:
    print(f"{text} in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    return time.perf_counter()


def _warmup(model: nn.Module, device: torch.device, max_tokens: int) -> None:
    """Compile the kernels up front (GPU); a failure is reported and left to the modes' cells."""
    if device.type != "cuda":
        return  # the CPU op is the reference: nothing to compile
    import mixkern
    try:
        mixkern.warmup(model, max_tokens=max_tokens)
    except Exception as e:  # noqa: BLE001
        print(f"mixkern.warmup {_one_line(e)}; kernels compile at first use", file=sys.stderr)


def run(config, device, spec: Spec, fuse: bool = True) -> tuple[list[dict], list[dict], dict]:
    """Measure fp16, quantize in place, measure mixkern (unfused eager decode too when fusing).
    Returns the rows of :func:`table`, those of :func:`linears_table` (mode ``linears``) and
    facts for the header."""
    import mixkern
    t0 = time.perf_counter()
    model = build_model(config, device)
    names = linear_names(model)
    parts = "linears" in spec.modes
    info = {"layers": config.num_hidden_layers, "fp16_bytes": _linear_bytes(model)}
    t0 = _stage(f"built {type(model).__name__} ({config.num_hidden_layers} layers) on {device}", t0)
    print("fp16:", file=sys.stderr)
    fp16 = measure(model, spec)
    fp16_parts = breakdown(model, names, spec) if parts else {}
    t0 = _stage("fp16 measured", t0)
    info["quantized"] = quantize_decoder(model)
    info["mixkern_bytes"] = _linear_bytes(model)
    max_tokens = max(spec.prefill, spec.prompt, *spec.batches)
    _warmup(model, device, max_tokens)
    t0 = _stage(f"quantized {info['quantized']} linears and warmed up", t0)
    unfused = {}
    if fuse:
        if "eager" in spec.modes:
            print("mixkern, unfused:", file=sys.stderr)
            unfused = measure(model, spec, ("eager",))
        info["fused_groups"] = mixkern.fuse_projections(model)
        _warmup(model, device, max_tokens)  # fused shapes may pick other schedules
    print(f"mixkern{', fused' if fuse else ''}:", file=sys.stderr)
    mix = measure(model, spec)
    mix_parts = breakdown(model, names, spec, head=False) if parts else {}
    _stage("mixkern measured", t0)
    rows = [{"mode": mode, "batch": batch, "tokens": spec.prefill if mode == "prefill" else batch,
             "fp16": fp16[mode, batch], "mixkern": mix[mode, batch], "unfused": unfused.get((mode, batch))}
            for mode, batch in fp16]
    return rows, linears_rows(rows, fp16_parts, mix_parts, spec, device.type == "cuda"), info


def _ratio(a, b) -> float | None:
    return a / b if isinstance(a, float) and isinstance(b, float) else None


def linears_rows(rows: list[dict], fp16_parts: dict, mix_parts: dict, spec: Spec, gpu: bool) -> list[dict]:
    """One row per entry of :func:`breakdown`: both models' linears and host seconds, the fp16
    lm_head, the whole step they are a share of, and eager minus graph.  The whole step is the
    CUDA-graph row's (GPU time alone, no host overhead: what the linears' GPU time is a share of),
    the eager row's where no graph was timed (prefill, CPU).  Shares count the decoder linears
    only; lm_head (fp16 in both models) has its own.  A missing or failed cell stays text/None."""
    by = {(r["mode"], r["batch"]): r for r in rows}
    out = []
    for (step, batch), f in fp16_parts.items():
        m = mix_parts.get((step, batch), {})
        eager = by.get(("prefill" if step == "prefill" else "eager", batch), {})
        graph = by.get(("graph", batch), {}) if step == "decode" else {}
        on_graph = all(isinstance(graph.get(k), float) for k in ("fp16", "mixkern"))
        whole = graph if on_graph else eager
        row = {"step": step, "batch": batch, "tokens": spec.prefill if step == "prefill" else batch,
               "linears_timed": "graph" if gpu else "eager",
               "step_timed": "graph" if on_graph else "eager" if whole else None,
               "fp16_linears_s": f.get("linears"), "mixkern_linears_s": m.get("linears"),
               "linears_speedup": _ratio(f.get("linears"), m.get("linears")), "lm_head_s": f.get("lm_head")}
        for name, p in (("fp16", f), ("mixkern", m)):
            row[f"{name}_step_s"] = whole.get(name)
            row[f"{name}_linear_share"] = _ratio(p.get("linears"), whole.get(name))
            row[f"{name}_lm_head_share"] = _ratio(f.get("lm_head"), whole.get(name))
        for name, p in (("fp16", f), ("mixkern", m)):
            row[f"{name}_host_s"] = p.get("host")
        for name in ("fp16", "mixkern"):
            e, g = eager.get(name), graph.get(name)
            row[f"{name}_eager_minus_graph_s"] = (e - g if isinstance(e, float) and isinstance(g, float)
                                                  else g if isinstance(g, str) else None)
        out.append(row)
    return out


def _label(mode: str, spec: Spec) -> str:
    return {"eager": "decode eager", "compile": "decode torch.compile (reduce-overhead)", "graph": "decode CUDA graph",
            "prefill": f"prefill {spec.prefill} tokens, eager",
            "generate": f"generate() {spec.prompt}+{spec.new_tokens}, eager"}[mode]


def _rate(row: dict, key: str) -> str:
    v = row[key]
    return f"{row['tokens'] / v:,.1f}" if isinstance(v, float) else (v or "-")


def table(rows: list[dict], spec: Spec, layers: int) -> str:
    """Markdown: mode x batch rows; fp16 and mixkern tokens/s, speedup, ms per decoder layer
    (the whole forward / layers: embedding and lm_head included, so an upper bound)."""
    unfused = any(r["unfused"] is not None for r in rows)
    head = ("| mode | batch | fp16 tok/s | mixkern tok/s | speedup | fp16 ms/layer | mixkern ms/layer |"
            + (" mixkern unfused tok/s |" if unfused else ""))
    lines = [head, "|---|---:|" + "---:|" * (head.count("|") - 3)]
    for r in rows:
        both = isinstance(r["fp16"], float) and isinstance(r["mixkern"], float)
        ms = [f"{r[k] / layers * 1e3:.3f}" if isinstance(r[k], float) else "-" for k in ("fp16", "mixkern")]
        speedup = f"{r['fp16'] / r['mixkern']:.2f}x" if both else "-"
        lines.append(f"| {_label(r['mode'], spec)} | {r['batch']} | {_rate(r, 'fp16')} | {_rate(r, 'mixkern')} "
                     f"| {speedup} | {ms[0]} | {ms[1]} |"
                     + (f" {_rate(r, 'unfused')} |" if unfused else ""))
    return "\n".join(lines)


def _ms(v) -> str:
    return f"{v * 1e3:.3f}" if isinstance(v, float) else (v or "-")


def _timed_as(r: dict) -> str:
    if r["linears_timed"] == "eager":
        return "eager (CUDA graph n/a on CPU)"
    return {"graph": "CUDA graph", "eager": "linears CUDA graph, step eager"}.get(r["step_timed"], "linears CUDA graph")


LINEARS_NOTE = ("linears: one step's decoder-layer linears back to back (fp16 nn.Linear / mixkern, fused groups one "
                "GEMM); lm_head: the fp16 head alone, in both steps and in neither share; share: linears / whole step; "
                "host: CPU time to issue one eager step, device not awaited; eager-graph: eager step minus CUDA-graph step")


def linears_table(lrows: list[dict], spec: Spec) -> str:
    """Markdown: where a step's time goes, per decode batch (and prefill), in ms per step of the
    whole model (not per layer): the linears alone, fp16 and mixkern, their speedup and share of
    the whole step, the lm_head, and the host time an eager step adds.  A note line follows."""
    head = ("| step | batch | timed as | fp16 linears ms | mixkern linears ms | linears speedup | lm_head ms "
            "| fp16 step ms | mixkern step ms | fp16 linear share | mixkern linear share | fp16 host ms "
            "| mixkern host ms | fp16 eager-graph ms | mixkern eager-graph ms |")
    lines = [head, "|---|---:|---|" + "---:|" * (head.count("|") - 4)]
    for r in lrows:
        share = [f"{v:.1%}" if isinstance(v, float) else "-" for v in (r["fp16_linear_share"], r["mixkern_linear_share"])]
        speedup = f"{r['linears_speedup']:.2f}x" if r["linears_speedup"] else "-"
        step = f"prefill {spec.prefill} tokens" if r["step"] == "prefill" else "decode"
        cells = [step, str(r["batch"]), _timed_as(r), _ms(r["fp16_linears_s"]), _ms(r["mixkern_linears_s"]), speedup,
                 _ms(r["lm_head_s"]), _ms(r["fp16_step_s"]), _ms(r["mixkern_step_s"]), *share,
                 *(_ms(r[f"{n}_{k}"]) for k in ("host_s", "eager_minus_graph_s") for n in ("fp16", "mixkern"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + LINEARS_NOTE


def _plot_rates(ax, rows: list[dict], spec: Spec) -> None:
    """Grouped bars of tokens/s (log scale), fp16 beside mixkern, speedup written above."""
    rows = [r for r in rows if isinstance(r["fp16"], float) and isinstance(r["mixkern"], float)]
    xs = range(len(rows))
    for offset, key, name in ((-0.2, "fp16", "fp16"), (0.2, "mixkern", "mixkern W4A8")):
        ax.bar([x + offset for x in xs], [r["tokens"] / r[key] for r in rows], 0.4, label=name)
    for x, r in zip(xs, rows):
        ax.annotate(f"{r['fp16'] / r['mixkern']:.2f}x", (x + 0.2, r["tokens"] / r["mixkern"]), ha="center",
                    va="bottom", fontsize=7)
    ax.set_xticks(list(xs), [f"{_label(r['mode'], spec)}\nbatch {r['batch']}" for r in rows], rotation=45,
                  ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("tokens/s")
    ax.legend()


def _plot_linears(ax, lrows: list[dict]) -> None:
    """ms per step (linear scale, so bar heights show the shares): each model's whole step (pale)
    with its linears' part inside (solid), the linear share written above: how much of the step
    a faster GEMM can move."""
    keys = ("fp16_linears_s", "mixkern_linears_s", "fp16_step_s", "mixkern_step_s")
    lrows = [r for r in lrows if all(isinstance(r[k], float) for k in keys)]
    xs = range(len(lrows))
    for offset, name, color in ((-0.2, "fp16", "C0"), (0.2, "mixkern", "C1")):
        pos = [x + offset for x in xs]
        ax.bar(pos, [r[f"{name}_step_s"] * 1e3 for r in lrows], 0.4, color=color, alpha=0.3, label=f"{name} step")
        ax.bar(pos, [r[f"{name}_linears_s"] * 1e3 for r in lrows], 0.4, color=color, label=f"{name} linears")
        for x, r in zip(pos, lrows):
            ax.annotate(f"{r[f'{name}_linear_share']:.0%}", (x, r[f"{name}_step_s"] * 1e3), ha="center",
                        va="bottom", fontsize=7)
    ax.set_xticks(list(xs), [f"{r['step']}\nbatch {r['batch']}" if r["step"] == "decode" else f"prefill\n{r['tokens']}"
                             for r in lrows], fontsize=7)
    ax.set_ylabel("ms per step (linears inside the whole step)")
    ax.legend(fontsize=7)


def plot(rows: list[dict], spec: Spec, path: str, title: str, lrows: list[dict] = ()) -> None:
    """Tokens/s bars per mode; beside them, when the linears were measured, ms per step with the
    linears' part of each step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    width = max(6, 1.1 * len(rows))
    if lrows:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(width + max(5, 1.2 * len(lrows)), 5),
                                      gridspec_kw={"width_ratios": [width, max(5, 1.2 * len(lrows))]})
        _plot_linears(ax2, lrows)
    else:
        fig, ax = plt.subplots(figsize=(width, 5))
    _plot_rates(ax, rows, spec)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The whole-model flags of ``python -m mixkern.bench`` (without ``--model``: the per-layer benchmark)."""
    g = parser.add_argument_group("whole model (--model)")
    g.add_argument("--model", help=f"serving preset ({', '.join(SERVING)}) or a HF config.json path")
    g.add_argument("--layers", type=positive(int), help="decoder layers to build (default: all)")
    g.add_argument("--tp", type=positive(int), default=1, help="one tensor-parallel rank's shard shapes")
    g.add_argument("--context", type=positive(int), default=Spec.context, help="KV-cache tokens for decode")
    g.add_argument("--batches", type=positive(int), nargs="+", default=list(Spec.batches), help="decode batch sizes")
    g.add_argument("--prefill", type=positive(int), default=Spec.prefill, help="prefill tokens (batch 1)")
    g.add_argument("--steps", type=positive(int), default=Spec.steps, help="decode steps per timed run")
    g.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    g.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=True,
                   help="fuse q/k/v and gate/up (default on; eager decode is also reported unfused)")
    g.add_argument("--device", default="cuda", help="cuda (default) or cpu (the slow reference op: --model tiny)")


def main(args: argparse.Namespace) -> int:
    """``python -m mixkern.bench --model ...``: print the table; ``--json``/``--plot`` as asked."""
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        return error(f"--device {args.device}: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        return error("no CUDA GPU: --model needs one, or --device cpu (the slow reference op; use --model tiny)")
    try:
        import transformers  # noqa: F401
    except ImportError:
        return error("--model needs transformers: pip install 'transformers>=5,<6'")
    try:
        config = hf_config(args.model, args.tp, args.layers)
    except ValueError as e:
        return error(e)
    spec = Spec(tuple(args.batches), args.context, args.prefill, steps=args.steps, modes=tuple(args.modes))
    rows, lrows, info = run(config, device, spec, args.fuse)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    title = (f"{args.model}, tp {args.tp} (one rank), {info['layers']} layers, context {spec.context}, "
             f"{FRACTION_8BIT:.0%} 8-bit rows{', fused' if args.fuse else ''}; {name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"title": title, "spec": asdict(spec), **info, "rows": rows, "linears": lrows}, f, indent=1)
    if args.plot:
        plot(rows, spec, args.plot, title, lrows)
    import transformers
    print(f"\n{title}\ntorch {torch.__version__}, transformers {transformers.__version__}; decoder linears "
          f"{info['fp16_bytes'] / 1e6:,.1f} MB fp16 -> {info['mixkern_bytes'] / 1e6:,.1f} MB mixkern\n")
    print(table(rows, spec, info["layers"]))
    if lrows:
        print(f"\nWhere a step's time goes (ms per step, all {info['layers']} layers):\n")
        print(linears_table(lrows, spec))
    return 0
