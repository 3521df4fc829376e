"""The real-model accuracy experiment: ``python -m mixkern.eval --model qwen2.5-1.5b --table``.

Held-out text: fixed windows, evenly spaced over Jane Austen's five novels other than
*Sense and Sensibility* (or the KJV test chapters, ``--text kjv``); calibration: windows of
*Sense and Sensibility* (or the KJV calibration chapters), never evaluated.  Every
configuration is swapped into one copy of the model and out again, reusing one
quantization of every row at both precisions, so a row costs one perplexity run.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
from torch import nn

from .._progress import progress
from ..eval import DTYPE_NAMES, LEGEND, comparisons, perplexity, render, run_rows
from .qwen import DTYPES

ACTIVATIONS_NOTE = ("Activations: int8, one scale per token (mixkern's kernel contract). MixLLM's g128 group "
                    "activations (one scale per token per 128 channels) need the MixLLM-format issue: no column "
                    "until that format lands.")


def text_windows(tokenizer, text: str, seq_len: int, count: int) -> torch.Tensor:
    """(count, seq_len + 1) token windows evenly spaced over ``text``."""
    from ..corpus import sequences
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.int64)
    return sequences(ids, seq_len, count, spread=True)


def prose_windows(tokenizer, name: str, split: str, count: int, seq_len: int) -> torch.Tensor:
    """Windows of :func:`mixkern.text.prose` (``austen`` or ``kjv``, split ``test`` or ``calib``)."""
    from ..text import prose
    return text_windows(tokenizer, prose(name, split), seq_len, count)


def data(tokenizer, text: str, calib: str, windows: int, calib_seqs: int, seq_len: int):
    """(held-out windows, calibration windows) of the real model's experiment."""
    return (prose_windows(tokenizer, text, "test", windows, seq_len),
            prose_windows(tokenizer, calib, "calib", calib_seqs, seq_len))


