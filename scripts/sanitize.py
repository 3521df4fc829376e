"""Run every kernel kind once on small, awkward shapes (for compute-sanitizer memcheck / racecheck).

    compute-sanitizer --tool memcheck python scripts/sanitize.py [--decode | --predecode | --overlap | --split]
Each case is checked against the exact reference after the run; exit status 1 on a mismatch.
"""
import sys

import torch

from mixkern import quantize_weight
from mixkern.bench import check
from mixkern.schedules import GemvSchedule, Schedule

K = 512
CASES = [  # (M, N, schedule): decode kernel (plain, fused, streamed), tensor-core kernel (one split and split-K),
    # the predecoded GEMM (both formats), tails in M and N
    (1, 200, GemvSchedule(2, 4, 1)), (5, 201, GemvSchedule(4, 2, 4)), (16, 130, GemvSchedule(4, 2, 16)),
    (1, 203, GemvSchedule(4, 4, 1, chunk=4, fused=True)), (3, 199, GemvSchedule(2, 2, 3, chunk=8, fused=True)),
    (2, 150, GemvSchedule(1, 4, 2, chunk=16)),
    (70, 200, Schedule(64, 64, 128, 4, 128, 1)), (77, 333, Schedule(64, 64, 128, 4, 128, 2)),
    (150, 333, Schedule(64, 64, 128, 4, 128, 4)),
    (300, 390, Schedule(128, 128, 64, 3, 256, 1)), (257, 260, Schedule(256, 128, 64, 3, 256, 1)),
    (129, 300, Schedule(128, 256, 128, 2, 256, 1)), (256, 520, Schedule(256, 128, 128, 3, 256, 1)),
    (200, 264, Schedule(64, 128, 128, 4, 128, predecode=True)), (300, 520, Schedule(128, 256, 128, 3, 256, predecode=True)),
    (193, 1000, Schedule(128, 128, 128, 4, 256, predecode=True)),
    (70, 330, Schedule(64, 128, 128, 4, 256, overlap=True)), (129, 260, Schedule(128, 128, 128, 4, 256, overlap=True)),
    (33, 300, Schedule(64, 128, 128, 4, 256, 4, overlap=True)), (150, 200, Schedule(128, 128, 128, 4, 256, 2, overlap=True)),
    (200, 330, Schedule(192, 128, 128, 4, 256, overlap=True)), (257, 300, Schedule(256, 128, 128, 4, 256, 2, overlap=True)),
    (9, 600, Schedule(64, 256, 128, 4, 256, overlap=True)), (40, 520, Schedule(64, 256, 128, 4, 256, 4, overlap=True)),
    (20, 130, Schedule(64, 64, 128, 4, 128, overlap=True)), (100, 300, Schedule(64, 64, 128, 4, 128, 4, overlap=True)),
    (30, 200, Schedule(64, 64, 64, 4, 128, 4, overlap=True)),
]
if "--overlap" in sys.argv:  # only the overlapped decode's cases
    CASES = [c for c in CASES if isinstance(c[2], Schedule) and c[2].overlap]
if "--split" in sys.argv:  # only the split-K cases (int32 atomics; mixllm: float32 slices, summed in order)
    CASES = [c for c in CASES if isinstance(c[2], Schedule) and c[2].split_k > 1]
if "--predecode" in sys.argv:  # only the predecoded GEMM's cases
    CASES = [c for c in CASES if isinstance(c[2], Schedule) and c[2].predecode]
if "--decode" in sys.argv:  # only the decode kernels' cases (mixllm runs each pick plain: for_mixllm)
    CASES = [c for c in CASES if isinstance(c[2], GemvSchedule)]
FORMATS = {s: ("progressive", "mixllm") if isinstance(s, GemvSchedule) or s.predecode or s.overlap or s.split_k > 1
           else ("progressive",) for _, _, s in CASES}
if "--compile" in sys.argv:  # fill the kernel cache in parallel first (outside the sanitizer)
    from mixkern.bench import warm_compile_cache
    from mixkern.kernels.launch import arch_of
    warm_compile_cache(arch_of(torch.device("cuda")), {K: [s for _, _, s in CASES]}, formats=("progressive", "mixllm"))
bad = 0
gen = torch.Generator(device="cuda").manual_seed(0)
for (m, n, schedule), fmt in ((c, f) for c in CASES for f in FORMATS.get(c[2], ("progressive",))):
    for fraction in (0.0, 0.1, 1.0):
        w = torch.randn(n, K, device="cuda", generator=gen) * 0.05
        rows = torch.randperm(n, device="cuda", generator=gen)[: round(fraction * n)].cpu().tolist()
        pw = quantize_weight(w, rows, format=fmt)
        x = torch.randn(m, K, device="cuda", generator=gen).half()
        err = check(x, pw, schedule)  # inf if an output was left unwritten
        ok = err <= 1
        bad += not ok
        print(f"M={m} N={n} {schedule.key} {fmt} 8-bit={fraction:g}: err/tol {err:.2f} {'ok' if ok else 'WRONG'}", flush=True)
sys.exit(1 if bad else 0)
