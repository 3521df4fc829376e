"""The op at 24..160 tokens on Llama / Qwen layer shapes, against an earlier checkout in the same run.

    git worktree add /tmp/before 8d0525f   # e.g. stop 25
    PYTHONPATH=/tmp/before python scripts/store_speed.py before [--format mixllm]   # writes $OUT/store_before_<format>.json
    python scripts/store_speed.py now [--format mixllm]        # also prints the table against it

Op time of mixkern.gemm with its own schedule pick (CUDA graphs, rotated operands, L2 cold, 10% 8-bit rows,
activation quantization included), each cell checked bit-equal to the reference (for mixllm in the fp32 order
of the K slices the op runs); 'now' adds cuBLAS fp16 and, for mixllm, the progressive format's time (issue 14
asks mixllm for >= 0.85x of it).  Whichever mixkern comes first on PYTHONPATH runs, so the two runs differ only
in the library.
"""
import argparse
import json
import os

import torch

import mixkern
from mixkern.kernels import launch as L
from mixkern.schedules import for_mixllm, format_pick, pick
from mixkern.bench import _clone_packed, _rotated_ms, copies_needed
from mixkern.reference import quantize_for, reference_gemm_quantized
from mixkern.warmup import compile_jobs

SHAPES = [(4096, 4096), (1024, 4096), (6144, 4096), (14336, 4096), (4096, 14336), (8192, 8192), (3584, 18944),
          (18944, 3584), (2048, 8192), (28672, 8192)]
MS = (24, 32, 64, 128, 160)


def reference(x, pw, m):
    """The reference in the op's fp32 order (an older checkout has no split mixllm kernel: one slice)."""
    slices = getattr(L, "chain_slices", lambda *a: 1)(m, pw, x.device)
    extra = {"split_k": slices} if slices > 1 else {}
    return reference_gemm_quantized(*quantize_for(x, pw), pw, torch.float16, **extra)


def time_cell(n, k, m, pws, wh, fmt, now):
    """{t: us, exact, fp16 / progressive: us on 'now'} for one shape and token count."""
    dev, pw = wh.device, pws[fmt]
    c = copies_needed(n * k // 2 + m * k * 2)
    xs = [torch.randn(m, k, device=dev, dtype=torch.float16) for _ in range(c)]
    cps = {f: [p] + [_clone_packed(p) for _ in range(c - 1)] for f, p in pws.items()}
    ref = reference(xs[1], pw, m)
    exact = all(torch.equal(mixkern.gemm(xs[1], cps[fmt][1]), ref) for _ in range(3))
    op = lambda f: min(_rotated_ms(lambda i: mixkern.gemm(xs[i], cps[f][i]), c) for _ in range(2)) * 1e3  # noqa: E731
    row = dict(n=n, k=k, m=m, t=op(fmt), exact=exact, fp16=float("nan"), progressive=float("nan"))
    if now:
        whs = [wh.clone() for _ in range(min(c, max(2, int(150e6 // (n * k * 2)))))]
        row["fp16"] = _rotated_ms(lambda i: xs[i] @ whs[i % len(whs)].T, c) * 1e3
        if fmt != "progressive":
            row["progressive"] = op("progressive")
    return row


def table(rows, before, fmt):
    """The markdown table of 'now' against 'before'."""
    mixllm = fmt != "progressive"
    print("| N x K | M | cuBLAS fp16 | before | now | now vs fp16 | gain | exact |"
          + (" progressive | mixllm / progressive speed |" if mixllm else "") + " schedule |")
    print("|---|---:|---:|---:|---:|---:|---:|---|" + ("---:|---:|" if mixllm else "") + "---|")
    for r in rows:
        b = before[(r["n"], r["k"], r["m"])]
        ratio = f" {r['progressive']:.1f} | {r['progressive'] / r['t']:.2f}x |" if mixllm else ""
        print(f"| {r['n']}x{r['k']} | {r['m']} | {r['fp16']:.1f} | {b['t']:.1f} | {r['t']:.1f} | "
              f"{r['fp16'] / r['t']:.2f}x | {b['t'] / r['t']:.2f}x | {r['exact'] and b['exact']} |{ratio} `{r['key']}` |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tag", choices=["before", "now"])
    ap.add_argument("--format", default="progressive", choices=["progressive", "mixllm"])
    args = ap.parse_args()
    out, now, fmt = os.environ.get("OUT", "/tmp"), args.tag == "now", args.format
    print(args.tag, fmt, mixkern.__file__, flush=True)
    dev = torch.device("cuda")
    arch, sms = L.arch_of(dev), L.sm_count(dev)
    fmts = {fmt, "progressive"} if now else {fmt}
    compile_jobs(list(dict.fromkeys(j for n, k in SHAPES for m in MS for f in fmts for j in L.kernel_jobs(
        arch, k, 128, pick(arch, m, n, k, 128, n // 10, sms, **format_pick(f)), "float16", True, True, f))))
    rows, path = [], f"{out}/store_{args.tag}_{fmt}.json"
    for n, k in SHAPES:
        w = torch.randn(n, k, device=dev) * 0.05
        idx = torch.randperm(n)[: n // 10].tolist()
        pws = {f: mixkern.quantize_weight(w, idx, 128, format=f) for f in fmts}
        for m in MS:
            row = time_cell(n, k, m, pws, w.half(), fmt, now)
            s = pick(arch, m, n, k, 128, n // 10, sms, **format_pick(fmt))
            row["key"] = (for_mixllm(s, k, 128, arch) if fmt == "mixllm" else s).key
            rows.append(row)
            json.dump(rows, open(path, "w"))
            print(f"{n}x{k} M={m} {row['t']:.1f} us exact={row['exact']} {row['key']}", flush=True)
    if now:
        table(rows, {(r["n"], r["k"], r["m"]): r for r in json.load(open(f"{out}/store_before_{fmt}.json"))}, fmt)


if __name__ == "__main__":
    main()
