"""Run one decode-shaped mixkern.gemm a few times (for ncu / compute-sanitizer):

    python scripts/profile_decode.py N K M [SCHEDULE_KEY]

With a schedule key (e.g. bm64_bn128_bk128_s4_t256_sk1_ov) that schedule runs instead of the op's pick."""
import sys
import torch
import mixkern
from mixkern.kernels.launch import gemm_cuda
from mixkern.schedules import schedule_from_key

n, k, m = (int(v) for v in (sys.argv[1:4] if len(sys.argv) > 3 else (28672, 8192, 1)))
schedule = schedule_from_key(sys.argv[4]) if len(sys.argv) > 4 else None
pw = mixkern.quantize_weight(torch.randn(n, k, device="cuda").half() * 0.02, list(range(0, n, 10)))
x = torch.randn(m, k, device="cuda").half()
for _ in range(3):
    y = mixkern.gemm(x, pw) if schedule is None else gemm_cuda(x, pw, schedule)
torch.cuda.synchronize()
print("ok", y.shape, float(y.float().abs().mean()))
