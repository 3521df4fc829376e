"""Time named schedules against the op's own pick, cuBLAS fp16 and gemlite A8W8 int8 (if it imports), in
one run on the same operands (CUDA graphs, rotated operands, cold L2, 10% 8-bit rows, fp16 x -> fp16 y,
activation quantization included); every timed progressive run is first checked bit-equal to the
reference, and so is the mixllm format's version of each tile (:func:`for_mixllm`) beside its own pick:

    python scripts/tile_sweep.py --shapes 14336x4096 4096x4096 --m 192 256 \\
        --tiles bm128_bn128_bk128_s4_t256_sk1_ov bm256_bn128_bk128_s3_t256_sk1_ov --splits 1 2 4

Each tile runs at every split of ``--splits`` that divides K (the key's own sk is replaced).  Prints a
markdown table, one row per (shape, M), with the fastest tile of each format; ``--json`` keeps every time
(rewritten after each row).
"""
import argparse
import json
from dataclasses import replace

import torch

import mixkern
from mixkern import peers
from mixkern.bench import _rotated_ms, format_times, random_layer
from mixkern.kernels import launch as L
from mixkern.reference import quantize_for, reference_gemm_quantized
from mixkern.format import WeightFormat
from mixkern.schedules import for_mixllm, format_pick, pick, schedule_from_key
from mixkern.warmup import compile_jobs


def variants(tiles: list[str], splits: list[int], k: int) -> list:
    """The tile schedules at each split that runs this K, each once."""
    out = []
    for key in tiles:
        base = schedule_from_key(key)
        for sk in splits:
            s = replace(base, split_k=sk)
            if _runs(s, k) and s not in out:
                out.append(s)
    return out


def _runs(s, k: int) -> bool:
    """Whether schedule ``s`` runs a K-long reduction (group size 128)."""
    try:
        s.check(k, 128)
    except ValueError:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["14336x4096", "4096x14336", "4096x4096", "28672x8192"])
    ap.add_argument("--m", nargs="+", type=int, default=[192, 256, 384])
    ap.add_argument("--tiles", nargs="*", default=[], help="schedule keys (progressive format); none: the picks only")
    ap.add_argument("--splits", nargs="+", type=int, default=[1])
    ap.add_argument("--formats", nargs="+", default=["progressive", "mixllm"], choices=["progressive", "mixllm"],
                    help="formats whose tiles are timed (the picks of both are always timed)")
    ap.add_argument("--json", help="write every time here")
    a = ap.parse_args()
    dev = torch.device("cuda")
    arch, sms = L.arch_of(dev), L.sm_count(dev)
    shapes = [tuple(map(int, s.split("x"))) for s in a.shapes]
    jobs = [j for n, k in shapes for m in a.m for f in ("progressive", "mixllm")
            for s in [pick(arch, m, n, k, 128, n // 10, sms, **format_pick(f)),
                      *(variants(a.tiles, a.splits, k) if f in a.formats else [])]
            for j in L.kernel_jobs(arch, k, 128, s, "float16", True, True, f)]
    compile_jobs(list(dict.fromkeys(jobs)))
    usable, notes = peers.available(["gemlite_a8w8"], dev)
    print(*notes, sep="\n")
    rows = []
    for n, k in shapes:
        for m in a.m:
            rows.append(_measure(n, k, m, a, usable, dev, arch, sms))
            if a.json:  # after every row: a run cut short keeps what it measured
                json.dump(rows, open(a.json, "w"), indent=1)
    print("| N x K | M | cuBLAS fp16 | gemlite A8W8 | pick | best tile | best vs fp16 | best / pick | pick key "
          "| mixllm pick | mixllm best tile | mixllm best / pick |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---|---:|---|---:|")
    for r in rows:
        best, tb = _best(r["tiles"], r["pick"])
        mbest, mb = _best(r["mixllm_tiles"], r["mixllm"])
        print(f"| {r['n']}x{r['k']} | {r['m']} | {r['fp16']:.1f} | {r['peer']:.1f} | {r['pick']:.1f} | "
              f"`{best}` {tb:.1f} | {r['fp16'] / tb:.2f}x | {r['pick'] / tb:.2f}x | `{r['pick_key']}` | "
              f"{r['mixllm']:.1f} | `{mbest}` {mb:.1f} | {r['mixllm'] / mb:.2f}x |")


def _best(times: dict, pick_us: float) -> tuple[str, float]:
    """The fastest timed tile and its time ('pick' and the pick's time when none was timed)."""
    key = min(times, key=times.get, default="pick")
    return key, times.get(key, pick_us)


def _measure(n, k, m, a, usable, dev, arch, sms) -> dict:
    """One (shape, M): {fp16, peer, pick, mixllm, tiles: {key: us}, mixllm_tiles: {key: us}}; raises
    if a tile is not exact."""
    wh, pws = random_layer(n, k, dev)
    t, (c, xs, whs, cps) = format_times(wh, m, pws)
    peer = usable[0].build(wh) if usable else None
    row = {"n": n, "k": k, "m": m, "fp16": t["fp16"], "pick": t["progressive"], "mixllm": t["mixllm"],
           "pick_key": pick(arch, m, n, k, 128, n // 10, sms).key,
           "peer": _rotated_ms(lambda i: peer(xs[i]), c) * 1e3 if peer else float("nan")}
    for fmt, name in (("progressive", "tiles"), ("mixllm", "mixllm_tiles")):
        tiles = variants(a.tiles, a.splits, k) if fmt in a.formats else []
        row[name] = _time_tiles(tiles, m, pws[fmt], xs, cps[fmt], c, dev, arch)
    print(f"{n}x{k} M={m}: fp16 {row['fp16']:.1f} pick {row['pick']:.1f} mixllm pick {row['mixllm']:.1f} "
          + " ".join(f"{key} {v:.1f}" for key, v in row["tiles"].items())
          + " | mixllm " + " ".join(f"{key} {v:.1f}" for key, v in row["mixllm_tiles"].items()), flush=True)
    return row


def _time_tiles(tiles, m, pw, xs, copies, c, dev, arch) -> dict:
    """{key of the schedule the kernel ran: us} for ``tiles`` (progressive keys; the mixllm format runs
    :func:`for_mixllm`'s version of each, timed once per distinct one), each checked bit-equal first."""
    out, refs, xq_a = {}, {}, quantize_for(xs[1], pw)
    for s in tiles:
        ran = for_mixllm(s, pw.shape[1], pw.group_size, arch, pw.idx4.shape[0] > 0, pw.idx8.shape[0] > 0) \
            if pw.format is WeightFormat.MIXLLM else s
        if ran.key in out:
            continue
        split = L.chain_slices(m, pw, dev, s)  # the reference depends on the tile only through mixllm's K slices
        if split not in refs:
            refs[split] = reference_gemm_quantized(*xq_a, pw, torch.float16, split_k=split)
        if not torch.equal(L.gemm_cuda(xs[1], pw, s), refs[split]):
            raise AssertionError(f"{pw.format.value} {tuple(pw.shape)} M={m} {ran.key}: not bit-equal to the reference")
        out[ran.key] = _rotated_ms(lambda i: L.gemm_cuda(xs[i], copies[i], s), c) * 1e3
    return out


if __name__ == "__main__":
    main()
