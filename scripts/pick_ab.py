"""Time this checkout's schedule picks against an older checkout's, on every (shape, M) cell where
they differ, in one run on the same operands (GPU; both formats, each timed run first checked
bit-equal to the reference; CUDA graphs, rotated operands, cold L2, 10% 8-bit rows):

    git archive c25c4a1 mixkern | tar -x -C /tmp/old        # the older package, beside this one
    python scripts/pick_ab.py --old /tmp/old --shapes 1280x8192 4608x3584 --m 32 64 128 --json ab.json

The older picks come from a subprocess importing ``mixkern`` from ``--old`` (so its heuristic and
tables, this checkout's kernels: both run through ``for_mixllm`` and the launcher here).  ``--plan``
prints the differing cells without timing (no GPU needed).  Prints a markdown table at the end.
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))

DUMP = """
import json, sys
from mixkern.schedules import overlap_rows, pick
try:
    from mixkern.schedules import format_pick
except ImportError:  # a checkout before stop 33: the format's only pick option was overlap_rows
    format_pick = lambda f: {"overlap_rows": overlap_rows(f)}  # noqa: E731
cells = json.loads(sys.argv[1])
print(json.dumps([[pick("sm_90a", m, n, k, 128, n // 10, 132, **format_pick(f)).key for f in ("progressive", "mixllm")]
                  for n, k, m in cells]))
"""


def picks(cells: list, old: str | None) -> list:
    """[[progressive key, mixllm key]] per (N, K, M) cell, from the package under ``old`` (a
    subprocess, outside this checkout) or this one; on an H100's arch and SM count."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(old)} if old else os.environ
    out = subprocess.run([sys.executable, "-c", DUMP, json.dumps(cells)], env=env, check=True, text=True,
                         capture_output=True, cwd="/" if old else os.getcwd())
    return json.loads(out.stdout)


def plan(shapes: list, ms: list, old: str) -> list:
    """The cells whose picks differ: {n, k, m, old: [keys], new: [keys]}."""
    cells = [(n, k, m) for n, k in shapes for m in ms]
    return [dict(n=n, k=k, m=m, old=o, new=p) for (n, k, m), o, p in zip(cells, picks(cells, old), picks(cells, None))
            if o != p]


def measure(spec: list, json_path: str | None) -> list:
    import torch
    from tile_sweep import _time_tiles
    from mixkern.bench import _rotated_ms, random_layer, rotated_operands
    from mixkern.kernels import launch as L
    from mixkern.schedules import schedule_from_key
    from mixkern.warmup import compile_jobs
    dev = torch.device("cuda")
    arch = L.arch_of(dev)
    compile_jobs(list(dict.fromkeys(
        j for r in spec for i, f in enumerate(("progressive", "mixllm")) for key in (r["old"][i], r["new"][i])
        for j in L.kernel_jobs(arch, r["k"], 128, schedule_from_key(key), "float16", True, True, f))))
    rows, layer = [], {}
    for r in spec:
        n, k, m = r["n"], r["k"], r["m"]
        layer = layer if (n, k) in layer else {(n, k): random_layer(n, k, dev)}
        wh, pws = layer[(n, k)]
        c, xs, whs, cps = rotated_operands(wh, m, pws)
        row = dict(r, fp16=_rotated_ms(lambda i: xs[i] @ whs[i % len(whs)].T, c) * 1e3)
        for i, f in enumerate(("progressive", "mixllm")):
            for side in ("old", "new"):
                times = _time_tiles([schedule_from_key(r[side][i])], m, pws[f], xs, cps[f], c, dev, arch)
                row[f"{f}_{side}"] = next(iter(times.values()))
        rows.append(row)
        print(_line(row), flush=True)
        if json_path:  # after every row: a run cut short keeps what it measured
            json.dump(rows, open(json_path, "w"), indent=1)
    return rows


def _line(r: dict) -> str:
    return (f"| {r['n']}x{r['k']} | {r['m']} | {r['fp16']:.1f} | `{r['old'][0]}` {r['progressive_old']:.1f} | "
            f"`{r['new'][0]}` {r['progressive_new']:.1f} | {r['progressive_old'] / r['progressive_new']:.2f}x | "
            f"{r['fp16'] / r['progressive_new']:.2f}x | {r['mixllm_old']:.1f} | {r['mixllm_new']:.1f} | "
            f"{r['mixllm_old'] / r['mixllm_new']:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True, help="a directory holding an older mixkern package")
    ap.add_argument("--shapes", nargs="+", required=True, help="NxK")
    ap.add_argument("--m", nargs="+", type=int, default=[32, 64, 128])
    ap.add_argument("--plan", action="store_true", help="print the differing cells, time nothing")
    ap.add_argument("--json", help="write every time here (rewritten after each row)")
    a = ap.parse_args()
    spec = plan([tuple(map(int, s.split("x"))) for s in a.shapes], a.m, a.old)
    if a.plan:
        print(*(f"{r['n']}x{r['k']} M={r['m']}: {r['old'][0]} -> {r['new'][0]} (mixllm {r['old'][1]} -> {r['new'][1]})"
                for r in spec), f"{len(spec)} cells differ", sep="\n")
        return
    header = ("| N x K | M | cuBLAS fp16 | old pick us | new pick us | gain | new vs fp16 | mixllm old | mixllm new | gain |\n"
              "|---|---:|---:|---|---|---:|---:|---:|---:|---:|")
    print(header, flush=True)
    rows = measure(spec, a.json)
    print(header, *map(_line, rows), sep="\n")


if __name__ == "__main__":
    main()
