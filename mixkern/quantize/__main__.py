"""python -m mixkern.quantize --model DIR --calib kjv|TEXT --bits 4.4 --out DIR

Quantizes a mixkern.lm checkpoint: salience from calibration text, 8-bit features chosen
globally (or --method local/random) under the budget, packed weights saved with
save_quantized.  Runs on the GPU when one is present, else on the CPU.

Everything knowable from the arguments, the checkpoint's layer shapes and the installed
packages is checked before the salience pass (the expensive part), so a budget below the
all-4-bit cost or a missing file fails in seconds with one line naming the fix.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

from .._cli import check_output_dir, error, positive, unit_fraction
from ..format import GROUP_SIZES


CALIB_SPLITS = {"kjv": "calib", "kjv-train": "train"}


def calibration_batches(calib: str, seq_len: int, count: int, batch: int, device) -> list[torch.Tensor]:
    from .. import corpus
    toks = corpus.tokens(CALIB_SPLITS[calib]) if calib in CALIB_SPLITS else corpus.text_tokens(calib)
    seqs = corpus.sequences(toks, seq_len, min(count, (toks.numel() - 1) // seq_len))
    if not len(seqs):
        raise ValueError(f"--calib {calib} holds {toks.numel()} bytes; one calibration sequence needs {seq_len + 1}: use a longer text")
    return [seqs[i:i + batch].to(device) for i in range(0, len(seqs), batch)]


def check_calibration_source(calib: str) -> None:
    """The calibration text exists (the shipped corpus installed, or the file present)."""
    if calib in CALIB_SPLITS:
        from .. import corpus
        corpus.kjv_path()
    elif not os.path.isfile(calib):
        raise FileNotFoundError(f"--calib {calib}: no such file; give 'kjv', 'kjv-train' or the path of a text file")


def check_budget(shapes: dict[str, tuple[int, int]], config) -> None:
    """A --bits budget must at least pay for every layer in 4 bits (known from the shapes alone)."""
    from .allocation import average_bits
    if config.bits is None:
        return
    lo = average_bits(shapes, {}, config.group_size, config.format)
    if config.bits < lo:
        raise ValueError(f"budget of {config.bits} bits/weight is below the all-4-bit cost {lo:.4f} of this model's "
                         f"{len(shapes)} layers (group size {config.group_size}): use --bits {math.ceil(lo * 100) / 100:.2f} "
                         f"or more, or --fraction")
    hi = average_bits(shapes, {n: s[0] for n, s in shapes.items()}, config.group_size, config.format)
    if config.bits >= hi:
        print(f"note: --bits {config.bits} pays for every feature in 8 bits ({hi:.4f} bits/weight)", file=sys.stderr)


def add_budget_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bits", type=positive(float), help="average bits per weight over quantized layers (e.g. 4.4)")
    p.add_argument("--fraction", type=unit_fraction, help="fraction of output features at 8 bits (default 0.1)")
    p.add_argument("--method", choices=["global", "local", "random"], default="global")
    p.add_argument("--group-size", type=int, default=128, choices=GROUP_SIZES)
    p.add_argument("--floor", type=unit_fraction, default=0.0, help="per-layer minimum 8-bit fraction")
    p.add_argument("--cap", type=unit_fraction, default=1.0, help="per-layer maximum 8-bit fraction")
    p.add_argument("--skip", nargs="*", default=["lm_head", "embed"], help="layer-name parts left unquantized")
    p.add_argument("--second-order", choices=["hessian", "fisher"], default="hessian")
    p.add_argument("--calib", default="kjv", help="'kjv' (the shipped corpus's calibration chapters), 'kjv-train' (its training chapters) or a text file")
    p.add_argument("--calib-seqs", type=positive(int), default=64, help="calibration sequences")
    p.add_argument("--batch", type=positive(int), default=8)


def _prepare(args, device):
    """Everything that can fail on the user's input, before the salience pass: -> (config, model, batches)."""
    from ..lm import load_model
    from ..model import QuantConfig
    from .salience import quantizable_linears
    config = QuantConfig(bits=args.bits, fraction=args.fraction, method=args.method, group_size=args.group_size,
                         skip=tuple(args.skip), floor=args.floor, cap=args.cap, second_order=args.second_order)
    config.budget()
    if config.floor > config.cap:
        raise ValueError(f"--floor {config.floor} exceeds --cap {config.cap}")
    check_output_dir(args.out, "--out")
    if os.path.realpath(args.out) == os.path.realpath(args.model):
        raise ValueError(f"--out {args.out} is the model directory: its model.safetensors would be overwritten; choose another --out")
    check_calibration_source(args.calib)
    model = load_model(args.model).to(device)
    check_budget({n: tuple(m.weight.shape) for n, m in quantizable_linears(model, config.skip).items()}, config)
    batches = calibration_batches(args.calib, model.config.seq_len, args.calib_seqs, args.batch, device)
    return config, model, batches


def main(argv=None) -> int:
    from ..model import quantize_model, save_quantized
    p = argparse.ArgumentParser(prog="python -m mixkern.quantize", description=__doc__.split("\n\n")[1])
    p.add_argument("--model", required=True, help="mixkern.lm checkpoint directory")
    p.add_argument("--out", required=True, help="directory for the quantized checkpoint")
    add_budget_args(p)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        config, model, batches = _prepare(args, device)
        tokens = sum(b[:, 1:].numel() for b in batches)
        budget = f"{config.bits} bits/weight" if config.bits is not None else f"{config.budget()['fraction']:.0%} of features"
        print(f"quantizing {args.model} on {device}: salience ({config.second_order}) over {tokens} calibration tokens, "
              f"then {config.method} 8-bit choice under {budget}", file=sys.stderr)
        t0 = time.perf_counter()
        report = quantize_model(model, batches, config)
        save_quantized(model, args.out, report)
    except (ValueError, FileNotFoundError) as e:
        return error(e)
    print(f"quantized {len(report.shapes)} layers on {device} in {time.perf_counter() - t0:.0f}s "
          f"({tokens} calibration tokens): {report.fraction_8bit:.1%} features 8-bit, "
          f"{report.average_bits:.3f} bits/weight; wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
