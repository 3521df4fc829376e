"""The overlapped decode's heuristic rule against the kernel choice without it, op time on the GPU
(CUDA graphs, rotated operands, 10% 8-bit rows, fp16 x -> fp16 y), with cuBLAS fp16 beside:

    python scripts/overlap_speed.py [NxK:M,M ...]          # H100: ~2 min for the default 9 cases

Prints a markdown table (docs/kernels.md, "Overlapped decode").
"""
import sys
import torch
import mixkern
import mixkern.schedules.heuristic as H
from mixkern.kernels import launch as L
from mixkern.schedules import pick
from mixkern.bench import _clone_packed, _rotated_ms, copies_needed
dev = torch.device("cuda"); arch, sms = L.arch_of(dev), L.sm_count(dev)
rule = H.overlapped
def use(on):
    H.overlapped = rule if on else (lambda *a: None)
    L._plan.cache_clear(); L._picked_plan.cache_clear(); pick.cache_clear()
DEFAULT = [(18944, 3584, (64, 128)), (11008, 4096, (96, 128)), (14336, 4096, (96, 160)), (8192, 8192, (64, 128)),
           (6144, 4096, (160,))]
CASES = [(int(a.split(":")[0].split("x")[0]), int(a.split(":")[0].split("x")[1]), tuple(map(int, a.split(":")[1].split(","))))
         for a in sys.argv[1:]] or DEFAULT
print("| N x K | M | fp16 | previous pick | overlapped rule | gain | schedule |"); print("|---|---:|---:|---:|---:|---:|---|", flush=True)
for n, k, ms in CASES:
    w = torch.randn(n, k, device=dev) * 0.05
    pw = mixkern.quantize_weight(w, torch.randperm(n)[: n // 10].tolist(), 128); wh = w.half()
    for m in ms:
        c = copies_needed(n * k // 2 + m * k * 2)
        xs = [torch.randn(m, k, device=dev, dtype=torch.float16) for _ in range(c)]
        whs = [wh.clone() for _ in range(min(c, max(2, int(150e6 // (n * k * 2)))))]
        cps = [pw] + [_clone_packed(pw) for _ in range(c - 1)]
        t16 = _rotated_ms(lambda i: xs[i] @ whs[i % len(whs)].T, c) * 1e3
        t = {}
        for on in (False, True):
            use(on); mixkern.gemm(xs[0], cps[0]); t[on] = _rotated_ms(lambda i: mixkern.gemm(xs[i], cps[i]), c) * 1e3
        use(True)
        print(f"| {n}x{k} | {m} | {t16:.1f} | {t[False]:.1f} | {t[True]:.1f} | {t[False]/t[True]:.2f}x | `{pick.__wrapped__(arch, m, n, k, 128, n // 10, sms).key}` |", flush=True)
