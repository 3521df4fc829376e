"""GPU benchmark: mixkern.gemm against cuBLAS fp16, cuBLASLt int8 and peer libraries, side by side in one process.

    python -m mixkern.bench [--shapes 4096x4096 ...] [--m 1 16 4096] [--json out.json] [--plot out.png]
                            [--formats progressive mixllm] [--peers gemlite_a16w4 gemlite_a8w8 fp8_rowwise]
    python -m mixkern.bench --model llama3-8b --layers 4 [--tp 8] ...   # whole model: mixkern/bench_model.py

Every time is the median of ``triton.testing.do_bench`` (which flushes L2 before each
run) over CUDA-graph replays of the op called back to back on rotating copies of its
operands -- as in a captured decode step, where graph launch (~5 us on an H100) is paid
once per step, not per layer, and no copy is still in L2 when it comes round again
(mixkern is also timed eager, one call, launch overhead included); end to end from fp16 x
to fp16 y: mixkern includes its activation quantization, the
W8A8 baseline its own (``torch._int_mm`` plus per-token quantization and scaling in torch),
and so do the peers (:mod:`mixkern.peers`: gemlite A16W4 and A8W8, fp8 rowwise ``_scaled_mm``).
Each mixkern configuration (both weight formats, ``--formats``) is checked against the exact
reference before it is timed, each peer against the fp16 product (relative error under its
bound); a format without a CUDA kernel and a peer that cannot run here are skipped with a
note.  Data is fresh and random.  Floors: weight bytes / measured copy bandwidth (memory),
2MNK / measured ``torch._int_mm`` peak (compute).
"""

import argparse
import importlib.util
import json
import sys
import time

import torch
import torch.nn.functional as F

from .format import PackedWeight
from .peers import PEER_NAMES, PEERS, available, relative_error
from .quantize import quantize_activation, quantize_weight
from .reference import float64_gemm_quantized, quantize_for, token_slices, tolerance
from .schedules import fit, pick
from .schedules.heuristic import choose

LLAMA_SHAPES = ["4096x4096", "1024x4096", "14336x4096", "4096x14336", "8192x8192", "28672x8192", "8192x28672"]
M_VALUES = [1, 4, 16, 64, 256, 1024, 4096]
FORMATS = ("progressive", "mixllm")  # WeightFormat.parse's short names; progressive: the base columns


def _median_ms(fn, graph: bool = True) -> float:
    """Median device time of fn; with graph=True, of a CUDA-graph replay (launch gaps removed)."""
    import triton.testing
    if not graph:
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    return _rotated_ms(lambda i: fn(), 1)


ROTATE_BYTES = 150e6  # operand copies cycled through per timing: 3x the H100's 50 MB L2
MAX_COPIES = 48


