"""Host (Python + dispatch) time per eager call of one layer: nn.Linear fp16, mixkern.gemm,
MixLinear and torch.ops.mixkern.gemm called directly (issue 13, item 1).

    python scripts/host_overhead.py                              # H100: N x K = 14336 x 4096, < 2 min
    python scripts/host_overhead.py --device cpu --n 256 --k 512  # CPU: the op runs the reference

"host": CPU wall time of ``--calls`` back-to-back calls without synchronizing, divided by the
calls (few enough that the GPU's launch queue never fills and blocks the host), best of
``--repeats`` rounds after warmup; each round times every path in turn, so a noisy host
(the H100 machine's varies by +-10 us a call between runs) skews no path alone.  "synced": the same loop timed until the GPU has finished, per call
(max(host, GPU) when the two overlap).  On CPU both include the computation (the reference
GEMM), so only the differences between rows mean anything there.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

import mixkern
from mixkern.ops import GEMM, op_args


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--n", type=int, default=14336, help="output features")
    p.add_argument("--k", type=int, default=4096, help="input features")
    p.add_argument("--m", default="1,16,2048", help="token counts, comma-separated")
    p.add_argument("--fraction", type=float, default=0.10, help="share of 8-bit output features")
    p.add_argument("--calls", type=int, default=200, help="back-to-back calls per timing")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA GPU here; run with --device cpu (and a small --n/--k)")
    return args


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_paths(paths: dict, calls: int, repeats: int, device: str) -> dict[str, tuple[float, float]]:
    """{path: (host us/call, synced us/call)}: best of ``repeats`` rounds, each round timing
    ``calls`` calls of every path in turn (interleaved: a noisy host slows all paths alike)."""
    best = {name: (float("inf"), float("inf")) for name in paths}
    for _ in range(repeats):
        for name, f in paths.items():
            for _ in range(min(calls, 20)):
                f()
            sync(device)
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            t1 = time.perf_counter()
            sync(device)
            t2 = time.perf_counter()
            best[name] = (min(best[name][0], t1 - t0), min(best[name][1], t2 - t0))
    return {name: (host / calls * 1e6, synced / calls * 1e6) for name, (host, synced) in best.items()}


def layers(args) -> tuple[nn.Linear, mixkern.PackedWeight, mixkern.MixLinear]:
    """The fp16 layer and its mixed-precision form (every 1/fraction-th feature 8-bit)."""
    torch.manual_seed(0)
    linear = nn.Linear(args.k, args.n, bias=False, dtype=torch.float16, device=args.device)
    eight = list(range(0, args.n, max(1, round(1 / args.fraction)))) if args.fraction > 0 else None
    pw = mixkern.quantize_weight(linear.weight.detach(), eight, clip_search=False)
    return linear, pw, mixkern.MixLinear(pw).to(args.device)


def main(argv=None) -> None:
    args = parse_args(argv)
    ms = [int(m) for m in args.m.split(",")]
    linear, pw, mix = layers(args)
    if args.device == "cuda":
        mixkern.warmup(nn.Sequential(mix), dtypes=(torch.float16,), max_tokens=max(ms))
    print(f"N x K = {args.n} x {args.k}, {pw.idx8.numel()} 8-bit features, {args.device} "
          f"({torch.cuda.get_device_name() if args.device == 'cuda' else 'reference GEMM'}), "
          f"{args.calls} calls x best of {args.repeats}\n")
    print("| M | path | host us/call | synced us/call | host - nn.Linear host |")
    print("|---|---|---|---|---|")
    with torch.no_grad():  # as in generation
        for m in ms:
            x = torch.randn(m, args.k, dtype=torch.float16, device=args.device)
            flat = op_args(x, pw)
            paths = {"nn.Linear fp16": lambda: linear(x), "mixkern.gemm": lambda: mixkern.gemm(x, pw),
                     "MixLinear": lambda: mix(x), "torch.ops.mixkern.gemm": lambda: GEMM(*flat)}
            times = time_paths(paths, args.calls, args.repeats, args.device)
            base = times["nn.Linear fp16"][0]
            for name, (host, synced) in times.items():
                print(f"| {m} | {name} | {host:.1f} | {synced:.1f} | {host - base:+.1f} |", flush=True)
    print(f"\ntorch._dynamo imported: {'torch._dynamo' in sys.modules} (the eager op path should not need it)")


if __name__ == "__main__":
    main()
