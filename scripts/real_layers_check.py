"""python scripts/real_layers_check.py (GPU, ~5 min with compiles on 16 cores):
Qwen2.5-1.5B / -7B layer shapes (K = 1536, 3584, 8960, 18944; fused q/k/v, gate/up) at awkward token
counts (1 to 777), both formats, the op's own pick: bit-equal to the reference in the kernel's K slices, no unwritten
output (poisoned).  Cases on the register-decode picks, the few-token overlapped picks (under 17
tokens), the 64 x 256 and the narrow layers' 64 x 64 tiles print a line each; every mismatch prints."""
import os, sys, torch
sys.path[:0] = [os.path.join(os.path.dirname(__file__), "..", "tests")]  # the GPU tests' input builder
import mixkern
from strategies import gpu_case
from mixkern.kernels import launch as L
from mixkern.reference import quantize_for, reference_gemm_quantized
from mixkern.schedules import pick, format_pick, for_mixllm
from mixkern.shapes import CONFIGS, layer_shapes
from mixkern.warmup import compile_jobs
L.POISON_OUTPUT = True
dev = torch.device("cuda"); arch, sms = L.arch_of(dev), L.sm_count(dev)
shapes = sorted({s for name in ("qwen2.5-1.5b", "qwen2.5-7b") for s in layer_shapes(CONFIGS[name]).values()})
MS = (1, 3, 8, 12, 17, 40, 100, 300, 777)
cases = [(m, n, k, f, (torch.float16, torch.bfloat16)[i % 2]) for i, (n, k) in enumerate(shapes) for m in MS for f in ("progressive", "mixllm")]
def sched(m, n, k, f): return pick(arch, m, n, k, 128, round(0.1 * n), sms, **format_pick(f))
jobs = [j for m, n, k, f, d in cases for j in L.kernel_jobs(arch, k, 128, sched(m, n, k, f), str(d).split(".")[1], True, True, f)]
compile_jobs(list(dict.fromkeys(jobs)))
bad = new = 0
for i, (m, n, k, f, d) in enumerate(cases):
    pw, x = gpu_case(1000 + i, m, n, k, 0.1, d, 128, f, outlier_channels=(f == "mixllm"))
    y = mixkern.gemm(x, pw)
    ref = reference_gemm_quantized(*quantize_for(x, pw), pw, d, split_k=L.chain_slices(m, pw, dev))
    s = sched(m, n, k, f)
    ran = for_mixllm(s, k, 128, arch) if f == "mixllm" else s
    is_new = getattr(s, "register_a", False) or (getattr(s, "overlap", False) and (m < 17 or s.block_n != 128))
    new += is_new
    ok = not torch.isnan(y).any() and torch.equal(y, ref)
    bad += not ok
    if is_new or not ok:
        print(f"{n}x{k} M={m} {f} {ran.key}: {'exact' if ok else 'MISMATCH'}{' (register-decode, few-token, 64 x 256 or 64 x 64 pick)' if is_new else ''}", flush=True)
print(f"{len(cases)} cases, {new} on register-decode / few-token / 64 x 256 / 64 x 64 picks, {bad} not bit-equal")
