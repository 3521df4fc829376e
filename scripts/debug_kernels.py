"""Device debugging aid: isolate activation-quant and GEMM mismatches against the reference."""
import torch
from mixkern import quantize_activation, quantize_weight
from mixkern.reference import reference_gemm_quantized
from mixkern.kernels import launch
from mixkern.schedules import pick

torch.manual_seed(0)
for dtype in (torch.float16, torch.bfloat16):
    for (n, k, m) in [(256, 4096, 1), (256, 4096, 2), (256, 4096, 16), (13, 4096, 8), (4096, 4096, 16), (14336, 4096, 16), (4096, 4096, 256), (161, 128, 1)]:
        w = torch.randn(n, k, device="cuda") * 0.05
        pw = quantize_weight(w, None, 128)
        x = (torch.randn(m, k, device="cuda")).to(dtype)
        xq, a = quantize_activation(x)
        xq_k, a_k = launch.quantize_activation_cuda(x)
        act_bad = (xq_k != xq).sum().item(), (a_k != a).sum().item()
        arch = launch.arch_of(x.device)
        s = pick(arch, m, n, k)
        y = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        launch._run_rows("w4", xq, a, pw.qweight4, pw.scales4, pw.zeros4, pw.chan_scale4, pw.idx4, y, s, 128, arch)
        torch.cuda.synchronize()
        ref = reference_gemm_quantized(xq, a, pw, dtype)
        bad = (y != ref)
        rows = bad.any(1).nonzero().flatten().tolist()
        cols = bad.any(0).nonzero().flatten().tolist()
        rel = ((y.double() - ref.double()).norm() / ref.double().norm()).item()
        print(f"{str(dtype)[6:]} n={n} k={k} m={m} {s.key} act_bad={act_bad} gemm_bad={bad.sum().item()}/{bad.numel()} nan={torch.isnan(y).sum().item()} rel={rel:.2e} rows={rows[:8]} cols={cols[:12]}", flush=True)
        if bad.any():
            i = bad.nonzero()[0].tolist()
            print("   first", i, y[i[0], i[1]].item(), ref[i[0], i[1]].item(), flush=True)
