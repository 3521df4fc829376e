"""mixllm's predecoded int8 GEMM alone: the synchronous promotion (64 x 128, cp.async pipeline) against
the overlapped one (128 x 128, TMA ring, async wgmma; mixkern/kernels/overlapped_promotion.py), on random
int8 operands and scales, outputs compared bit for bit (GPU, sm_90a):

    python scripts/promotion_speed.py           # H100: ~1.5 min, 4 shapes x 4 M

Prints a markdown table (docs/kernels.md, "The mixllm format on the GPU").
"""
import sys
import torch
import tilelang
from mixkern.kernels import launch as L
from mixkern.kernels.int8_gemm import int8_gemm
from mixkern.schedules import Schedule as S
dev = torch.device("cuda"); arch = L.arch_of(dev)
SYNC, OVERLAPPED = S(64, 128, 128, 4, 128, predecode=True), S(128, 128, 128, 5, 256, predecode=True)


def synchronous(k):
    """The 64 x 128 kernel, which the op no longer picks on Hopper where 128-row tiles fill the GPU."""
    f = int8_gemm(k, SYNC, "float16", 128, 128, wgmma=False)
    return tilelang.compile(f, target=L.target(arch), pass_configs={"tl.disable_warp_specialized": True})


def timed_us(fn, reps=30):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(True), torch.cuda.Event(True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1e3


bad = 0
print("| N x K | M | synchronous 64x128 us | overlapped 128x128 us | speedup | TOPS (overlapped) | bit-equal |")
print("|---|---:|---:|---:|---:|---:|---|", flush=True)
for n, k in [(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192)]:
    old, new = synchronous(k), L.compiled("int8_gemm", arch, k, OVERLAPPED, "float16", 128, 128)
    for m in (256, 1000, 1024, 4096):
        groups, mp = k // 128, -(-m // 4) * 4
        xq = torch.randint(-127, 128, (m, k), dtype=torch.int8, device=dev)
        wd = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=dev)
        at = torch.rand(groups, mp, device=dev) * 1e-3 + 1e-4
        sd = torch.rand(groups, n, device=dev) * 1e-2 + 1e-3
        y0 = torch.full((m, n), float("nan"), dtype=torch.float16, device=dev)
        y1 = y0.clone()
        old(xq, at, wd, sd, y0)
        new(xq, at, wd, sd, y1)
        equal = torch.equal(y0, y1) and not torch.isnan(y1).any().item()
        bad += not equal
        t0, t1 = timed_us(lambda: old(xq, at, wd, sd, y0)), timed_us(lambda: new(xq, at, wd, sd, y1))
        print(f"| {n}x{k} | {m} | {t0:.1f} | {t1:.1f} | {t0 / t1:.2f}x | {2 * m * n * k / t1 / 1e6:.0f} | {equal} |", flush=True)
sys.exit(1 if bad else 0)
