"""GPU benchmark: mixkern.gemm against cuBLAS fp16 and cuBLASLt int8, side by side in one process.

    python -m mixkern.bench [--shapes 4096x4096 ...] [--m 1 16 4096] [--json out.json] [--plot out.png]
    python -m mixkern.bench --model llama3-8b --layers 4 [--tp 8] ...   # whole model: mixkern/bench_model.py

Every time is the median of ``triton.testing.do_bench`` (which flushes L2 before each
run) over CUDA-graph replays of the op called back to back on rotating copies of its
operands -- as in a captured decode step, where graph launch (~5 us on an H100) is paid
once per step, not per layer, and no copy is still in L2 when it comes round again
(mixkern is also timed eager, one call, launch overhead included); end to end from fp16 x
to fp16 y: mixkern includes its activation quantization, the
W8A8 baseline its own (``torch._int_mm`` plus per-token quantization and scaling in torch).
Each configuration is checked against the exact reference before it is timed; data is
fresh and random.  Floors: weight bytes / measured copy bandwidth (memory), 2MNK / measured
``torch._int_mm`` peak (compute).
"""

import argparse
import importlib.util
import json
import sys
import time

import torch
import torch.nn.functional as F

from .format import PackedWeight
from .quantize import quantize_activation, quantize_weight
from .reference import float64_gemm_quantized, tolerance
from .schedules import fit, pick
from .schedules.heuristic import choose

LLAMA_SHAPES = ["4096x4096", "1024x4096", "14336x4096", "4096x14336", "8192x8192", "28672x8192", "8192x28672"]
M_VALUES = [1, 4, 16, 64, 256, 1024, 4096]


def _median_ms(fn, graph: bool = True) -> float:
    """Median device time of fn; with graph=True, of a CUDA-graph replay (launch gaps removed)."""
    import triton.testing
    if not graph:
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    return _rotated_ms(lambda i: fn(), 1)


ROTATE_BYTES = 150e6  # operand copies cycled through per timing: 3x the H100's 50 MB L2
MAX_COPIES = 48


