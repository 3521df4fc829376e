"""The schedule space per M bucket, and the pruning that removes what cannot run well or at all.

Decode buckets (M <= 16) try the dp4a kernel (:class:`GemvSchedule`: with or without the
activation quantization fused in, one or several row groups per block) and small-tile
tensor-core schedules with split-K; larger buckets try tensor-core tiles only, and above
M = 64 the predecoded GEMM's tiles beside the in-loop-decode ones; on sm_90a every bucket
from 16 tokens tries the overlapped decode's tiles too (64 x 128 and 64 x 256 split over K
up to 64 tokens, 64- to 256-row token tiles above, 64 x 64 split over K up to 256) and the
register-decode kernel's (16-64 token rows up to 64 tokens, 128-256 above).  Pruning is
static, before anything compiles: shared memory per block, accumulator registers per
thread, K divisibility, wgmma's 64-row minimum per warpgroup, idle lanes in the dp4a
kernel.  What survives and still fails to compile is reported by the tuner, not hidden.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter

from ..schedules import M_BUCKETS, SHARED_BYTES, AnySchedule, GemvSchedule, Schedule, fit
from ..schedules.heuristic import choose, registered, sm_count

ACC_REGS_PER_THREAD = 128  # int32 accumulators per thread beyond which the kernel spills


def _gemv_space(bucket: int) -> list[GemvSchedule]:
    if bucket > 16:
        return []
    tokens = {1: (1,), 4: (2, 4), 16: (4, 8, 16)}[bucket]
    plain = [GemvSchedule(r, w, t) for r, w, t in itertools.product((1, 2, 4, 8), (1, 2, 4, 8), tokens)]
    fused = [GemvSchedule(r, w, t, c, fused=True)
             for r, w, t, c in itertools.product((1, 2, 4, 8), (1, 2, 4, 8), tokens, (1, 4, 16))]
    return plain + fused


def _mma_space(bucket: int) -> list[Schedule]:
    if bucket <= 16:
        grid = dict(bm=(16,), bn=(64, 128), bk=(128,), st=(3, 4), th=(128,), sk=(1, 2, 4, 8))
    elif bucket <= 64:
        grid = dict(bm=(32, 64), bn=(64, 128), bk=(128,), st=(3, 4), th=(128,), sk=(1, 2, 4))
    else:
        grid = dict(bm=(64, 128, 256), bn=(128, 256), bk=(64, 128), st=(2, 3, 4), th=(128, 256), sk=(1,))
    in_loop = [Schedule(*v) for v in itertools.product(*grid.values())]
    if bucket <= 64:  # 64-row token tiles, 64 or 128 weight rows a warpgroup, split over K
        overlapped = [Schedule(64, bn, 128, st, 256, sk, overlap=True)
                      for bn, st, sk in itertools.product((128, 256), (3, 4), (1, 2, 4, 8))]
    else:
        overlapped = [Schedule(bm, 128, 128, st, 256, overlap=True)
                      for bm, st in itertools.product((64, 128, 192, 256), (3, 4))]
    if bucket <= 256:  # narrow layers: one warpgroup on 64 weight rows, split over K
        overlapped += [Schedule(64, 64, 128, st, 128, sk, overlap=True) for st, sk in itertools.product((3, 4), (1, 2, 4, 8))]
    in_loop += overlapped + _register_space(bucket)
    if bucket <= 64:
        return in_loop
    predecoded = [Schedule(bm, bn, 128, st, th, predecode=True)
                  for bm, bn, st, th in itertools.product((64, 128, 256), (128, 256), (3, 4), (128, 256))]
    return in_loop + predecoded


def _register_space(bucket: int) -> list[Schedule]:
    """The register-decode kernel's tiles (Hopper; tokens x weight rows, 64 weight rows a consumer
    warpgroup): 16-64 token rows up to 64 tokens, split up to 8 ways; 128-256 above, up to 4."""
    if bucket < 16:
        return []
    rows_options = (16,) if bucket <= 16 else (32, 64) if bucket <= 64 else (128, 192, 256)
    stages, splits = (6, (1, 2, 4, 8)) if bucket <= 64 else (4, (1, 2, 4))
    return [Schedule(tokens, rows, 128, stages, 2 * rows, sk, register_a=True)
            for tokens, rows, sk in itertools.product(rows_options, (64, 128), splits)]


def prune_reason(s: AnySchedule, arch: str, n: int, k: int, group_size: int) -> str | None:
    """Why ``s`` cannot (or should not) run an N x K layer on ``arch``; None if it may."""
    base = arch.split("+")[0]
    if isinstance(s, GemvSchedule) and not s.fits_registers(k):
        return "registers"  # the block's quantized x or a row group's weights would not fit
    try:
        s.check(k, group_size)
    except ValueError:
        return "divisibility"
    if isinstance(s, GemvSchedule):
        if s.rows * s.tokens > 64:
            return "registers"
        if s.warps * 32 * 32 > max(k, 1024):
            return "idle lanes"  # one step of the block is longer than K
        if s.rows > max(n, 1):
            return "rows > N"
        return None
    if (s.overlap or s.register_a) and base != "sm_90a":
        return "Hopper only"  # elsewhere an overlapped or register-decode schedule is its in-loop tile again
    if not s.stores_rows(n):
        return "output rows"  # the predecoded GEMM's TMA epilogue stores 16-byte runs
    if s.fitted(arch).shared_bytes() > SHARED_BYTES.get(base, 99 * 1024):  # both precisions, stages cut to 2
        return "shared memory"
    if s.block_m * s.block_n // s.threads > ACC_REGS_PER_THREAD:
        return "registers"
    if base == "sm_90a" and s.block_n < 64 * (s.threads // 128):
        return "wgmma rows"  # each consumer warpgroup issues m64 wgmmas
    return None


def bucket_m(bucket: int) -> int:
    """The M a bucket is tuned at: its upper bound (4096 for the open last bucket)."""
    return min(bucket, 4096)


def heuristic_for(arch: str, bucket: int, n: int, k: int, group_size: int, fraction_8bit: float) -> AnySchedule:
    """What :mod:`mixkern.schedules.heuristic` runs for this entry when the table lacks it: the
    register-decode rule where it applies (as :func:`mixkern.schedules.pick` does), else :func:`choose`."""
    m = bucket_m(bucket)
    tile = registered(arch, m, n, k, group_size, sm_count(arch))
    return fit(tile or choose(arch, m, n, k, group_size, round(fraction_8bit * n)), k, group_size)


def candidates(arch: str, bucket: int, n: int, k: int, group_size: int = 128,
               limit: int | None = None, seed: int = 0,
               fraction_8bit: float = 0.1) -> tuple[list[AnySchedule], Counter]:
    """Schedules worth timing for one (bucket, N, K), the heuristic's choice first (never
    pruned: it is what runs untuned); and the count of pruned ones by reason.  ``limit``
    keeps the heuristic's choice plus a fixed random sample."""
    if bucket not in M_BUCKETS:
        raise ValueError(f"M bucket {bucket} is not one of {M_BUCKETS}")
    pruned: Counter = Counter()
    kept = [heuristic_for(arch, bucket, n, k, group_size, fraction_8bit)]
    for s in _gemv_space(bucket) + _mma_space(bucket):
        reason = prune_reason(s, arch, n, k, group_size)
        if reason:
            pruned[reason] += 1
        elif s not in kept:
            kept.append(s)
    if limit is not None and len(kept) > limit:
        rest = kept[1:]
        random.Random(seed).shuffle(rest)
        pruned["over limit"] += len(rest) - (limit - 1)
        kept = kept[:1] + sorted(rest[: limit - 1], key=lambda s: s.key)
    return kept, pruned
