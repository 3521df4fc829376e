"""The progressive op at 24..160 tokens on Llama / Qwen layer shapes, against an earlier checkout in the same run.

    git worktree add /tmp/before 8d0525f   # e.g. stop 25
    PYTHONPATH=/tmp/before python scripts/store_speed.py before   # writes $OUT/store_before.json
    python scripts/store_speed.py now                             # also prints the table against it

Op time of mixkern.gemm with its own schedule pick (CUDA graphs, rotated operands, L2 cold, 10% 8-bit rows,
activation quantization included), each cell checked bit-equal to the reference; 'now' adds cuBLAS fp16.
Whichever mixkern comes first on PYTHONPATH runs, so the two runs differ only in the library."""
import json
import os
import sys

import torch

import mixkern
from mixkern.kernels import launch as L
from mixkern.schedules import pick
from mixkern.bench import _clone_packed, _rotated_ms, copies_needed
from mixkern.reference import quantize_for, reference_gemm_quantized
from mixkern.warmup import compile_jobs
tag = sys.argv[1]; OUT = os.environ.get("OUT", "/tmp")
print(tag, mixkern.__file__, flush=True)
dev = torch.device("cuda"); arch, sms = L.arch_of(dev), L.sm_count(dev)
SHAPES = [(4096, 4096), (1024, 4096), (6144, 4096), (14336, 4096), (4096, 14336), (8192, 8192), (3584, 18944),
          (18944, 3584), (2048, 8192), (28672, 8192)]
MS = (24, 32, 64, 128, 160)
jobs = [j for n, k in SHAPES for m in MS
        for j in L.kernel_jobs(arch, k, 128, pick(arch, m, n, k, 128, n // 10, sms), "float16", True, True)]
compile_jobs(list(dict.fromkeys(jobs)))
rows = []
for n, k in SHAPES:
    w = torch.randn(n, k, device=dev) * 0.05; idx = torch.randperm(n)[: n // 10].tolist(); wh = w.half()
    pw = mixkern.quantize_weight(w, idx, 128)
    for m in MS:
        c = copies_needed(n * k // 2 + m * k * 2)
        xs = [torch.randn(m, k, device=dev, dtype=torch.float16) for _ in range(c)]
        cps = [pw] + [_clone_packed(pw) for _ in range(c - 1)]
        ref = reference_gemm_quantized(*quantize_for(xs[1], pw), pw, torch.float16)
        exact = all(torch.equal(mixkern.gemm(xs[1], cps[1]), ref) for _ in range(3))
        t = _rotated_ms(lambda i: mixkern.gemm(xs[i], cps[i]), c) * 1e3
        t2 = _rotated_ms(lambda i: mixkern.gemm(xs[i], cps[i]), c) * 1e3
        fp = float("nan")
        if tag == "now":
            whs = [wh.clone() for _ in range(min(c, max(2, int(150e6 // (n * k * 2)))))]
            fp = _rotated_ms(lambda i: xs[i] @ whs[i % len(whs)].T, c) * 1e3
        key = pick(arch, m, n, k, 128, n // 10, sms).key
        rows.append(dict(n=n, k=k, m=m, t=min(t, t2), fp16=fp, exact=exact, key=key))
        json.dump(rows, open(f"{OUT}/store_{tag}.json", "w"))
        print(f"{n}x{k} M={m} {min(t, t2):.1f} us exact={exact} {key}", flush=True)
if tag == "now":
    before = {(r["n"], r["k"], r["m"]): r for r in json.load(open(f"{OUT}/store_before.json"))}
    print("| N x K | M | cuBLAS fp16 | before | now | now vs fp16 | gain | exact | schedule |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        b = before[(r["n"], r["k"], r["m"])]
        print(f"| {r['n']}x{r['k']} | {r['m']} | {r['fp16']:.1f} | {b['t']:.1f} | {r['t']:.1f} | {r['fp16'] / r['t']:.2f}x | "
              f"{b['t'] / r['t']:.2f}x | {r['exact'] and b['exact']} | `{r['key']}` |")
