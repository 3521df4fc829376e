"""Compile every candidate in parallel, check and time each on the GPU, keep the fastest exact one.

Method: one PackedWeight per layer shape (random weights with outlier rows, 10% 8-bit
features at random, so both launches of a tensor-core schedule and both halves of the
decode kernel run), fresh activations per M bucket (M = the bucket's bound, 4096 for the
open last bucket).  A candidate must reproduce the exact reference bit for bit, with its
output poisoned first, before it is timed; time = median of CUDA-graph replays under
``triton.testing.do_bench``, which flushes L2 before every replay, so no candidate is timed
on cached weights.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field

from .._progress import progress
from ..schedules import TABLE_VERSION, AnySchedule, table_key
from .space import bucket_m, candidates

FRACTION_8BIT = 0.1
DTYPE = "float16"


@dataclass
class Entry:
    """One (bucket, N, K) of the table being built."""
    bucket: int
    n: int
    k: int
    candidates: list
    pruned: Counter
    compile_errors: dict = field(default_factory=dict)  # schedule key -> first line of the error
    wrong: list = field(default_factory=list)  # schedule keys whose output differed from the reference
    times_us: dict = field(default_factory=dict)  # schedule key -> median us

    @property
    def key(self) -> str:
        return table_key(self.bucket, self.n, self.k)

    @property
    def heuristic(self) -> AnySchedule:
        """The schedule that runs when the table lacks this entry (the first candidate)."""
        return self.candidates[0]

    def best(self) -> AnySchedule | None:
        timed = [s for s in self.candidates if s.key in self.times_us]
        return min(timed, key=lambda s: self.times_us[s.key]) if timed else None


def plan(arch: str, shapes, buckets, group_size: int = 128, limit: int | None = None) -> list[Entry]:
    entries = []
    for b in buckets:
        for n, k in shapes:
            kept, pruned = candidates(arch, b, n, k, group_size, limit)
            entries.append(Entry(b, n, k, kept, pruned))
    return entries


def _jobs(arch: str, entry: Entry, schedule: AnySchedule, group_size: int) -> list[tuple]:
    from ..kernels.launch import kernel_jobs
    return kernel_jobs(arch, entry.k, group_size, schedule, DTYPE)


def _compile_job(job):
    from ..kernels.launch import compiled
    try:
        compiled(*job)
        return job, None
    except Exception as e:  # noqa: BLE001 -- a candidate that does not build is a result, not a crash
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        return job, (lines[-1] if lines else type(e).__name__)[:300]


def compile_all(arch: str, entries: list[Entry], group_size: int = 128, workers: int | None = None) -> int:
    """Compile every candidate's kernels in parallel processes (TileLang's disk cache keeps them);
    record compile errors on the entries.  Returns the number of kernels built."""
    jobs = sorted({j for e in entries for s in e.candidates for j in _jobs(arch, e, s, group_size)}, key=str)
    errors = {}
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(min(workers, max(len(jobs), 1))) as pool:
        futures = [pool.submit(_compile_job, j) for j in jobs]
        for fut in progress(as_completed(futures), f"compile {arch}", total=len(futures)):
            job, err = fut.result()
            if err:
                errors[job] = err
    for e in entries:
        for s in e.candidates:
            bad = [errors[j] for j in _jobs(arch, e, s, group_size) if j in errors]
            if bad:
                e.compile_errors[s.key] = bad[0]
    return len(jobs)


def measure(arch: str, entries: list[Entry], group_size: int = 128, budget_s: float = float("inf"),
            timed: bool = True, seed: int = 0) -> None:
    """Check every compiled candidate against the reference on the present GPU and (if timed)
    time it.  Stops starting new entries once ``budget_s`` has passed."""
    import torch

    from .. import quantize_activation, quantize_weight
    from ..bench import _median_ms
    from ..kernels import launch
    from ..reference import reference_gemm_quantized

    gen = torch.Generator(device="cuda").manual_seed(seed)
    start = time.perf_counter()
    shape = pw = None  # entries run sorted by shape: one packed weight alive at a time
    for e in progress(sorted(entries, key=lambda e: (e.n, e.k, e.bucket)), "tune" if timed else "verify"):
        if time.perf_counter() - start > budget_s:
            continue
        if shape != (e.n, e.k):
            shape = (e.n, e.k)
            w = torch.randn(e.n, e.k, device="cuda", generator=gen) * 0.02
            w[torch.randint(0, e.n, (max(1, e.n // 50),), device="cuda", generator=gen)] *= 8
            idx = torch.randperm(e.n, device="cuda", generator=gen)[: max(1, round(FRACTION_8BIT * e.n))]
            pw = quantize_weight(w.half(), idx.cpu().tolist(), group_size)
        m = bucket_m(e.bucket)
        x = (torch.randn(m, e.k, device="cuda", generator=gen)
             * torch.exp(torch.randn(m, 1, device="cuda", generator=gen))).half()
        xq, a = quantize_activation(x)
        y_ref = reference_gemm_quantized(xq, a, pw, x.dtype)
        for s in e.candidates:
            if s.key in e.compile_errors:
                continue
            with launch.poisoned_outputs():
                y = launch.gemm_cuda(x, pw, s, arch)
            if not torch.equal(y, y_ref):
                e.wrong.append(s.key)
                continue
            if timed:
                e.times_us[s.key] = _median_ms(lambda: launch.gemm_cuda(x, pw, s, arch)) * 1e3
            else:
                e.times_us[s.key] = float("nan")


def table_json(arch: str, entries: list[Entry], meta: dict) -> dict:
    """The versioned table the dispatcher reads, with the evidence for every entry."""
    schedules, evidence = {}, {}
    for e in entries:
        best = e.best() if meta.get("timed") else (e.heuristic if e.heuristic.key in e.times_us else None)
        if best is None:
            continue
        schedules[e.key] = asdict(best)
        num = lambda t: None if t is None or t != t else t  # noqa: E731 -- untimed (verify) runs store null
        evidence[e.key] = {
            "best_us": num(e.times_us.get(best.key)), "heuristic": e.heuristic.key,
            "heuristic_us": num(e.times_us.get(e.heuristic.key)), "candidates": len(e.candidates),
            "verified_exact": len(e.times_us),
            "compile_errors": len(e.compile_errors), "wrong": len(e.wrong), "pruned": dict(e.pruned)}
    return {"version": TABLE_VERSION, "arch": arch, **meta, "schedules": schedules, "evidence": evidence}


def write_table(path: str, table: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(table, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def summary(entries: list[Entry], timed: bool) -> str:
    """Markdown table: per entry, candidates, failures, the heuristic's and the tuned time."""
    head = "| M bucket | N x K | candidates | pruned | compile errors | wrong | heuristic | heuristic us | tuned | tuned us | heuristic / tuned |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    ratios = []
    for e in entries:
        best = e.best()
        d = e.heuristic
        du, bu = e.times_us.get(d.key), e.times_us.get(best.key) if best else None
        fmt = (lambda t: "n/a" if t is None or t != t else f"{t:.1f}")  # noqa: E731
        if timed and du and bu:
            ratios.append(du / bu)
        speed = f"{du / bu:.2f}x" if timed and du and bu else "n/a"
        lines.append(f"| {e.bucket if e.bucket < 1 << 30 else '>1024'} | {e.n}x{e.k} | {len(e.candidates)} "
                     f"| {sum(e.pruned.values())} | {len(e.compile_errors)} | {len(e.wrong)} | {d.key} | {fmt(du)} "
                     f"| {best.key if best else 'n/a'} | {fmt(bu)} | {speed} |")
    if ratios:
        ratios.sort()
        lines.append(f"\nheuristic / tuned over {len(ratios)} points: median {ratios[len(ratios) // 2]:.2f}x, "
                     f"worst {ratios[-1]:.2f}x, within 15%: {sum(r <= 1.15 for r in ratios)}")
    return "\n".join(lines)

