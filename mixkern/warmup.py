"""Compile, ahead of use and in parallel, every kernel a quantized model will launch.

Kernels are compiled per (kind, K, group size, schedule, dtype, precision mix, arch): M and
N are dynamic, but the schedule chosen for a layer depends on M.  :func:`kernel_jobs`
walks every token count up to ``max_tokens`` through the same choice the op makes
(:func:`mixkern.schedules.pick`), so the set is exact, not a sample.

The compiled kernels live in TileLang's disk cache (``TILELANG_CACHE_DIR``, default
``~/.tilelang/cache``), keyed by the generated code, the target and the TileLang version,
and written with atomic renames, so concurrent processes share it safely.  Beside it
mixkern keeps each kernel's IR (:mod:`mixkern.kernels.ir_cache`), written once the kernel
has compiled, so a warm :func:`warmup` only checks file names and starts no compiler
processes, and kernels load at first use without TileLang's Python frontend.  A stale IR
entry costs a compile at first use, never a wrong kernel: TileLang's cache is keyed by
the code itself.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import torch
from torch import nn

from ._progress import progress

DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16"}


@dataclass(frozen=True)
class WarmupReport:
    kernels: int  # distinct kernels the model launches up to max_tokens
    compiled: int  # of those, built now (the rest were cached)
    seconds: float
    arch: str


def layer_shapes(model: nn.Module) -> list[tuple[int, int, int, int, str]]:
    """Distinct (N, K, group size, 8-bit rows, format value) of the model's MixLinear layers."""
    from .linear import MixLinear
    return sorted({(m.out_features, m.in_features, m.group_size, m.idx8.numel(), m.format.value)
                   for m in model.modules() if isinstance(m, MixLinear)})


def kernel_jobs(arch: str, shapes, dtypes=("float16",), max_tokens: int = 8192, sms: int | None = None) -> list[tuple]:
    """The ``compiled`` argument tuples of every kernel these layer shapes -- (N, K, group
    size, 8-bit rows[, format]) -- launch for any M from 1 to ``max_tokens``."""
    from .kernels.launch import kernel_jobs as jobs_of
    from .schedules import format_pick, pick
    from .schedules.heuristic import distinct_token_counts
    choose = pick.__wrapped__  # uncached: hundreds of M values would flush pick's cache
    ms = distinct_token_counts(max_tokens)
    jobs = {}
    for n, k, group_size, n8, *fmt in shapes:
        has4, has8 = n8 < n, n8 > 0
        options = format_pick(fmt[0] if fmt else "progressive")
        for schedule in {choose(arch, m, n, k, group_size, n8, sms, **options) for m in ms}:
            for dtype in dtypes:
                jobs.update(dict.fromkeys(jobs_of(arch, k, group_size, schedule, dtype, has4, has8, *fmt)))
    return sorted(jobs, key=str)


def compile_job(job: tuple) -> tuple:
    """Compile one kernel into the disk caches (runs in a worker process)."""
    from .kernels.launch import compiled
    compiled(*job)
    return job


def compile_jobs(jobs, workers: int | None = None, desc: str = "compile kernels") -> int:
    """Build every job not already cached, in parallel processes; returns how many were built."""
    from .kernels import ir_cache
    todo = [j for j in jobs if not os.path.exists(ir_cache.entry_path(j))]
    if not todo:
        return 0
    import multiprocessing
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    # fork: a worker only lowers and runs nvcc, never touching the CUDA context it inherits
    # (spawn would re-import the caller's __main__, which breaks scripts without a main guard)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        for fut in progress(as_completed([pool.submit(compile_job, j) for j in todo]), desc, total=len(todo)):
            fut.result()
    return len(todo)


def warmup(model: nn.Module, dtypes=None, max_tokens: int = 8192, arch: str | None = None,
           workers: int | None = None) -> WarmupReport:
    """Compile every kernel ``model``'s MixLinear layers will launch for 1..``max_tokens``
    tokens, in ``dtypes`` (default: the dtype of the model's floating-point parameters, or
    fp16), for ``arch`` (default: the GPU the model is on; give one, e.g. 'sm_90a', to
    build on a machine without a GPU)."""
    from .kernels.launch import arch_of, sm_count
    shapes = layer_shapes(model)
    if not shapes:
        raise ValueError("the model has no MixLinear layers: quantize it first (mixkern.quantize_model)")
    device = next((b.device for b in model.buffers() if b.device.type == "cuda"), None)
    if arch is None:
        if device is None:
            raise ValueError("the model is not on a CUDA GPU: move it there, or name the target with arch='sm_90a'")
        arch = arch_of(device)
    dtypes = tuple(DTYPE_NAMES[d] if isinstance(d, torch.dtype) else d for d in (dtypes or (_model_dtype(model),)))
    t0 = time.perf_counter()
    jobs = kernel_jobs(arch, shapes, dtypes, max_tokens, sm_count(device) if device is not None else None)
    built = compile_jobs(jobs, workers, f"compile {arch}")
    report = WarmupReport(len(jobs), built, time.perf_counter() - t0, arch)
    print(f"mixkern.warmup: {report.kernels} kernels for {len(shapes)} layer shapes ({built} compiled now) "
          f"in {report.seconds:.1f}s", file=sys.stderr)
    return report


def _model_dtype(model: nn.Module) -> torch.dtype:
    dtypes = {p.dtype for p in model.parameters() if p.dtype in DTYPE_NAMES}
    return dtypes.pop() if len(dtypes) == 1 else torch.float16
