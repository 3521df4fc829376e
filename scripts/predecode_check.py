"""The predecoded GEMM on the GPU: bit-exactness over formats, 8-bit splits, dtypes, group sizes and
shapes (the op's own schedule and forced tiles; a NaN token), then the M crossover against the
in-loop-decode tiles, as a table (H100: ~2.5 min with a warm kernel cache).

    python scripts/predecode_check.py [--check-only]
    MIXKERN_ARCH=sm_80+sm_90 python scripts/predecode_check.py --check-only   # the Ampere build, on an H100
"""
import os, sys, time, random, torch
sys.path.insert(0, "tests")
from strategies import gpu_case, within
import mixkern
from mixkern import tolerance
from mixkern.reference import float64_gemm_quantized, reference_gemm_quantized, quantize_for, token_slices
from mixkern.kernels import launch as L
from mixkern.schedules import Schedule, format_pick, pick, fit
from mixkern.warmup import compile_jobs
from mixkern.bench import _rotated_ms, copies_needed, _clone_packed
dev = torch.device("cuda"); arch, sms = L.arch_of(dev), L.sm_count(dev)
S = Schedule
PD = [S(64,128,128,4,128,predecode=True), S(128,256,128,3,256,predecode=True), S(128,128,128,4,256,predecode=True)]
F16, B16 = torch.float16, torch.bfloat16
cases = []  # (m, n, k, fraction, dtype, group, fmt, schedule or None)
for fmt in ("progressive", "mixllm"):
    cases += [(77, 520, 4096, f, d, 128, fmt, s) for s in PD for f in (0.0, 0.1, 1.0) for d in (F16, B16)]
    cases += [(100, 1000, 3584, 0.1, F16, 64, fmt, s) for s in PD[:2]] + [(100, 1000, 4608, 0.1, B16, 256, fmt, s) for s in PD[:2]]
    shapes = [(65, 4104, 3584), (256, 1000, 8960), (1000, 20000, 1536), (3000, 3584, 18944), (4096, 4096, 4096),
              (257, 4097, 4096), (129, 8, 128), (700, 37888, 3584)]
    cases += [(m, n, k, f, (F16, B16)[i % 2], 128, fmt, None) for i, (m, n, k) in enumerate(shapes) for f in (0.0, 0.1, 1.0)]
def sched(c):
    m, n, k, f, d, g, fmt, s = c
    return s or pick(arch, m, n, k, g, round(f * n), sms, **format_pick(fmt))
jobs = [j for c in cases for j in L.kernel_jobs(arch, c[2], c[5], fit(sched(c), c[2], c[5]), str(c[4]).split(".")[1],
                                                 round(c[3] * c[1]) < c[1], c[3] > 0, c[6])]
t0 = time.time(); compile_jobs(list(dict.fromkeys(jobs))); print(f"compiled {len(set(jobs))} in {time.time()-t0:.0f}s", flush=True)
L.POISON_OUTPUT = True
bad = 0
for i, c in enumerate(cases):
    m, n, k, f, d, g, fmt, s = c
    pw, x = gpu_case(1000 + i, m, n, k, f, d, g, fmt, outlier_channels=fmt == "mixllm")
    nan_row = m // 2 if i % 7 == 3 else None
    if nan_row is not None:
        x[nan_row, 5] = float("nan")
    y = L.gemm_cuda(x, pw, s) if s else mixkern.gemm(x, pw)
    clean = [r for r in range(m) if r != nan_row]
    yc = y[clean]
    xq, a = quantize_for(x[clean], pw)
    ref = reference_gemm_quantized(xq, a, pw, d)
    eq = torch.equal(yc, ref) and (nan_row is None or not torch.isfinite(y[nan_row]).any())
    inb = all(bool(within(yc[sl], float64_gemm_quantized(xq[sl], a[sl], pw), tolerance(xq[sl], a[sl], pw, d)))
              for sl in token_slices(len(clean), pw))
    unwritten = int(torch.isnan(yc).sum())
    key = fit(sched(c), k, g).key
    print(f"{i + 1}/{len(cases)} {fmt} m={m} n={n} k={k} f={f} g={g} {key}: {'ok' if eq and inb and not unwritten else 'FAIL'}",
          flush=True)
    if not (eq and inb and unwritten == 0):
        bad += 1
        print(f"FAIL {fmt} m={m} n={n} k={k} f={f} {d} g={g} {key}: equal={eq} bound={inb} unwritten={unwritten} "
              f"mismatch={(yc != ref).float().mean().item():.4f}", flush=True)
print(f"checked {len(cases)} cases on {arch}, {bad} failed", flush=True)
if "--check-only" in sys.argv:
    sys.exit(1 if bad else 0)
# crossover: in-loop decode tiles vs predecoded tiles, progressive and mixllm, 10% 8-bit
print("| N x K | M | fmt | in-loop best us | predecoded best us | pd speedup |")
print("|---|---:|---|---:|---:|---:|")
OLD = [S(64,128,128,2,256), S(128,128,128,3,256), S(64,64,128,3,128)]
for n, k in [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192)]:
    w = torch.randn(n, k, device=dev) * 0.05
    idx = torch.randperm(n)[: n // 10].tolist()
    for fmt in ("progressive", "mixllm"):
        pw = mixkern.quantize_weight(w, idx, 128, format=fmt)
        olds = [fit(s, k, 128) for s in OLD]
        compile_jobs(list(dict.fromkeys(j for s in olds + PD for j in L.kernel_jobs(arch, k, 128, s, "float16", True, True, fmt))))
        for m in (48, 64, 80, 128, 192):
            c = copies_needed(n * k // 2 + m * k * 2)
            xs = [torch.randn(m, k, device=dev, dtype=F16) for _ in range(c)]
            cp = [pw] + [_clone_packed(pw) for _ in range(c - 1)]
            t = lambda s: _rotated_ms(lambda i: L.gemm_cuda(xs[i], cp[i], s), c) * 1e3
            to, tp = min(t(s) for s in olds), min(t(s) for s in PD)
            print(f"| {n}x{k} | {m} | {fmt} | {to:.1f} | {tp:.1f} | {to / tp:.2f}x |", flush=True)
