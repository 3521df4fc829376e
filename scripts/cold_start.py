"""Cold and warm start on a GPU: how long until a quantized model's first decoded token.

    python scripts/cold_start.py [--model llama3-8b] [--layers 4] [--workers 16] [--profile DIR]

Runs fresh processes against one empty TileLang cache directory: (1) cold -- every kernel
compiled by ``mixkern.warmup``; (2) warm -- a new process that finds the cache filled;
each then prefills 16 tokens and decodes one token.  The same process also runs the fp16
model the same way, so "mixkern overhead" is what the quantized model adds to the time to
first token: importing TileLang, warmup, loading the kernels, the first launches.
Weights are random at the model's layer shapes (quantizing is excluded from the times:
users load a quantized checkpoint).  ``--profile DIR`` writes each warm process's cProfile
of warmup + first token to DIR (``warm.prof``, ``warm again.prof``) and prints its top lines.
"""

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time


def child(model_name: str, layers: int, workers: int, profile: str | None = None) -> dict:
    import torch
    from torch import nn

    import mixkern
    from mixkern.shapes import layer_shapes, resolve

    shapes = layer_shapes(resolve(model_name))
    names = ("q", "kv", "kv", "o", "up", "up", "down")  # q, k, v, o, gate, up, down
    torch.manual_seed(0)
    fp16 = nn.Sequential(*[nn.Linear(shapes[n][1], shapes[n][0], bias=False) for _ in range(layers) for n in names])
    fp16 = fp16.half().cuda()
    quant = nn.Sequential(*[mixkern.MixLinear(mixkern.quantize_weight(
        lin.weight, torch.randperm(lin.out_features)[: lin.out_features // 10].tolist())) for lin in fp16])

    def first_token(model) -> float:
        """Prefill 16 tokens, then one decode step, layer by layer (each input of the right width)."""
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for m in (16, 1):
            for lin in model:
                lin(torch.randn(m, lin.in_features, device="cuda", dtype=torch.float16))
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    t_fp16 = first_token(fp16)
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    t0 = time.perf_counter()
    report = mixkern.warmup(quant, workers=workers)
    t_warmup = time.perf_counter() - t0
    t_quant = first_token(quant)
    if prof:
        prof.disable()
        prof.dump_stats(profile)
        pstats.Stats(profile, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
    return {"fp16_first_token_s": t_fp16, "warmup_s": t_warmup, "kernels": report.kernels,
            "compiled_now": report.compiled, "quantized_first_token_s": t_quant,
            "mixkern_overhead_s": t_warmup + t_quant - t_fp16}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama3-8b")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--profile", help="directory for the warm processes' cProfile dumps")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        profile = os.path.join(args.profile, f"{args.child}.prof") if args.profile and args.child != "cold" else None
        print(json.dumps(child(args.model, args.layers, args.workers, profile)))
        return 0
    cache = tempfile.mkdtemp(prefix="mixkern-cold-")
    env = {**os.environ, "TILELANG_CACHE_DIR": cache}
    rows = []
    for label in ("cold", "warm", "warm again"):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--child", label, "--model", args.model, "--layers",
                              str(args.layers), "--workers", str(args.workers)] + (["--profile", args.profile]
                             if args.profile else []), env=env, capture_output=True, text=True)
        print(out.stderr, file=sys.stderr)
        if out.returncode:
            return 1
        rows.append((label, time.perf_counter() - t0, json.loads(out.stdout.strip().splitlines()[-1])))
    print(f"\n{args.model}, {args.layers} layers x 7 linears, 10% 8-bit; cache {cache}\n")
    print("| process | whole process s | warmup s | kernels (compiled now) | first token fp16 s | first token mixkern s "
          "| mixkern overhead s |\n|---|---:|---:|---:|---:|---:|---:|")
    for label, wall, r in rows:
        print(f"| {label} | {wall:.1f} | {r['warmup_s']:.2f} | {r['kernels']} ({r['compiled_now']}) "
              f"| {r['fp16_first_token_s']:.2f} | {r['quantized_first_token_s']:.2f} | {r['mixkern_overhead_s']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
