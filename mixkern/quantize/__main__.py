"""python -m mixkern.quantize --model DIR --calib kjv|TEXT --bits 4.4 --out DIR

Quantizes a mixkern.lm checkpoint: salience from calibration text, 8-bit features chosen
globally (or --method local/random) under the budget, packed weights saved with
save_quantized.  Runs on the GPU when one is present, else on the CPU.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def calibration_batches(calib: str, seq_len: int, count: int, batch: int, device) -> list[torch.Tensor]:
    from .. import corpus
    splits = {"kjv": "calib", "kjv-train": "train"}
    toks = corpus.tokens(splits[calib]) if calib in splits else corpus.text_tokens(calib)
    seqs = corpus.sequences(toks, seq_len, min(count, (toks.numel() - 1) // seq_len))
    return [seqs[i:i + batch].to(device) for i in range(0, len(seqs), batch)]


def add_budget_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bits", type=float, help="average bits per weight over quantized layers (e.g. 4.4)")
    p.add_argument("--fraction", type=float, help="fraction of output features at 8 bits (default 0.1)")
    p.add_argument("--method", choices=["global", "local", "random"], default="global")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--floor", type=float, default=0.0, help="per-layer minimum 8-bit fraction")
    p.add_argument("--cap", type=float, default=1.0, help="per-layer maximum 8-bit fraction")
    p.add_argument("--skip", nargs="*", default=["lm_head", "embed"], help="layer-name parts left unquantized")
    p.add_argument("--second-order", choices=["hessian", "fisher"], default="hessian")
    p.add_argument("--calib", default="kjv", help="'kjv' (the shipped corpus's calibration chapters), 'kjv-train' (its training chapters) or a text file")
    p.add_argument("--calib-seqs", type=int, default=64, help="calibration sequences")
    p.add_argument("--batch", type=int, default=8)


def main(argv=None) -> int:
    from ..lm import load_model
    from ..model import QuantConfig, quantize_model, save_quantized
    p = argparse.ArgumentParser(prog="python -m mixkern.quantize", description=__doc__.split("\n\n")[1])
    p.add_argument("--model", required=True, help="mixkern.lm checkpoint directory")
    p.add_argument("--out", required=True, help="directory for the quantized checkpoint")
    add_budget_args(p)
    args = p.parse_args(argv)
    try:
        config = QuantConfig(bits=args.bits, fraction=args.fraction, method=args.method, group_size=args.group_size,
                             skip=tuple(args.skip), floor=args.floor, cap=args.cap, second_order=args.second_order)
        config.budget()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_model(args.model).to(device)
        t0 = time.perf_counter()
        batches = calibration_batches(args.calib, model.config.seq_len, args.calib_seqs, args.batch, device)
        report = quantize_model(model, batches, config)
        save_quantized(model, args.out, report)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tokens = sum(b[:, 1:].numel() for b in batches)
    print(f"quantized {len(report.shapes)} layers on {device} in {time.perf_counter() - t0:.0f}s "
          f"({tokens} calibration tokens): {report.fraction_8bit:.1%} features 8-bit, "
          f"{report.average_bits:.3f} bits/weight; wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
