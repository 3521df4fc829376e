"""The mixllm decode kernel at 1..4 tokens on the GPU: bit-exactness (the op's picks and explicit
decode schedules, poisoned outputs, outlier channels), op time against progressive and cuBLAS
fp16 (CUDA graphs, rotated operands: cold L2, 10% 8-bit rows), and a sweep of decode schedules.

    python scripts/mixllm_decode.py TAG check speed [sweep]     # H100: ~1.5 min; with sweep ~3 min
    MS=1,2,3,4 ...                                               # token counts (default 1,2,4)

TAG names the run in the table and in $OUT/gv_TAG.json (every sweep time included); an earlier
checkout is timed with its own scripts/format_speed.py (docs/kernels.md, "mixllm decode at 1-4 tokens").
"""
import os, sys, json, time, itertools, torch
import mixkern
from mixkern.bench import _rotated_ms, format_times, random_layer
from mixkern.kernels import launch as L
from mixkern.schedules import pick, for_mixllm, GemvSchedule as G
from mixkern.warmup import compile_jobs
from mixkern.reference import quantize_for, reference_gemm_quantized
from mixkern import quantize_weight
TAG, WHAT = sys.argv[1], sys.argv[2:]
OUT = os.environ.get("OUT", "/tmp")
dev = torch.device("cuda"); arch, sms = L.arch_of(dev), L.sm_count(dev)
SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192), (6144, 4096), (2048, 8192), (8192, 28672), (1536, 8960)]
CHECK = [(4096, 4096, 128), (1000, 8192, 128), (3000, 4608, 256), (2000, 3584, 64), (5000, 14336, 128)]
EXPLICIT = [  # decode schedules checked as given (a fused one runs plain), tokens > rows included
    (G(2, 4, 16), 2048), (G(1, 4, 3), 4608), (G(2, 2, 8), 3584), (G(8, 4, 1, 4, True), 4096),
    (G(4, 2, 4), 8192), (G(2, 1, 2), 14336)]


def sweep_space(k, m):
    """Every plain decode schedule for M tokens at this K: the only form mixllm runs (for_mixllm
    maps a fused or chunked one to it, so timing those would time the same kernel again)."""
    out = []
    for r, w in itertools.product((2, 4, 8), (1, 2, 4, 8)):
        try:
            G(r, w, m).check(k, 128)
        except ValueError:
            continue
        out.append(G(r, w, m))
    return out

def check():
    jobs = []
    for n, k, g in CHECK:
        for m in (1, 2, 3, 4):
            for f in (0.0, 0.1, 1.0):
                n8 = round(f * n)
                for d in ("float16", "bfloat16"):
                    jobs += L.kernel_jobs(arch, k, g, pick(arch, m, n, k, g, n8, sms), d, n8 < n, n8 > 0, "mixllm")
    for s, k in EXPLICIT:
        for d in ("float16", "bfloat16"):
            for h4, h8 in ((True, True), (True, False), (False, True)):
                jobs += L.kernel_jobs(arch, k, 128, s, d, h4, h8, "mixllm")
    compile_jobs(list(dict.fromkeys(jobs)))
    bad = total = 0
    gen = torch.Generator(device="cuda").manual_seed(11)
    cases = [(n, k, g, m, f, dt, None) for n, k, g in CHECK for m in (1, 2, 3, 4) for f in (0.0, 0.1, 1.0)
             for dt in (torch.float16, torch.bfloat16)]
    cases += [(1500, k, 128, s.tokens + e, f, dt, s) for s, k in EXPLICIT for e in (0, 1) for f in (0.0, 0.1, 1.0)
              for dt in (torch.float16, torch.bfloat16)]
    with L.poisoned_outputs():
        for n, k, g, m, f, dt, s in cases:
            w = torch.randn(n, k, device=dev, generator=gen) * 0.05
            idx = torch.randperm(n, device=dev, generator=gen)[: round(f * n)].cpu().tolist()
            pw = quantize_weight(w, idx, g, format="mixllm")
            x = (torch.randn(m, k, device=dev, generator=gen) * 3).to(dt)
            x[:, 5] *= 300
            y = L.gemm_cuda(x, pw, s) if s is not None else mixkern.gemm(x, pw)
            ref = reference_gemm_quantized(*quantize_for(x, pw), pw, dt, split_k=L.chain_slices(m, pw, dev, s))
            total += 1
            if not torch.equal(y, ref):
                bad += 1
                print("MISMATCH", n, k, g, m, f, dt, s, (y.float() - ref.float()).abs().max().item(), flush=True)
    print(f"[{TAG}] exact {total - bad}/{total}", flush=True)

MS = tuple(int(v) for v in os.environ.get("MS", "1,2,4").split(","))

def speed(sweep):
    ms = MS
    jobs = []
    for n, k in SHAPES:
        for m in ms:
            for fmt in ("progressive", "mixllm"):
                jobs += L.kernel_jobs(arch, k, 128, pick(arch, m, n, k, 128, n // 10, sms), "float16", True, True, fmt)
            if sweep and m in (1, 4):
                for s in sweep_space(k, m):
                    jobs += L.kernel_jobs(arch, k, 128, s, "float16", True, True, "mixllm")
    t0 = time.time()
    compile_jobs(list(dict.fromkeys(jobs)))
    print(f"[{TAG}] compiled {len(set(jobs))} in {time.time() - t0:.0f}s", flush=True)
    rows = []
    for n, k in SHAPES:
        wh, pws = random_layer(n, k, dev)
        for m in ms:
            t, (c, xs, _, cps) = format_times(wh, m, pws)
            t16 = t["fp16"]
            best, all_t = (None, float("inf")), {}
            if sweep and m in (1, 4):
                mx = cps["mixllm"]
                for s in sweep_space(k, m):
                    ts = _rotated_ms(lambda i: L.gemm_cuda(xs[i], mx[i], s), c) * 1e3
                    all_t[s.key] = ts
                    best = min(best, (s.key, ts), key=lambda b: b[1])
            key = for_mixllm(pick(arch, m, n, k, 128, n // 10, sms), k, 128, arch).key
            row = dict(tag=TAG, n=n, k=k, m=m, fp16=t16, prog=t["progressive"], mixllm=t["mixllm"], pick=key,
                       best=best[0], best_us=best[1], sweep=all_t)
            rows.append(row)
            print(f"| {TAG} | {n}x{k} | {m} | {t16:.1f} | {t['progressive']:.1f} | {t['mixllm']:.1f} | "
                  f"{t['progressive'] / t['mixllm']:.2f}x | {t16 / t['mixllm']:.2f}x | `{key}` | "
                  f"{best[0]} {best[1]:.1f} |", flush=True)
    json.dump(rows, open(os.path.join(OUT, f"gv_{TAG}.json"), "w"), indent=1)

if "check" in WHAT:
    check()
if "speed" in WHAT or "sweep" in WHAT:
    speed("sweep" in WHAT)
