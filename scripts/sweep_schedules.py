"""Prototype schedule sweep (input for the autotuner): CUDA-graph time of gemm_cuda per schedule."""
import itertools

import torch
from concurrent.futures import ProcessPoolExecutor
from mixkern import quantize_weight
from mixkern.bench import _median_ms, _compile_one
from mixkern.kernels.launch import arch_of, gemm_cuda
from mixkern.schedules import Schedule

arch = arch_of(torch.device("cuda"))
cands = {
    "decode": [Schedule(16, bn, 128, st, th, sk) for bn, st, th, sk in
               [(64, 4, 128, 1), (64, 4, 128, 4), (64, 4, 128, 8), (128, 4, 256, 4), (128, 4, 256, 8), (64, 6, 128, 4), (128, 3, 128, 4)]],
    "prefill": [Schedule(bm, bn, bk, st, th, 1) for bm, bn, bk, st, th in
                [(128, 128, 128, 3, 256), (128, 256, 128, 3, 256), (256, 128, 128, 3, 256), (128, 128, 64, 4, 256), (64, 256, 128, 3, 256), (128, 128, 128, 4, 256)]],
}
shapes = [(4096, 4096), (28672, 8192)]
jobs = [("w4", arch, k, 128, s, "float16") for _, k in shapes for ss in cands.values() for s in ss]
with ProcessPoolExecutor(14) as pool:
    list(pool.map(_compile_one, jobs))
for (n, k) in shapes:
    pw = quantize_weight(torch.randn(n, k, device="cuda").half() * 0.02, None)
    for phase, ms in (("decode", [1, 16]), ("prefill", [4096])):
        for m, s in itertools.product(ms, cands[phase]):
            x = torch.randn(m, k, device="cuda").half()
            try:
                t = _median_ms(lambda: gemm_cuda(x, pw, schedule4=s)) * 1e-3  # seconds
                print(f"{n}x{k} m={m} {s.key} {t*1e6:.1f} us  {2*m*n*k/t/1e12:.1f} TOPS  {pw.nbytes/t/1e9:.0f} GB/s", flush=True)
            except Exception as e:
                print(f"{n}x{k} m={m} {s.key} FAILED {str(e)[-300:]}", flush=True)