def copies_needed(nbytes: int) -> int:
    """How many copies of an operand set of ``nbytes`` keep every call's data out of L2."""
    return max(2, min(MAX_COPIES, -(-int(ROTATE_BYTES) // max(int(nbytes), 1))))


def _rotated_ms(fn, copies: int) -> float:
    """Median device time of one call of fn(i), i-th operand copy, from a CUDA graph of
    ``copies`` calls back to back (graph launch amortized, caches cold for each call)."""
    import triton.testing
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        fn(0)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=stream):
            for i in range(copies):
                fn(i)
    return triton.testing.do_bench(g.replay, warmup=25, rep=100, return_mode="median") / copies


def _clone_packed(pw: PackedWeight) -> PackedWeight:
    return PackedWeight.unchecked(**{**pw.__dict__, **{n: t.clone() for n, t in pw.tensors().items()}})


def random_layer(n: int, k: int, device, formats=("progressive", "mixllm")) -> tuple[torch.Tensor, dict]:
    """A random (N, K) layer for speed runs (speed depends on shapes, not values): its fp16
    weight and {format: packed weight}, the same random 10% of rows 8-bit in each."""
    w = torch.randn(n, k, device=device) * 0.05
    idx = torch.randperm(n)[: n // 10].tolist()
    return w.half(), {f: quantize_weight(w, idx, 128, format=f) for f in formats}


def rotated_operands(wh: torch.Tensor, m: int, packed: dict) -> tuple[int, list, list, dict]:
    """Operand copies for :func:`_rotated_ms` (caches cold at every call) of one (N, K) layer
    at M tokens: (copies, fp16 x copies, fp16 weight copies -- as many as fit 150 MB, used
    round-robin --, {name: copies of each packed weight in ``packed``})."""
    (n, k), dev = wh.shape, wh.device
    c = copies_needed(n * k // 2 + m * k * 2)
    xs = [torch.randn(m, k, device=dev, dtype=torch.float16) for _ in range(c)]
    whs = [wh.clone() for _ in range(min(c, max(2, int(150e6 // (n * k * 2)))))]
    return c, xs, whs, {name: [pw] + [_clone_packed(pw) for _ in range(c - 1)] for name, pw in packed.items()}


def format_times(wh: torch.Tensor, m: int, packed: dict) -> tuple[dict, tuple]:
    """Microseconds per op at M tokens, cold L2 (:func:`rotated_operands`): cuBLAS fp16 as
    'fp16' and ``mixkern.gemm`` per packed weight of ``packed``; and the operands
    (copies, xs, whs, packed copies), for timing more variants on the same ones."""
    from .ops import gemm
    c, xs, whs, cps = rotated_operands(wh, m, packed)
    t = {"fp16": _rotated_ms(lambda i: xs[i] @ whs[i % len(whs)].T, c) * 1e3}
    t.update({f: _rotated_ms(lambda i: gemm(xs[i], cp[i]), c) * 1e3 for f, cp in cps.items()})
    return t, (c, xs, whs, cps)


def warm_compile_cache(arch: str, plan: dict, dtypes=("float16",), group_size: int = 128,
                       formats=("progressive",)):
    """Compile, in parallel processes, every kernel of the schedules in ``plan`` ({K: schedules})."""
    from .kernels.launch import kernel_jobs_any_split
    from .warmup import compile_jobs
    jobs = {j for dtype in dtypes for k, schedules in plan.items() for s in schedules for fmt in formats
            for j in kernel_jobs_any_split(arch, k, group_size, s, dtype, fmt)}
    t0 = time.perf_counter()
    built = compile_jobs(sorted(jobs, key=str))
    print(f"{len(jobs)} kernels ready ({built} compiled) in {time.perf_counter() - t0:.0f}s", file=sys.stderr)


def copy_bandwidth() -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read plus written."""
    src = torch.randn(256 * 2**20, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / (_median_ms(lambda: dst.copy_(src), graph=False) * 1e-3)


def int8_peak() -> float:
    a = torch.randint(-127, 127, (8192, 8192), dtype=torch.int8, device="cuda")
    b = torch.randint(-127, 127, (8192, 8192), dtype=torch.int8, device="cuda").T
    return 2 * 8192**3 / (_median_ms(lambda: torch._int_mm(a, b), graph=False) * 1e-3)


def w8a8_torch(x, w8t, s8):
    """The cuBLASLt int8 baseline, scaling included: per-token quant, torch._int_mm, fp32 scales."""
    xq, a = quantize_activation(x, check=False)
    return (torch._int_mm(xq, w8t).float() * a[:, None] * s8[None]).to(x.dtype)


def check(x, pw: PackedWeight, schedule=None) -> float:
    """Max |y - y_float64| / tolerance (<= 1 passes; inf if any output was left unwritten),
    with outputs poisoned first; ``schedule`` overrides the table's.  The reference runs a few
    tokens at a time, so a large M of the mixllm format fits in memory."""
    from .kernels.launch import gemm_cuda, poisoned_outputs
    from .ops import gemm
    with poisoned_outputs():
        y = gemm_cuda(x, pw, schedule) if schedule else gemm(x, pw)
    if torch.isnan(y).any():
        return float("inf")
    xq, a, worst = *quantize_for(x, pw), 0.0
    for rows in token_slices(x.shape[0], pw):
        err = (y[rows].to(torch.float64) - float64_gemm_quantized(xq[rows], a[rows], pw)).abs()
        worst = max(worst, (err / tolerance(xq[rows], a[rows], pw, x.dtype)).max().item())
    return worst


def run(shapes, ms, fractions, formats=("progressive",), peers=(), notes=None, seed=0, on_row=None):
    """One row per (shape, M); ``formats`` starts with progressive (the base columns), ``peers``
    are :class:`mixkern.peers.Peer` s; ``notes`` (a list) gets one line per column dropped;
    ``on_row(rows)`` runs after each row (progress, partial results)."""
    notes, formats = [] if notes is None else notes, list(formats)
    bw, peak = copy_bandwidth(), int8_peak()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s, torch._int_mm peak {peak / 1e12:.0f} TOPS", file=sys.stderr)
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(seed)
    for shape in shapes:
        n, k = map(int, shape.split("x"))
        w = (torch.randn(n, k, device="cuda", generator=gen) * 0.02).half()
        idx8 = {f: torch.randperm(n, device="cuda", generator=gen)[: round(f * n)].cpu().tolist() for f in fractions}
        packed = {fmt: {f: quantize_weight(w, idx8[f], format=fmt) for f in fractions} for fmt in formats}
        w8 = quantize_weight(w, "all")
        r = copies_needed(min(pw.nbytes for pw in packed["progressive"].values()))
        ws = [w] + [w.clone() for _ in range(r - 1)]
        pws = {fmt: {f: [pw] + [_clone_packed(pw) for _ in range(r - 1)] for f, pw in by_f.items()}
               for fmt, by_f in packed.items()}
        w8s = [(w8.qweight8.T, w8.scale8)] + [(w8.qweight8.clone().T, w8.scale8) for _ in range(r - 1)]
        peer_ops = _build_peers(peers, ws)
        for m in ms:  # _int_mm wants B column-major: (K, N) views of (N, K)
            x = torch.randn(m, k, device="cuda", generator=gen).half()
            xs = [x] + [x.clone() for _ in range(r - 1)]
            row = {"shape": shape, "m": m, "copies": r, "fp16_ms": _rotated_ms(lambda i: F.linear(xs[i], ws[i]), r)}
            try:
                row["int8_ms"] = _rotated_ms(lambda i: w8a8_torch(xs[i], *w8s[i]), r) if m > 16 else None
            except RuntimeError:
                row["int8_ms"] = None
            _time_progressive(row, x, xs, pws["progressive"], r)
            _time_formats(row, x, xs, pws, formats, r, notes)
            _time_peers(row, x, xs, w, peer_ops, r)
            del xs
            row["mem_floor_ms"] = packed["progressive"][fractions[0]].nbytes / bw * 1e3
            row["compute_floor_ms"] = 2 * m * n * k / peak * 1e3
            rows.append(row)
            if on_row:
                on_row(rows)
    return rows


def _time_progressive(row, x, xs, pws, r):
    """The default format's columns: every fraction (graph, eager), the last with the heuristic's schedule too."""
    from .kernels.launch import arch_of, gemm_cuda
    from .ops import gemm
    f1 = list(pws)[-1]
    (m, k), n = x.shape, pws[f1][0].shape[0]
    arch, n8 = arch_of(x.device), pws[f1][0].idx8.numel()
    heuristic = fit(choose(arch, m, n, k, 128, n8), k, 128)
    row["heuristic"], row["tuned"] = heuristic.key, pick(arch, m, n, k, 128, n8).key
    row[f"mixkern_{f1:g}_heuristic_ms"] = _rotated_ms(lambda i: gemm_cuda(xs[i], pws[f1][i], heuristic), r)
    for f, copies in pws.items():
        row[f"err_{f:g}"] = check(x, copies[0])
        row[f"mixkern_{f:g}_ms"] = _rotated_ms(lambda i: gemm(xs[i], copies[i]), r)
        row[f"mixkern_{f:g}_eager_ms"] = _median_ms(lambda: gemm(x, copies[0]), graph=False)
        row[f"bits_{f:g}"] = copies[0].bits_per_weight


def _time_formats(row, x, xs, pws, formats, r, notes):
    """The other formats' columns (``{fmt}_{f}_ms``, ``err_{fmt}_{f}``).  A format whose CUDA op
    raises NotImplementedError (none today: both formats have CUDA kernels) leaves ``formats``,
    with a note."""
    from .ops import gemm
    for fmt in formats[1:]:
        try:
            for f, copies in pws[fmt].items():
                row[f"err_{fmt}_{f:g}"] = check(x, copies[0])
                row[f"{fmt}_{f:g}_ms"] = _rotated_ms(lambda i: gemm(xs[i], copies[i]), r)
                row[f"bits_{fmt}_{f:g}"] = copies[0].bits_per_weight
        except NotImplementedError as e:
            notes.append(f"{fmt} columns skipped: {_first_line(e)}")
            print(f"note: {notes[-1]}", file=sys.stderr)
            formats.remove(fmt)


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"[:300]


def _build_peers(peers, ws) -> dict:
    """{peer: one op per rotated weight copy, or the one-line reason it could not be built}."""
    ops = {}
    for p in peers:
        try:
            ops[p] = [p.build(w) for w in ws]
        except Exception as e:  # a third-party library's failure costs its column, not the run
            ops[p] = _first_line(e)
        torch.cuda.empty_cache()
    return ops


def _time_peers(row, x, xs, w, peer_ops, r):
    """Each peer's ``{name}_ms``, timed only if its relative error to the fp16 product passes its
    bound (``{name}_relerr``); ``{name}_error`` (also on stderr) says why a cell is empty."""
    ref = F.linear(x.float(), w.float()) if peer_ops else None
    for p, ops in peer_ops.items():
        row[f"{p.name}_ms"], why = None, None
        try:
            if isinstance(ops, str):
                why = f"build failed: {ops}"
            else:
                row[f"{p.name}_relerr"] = err = relative_error(ops[0](x), ref)
                if err <= p.bound:
                    row[f"{p.name}_ms"] = _rotated_ms(lambda i: ops[i](xs[i]), r)
                else:
                    why = f"relative error {err:.3g} > bound {p.bound}: not timed"
        except Exception as e:  # as in _build_peers: the column's cell says n/a, the run goes on
            why = _first_line(e)
        if why:
            row[f"{p.name}_error"] = why
            print(f"{p.name} {row['shape']} M={row['m']}: {why}", file=sys.stderr)


def extra_columns(rows, fractions) -> list[tuple[str, str]]:
    """(label, row key) of the optional timed columns these rows hold: mixllm at the first and
    last fraction, then each peer."""
    ends = dict.fromkeys((fractions[0], fractions[-1]))
    candidates = [(f"mixllm {f:.0%}", f"mixllm_{f:g}_ms") for f in ends] + [(p.label, f"{p.name}_ms") for p in PEERS]
    return [(label, key) for label, key in candidates if any(key in r for r in rows)]


def _cell(r, key) -> str:
    """``us (speedup vs cuBLAS fp16)``; "wrong" if the sanity check failed, "n/a" if not run."""
    ms = r.get(key)
    if ms:
        return f"{ms * 1e3:.1f} ({r['fp16_ms'] / ms:.2f}x)"
    return "wrong" if r.get(key[: -len("_ms")] + "_error", "").startswith("relative error") else "n/a"


def table(rows, fractions) -> str:
    f0, f1 = fractions[0], fractions[-1]
    extra = extra_columns(rows, fractions)
    head = (f"| N x K | M | cuBLAS fp16 us | int8 W8A8 us | mixkern {f0:.0%} us | mixkern {f1:.0%} us | {f0:.0%} eager us "
            f"| speedup vs fp16 ({f0:.0%}) | {f0:.0%} / HBM floor | {f1:.0%} / {f0:.0%} | {f1:.0%} heuristic-schedule us "
            f"| tuned / heuristic | " + "".join(f"{label} us (vs fp16) | " for label, _ in extra) + "max err/tol |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        i8 = f"{r['int8_ms'] * 1e3:.1f}" if r["int8_ms"] else "n/a"
        t0, t1 = r[f"mixkern_{f0:g}_ms"], r[f"mixkern_{f1:g}_ms"]
        floor = max(r["mem_floor_ms"], r["compute_floor_ms"])
        err = max(v for key, v in r.items() if key.startswith("err_"))
        lines.append(f"| {r['shape']} | {r['m']} | {r['fp16_ms'] * 1e3:.1f} | {i8} | {t0 * 1e3:.1f} | {t1 * 1e3:.1f} "
                     f"| {r[f'mixkern_{f0:g}_eager_ms'] * 1e3:.1f} "
                     f"| {r['fp16_ms'] / t0:.2f}x | {floor / t0:.0%} | {t1 / t0:.2f} "
                     f"| {r[f'mixkern_{f1:g}_heuristic_ms'] * 1e3:.1f} | {t1 / r[f'mixkern_{f1:g}_heuristic_ms']:.2f} "
                     f"| " + "".join(f"{_cell(r, key)} | " for _, key in extra) + f"{err:.2f} |")
    return "\n".join(lines)


def plot(rows, fractions, path, title=None):
    """Speedup vs cuBLAS fp16 against M, one panel per shape, one line per method present."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series = [(f"mixkern {fractions[0]:.0%}", f"mixkern_{fractions[0]:g}_ms"), ("int8 W8A8 torch", "int8_ms"),
              *extra_columns(rows, fractions)]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    ncols = min(4, len(shapes))
    fig, axes = plt.subplots(-(-len(shapes) // ncols), ncols, figsize=(4 * ncols, 3.2 * -(-len(shapes) // ncols)),
                             squeeze=False)
    handles = {}
    for ax, shape in zip(axes.flat, shapes):
        rs = [r for r in rows if r["shape"] == shape]
        for color, (label, key) in enumerate(series):
            pts = [(r["m"], r["fp16_ms"] / r[key]) for r in rs if r.get(key)]
            if pts:
                handles[label] = ax.plot(*zip(*pts), marker="o", ms=3, color=f"C{color}", label=label)[0]
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(shape, fontsize=9)
        ax.set_xlabel("M (tokens)", fontsize=8)
        ax.set_ylabel("speedup vs cuBLAS fp16", fontsize=8)
    for ax in list(axes.flat)[len(shapes):]:
        ax.axis("off")
    fig.suptitle(title or f"mixkern W4A8 and peers on {torch.cuda.get_device_name()}")
    fig.tight_layout()
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(len(handles), 4), fontsize=8,
               bbox_to_anchor=(0.5, 0.0))
    fig.savefig(path, dpi=120, bbox_inches="tight")


def report_row(rows: list, fractions, json_path: str | None, formats: list, peers: list, notes: list) -> None:
    """The newest row as a table line on stderr (with the header before the first), and the JSON
    so far: a run cut off by a time limit keeps both."""
    lines = table(rows[-1:], fractions).splitlines()
    print("\n".join(lines if len(rows) == 1 else lines[2:]), file=sys.stderr, flush=True)
    if json_path:
        _write_json(json_path, rows, formats, peers, notes)


def _write_json(path: str, rows: list, formats: list, peers: list, notes: list) -> None:
    with open(path, "w") as f:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        json.dump({"device": device, "torch": torch.__version__, "formats_requested": formats,
                   "peers": {p.name: {"label": p.label, "relerr_bound": p.bound} for p in peers},
                   "notes": notes, "rows": rows}, f, indent=1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mixkern.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=LLAMA_SHAPES, help="NxK output x input features")
    parser.add_argument("--m", type=int, nargs="+", default=M_VALUES)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS),
                        help="weight formats to time (progressive is the base columns and must be one; "
                             "a format without a CUDA kernel yet is skipped with a note)")
    parser.add_argument("--peers", nargs="*", choices=PEER_NAMES, default=list(PEER_NAMES),
                        help="other libraries' kernels to time beside mixkern (none: --peers alone; "
                             "gemlite ones need gemlite importable, else skipped with a note)")
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--plot", help="write a PNG here: speedup vs M (with --model: tokens/s bars)")
    from . import bench_model
    bench_model.add_arguments(parser)
    return parser


def main(argv=None) -> int:
    from . import bench_model
    args = build_parser().parse_args(argv)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("error: --plot needs matplotlib: pip install 'mixkern[plot]' (or leave out --plot)", file=sys.stderr)
        return 2
    if args.model:
        return bench_model.main(args)
    if "progressive" not in args.formats:
        print("error: --formats must include progressive (the table's base columns), e.g. --formats progressive mixllm",
              file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: python -m mixkern.bench needs a CUDA GPU", file=sys.stderr)
        return 2
    from .kernels.launch import arch_of
    arch = arch_of(torch.device("cuda"))
    plan = {}
    for shape in args.shapes:
        n, k = map(int, shape.split("x"))
        for f in args.fractions:
            n8 = round(f * n)
            for m in args.m:
                plan.setdefault(k, set()).update({pick(arch, m, n, k, 128, n8), fit(choose(arch, m, n, k, 128, n8), k, 128)})
    warm_compile_cache(arch, plan)
    peers, notes = available(args.peers, torch.device("cuda"))
    formats = ["progressive", *(f for f in dict.fromkeys(args.formats) if f != "progressive")]
    def on_row(rows):
        report_row(rows, args.fractions, args.json, formats, peers, notes)

    rows = run(args.shapes, args.m, args.fractions, formats, peers, notes, on_row=on_row)
    if args.plot:
        plot(rows, args.fractions, args.plot)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(table(rows, args.fractions))
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
