"""Qwen2.5-Coder-1.5B: the progressive format (per-token activations) against mixllm (per
(token, group of 128) activations, fp16 group scales), at the same 8-bit features.

    python scripts/qwen_formats.py --salience FILE [--windows 16] [--seq-len 512]

Same held-out windows, calibration and salience as ``python -m mixkern.eval --model
qwen2.5-1.5b --table --salience FILE`` (give that run's file: the global 10% features are
chosen once, by the MixLLM estimator, and used for both formats, so only the format
differs).  Prints W4A8 0% and global 10% per format, with each mixllm row's difference to
the progressive row paired over the windows.

On CPU the layers run ``use_cpu_gemm(model, exact=False)``: progressive rows stay bit-exact;
mixllm rows take the float64 path (``mixkern.models.cpu_gemm.mixllm_float64``) instead of the
format's exact per-group fp32 FMA chain, which CPUs do not vectorize (~2 min a window).
Perplexity does not need that chain's rounding: the float64 sum is within the format's
tolerance of the ideal (~1e-7 relative from the chain, one output ulp in a few elements of
10,000), and 20x faster (a decoder layer 4.5 s -> 0.22 s for 512 tokens).  Checked on held-out
windows 0-3 at W4A8 0%: per-window losses differ from the exact chain's by -0.0027..+0.0023
nats (perplexity 22.224 vs 22.218), no more than a float32-accumulating order, equally within
the format's bound, differs from it (-0.0070..+0.0028, 22.196): the model amplifies any last-ulp
change (activations are re-quantized every layer), so that is the format's own rounding noise,
~0.01 perplexity, far below the mixllm - progressive differences (~0.6-0.8).  Time on 2 CPU
cores for 16 windows: 18 min (load and fp reference ~7 min, each progressive row ~1 min,
each mixllm row ~2.5 min).
"""

import argparse
import sys

import torch


def measure(model, held, desc, fraction, fmt, scores, packs):
    """(bits/weight, per-window losses) of one configuration, as ``mixkern.eval._measure`` but
    with the fast CPU layers (``exact=False``): the exact mixllm chain would take hours here."""
    from mixkern.eval import window_losses
    from mixkern.model import QuantConfig, quantize_model
    from mixkern.models.cpu_gemm import use_cpu_gemm
    report = quantize_model(model, None, QuantConfig(fraction=fraction, format=fmt, second_order="mixllm"),
                            salience=scores, packs=packs)
    if next(model.parameters()).device.type == "cpu":
        use_cpu_gemm(model, exact=False)
    return report.average_bits, window_losses(model, held, 1, desc)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--salience", required=True, help="the eval table's salience file (mixllm and fisher estimators)")
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--calib-seqs", type=int, default=16)
    args = p.parse_args()
    from mixkern.eval import Row, _swap_back, paired, window_losses
    from mixkern.models.evaluate import cached_salience, data
    from mixkern.models.qwen import load_qwen
    from mixkern.quantize.salience import all_precisions, quantizable_linears

    model, tokenizer = load_qwen("fp32")
    held, calib = data(tokenizer, "austen", "austen", args.windows, args.calib_seqs, args.seq_len)
    key = {"text": "austen", "calib": "austen", "calib_seqs": len(calib), "seq_len": args.seq_len,
           "estimators": ["mixllm", "fisher"], "dtype": "torch.float32"}
    salience, _, _ = cached_salience(args.salience, key, lambda: sys.exit("no salience file: run the eval table first"))
    layers = quantizable_linears(model)
    fp = Row("fp reference", 32.0, window_losses(model, held, 1, "fp reference"))
    rows = {}
    for fmt in ("progressive", "mixllm"):
        packs = {n: all_precisions(m.weight, 128, fmt) for n, m in layers.items()}
        for label, fraction in (("W4A8 g128, 0% 8-bit", 0.0), ("MixLLM global 10%", 0.10)):
            rows[fmt, label] = Row(label, *measure(model, held, f"{label} [{fmt}]", fraction, fmt,
                                                   salience["mixllm"], packs))
            _swap_back(model, layers)
    print(f"\nQwen2.5-Coder-1.5B, {len(held)} x {args.seq_len} held-out Austen tokens; fp reference "
          f"(dequantized GGUF, fp32) perplexity {fp.ppl:.4f}; 8-bit features chosen once (MixLLM estimator)\n")
    print("mixllm rows: float64 sum of the exact int32 group partials (CPUMixLinear(exact=False)), within the format's "
          "tolerance of its exact fp32 FMA chain, not bit-exact; progressive rows: bit-exact\n")
    print("| configuration | format (activations) | bits/weight | perplexity | Δ vs fp ± SE | mixllm − progressive ± SE |")
    print("|---|---|---:|---:|---:|---:|")
    for (fmt, label), r in rows.items():
        acts = "per token" if fmt == "progressive" else "per (token, group of 128)"
        vs = "" if fmt == "progressive" else "{:+.4f} ± {:.4f}".format(*paired(r, rows["progressive", label]))
        print(f"| {label} | {fmt} ({acts}) | {r.bits:.3f} | {r.ppl:.4f} | "
              "{:+.4f} ± {:.4f} | ".format(*paired(r, fp)) + f"{vs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
