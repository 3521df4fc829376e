"""Run one decode-shaped mixkern.gemm a few times (for ncu / compute-sanitizer)."""
import sys
import torch
import mixkern

n, k, m = (int(v) for v in (sys.argv[1:4] if len(sys.argv) > 3 else (28672, 8192, 1)))
pw = mixkern.quantize_weight(torch.randn(n, k, device="cuda").half() * 0.02, list(range(0, n, 10)))
x = torch.randn(m, k, device="cuda").half()
for _ in range(3):
    y = mixkern.gemm(x, pw)
torch.cuda.synchronize()
print("ok", y.shape, float(y.float().abs().mean()))
