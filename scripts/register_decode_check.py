"""python scripts/register_decode_check.py (GPU, sm_90a, ~2 min with compiles on 16 cores): the register-decode
kernel (5..1024 tokens) bit-equal to the reference over awkward M (1..77 on token tiles of 16-64 rows, 1..777
on 128, 192 and 256), uneven K slices (3, 5 of them), splits 2, 4 and 8, both precisions alone and mixed, fp16 and bf16,
groups of 64 and 128; outputs poisoned.  REGISTER_QUICK=1: every third tile at one M (for compute-sanitizer memcheck /
racecheck)."""
import os, sys, torch
sys.path[:0] = [os.path.join(os.path.dirname(__file__), "..", "tests")]  # the GPU tests' input builder
from strategies import gpu_case
from mixkern.kernels import launch as L
from mixkern.reference import quantize_for, reference_gemm_quantized
from mixkern.schedules import schedule_from_key
from mixkern.warmup import compile_jobs
L.POISON_OUTPUT = True
dev = torch.device("cuda"); arch = L.arch_of(dev)
KEYS = ["bm16_bn128_bk128_s6_t256_sk1_ra", "bm32_bn128_bk128_s6_t256_sk2_ra", "bm64_bn64_bk128_s6_t128_sk1_ra",
        "bm16_bn64_bk128_s4_t128_sk4_ra", "bm32_bn64_bk128_s4_t128_sk3_ra", "bm24_bn128_bk128_s8_t256_sk5_ra",
        "bm128_bn64_bk128_s4_t128_sk4_ra", "bm128_bn128_bk128_s4_t256_sk2_ra", "bm192_bn128_bk128_s4_t256_sk1_ra",
        "bm256_bn128_bk128_s4_t256_sk2_ra"]
FEW_MS, WIDE_MS = (1, 5, 16, 23, 40, 64, 77), (1, 65, 128, 200, 333, 512, 777)  # token counts for tiles of <= 64 and > 64 rows
def runs(s, k, g):
    try:
        s.check(k, g); return True
    except ValueError:
        return False
QUICK = bool(os.environ.get("REGISTER_QUICK"))
cases = []
for i, key in enumerate(KEYS[1::4] if QUICK else KEYS):
    few = schedule_from_key(key).block_m <= 64
    for m in (((40,) if few else (200,)) if QUICK else FEW_MS if few else WIDE_MS):
        for (n, k, f8, g, d) in ((700, 1024, 0.1, 128, torch.float16), (333, 3584, 0.2, 64, torch.bfloat16),
                                 (256, 512, 0.0, 128, torch.float16), (130, 1024, 1.0, 128, torch.bfloat16)):
            cases.append((key, m, n, k, f8, g, d))
jobs = []
for key, m, n, k, f8, g, d in cases:
    s = schedule_from_key(key)
    if runs(s, k, g):
        jobs += L.kernel_jobs(arch, k, g, s, str(d).split(".")[1], f8 < 1, f8 > 0)
compile_jobs(list(dict.fromkeys(jobs)))
bad = ran = 0
for i, (key, m, n, k, f8, g, d) in enumerate(cases):
    s = schedule_from_key(key)
    if not runs(s, k, g):
        continue
    pw, x = gpu_case(500 + i, m, n, k, f8, d, g, "progressive")
    y = L.gemm_cuda(x, pw, s)
    ref = reference_gemm_quantized(*quantize_for(x, pw), pw, d)
    ok = not torch.isnan(y).any() and torch.equal(y, ref)
    ran += 1; bad += not ok
    if not ok:
        diff = (y.float() - ref.float()).abs()
        print(f"MISMATCH {key} M={m} {n}x{k} 8bit={f8} g={g} {d}: nan {int(torch.isnan(y).sum())} max {diff.nan_to_num(0).max().item():.3g} frac {(diff > 0).float().mean().item():.3f}", flush=True)
print(f"register-decode check: {ran} cases, {bad} not bit-equal")
