"""Host time of an eager prefill step (2048 tokens, 2 Llama-3-8B layers, random weights): fp16 vs
mixkern, one down_proj call alone, and a cProfile of mixkern's step.

    python scripts/profile_prefill.py
"""
import cProfile, pstats, io, time, torch
import mixkern
from mixkern import bench_model as B
torch.set_grad_enabled(False)
dev = torch.device("cuda")
model = B.build_model(B.hf_config("llama3-8b", layers=2), dev)
step = B._prefill_step(model, B.Spec(prefill=2048))
def host(n=5):
    for _ in range(2): step()
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(n): step()
    t1 = time.perf_counter(); torch.cuda.synchronize(); t2 = time.perf_counter()
    return (t1 - t0) / n * 1e3, (t2 - t0) / n * 1e3
print("fp16 host/wall ms: %.2f %.2f" % host(), flush=True)
B.quantize_decoder(model); mixkern.fuse_projections(model)
print("mixkern host/wall ms: %.2f %.2f" % host(), flush=True)
lin = model.model.layers[0].mlp.down_proj
x = torch.randn(2048, lin.in_features, device=dev, dtype=torch.float16)
for _ in range(3): lin(x)
torch.cuda.synchronize(); t0 = time.perf_counter()
for _ in range(20): lin(x)
t1 = time.perf_counter(); torch.cuda.synchronize()
print("down_proj M=2048 host us/call: %.1f, wall %.1f" % ((t1 - t0) / 20 * 1e6, (time.perf_counter() - t0) / 20 * 1e6), flush=True)
pr = cProfile.Profile(); pr.enable()
for _ in range(5): step()
pr.disable(); torch.cuda.synchronize()
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(30); print(s.getvalue()[:7000])
