"""Kernel schedules: how one GEMM launch tiles its work, and the table that picks one per shape.

A :class:`Schedule` is a small value (block sizes, pipeline stages, threads, split-K).
The kernels compute ``Y^T = W X^T`` (weights are the MMA's left operand, so the int4 ->
int8 conversion feeds the tensor core from registers), hence ``block_n`` tiles output
features and ``block_m`` tiles tokens.  ``pick(arch, m, n, k)`` maps a shape to its M
bucket and returns the table's schedule for it, or the default for the bucket.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache

M_BUCKETS = (16, 64, 256, 1024, 1 << 30)  # a GEMM with M tokens uses the first bucket >= M


@dataclass(frozen=True, order=True)
class Schedule:
    block_m: int = 64  # tokens per block (the MMA's N dimension)
    block_n: int = 128  # output features per block (the MMA's M dimension)
    block_k: int = 128
    stages: int = 3
    threads: int = 256
    split_k: int = 1  # K slices summed exactly in int32 (atomics), then one epilogue pass

    def check(self, k: int, group_size: int) -> None:
        """Raise ValueError if this schedule cannot run a K-long reduction with this group size."""
        if self.block_k % 32 or (self.block_k % group_size and group_size % self.block_k):
            raise ValueError(f"block_k={self.block_k} must be a multiple of 32 and divide or be divided by group_size={group_size}")
        if k % (self.block_k * self.split_k):
            raise ValueError(f"K={k} is not a multiple of block_k*split_k={self.block_k * self.split_k}")
        if self.block_n % 64 or self.block_m % 16 or self.threads % 128:
            raise ValueError(f"{self}: block_n % 64, block_m % 16 and threads % 128 must all be 0")

    @property
    def key(self) -> str:
        return "bm{block_m}_bn{block_n}_bk{block_k}_s{stages}_t{threads}_sk{split_k}".format(**asdict(self))


DEFAULTS = {  # per M bucket; from scripts/sweep_schedules.py on the H100 (see docs/kernels.md)
    16: Schedule(block_m=16, block_n=128, block_k=128, stages=3, threads=128, split_k=4),
    64: Schedule(block_m=64, block_n=64, block_k=128, stages=4, threads=128, split_k=2),
    256: Schedule(block_m=64, block_n=128, block_k=128, stages=3, threads=256, split_k=1),
    1024: Schedule(block_m=256, block_n=128, block_k=128, stages=3, threads=256, split_k=1),
    1 << 30: Schedule(block_m=256, block_n=128, block_k=128, stages=3, threads=256, split_k=1),
}


def bucket(m: int) -> int:
    return next(b for b in M_BUCKETS if m <= b)


@lru_cache(maxsize=None)
def load_table(arch: str) -> dict:
    """Shipped table for an arch ('sm_90a', 'sm_80'): {'<bucket>:<n>x<k>': Schedule}; empty if none."""
    path = os.path.join(os.path.dirname(__file__), f"{arch}.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        raw = json.load(f)
    return {key: Schedule(**value) for key, value in raw.get("schedules", {}).items()}


def pick(arch: str, m: int, n: int, k: int, group_size: int = 128) -> Schedule:
    """The schedule for an (M, N, K) GEMM on ``arch``: table entry, else the bucket default."""
    b = bucket(m)
    schedule = load_table(arch).get(f"{b}:{n}x{k}", DEFAULTS[b])
    while schedule.split_k > 1 and k % (schedule.block_k * schedule.split_k):
        schedule = Schedule(**{**asdict(schedule), "split_k": schedule.split_k // 2})
    schedule.check(k, group_size)
    return schedule


def all_default_schedules() -> list[Schedule]:
    return sorted(set(DEFAULTS.values()))