def copies_needed(nbytes: int) -> int:
    """How many copies of an operand set of ``nbytes`` keep every call's data out of L2."""
    return max(2, min(MAX_COPIES, -(-int(ROTATE_BYTES) // max(int(nbytes), 1))))


def _rotated_ms(fn, copies: int) -> float:
    """Median device time of one call of fn(i), i-th operand copy, from a CUDA graph of
    ``copies`` calls back to back (graph launch amortized, caches cold for each call)."""
    import triton.testing
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        fn(0)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=stream):
            for i in range(copies):
                fn(i)
    return triton.testing.do_bench(g.replay, warmup=25, rep=100, return_mode="median") / copies


def _clone_packed(pw: PackedWeight) -> PackedWeight:
    return PackedWeight.unchecked(**{**pw.__dict__, **{n: t.clone() for n, t in pw.tensors().items()}})


def warm_compile_cache(arch: str, plan: dict, dtypes=("float16",), group_size: int = 128):
    """Compile, in parallel processes, every kernel of the schedules in ``plan`` ({K: schedules})."""
    from .kernels.launch import kernel_jobs_any_split
    from .warmup import compile_jobs
    jobs = {j for dtype in dtypes for k, schedules in plan.items() for s in schedules
            for j in kernel_jobs_any_split(arch, k, group_size, s, dtype)}
    t0 = time.perf_counter()
    built = compile_jobs(sorted(jobs, key=str))
    print(f"{len(jobs)} kernels ready ({built} compiled) in {time.perf_counter() - t0:.0f}s", file=sys.stderr)


def copy_bandwidth() -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read plus written."""
    src = torch.randn(256 * 2**20, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / (_median_ms(lambda: dst.copy_(src), graph=False) * 1e-3)


def int8_peak() -> float:
    a = torch.randint(-127, 127, (8192, 8192), dtype=torch.int8, device="cuda")
    b = torch.randint(-127, 127, (8192, 8192), dtype=torch.int8, device="cuda").T
    return 2 * 8192**3 / (_median_ms(lambda: torch._int_mm(a, b), graph=False) * 1e-3)


def w8a8_torch(x, w8t, s8):
    """The cuBLASLt int8 baseline, scaling included: per-token quant, torch._int_mm, fp32 scales."""
    xq, a = quantize_activation(x, check=False)
    return (torch._int_mm(xq, w8t).float() * a[:, None] * s8[None]).to(x.dtype)


def check(x, pw: PackedWeight, schedule=None) -> float:
    """Max |y - y_float64| / tolerance (<= 1 passes; inf if any output was left unwritten),
    with outputs poisoned first; ``schedule`` overrides the table's."""
    from .kernels.launch import gemm_cuda, poisoned_outputs
    from .ops import gemm
    with poisoned_outputs():
        y = gemm_cuda(x, pw, schedule) if schedule else gemm(x, pw)
    xq, a = quantize_activation(x)
    tol = tolerance(xq, a, pw, x.dtype)
    err = (y.to(torch.float64) - float64_gemm_quantized(xq, a, pw)).abs() / tol
    return float("inf") if torch.isnan(y).any() else err.max().item()


def run(shapes, ms, fractions, seed=0):
    from .kernels.launch import arch_of, gemm_cuda
    from .ops import gemm
    bw, peak = copy_bandwidth(), int8_peak()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s, torch._int_mm peak {peak / 1e12:.0f} TOPS", file=sys.stderr)
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(seed)
    for shape in shapes:
        n, k = map(int, shape.split("x"))
        w = (torch.randn(n, k, device="cuda", generator=gen) * 0.02).half()
        packed = {f: quantize_weight(w, torch.randperm(n, device="cuda", generator=gen)[: round(f * n)].cpu().tolist())
                  for f in fractions}
        w8 = quantize_weight(w, "all")
        r = copies_needed(min(pw.nbytes for pw in packed.values()))
        ws = [w] + [w.clone() for _ in range(r - 1)]
        pws = {f: [pw] + [_clone_packed(pw) for _ in range(r - 1)] for f, pw in packed.items()}
        w8s = [(w8.qweight8.T, w8.scale8)] + [(w8.qweight8.clone().T, w8.scale8) for _ in range(r - 1)]
        for m in ms:  # _int_mm wants B column-major: (K, N) views of (N, K)
            x = torch.randn(m, k, device="cuda", generator=gen).half()
            xs = [x] + [x.clone() for _ in range(r - 1)]
            row = {"shape": shape, "m": m, "copies": r, "fp16_ms": _rotated_ms(lambda i: F.linear(xs[i], ws[i]), r)}
            try:
                row["int8_ms"] = _rotated_ms(lambda i: w8a8_torch(xs[i], *w8s[i]), r) if m > 16 else None
            except RuntimeError:
                row["int8_ms"] = None
            f1 = fractions[-1]
            arch, n8 = arch_of(x.device), packed[f1].idx8.numel()
            heuristic = fit(choose(arch, m, n, k, 128, n8), k, 128)
            row["heuristic"], row["tuned"] = heuristic.key, pick(arch, m, n, k, 128, n8).key
            row[f"mixkern_{f1:g}_heuristic_ms"] = _rotated_ms(lambda i: gemm_cuda(xs[i], pws[f1][i], heuristic), r)
            for f, pw in packed.items():
                row[f"err_{f:g}"] = check(x, pw)
                row[f"mixkern_{f:g}_ms"] = _rotated_ms(lambda i: gemm(xs[i], pws[f][i]), r)
                row[f"mixkern_{f:g}_eager_ms"] = _median_ms(lambda: gemm(x, pw), graph=False)
                row[f"bits_{f:g}"] = pw.bits_per_weight
            del xs
            row["mem_floor_ms"] = packed[fractions[0]].nbytes / bw * 1e3
            row["compute_floor_ms"] = 2 * m * n * k / peak * 1e3
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def table(rows, fractions) -> str:
    f0, f1 = fractions[0], fractions[-1]
    head = (f"| N x K | M | cuBLAS fp16 us | int8 W8A8 us | mixkern {f0:.0%} us | mixkern {f1:.0%} us | {f0:.0%} eager us "
            f"| speedup vs fp16 ({f0:.0%}) | {f0:.0%} / HBM floor | {f1:.0%} / {f0:.0%} | {f1:.0%} heuristic-schedule us "
            f"| tuned / heuristic | max err/tol |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        i8 = f"{r['int8_ms'] * 1e3:.1f}" if r["int8_ms"] else "n/a"
        t0, t1 = r[f"mixkern_{f0:g}_ms"], r[f"mixkern_{f1:g}_ms"]
        floor = max(r["mem_floor_ms"], r["compute_floor_ms"])
        err = max(r[f"err_{f:g}"] for f in fractions)
        lines.append(f"| {r['shape']} | {r['m']} | {r['fp16_ms'] * 1e3:.1f} | {i8} | {t0 * 1e3:.1f} | {t1 * 1e3:.1f} "
                     f"| {r[f'mixkern_{f0:g}_eager_ms'] * 1e3:.1f} "
                     f"| {r['fp16_ms'] / t0:.2f}x | {floor / t0:.0%} | {t1 / t0:.2f} "
                     f"| {r[f'mixkern_{f1:g}_heuristic_ms'] * 1e3:.1f} | {t1 / r[f'mixkern_{f1:g}_heuristic_ms']:.2f} "
                     f"| {err:.2f} |")
    return "\n".join(lines)


def plot(rows, fractions, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for shape in dict.fromkeys(r["shape"] for r in rows):
        rs = [r for r in rows if r["shape"] == shape]
        ax.plot([r["m"] for r in rs], [r["fp16_ms"] / r[f"mixkern_{fractions[0]:g}_ms"] for r in rs], marker="o", label=shape)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("M (tokens)")
    ax.set_ylabel("speedup vs cuBLAS fp16")
    ax.set_title(f"mixkern W4A8 ({fractions[0]:.0%} 8-bit) on {torch.cuda.get_device_name()}")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mixkern.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=LLAMA_SHAPES, help="NxK output x input features")
    parser.add_argument("--m", type=int, nargs="+", default=M_VALUES)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--plot", help="write a PNG here: speedup vs M (with --model: tokens/s bars)")
    from . import bench_model
    bench_model.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("error: --plot needs matplotlib: pip install 'mixkern[plot]' (or leave out --plot)", file=sys.stderr)
        return 2
    if args.model:
        return bench_model.main(args)
    if not torch.cuda.is_available():
        print("error: python -m mixkern.bench needs a CUDA GPU", file=sys.stderr)
        return 2
    from .kernels.launch import arch_of
    arch = arch_of(torch.device("cuda"))
    plan = {}
    for shape in args.shapes:
        n, k = map(int, shape.split("x"))
        for f in args.fractions:
            n8 = round(f * n)
            for m in args.m:
                plan.setdefault(k, set()).update({pick(arch, m, n, k, 128, n8), fit(choose(arch, m, n, k, 128, n8), k, 128)})
    warm_compile_cache(arch, plan)
    rows = run(args.shapes, args.m, args.fractions)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    if args.plot:
        plot(rows, args.fractions, args.plot)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(table(rows, args.fractions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
