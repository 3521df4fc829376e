"""python -m mixkern.eval --model DIR [--quantized DIR] [--table]

Perplexity (per byte) on the held-out split of the shipped corpus.  With ``--table`` it
runs the accuracy experiment of MixLLM on one model: fp16, W8A8, W4A8 with no 8-bit
features, global salience at 5/10/20%, and local top-k and random choice at 10%, all with
the same salience scores and the same held-out tokens.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from . import corpus
from .lm import load_model, perplexity

TABLE = [  # (label, QuantConfig keywords) -- None: the unquantized model
    ("fp16", None),
    ("W8A8 (all features 8-bit)", dict(fraction=1.0)),
    ("W4A8 g128, 0% 8-bit", dict(fraction=0.0)),
    ("MixLLM global, 5%", dict(fraction=0.05)),
    ("MixLLM global, 10%", dict(fraction=0.10)),
    ("MixLLM global, 20%", dict(fraction=0.20)),
    ("local top-k, bits of global 10%", dict(method="local")),  # bits= filled in from the global 10% row
    ("random, bits of global 10%", dict(method="random")),
]


def held_out(seq_len: int, tokens: int | None) -> torch.Tensor:
    toks = corpus.tokens("test")
    count = None if tokens is None else max(1, tokens // seq_len)
    return corpus.sequences(toks, seq_len, count)


def _runtime(model, device):
    return model.to(device).half() if device == "cuda" else model.to(device)


def table(model_dir: str, tokens: int | None, calib_seqs: int, second_order: str, batch: int,
          calib_split: str = "calib") -> str:
    from .model import QuantConfig, quantize_model
    from .quantize.__main__ import calibration_batches
    from .quantize.salience import feature_salience, quantizable_linears
    from .lm import next_token_loss
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = load_model(model_dir)
    seqs = held_out(base.config.seq_len, tokens)
    calib = calibration_batches("kjv" if calib_split == "calib" else "kjv-train", base.config.seq_len, calib_seqs, batch, device)
    t0 = time.perf_counter()
    scorer = copy.deepcopy(base).to(device)
    salience = feature_salience(scorer, calib, next_token_loss, quantizable_linears(scorer), 128, second_order)
    del scorer
    t_sal = time.perf_counter() - t0
    rows = []
    for label, kw in TABLE:
        model = copy.deepcopy(base)
        bits = 16.0
        if kw is not None:
            if "method" in kw:  # the same bit budget as MixLLM global 10%
                kw = {**kw, "bits": next(b for lab, b, _ in rows if lab == "MixLLM global, 10%")}
            report = quantize_model(model.to(device), None, QuantConfig(**kw, second_order=second_order), salience=salience)
            bits = report.average_bits
        ppl = perplexity(_runtime(model, device), seqs, desc=label)
        rows.append((label, bits, ppl))
    fp, w4 = rows[0][2], rows[2][2]
    lines = [f"held-out: {seqs[:, 1:].numel()} byte tokens ({len(seqs)} x {base.config.seq_len}) of {corpus.PACKAGE} "
             f"{corpus.VERSION}; calibration: {sum(b[:, 1:].numel() for b in calib)} tokens of the {calib_split} split; salience ({second_order}) "
             f"{t_sal:.0f}s on {device}", "",
             "| configuration | bits/weight | perplexity | gap to fp16 recovered (vs W4A8 0%) |", "|---|---:|---:|---:|"]
    for label, bits, ppl in rows:
        rec = "" if label.startswith(("fp16", "W4A8")) or w4 == fp else f"{(w4 - ppl) / (w4 - fp):.0%}"
        lines.append(f"| {label if device == 'cuda' or label != 'fp16' else 'fp32 (CPU)'} | {bits:.3f} | {ppl:.4f} | {rec} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mixkern.eval", description=__doc__.split("\n\n")[1])
    p.add_argument("--model", required=True, help="mixkern.lm checkpoint directory (the unquantized model)")
    p.add_argument("--quantized", help="a save_quantized directory to evaluate instead of the model")
    p.add_argument("--table", action="store_true", help="run the whole accuracy table")
    p.add_argument("--tokens", type=int, help="held-out tokens to use (default: the whole test split)")
    p.add_argument("--calib-seqs", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--second-order", choices=["hessian", "fisher"], default="hessian")
    p.add_argument("--calib-split", choices=["calib", "train"], default="calib",
                   help="calibration text: the held-out calibration chapters, or the model's own training chapters")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        if args.table:
            print(table(args.model, args.tokens, args.calib_seqs, args.second_order, args.batch, args.calib_split))
            return 0
        if args.quantized:
            from .model import load_quantized
            model = load_quantized(args.quantized)
        else:
            model = load_model(args.model)
        seqs = held_out(model.config.seq_len, args.tokens)
        ppl = perplexity(_runtime(model, device), seqs)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"perplexity {ppl:.4f} per byte on {seqs[:, 1:].numel()} held-out tokens ({device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
