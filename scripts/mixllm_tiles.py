"""The overlapped mixllm kernel's two tiles at 96..160 tokens: 64 x 128 (half the pick's K splits) against
128 x 128 (the pick's splits), progressive and cuBLAS fp16 beside, each 128-row run checked bit-equal:

    python scripts/mixllm_tiles.py          # H100, ~1 min; MS=96,128,160 by default

The evidence behind ``schedules.for_mixllm``'s rule (128 rows where the progressive pick is unsplit).
It forces the tile by replacing ``for_mixllm`` inside the launcher for the 128-row runs.
"""
import os, torch
import mixkern
from mixkern.bench import _rotated_ms, random_layer, rotated_operands
from mixkern.kernels import launch as L
from mixkern.schedules import Schedule as S, format_pick, pick
from mixkern.warmup import compile_jobs
from mixkern.reference import quantize_for, reference_gemm_quantized
dev = torch.device("cuda"); arch, sms = L.arch_of(dev), L.sm_count(dev)
shapes = [(14336, 4096), (4096, 14336), (8192, 8192), (3584, 18944), (28672, 8192), (6144, 4096), (18944, 3584), (4096, 4096)]
ms = [int(v) for v in os.environ.get("MS", "96,128,160").split(",")]
FORCE = [None]
orig = L.for_mixllm
L.for_mixllm = lambda s, *a, **kw: FORCE[0] if FORCE[0] is not None else orig(s, *a, **kw)


def wide(p):
    """The 128 x 128 overlapped mixllm tile with the progressive pick's K splits."""
    return S(128, 128, 128, 4, 256, p.split_k, overlap=True)


def narrow(p):
    """The 64 x 128 tile with as many blocks as the pick's grid."""
    return S(64, 128, 128, 4, 256, max(1, p.split_k * 64 // p.block_m), overlap=True)


def forced(tile, run):
    """run() with the mixllm kernel's schedule forced to ``tile``."""
    FORCE[0] = tile; L._plan.cache_clear(); L._picked_plan.cache_clear()
    try:
        return run()
    finally:
        FORCE[0] = None; L._plan.cache_clear(); L._picked_plan.cache_clear()


jobs = []
for n, k in shapes:
    for m in ms:
        p = pick(arch, m, n, k, 128, n // 10, sms, **format_pick("mixllm"))  # the pick mixllm's tiles derive from
        jobs += L.kernel_jobs(arch, k, 128, pick(arch, m, n, k, 128, n // 10, sms), "float16", True, True, "progressive")
        jobs += L.kernel_jobs(arch, k, 128, p, "float16", True, True, "mixllm")
        for tile in (wide(p), narrow(p)):
            FORCE[0] = tile
            jobs += L.kernel_jobs(arch, k, 128, p, "float16", True, True, "mixllm")
        FORCE[0] = None
compile_jobs(list(dict.fromkeys(jobs)))
print("| N x K | M | fp16 | progressive | mixllm 64x128 | mixllm 128x128 | best / progressive speed | exact 128 | pick |")
print("|---|---:|---:|---:|---:|---:|---:|---|---|", flush=True)
for n, k in shapes:
    wh, pws = random_layer(n, k, dev)
    for m in ms:
        p = pick(arch, m, n, k, 128, n // 10, sms, **format_pick("mixllm"))
        c, xs, whs, cps = rotated_operands(wh, m, pws)
        t16 = _rotated_ms(lambda i: xs[i] @ whs[i % len(whs)].T, c) * 1e3
        tp = _rotated_ms(lambda i: mixkern.gemm(xs[i], cps["progressive"][i]), c) * 1e3
        pw, cm = pws["mixllm"], cps["mixllm"]
        t64 = forced(narrow(p), lambda: _rotated_ms(lambda i: mixkern.gemm(xs[i], cm[i]), c) * 1e3)
        ref = reference_gemm_quantized(*quantize_for(xs[1], pw), pw, torch.float16, split_k=p.split_k)
        exact = forced(wide(p), lambda: torch.equal(mixkern.gemm(xs[1], cm[1]), ref))
        t128 = forced(wide(p), lambda: _rotated_ms(lambda i: mixkern.gemm(xs[i], cm[i]), c) * 1e3)
        print(f"| {n}x{k} | {m} | {t16:.1f} | {tp:.1f} | {t64:.1f} | {t128:.1f} | {tp / min(t64, t128):.2f}x | {exact} | "
              f"`{p.key}` |", flush=True)
