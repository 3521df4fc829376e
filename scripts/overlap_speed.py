"""The overlapped decode's heuristic rule against stop 24's (no split-K, from 64 tokens, 0.8 of a wave),
both formats, op time on the GPU (CUDA graphs, rotated operands, 10% 8-bit rows, fp16 x -> fp16 y),
with cuBLAS fp16 and gemlite A8W8 int8 (if it imports) in the same run; every cell checked bit-equal:

    python scripts/overlap_speed.py [NxK:M,M ...]          # H100: ~6 min for the default 10 shapes x 3 M

Prints the markdown table of docs/kernels.md ("Split-K, staged scales, two blocks per SM").
"""
import sys

import torch

import mixkern
import mixkern.schedules.heuristic as H
from mixkern import peers
from mixkern.bench import _rotated_ms, rotated_operands
from mixkern.kernels import launch as L
from mixkern.reference import quantize_for, reference_gemm_quantized
from mixkern.schedules import format_pick, pick
from mixkern.warmup import compile_jobs

DEFAULT = [(n, k, (32, 64, 128)) for n, k in [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336), (8192, 8192),
                                              (28672, 8192), (8192, 28672), (18944, 3584), (3584, 18944), (2048, 8192)]]
FORMATS = ("progressive", "mixllm")
RULE = (H.OVERLAP_MIN_M, H.OVERLAP_MIN_K_PER_SPLIT, H.OVERLAP_FILL)


def use_stop24_rule(on: bool) -> None:
    H.OVERLAP_MIN_M, H.OVERLAP_MIN_K_PER_SPLIT, H.OVERLAP_FILL = (64, 1 << 30, 0.8) if on else RULE
    L._plan.cache_clear(); L._picked_plan.cache_clear(); pick.cache_clear()


def main() -> int:
    cases = [(int(a.split(":")[0].split("x")[0]), int(a.split(":")[0].split("x")[1]),
              tuple(map(int, a.split(":")[1].split(",")))) for a in sys.argv[1:]] or DEFAULT
    dev = torch.device("cuda"); arch, sms = L.arch_of(dev), L.sm_count(dev)
    jobs = []
    for n, k, ms in cases:
        for m in ms:
            for on in (True, False):
                use_stop24_rule(on)
                jobs += [j for f in FORMATS
                         for j in L.kernel_jobs(arch, k, 128, pick(arch, m, n, k, 128, n // 10, sms, **format_pick(f)), "float16", True, True, f)]
    compile_jobs(list(dict.fromkeys(jobs)))
    usable, notes = peers.available(["gemlite_a8w8"], dev)
    print(*notes, sep="\n")
    print("| N x K | M | cuBLAS fp16 | gemlite A8W8 | progressive before | progressive now | now vs fp16 | mixllm before | "
          "mixllm now | exact | schedule now |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|", flush=True)
    bad = 0
    for n, k, ms in cases:
        w = torch.randn(n, k, device=dev) * 0.05
        idx, wh = torch.randperm(n)[: n // 10].tolist(), w.half()
        pws = {f: mixkern.quantize_weight(w, idx, 128, format=f) for f in FORMATS}
        peer = usable[0].build(wh) if usable else None
        for m in ms:
            t, exact = _time_case(n, k, m, wh, pws, peer)
            bad += not exact
            print(f"| {n}x{k} | {m} | {t['fp16']:.1f} | {t['peer']:.1f} | {t['progressive', True]:.1f} | "
                  f"{t['progressive', False]:.1f} | {t['fp16'] / t['progressive', False]:.2f}x | {t['mixllm', True]:.1f} | "
                  f"{t['mixllm', False]:.1f} | {exact} | `{pick(arch, m, n, k, 128, n // 10, sms).key}` |", flush=True)
    return 1 if bad else 0


def _time_case(n, k, m, wh, pws, peer):
    """({column: us}, all outputs bit-equal) for one shape and token count."""
    c, xs, whs, cps = rotated_operands(wh, m, pws)
    t = {"fp16": _rotated_ms(lambda i: xs[i] @ whs[i % len(whs)].T, c) * 1e3,
         "peer": _rotated_ms(lambda i: peer(xs[i]), c) * 1e3 if peer else float("nan")}
    exact = True
    for f, pw in pws.items():
        for on in (True, False):
            use_stop24_rule(on)  # mixllm's reference follows the K slices of the rule's pick
            ref = reference_gemm_quantized(*quantize_for(xs[0], pw), pw, torch.float16,
                                           split_k=L.chain_slices(m, pw, wh.device))
            exact &= torch.equal(mixkern.gemm(xs[0], pw), ref)
            t[f, on] = _rotated_ms(lambda i: mixkern.gemm(xs[i], cps[f][i]), c) * 1e3
    use_stop24_rule(False)
    return t, exact


if __name__ == "__main__":
    sys.exit(main())
