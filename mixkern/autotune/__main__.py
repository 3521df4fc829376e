"""python -m mixkern.autotune --gpu h100|a100|auto [--model llama3-8b | --shapes 4096x4096 ...]

Tunes the schedule table for one GPU: enumerate and prune each M bucket's schedule space,
compile the survivors in parallel on CPU cores, check every candidate bit-exact against the
reference on the GPU, time it, and write ``mixkern/schedules/<arch>.json`` (or ``--out``).
``--compile-only`` needs no GPU: it builds every candidate for the named GPU's arch.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import logging
import os
import sys
import time

from ..schedules import M_BUCKETS, table_path
from ..shapes import CONFIGS, resolve, unique_shapes
from . import tuner

GPUS = {"h100": ("sm_90a", (9, 0)), "a100": ("sm_80", (8, 0))}
def model_shapes(name_or_config: str, tp: int = 1) -> list[tuple[int, int]]:
    """N x K of a decoder's linear layers (q, k/v, fused q/k/v, o, gate/up, fused gate/up, down)
    at tensor-parallel size ``tp``, from a preset of :data:`mixkern.shapes.CONFIGS` or a HF
    config.json (a file or a directory holding one)."""
    try:
        return unique_shapes(resolve(name_or_config), tp)
    except ValueError as e:
        raise SystemExit(f"error: --model {name_or_config}: {e}") from None


def parse_shape(text: str) -> tuple[int, int]:
    try:
        n, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not NxK (e.g. 4096x14336)") from None
    if n <= 0 or k <= 0:
        raise argparse.ArgumentTypeError(f"shape {text!r} must be positive")
    return n, k


def present_gpu():
    import torch
    if not torch.cuda.is_available():
        return None, None
    return torch.cuda.get_device_name(), torch.cuda.get_device_capability()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mixkern.autotune", description=__doc__.split("\n\n")[1])
    p.add_argument("--gpu", required=True, choices=[*GPUS, "auto"], help="GPU to tune for; auto = the present one")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help=f"a HF config.json (file or directory) or a preset ({', '.join(CONFIGS)})")
    src.add_argument("--shapes", nargs="+", type=parse_shape, help="NxK layer shapes (output x input features)")
    p.add_argument("--buckets", nargs="+", type=int, default=[b for b in M_BUCKETS],
                   help=f"M buckets to tune (of {list(M_BUCKETS)[:-1]} and {M_BUCKETS[-1]} for the rest)")
    p.add_argument("--tp", type=int, default=1, help="with --model: tune one tensor-parallel rank's shapes")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--max-candidates", type=int, default=48, help="per (bucket, shape): the heuristic's choice plus a fixed sample")
    p.add_argument("--budget-min", type=float, default=60.0, help="stop starting new entries after this many minutes")
    p.add_argument("--compile-only", action="store_true", help="build every candidate; no GPU needed")
    p.add_argument("--verify", action="store_true",
                   help="a100 on an H100: run every candidate through compute_80 PTX and check it (untimed table)")
    p.add_argument("--workers", type=int, default=None, help="parallel compile processes (default: all cores)")
    p.add_argument("--out", help="table path (default: mixkern/schedules/<arch>.json; compile-only writes none)")
    args = p.parse_args(argv)
    logging.getLogger("tilelang").setLevel(logging.WARNING)  # one progress bar, not a line per kernel

    name, cc = present_gpu()
    gpu = args.gpu
    if gpu == "auto":
        gpu = next((g for g, (_, c) in GPUS.items() if c == cc), None)
        if gpu is None:
            print(f"error: --gpu auto: no supported GPU present ({name or 'no CUDA device'})", file=sys.stderr)
            return 2
    arch, want_cc = GPUS[gpu]
    if not args.compile_only and cc != want_cc and not (args.verify and cc is not None and cc >= want_cc):
        print(f"error: --gpu {gpu} needs an {gpu.upper()} (compute capability {want_cc[0]}.{want_cc[1]}) to time "
              f"schedules; this machine has {name or 'no CUDA device'}. Use --compile-only to check that every "
              f"candidate builds for {arch}" + (", or --verify to run them through compute_80 PTX here." if
                                                cc is not None and cc > want_cc else "."), file=sys.stderr)
        return 2
    if args.verify and cc == want_cc:
        args.verify = False  # the real GPU is here: time it
    bad = [b for b in args.buckets if b not in M_BUCKETS]
    if bad:
        p.error(f"--buckets {bad}: each must be one of {list(M_BUCKETS)}")
    if importlib.util.find_spec("tilelang") is None:
        print("error: the autotuner builds TileLang kernels: pip install tilelang==0.1.15 (a dependency of mixkern)",
              file=sys.stderr)
        return 2
    shapes = model_shapes(args.model, args.tp) if args.model else (args.shapes or model_shapes("llama3-8b"))
    for n, k in shapes:
        if k % args.group_size:
            p.error(f"shape {n}x{k}: K must be a multiple of --group-size {args.group_size}")

    run_arch = f"{arch}+sm_{cc[0]}{cc[1]}" if args.verify else arch  # sm_80 code, with sm_90 SASS from its PTX
    t0 = time.perf_counter()
    entries = tuner.plan(arch, shapes, args.buckets, args.group_size, args.max_candidates)
    n_cand = sum(len(e.candidates) for e in entries)
    print(f"{gpu} ({arch}): {len(shapes)} shapes x {len(args.buckets)} buckets, {n_cand} candidates "
          f"({sum(sum(e.pruned.values()) for e in entries)} pruned)", file=sys.stderr)
    built = tuner.compile_all(run_arch, entries, args.group_size, args.workers)
    t_compile = time.perf_counter() - t0
    if not args.compile_only:
        tuner.measure(run_arch, entries, args.group_size, args.budget_min * 60 - t_compile, timed=not args.verify)
    t_total = time.perf_counter() - t0
    timed = not (args.compile_only or args.verify)
    print(tuner.summary(entries, timed))
    errors = sum(len(e.compile_errors) for e in entries)
    print(f"\n{built} kernels compiled in {t_compile:.0f}s ({errors} candidate compile errors); "
          f"total {t_total:.0f}s for {n_cand} candidates", file=sys.stderr)
    for e in entries:
        for key, err in e.compile_errors.items():
            print(f"  compile error {e.key} {key}: {err}", file=sys.stderr)
    if args.compile_only:
        defaults_broken = [e.key for e in entries if e.candidates and e.candidates[0].key in e.compile_errors]
        return 1 if defaults_broken else 0
    import tilelang
    import torch
    meta = {"gpu": gpu.upper(), "timed": timed, "measured_on": name,
            "note": ("timed on this GPU" if timed else
                     f"NOT timed on an {gpu.upper()}: the heuristic's schedules, each verified to run bit-exact on {name} "
                     f"through {arch} PTX"),
            "created": datetime.date.today().isoformat(), "tilelang": tilelang.__version__, "torch": torch.__version__,
            "fraction_8bit": tuner.FRACTION_8BIT}
    out = args.out or table_path(arch)
    run = {"shapes": [f"{n}x{k}" for n, k in shapes], "buckets": args.buckets, "seconds": round(t_total),
           "candidates": n_cand, "kernels_compiled": built, "max_candidates": args.max_candidates}
    table = tuner.table_json(arch, entries, {**meta, "runs": [run]})
    if os.path.exists(out):  # a new shape set adds to the table; entries tuned now replace old ones
        with open(out) as f:
            old = json.load(f)
        if old.get("version") == table["version"] and old.get("arch") == arch:
            table["runs"] = old.get("runs", []) + table["runs"]
            for part in ("schedules", "evidence"):
                table[part] = {**old.get(part, {}), **table[part]}
    tuner.write_table(out, table)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
