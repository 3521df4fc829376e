"""mixllm vs progressive vs cuBLAS fp16 on the GPU: op time from CUDA graphs with rotated operands
(cold L2 each call), 10% 8-bit rows, group 128, fp16 x -> fp16 y, activation quantization included.

    python scripts/format_speed.py [4096x4096,14336x4096,...]      # H100: ~4 min for 4 shapes x 7 M
    MS=8,16 python scripts/format_speed.py 4096x14336                # other token counts

Prints a markdown table; writes every time to $OUT/fmt_speed.json (or /tmp).  The full
benchmark with peers is ``python -m mixkern.bench --formats progressive mixllm``.
"""
import sys, torch, json, os
from mixkern.bench import format_times, random_layer
from mixkern.kernels.launch import arch_of, kernel_jobs, sm_count
from mixkern.schedules import format_pick, pick
from mixkern.warmup import compile_jobs
shapes = [tuple(map(int, s.split("x"))) for s in (sys.argv[1].split(",") if len(sys.argv) > 1 else
          ["4096x4096", "1024x4096", "14336x4096", "4096x14336", "8192x8192", "28672x8192", "8192x28672"])]
ms = [int(v) for v in os.environ.get("MS", "1,4,16,64,256,1024,4096").split(",")]
dev = torch.device("cuda"); arch, sms = arch_of(dev), sm_count(dev)
jobs = [j for n, k in shapes for m in ms for f in ("progressive", "mixllm")
        for j in kernel_jobs(arch, k, 128, pick(arch, m, n, k, 128, n // 10, sms, **format_pick(f)), "float16", True, True, f)]
compile_jobs(list(dict.fromkeys(jobs)))
rows = []
print("| N x K | M | cuBLAS fp16 us | progressive us | mixllm us | mixllm/progressive speed | mixllm vs fp16 |")
print("|---|---:|---:|---:|---:|---:|---:|")
for n, k in shapes:
    wh, pws = random_layer(n, k, dev)
    for m in ms:
        t, _ = format_times(wh, m, pws)
        t16 = t["fp16"]
        row = dict(n=n, k=k, m=m, **t)
        rows.append(row)
        print(f"| {n}x{k} | {m} | {t16:.1f} | {t['progressive']:.1f} | {t['mixllm']:.1f} | "
              f"{t['progressive'] / t['mixllm']:.2f}x | {t16 / t['mixllm']:.2f}x |", flush=True)
json.dump(rows, open(os.path.join(os.environ.get("OUT", "/tmp"), "fmt_speed.json"), "w"), indent=1)