def largest_inputs(model: nn.Module, layers: dict[str, nn.Linear], batch: torch.Tensor) -> tuple[float, str]:
    """(max |x|, layer) over the inputs of the quantized layers on one batch: the outliers
    per-token int8 activations must carry."""
    top = [0.0, ""]

    def hook(name):
        def record(module, inputs, output):
            m = float(inputs[0].detach().abs().max())
            if m > top[0]:
                top[:] = [m, name]
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            model(input_ids=batch.to(next(model.parameters()).device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return top[0], top[1]


def where_chosen(report_eight_bit: dict[str, list[int]], shapes: dict[str, tuple[int, int]]) -> str:
    """Share of each projection's features that got 8 bits, and of the 8-bit features per layer
    third: where a global choice put its budget."""
    kinds, thirds = {}, {}
    layers = sorted({int(n.split(".")[2]) for n in shapes if n.startswith("model.layers.")})
    for name, idx in report_eight_bit.items():
        kind = name.rsplit(".", 1)[-1]
        got, total = kinds.get(kind, (0, 0))
        kinds[kind] = (got + len(idx), total + shapes[name][0])
        third = min(2, 3 * layers.index(int(name.split(".")[2])) // len(layers))
        thirds[third] = thirds.get(third, 0) + len(idx)
    chosen = sum(len(v) for v in report_eight_bit.values()) or 1
    per_kind = ", ".join(f"{k} {g / t:.1%}" for k, (g, t) in kinds.items())
    per_third = ", ".join(f"{name} {thirds.get(i, 0) / chosen:.0%}" for i, name in enumerate(("first", "middle", "last")))
    return f"8-bit share per projection: {per_kind}; of the 8-bit features, layers by thirds: {per_third}"


def cached_salience(path: str | None, key: dict, compute) -> tuple[dict, float, str]:
    """(scores, seconds, how): ``compute()`` once per settings ``key``, kept in ``path`` if given
    (a safetensors file of float64 scores named ``estimator/layer``)."""
    from safetensors.torch import load_file, safe_open, save_file  # float64 (mixkern's own writer has no F64)
    if path and os.path.exists(path):
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(path)
        if meta.get("key") != json.dumps(key, sort_keys=True):
            raise ValueError(f"--salience {path} holds scores for other settings ({meta.get('key')}); "
                             f"delete it or give another file")
        order = json.loads(meta["layers"])  # safetensors sorts names; allocation ties break by layer order
        scores = {e: {n: tensors[f"{e}/{n}"] for n in order} for e in key["estimators"]}
        return scores, float(meta["seconds"]), f"loaded from {path}, computed"
    t0 = time.perf_counter()
    scores = compute()
    seconds = time.perf_counter() - t0
    if path:
        save_file({f"{e}/{n}": t.contiguous() for e, layers in scores.items() for n, t in layers.items()}, path,
                  {"key": json.dumps(key, sort_keys=True), "seconds": f"{seconds:.1f}",
                   "layers": json.dumps(list(next(iter(scores.values()))))})
    return scores, seconds, "computed"


def qwen_table(args, model, tokenizer, device: str) -> str:
    from ..model import lm_loss
    from ..quantize.allocation import allocate
    from ..quantize.salience import all_precisions, quantizable_linears, streamed_salience
    estimators = tuple(args.second_order or ("mixllm", "fisher"))
    held, calib = data(tokenizer, args.text, args.calib, args.windows, args.calib_seqs or 16, args.seq_len)
    layers = quantizable_linears(model)
    top, where = largest_inputs(model, layers, held[:1])
    t0 = time.perf_counter()
    packs = {n: all_precisions(m.weight, 128) for n, m in progress(list(layers.items()), "quantize rows (4- and 8-bit)")}
    t_quant = time.perf_counter() - t0
    key = {"text": args.text, "calib": args.calib, "calib_seqs": len(calib), "seq_len": args.seq_len,
           "estimators": list(estimators), "dtype": str(next(model.parameters()).dtype)}
    salience, t_sal, how = cached_salience(args.salience, key, lambda: streamed_salience(
        model, [c[None].to(device) for c in calib], lm_loss, layers, estimators, packs=packs))
    shapes = {n: tuple(m.weight.shape) for n, m in layers.items()}
    chosen = {e: allocate(s, fraction=0.1) for e, s in salience.items()}
    results = run_rows(model, held, salience, packs, args.batch or 1)
    dtype = DTYPE_NAMES[next(model.parameters()).dtype]
    weights = sum(n * k for n, k in shapes.values())
    lines = [
        f"model: Qwen2.5-Coder-1.5B-Instruct; fp reference = its GGUF (Q4_K_M) dequantized to {dtype} on {device}; "
        f"{len(layers)} quantized linears (q/k/v/o/gate/up/down of every decoder layer, {weights / 1e9:.3f} G weights); "
        f"embeddings and lm_head stay {dtype}",
        f"held-out: {held[:, 1:].numel()} tokens ({len(held)} windows x {args.seq_len}, evenly spaced) of {args.text} "
        f"(test split); calibration: {calib[:, 1:].numel()} tokens ({len(calib)} x {args.seq_len}) of {args.calib} "
        f"(calib split, never evaluated)",
        f"time on {device}: quantize every row at 4 and 8 bits {t_quant:.0f}s; salience ({', '.join(estimators)}, "
        f"one streamed pass) {how} in {t_sal:.0f}s",
        f"largest |x| entering a quantized linear (first held-out window): {top:.0f} ({where})",
        ACTIVATIONS_NOTE, "", render(results, f"fp reference (dequantized GGUF, {dtype})"), "", LEGEND, "",
        *comparisons(results)]
    lines += [f"global 10% ({e}): " + where_chosen({n: v.tolist() for n, v in chosen[e].items()}, shapes)
              for e in estimators]
    if len(estimators) > 1:
        a, b = (chosen[e] for e in estimators[:2])
        same = sum(len(set(a[n].tolist()) & set(b[n].tolist())) for n in a) / max(1, sum(len(v) for v in a.values()))
        lines.append(f"global 10%: {same:.0%} of the features {estimators[0]} chose are also chosen by {estimators[1]}")
    return "\n".join(lines)


def qwen_main(args) -> int:
    from .fetch import fetch_gguf
    from .qwen import load_qwen, load_tokenizer
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = args.dtype or "fp32"
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}")
    if args.quantized and args.table:
        raise ValueError("--quantized evaluates one checkpoint; --table quantizes the model itself: give one")
    t0 = time.perf_counter()
    if args.quantized:
        from ..model import load_quantized
        from .cpu_gemm import use_cpu_gemm
        tokenizer = load_tokenizer(fetch_gguf())
        model = load_quantized(args.quantized).to(device)
        model = use_cpu_gemm(model) if device == "cpu" else model
    else:
        model, tokenizer = load_qwen(dtype)
        model = model.to(device)
    print(f"loaded {args.quantized or f'Qwen2.5-Coder-1.5B-Instruct ({dtype})'} on {device} in "
          f"{time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    if args.table:
        print(qwen_table(args, model, tokenizer, device))
        return 0
    held = prose_windows(tokenizer, args.text, "test", args.windows, args.seq_len)
    ppl = perplexity(model, held, args.batch or 1)
    print(f"perplexity {ppl:.4f} per token on {held[:, 1:].numel()} held-out tokens of {args.text} ({device})")
    return 0
