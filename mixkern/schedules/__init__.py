"""Kernel schedules: how one GEMM launch tiles its work, and the table that picks one per shape.

A :class:`Schedule` is a small value (block sizes, pipeline stages, threads, split-K).
The tensor-core kernel computes ``Y = X W^T`` with the tokens as the MMA's M dimension:
``block_m`` tiles tokens, ``block_n`` output features (int4 is decoded into a shared int8
tile, so both operands come from shared memory).  ``pick(arch, m, n, k)`` maps a shape to its M
bucket and returns the tuned table's schedule for it, or what :mod:`.heuristic` derives from
the shape and the GPU.  Decode (M <= 16) mostly runs a :class:`GemvSchedule` (the dp4a
kernel, 4- and 8-bit rows in one launch); 16-token tensor-core tiles win at M = 16 on
large layers.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from functools import lru_cache

TABLE_VERSION = 1

M_BUCKETS = (1, 4, 16, 64, 256, 1024, 1 << 30)  # a GEMM with M tokens uses the first bucket >= M
SHARED_BYTES = {"sm_90a": 227 * 1024, "sm_80": 163 * 1024, "sm_86": 99 * 1024, "sm_89": 99 * 1024}
PREDECODE_N_MULTIPLE = 8  # the predecoded GEMM's TMA epilogue stores output rows in 16-byte runs
OVERLAP_ROWS = 256  # the overlapped decode's widest token tile (progressive: its int32 accumulators alone)
SMS = {"sm_90a": 132, "sm_80": 108, "sm_86": 84, "sm_89": 128}  # SM count planned for when no GPU is asked (H100 SXM, A100, ...)


@dataclass(frozen=True, order=True)
class Schedule:
    block_m: int = 64  # tokens per block (the MMA's M dimension)
    block_n: int = 128  # output features per block (the MMA's N dimension)
    block_k: int = 128
    stages: int = 3
    threads: int = 256
    split_k: int = 1  # K slices summed exactly in int32 (atomics), then one epilogue pass
    predecode: bool = False  # decode the whole layer to int8 first, then a plain int8 GEMM (long prompts)
    overlap: bool = False  # Hopper: decode tile j + 1 while the tensor cores multiply tile j (elsewhere: ignored)
    register_a: bool = False  # Hopper, few tokens: weights decoded into the wgmma's register A, tokens its N (block_m)

    def check(self, k: int, group_size: int, n: int | None = None) -> None:
        """Raise ValueError if this schedule cannot run a K-long reduction with this group size
        (or, given ``n``, write N output features)."""
        if n is not None and not self.stores_rows(n):
            raise ValueError(f"{self}: a predecoded GEMM stores 16-byte output runs by TMA, so N must be a "
                             f"multiple of {PREDECODE_N_MULTIPLE}, got {n}")
        if self.block_k % 32 or (self.block_k % group_size and group_size % self.block_k):
            raise ValueError(f"block_k={self.block_k} must be a multiple of 32 and divide or be divided by group_size={group_size}")
        if self.register_a:  # K slices of whole 128-wide tiles, the last one possibly shorter
            if k % self.block_k or not self.slices_filled(k):
                raise ValueError(f"K={k} is not {self.split_k} non-empty slices of {self.block_k}-wide tiles")
        elif k % (self.block_k * self.split_k):
            raise ValueError(f"K={k} is not a multiple of block_k*split_k={self.block_k * self.split_k}")
        if self.block_n % 64 or self.block_m % 16 or self.threads % 128:
            raise ValueError(f"{self}: block_n % 64, block_m % 16 and threads % 128 must all be 0")
        if self.predecode and (self.split_k != 1 or self.block_m < 64 * (self.threads // 128)):
            raise ValueError(f"{self}: a predecoded GEMM runs without split-K, each warpgroup on >= 64 whole rows")
        if self.overlap and (self.predecode or self.block_m % 64 or self.block_n % (64 * (self.threads // 128))):
            raise ValueError(f"{self}: the overlapped decode runs in-loop, on 64-row token tiles "
                             "and 64 weight rows a warpgroup")
        if self.register_a and (self.predecode or self.overlap or self.block_k != 128 or self.block_m % 8
                                or self.block_m > 256 or self.block_n != 64 * (self.threads // 128)):
            raise ValueError(f"{self}: the register-decode kernel runs 128-wide K tiles, 8..256 tokens a tile "
                             "(a multiple of 8) and 64 weight rows a consumer warpgroup")

    def slice_tiles(self, k: int) -> int:
        """K tiles of one K slice (the register-decode kernel's last slice may have fewer)."""
        return -(-k // (self.block_k * self.split_k))

    def slices_filled(self, k: int) -> bool:
        """Whether every one of ``split_k`` slices of :meth:`slice_tiles` tiles has a tile of K."""
        return (self.split_k - 1) * self.slice_tiles(k) < k // self.block_k

    def stores_rows(self, n: int) -> bool:
        """Whether the epilogue can write output rows of N features: the predecoded GEMM's TMA
        store needs rows of whole 16-byte runs."""
        return not self.predecode or n % PREDECODE_N_MULTIPLE == 0

    @property
    def key(self) -> str:
        tail = ("_pd" if self.predecode else "") + ("_ov" if self.overlap else "") + ("_ra" if self.register_a else "")
        return "bm{block_m}_bn{block_n}_bk{block_k}_s{stages}_t{threads}_sk{split_k}".format(**asdict(self)) + tail

    def shared_bytes(self, has4: bool = True, has8: bool = True) -> int:
        """Shared memory of the prefill kernel: staged X (and packed codes) plus the one decoded
        tile for 4-bit rows, staged X and int8 weights for 8-bit rows; a kernel with both
        precisions holds both sets (one pipelined loop each).  A predecoded GEMM stages X and
        W and holds one output tile for its 16-byte epilogue."""
        if self.predecode:
            return self.stages * (self.block_m + self.block_n) * self.block_k + self.block_m * self.block_n * 2
        x = self.stages * self.block_m * self.block_k + self.store_bytes
        if self.register_a:  # one ring of X, packed-code (or int8) tiles and staged scales; branches share memory
            staged = 2 * self.stages * self.block_n * max(1, self.block_k // 32)  # s2 and z bytes, groups >= 32
            return x + max(has4 * (self.stages * self.block_n * self.block_k // 2 + staged),
                           has8 * self.stages * self.block_n * self.block_k)
        if self.overlap:  # one X ring; 4-bit rows decode into two tiles, their scales staged
            staged = 2 * self.stages * self.block_n * max(1, self.block_k // 64)  # s2 and z bytes, groups >= 64
            return x + max(has4 * (self.stages * self.block_n * self.block_k // 2 + 2 * self.block_n * self.block_k + staged),
                           has8 * self.stages * self.block_n * self.block_k)  # the two branches share memory
        four = x + self.stages * self.block_n * self.block_k // 2 + self.block_n * self.block_k
        eight = x + self.stages * self.block_n * self.block_k
        return four * has4 + eight * has8

    @property
    def store_bytes(self) -> int:
        """The in-loop epilogue's staged column indices, column scales and token scales."""
        return 4 * (2 * self.block_n + self.block_m)

    def fitted(self, arch: str, has4: bool = True, has8: bool = True) -> Schedule:
        """This schedule with fewer stages (down to 2), then a shorter block_k (down to 64), if its
        kernel would exceed the GPU's shared memory -- the one-launch kernel for both precisions
        needs more than either alone."""
        limit = SHARED_BYTES.get(arch.split("+")[0], 99 * 1024)
        s = self
        while s.shared_bytes(has4, has8) > limit and (s.stages > 2 or s.block_k > 64):
            smaller = {"stages": s.stages - 1} if s.stages > 2 else {"block_k": s.block_k // 2}
            s = Schedule(**{**asdict(s), **smaller})
        return s


@dataclass(frozen=True, order=True)
class GemvSchedule:
    """The decode kernel (:mod:`mixkern.kernels.decode_gemv`): dp4a on CUDA cores, one launch."""

    rows: int = 2  # output features per row group
    warps: int = 4  # warps per block; together they cover K, 32 values per lane per step
    tokens: int = 1  # tokens per block (grid y covers the rest)
    chunk: int = 1  # row groups per block, one after another
    fused: bool = False  # quantize x inside the kernel (no separate activation-quantization launch)

    @property
    def streamed(self) -> bool:
        """Whole row groups of weight words held in registers, the next one loaded early."""
        return self.fused or self.chunk > 1

    def steps(self, k: int) -> int:
        """K steps of one block: each of its lanes reads 32 K values per step."""
        return -(-k // (32 * 32 * self.warps))

    def check(self, k: int, group_size: int, n: int | None = None) -> None:
        """Raise ValueError if this schedule cannot run a K-long reduction (any N)."""
        if k % 32 or group_size % 32:
            raise ValueError(f"the decode kernel needs K and group_size multiples of 32, got K={k}, group_size={group_size}")
        if not (1 <= self.rows <= 8 and 1 <= self.warps <= 8 and 1 <= self.tokens <= 16 and 1 <= self.chunk <= 64):
            raise ValueError(f"{self}: rows 1..8, warps 1..8, tokens 1..16, chunk 1..64")
        if self.rows * self.tokens > 32 * self.warps:
            raise ValueError(f"{self}: rows * tokens must not exceed the block's threads")
        if not self.fits_registers(k):
            raise ValueError(f"{self}: a fused block holds tokens * steps, a streamed one rows * steps of 8 "
                             f"x / weight words per lane in registers, each at most {HELD_STEPS}; "
                             f"K={k} is {self.steps(k)} steps of 1024 * warps")

    def fits_registers(self, k: int) -> bool:
        """Whether a fused / streamed block's register-held x and weight words fit for this K."""
        return ((not self.fused or self.tokens * self.steps(k) <= HELD_STEPS)
                and (not self.streamed or self.rows * self.steps(k) <= HELD_STEPS))

    @property
    def key(self) -> str:
        tail = (f"_c{self.chunk}" if self.chunk > 1 else "") + ("_f" if self.fused else "")
        return "gemv_r{rows}_w{warps}_t{tokens}".format(**asdict(self)) + tail


HELD_STEPS = 8  # token-steps of x words (fused), row-steps of weight words (streamed): 8 words each, <= 64 registers

AnySchedule = Schedule | GemvSchedule


def schedule_from_dict(d: dict) -> AnySchedule:
    """A table entry back into its schedule type (decode entries have 'rows', tensor-core ones 'block_m')."""
    return GemvSchedule(**d) if "rows" in d else Schedule(**d)


_KEY = re.compile(r"bm(\d+)_bn(\d+)_bk(\d+)_s(\d+)_t(\d+)_sk(\d+)(_pd)?(_ov)?(_ra)?|gemv_r(\d+)_w(\d+)_t(\d+)(?:_c(\d+))?(_f)?")


def schedule_from_key(key: str) -> AnySchedule:
    """The schedule a :attr:`Schedule.key` / :attr:`GemvSchedule.key` names (scripts and the
    command line name schedules this way); ValueError for anything else."""
    hit = _KEY.fullmatch(key)
    if hit is None:
        raise ValueError(f"{key!r} is not a schedule key such as bm128_bn128_bk128_s4_t256_sk1_ov or gemv_r8_w4_t1_c4_f")
    g = hit.groups()
    if g[0] is not None:
        return Schedule(*map(int, g[:6]), predecode=bool(g[6]), overlap=bool(g[7]), register_a=bool(g[8]))
    return GemvSchedule(int(g[9]), int(g[10]), int(g[11]), int(g[12] or 1), bool(g[13]))


def bucket(m: int) -> int:
    return next(b for b in M_BUCKETS if m <= b)


def table_path(arch: str) -> str:
    """Where the table for ``arch`` lives ('sm_80+sm_90', Ampere code run on Hopper, reads sm_80's)."""
    return os.path.join(os.path.dirname(__file__), f"{arch.split('+')[0]}.json")


@lru_cache(maxsize=None)
def load_table(arch: str, timed_only: bool = False) -> dict:
    """Shipped table for an arch ('sm_90a', 'sm_80'): {'<bucket>:<n>x<k>': schedule}; empty if
    none, or if ``timed_only`` and the table was only verified, not timed, on that GPU (its
    entries are then no better informed than the heuristic)."""
    path = table_path(arch)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        raw = json.load(f)
    if raw.get("version") != TABLE_VERSION:
        raise ValueError(f"{path}: schedule table version {raw.get('version')!r}, this mixkern reads {TABLE_VERSION}")
    if timed_only and not raw.get("timed"):
        return {}
    return {key: schedule_from_dict(value) for key, value in raw.get("schedules", {}).items()}


def table_key(m: int, n: int, k: int) -> str:
    return f"{bucket(m)}:{n}x{k}"


@lru_cache(maxsize=4096)
def pick(arch: str, m: int, n: int, k: int, group_size: int = 128, n8: int = 0, sms: int | None = None,
         overlap_rows: int = OVERLAP_ROWS, register_a: bool = True) -> AnySchedule:
    """The schedule for an (M, N, K) layer on ``arch`` (N = all output features, ``n8`` of them
    8-bit, ``sms`` the GPU's SM count; ``overlap_rows`` and ``register_a`` the format's, from
    :func:`format_pick`): a tuned register-decode entry of the table, else the register-decode
    rule where it applies, else the tuned table's entry, else the shape-aware heuristic of
    :mod:`.heuristic`; made runnable for this K by :func:`fit`."""
    from .heuristic import choose, overlapped, predecoded, registered, sm_count
    tuned = load_table(arch, timed_only=True).get(table_key(m, n, k))
    if getattr(tuned, "register_a", False):  # tuned with the register-decode kernel in the space
        if register_a:
            return fit(tuned, k, group_size)
        tuned = None  # a format without that kernel (mixllm) falls back to the rules
    tile = registered(arch, m, n, k, group_size, sm_count(arch, sms)) if register_a else None
    if tile is not None:  # newer than the tables' other entries, and faster than them where it applies (H100)
        return fit(tile, k, group_size)
    if tuned is not None and predecoded(arch, m, n, sm_count(arch, sms)) and not getattr(tuned, "predecode", False):
        tuned = None  # in-loop-decode entries lost to the predecoded GEMM wherever it applies (H100)
    if tuned is not None and overlapped(arch, m, n, k, n8, sm_count(arch, sms), overlap_rows) is not None:
        tuned = None  # the tables predate the overlapped decode, which beat their entries where it applies (H100)
    return fit(tuned or choose(arch, m, n, k, group_size, n8, sms, overlap_rows), k, group_size)


MIXLLM_OVERLAP_ROWS = 128  # the overlapped mixllm kernel's int32 partial and fp32 accumulators fill 232 registers here


def format_pick(fmt) -> dict:
    """``pick``'s keywords for a weight format: the widest overlapped token tile
    (:func:`overlap_rows`) and whether the format has the register-decode kernel (progressive)."""
    from ..format import WeightFormat
    return {"overlap_rows": overlap_rows(fmt), "register_a": WeightFormat.parse(fmt) is WeightFormat.PROGRESSIVE}


def overlap_rows(fmt) -> int:
    """The widest token tile a weight format's overlapped kernel runs (``pick``'s ``overlap_rows``):
    256 for progressive, whose int32 accumulators alone fit; 128 for mixllm."""
    from ..format import WeightFormat
    return MIXLLM_OVERLAP_ROWS if WeightFormat.parse(fmt) is WeightFormat.MIXLLM else OVERLAP_ROWS


def fit(schedule: AnySchedule, k: int, group_size: int) -> AnySchedule:
    """``schedule`` adjusted to run a K-long reduction: a fused / streamed decode schedule whose
    held words would not fit falls back to the plain kernel; a tensor-core schedule halves
    split-K, then block_k (to 64, for K an odd multiple of 64), until they divide K.
    Raises ValueError if nothing runs (K not a multiple of 32, say)."""
    if isinstance(schedule, GemvSchedule) and not schedule.fits_registers(k):
        schedule = GemvSchedule(schedule.rows, schedule.warps, schedule.tokens)
    if isinstance(schedule, Schedule) and schedule.register_a:  # uneven slices: only none may be empty
        while schedule.split_k > 1 and not schedule.slices_filled(k):
            schedule = Schedule(**{**asdict(schedule), "split_k": schedule.split_k - 1})
    elif isinstance(schedule, Schedule):
        while k % (schedule.block_k * schedule.split_k) and (schedule.split_k > 1 or schedule.block_k > 64):
            smaller = {"split_k": schedule.split_k // 2} if schedule.split_k > 1 else {"block_k": schedule.block_k // 2}
            schedule = Schedule(**{**asdict(schedule), **smaller})
    schedule.check(k, group_size)
    return schedule


MIXLLM_MAX_OVERLAP_SPLIT = 4  # more fp32 slices cost more to add than the grid gains (H100: 2048 x 8192 at 32-64 tokens, 4 slices 1.17-1.26x faster than 8)
MIXLLM_MAX_ACC_PER_THREAD = 64  # fp32 + int32 accumulators per thread: 128 registers at this cap
MIXLLM_FEW_TOKENS_MIN_K = 4096  # from here 5..16 tokens take few_tokens_tile instead of the GEMV (mixllm)


def few_tokens_tile(k: int) -> Schedule:
    """mixllm at 5..16 tokens where the progressive pick is the multi-token GEMV (N < 8192): a
    32 x 64 tensor-core tile, K split in up to four slices of at least 1024.  On the H100 (10%
    8-bit) the GEMV took 93-108 us on 4096 x 14336 at 8 / 16 tokens, this tile 36 (progressive
    43); 4096 x 4096: 15.6 / 24.4 us against 15.9 / 16.1 (docs/kernels.md)."""
    split = 1
    while split < 4 and k // (2 * split) >= 1024:
        split *= 2
    return Schedule(32, 64, 128, 4, 128, split)


def for_mixllm(schedule: AnySchedule, k: int, group_size: int, arch: str,
               has4: bool = True, has8: bool = True) -> AnySchedule:
    """The mixllm kernels' version of a schedule picked for the progressive format.  Decode
    schedules keep rows, warps and tokens but run plain: a separate activation-quantization
    launch and one row group per block (on the H100 the fused / chunked picks ran mixllm at
    0.75-0.94x of progressive at one token, their plain forms at 0.92-1.09x; docs/kernels.md).
    A tensor-core schedule takes one activation group per K tile (block_k = A); a predecoded one takes the overlapped-promotion kernel's 128 x 128 tile on
    Hopper where the progressive pick had 128-row tiles (its grid fills the GPU), else 64 x 128,
    no split-K; an overlapped-decode one (Hopper) takes the overlapped mixllm kernel: 128 x 128
    where the pick had 128-row tiles and no split, else 64 x 128 split over K so that its grid
    has as many blocks as the pick's (half the splits of a 128 x 128 or 64 x 256 pick: twice
    the blocks; twice those of a 64 x 64 one), at most :data:`MIXLLM_MAX_OVERLAP_SPLIT` slices.
    On the H100 at 96..160 tokens the 128-row tile took 28672 x 8192 from 214-219 to 157-165
    us and lost where the pick was split (4096 x 4096: 25 -> 29 us; docs/kernels.md).  Any
    other in-loop one keeps its split and halves block_m
    while the two accumulators (int32 partial + fp32) would pass
    :data:`MIXLLM_MAX_ACC_PER_THREAD` each per thread, then sheds stages, then block_m, to fit
    shared memory.  Splits halve until they divide K / A (:func:`fit`); the format's split-K
    contract keeps the result deterministic (:mod:`mixkern.format`)."""
    from ..format import WeightFormat
    span = WeightFormat.MIXLLM.act_group_size(group_size)
    if isinstance(schedule, GemvSchedule) and schedule.tokens >= 8 and k >= MIXLLM_FEW_TOKENS_MIN_K:
        schedule = few_tokens_tile(k)  # mixllm's multi-token GEMV runs the fp32 chain on CUDA cores
    if isinstance(schedule, GemvSchedule):  # plain: fused and streamed blocks lost to it for mixllm (H100, stop 28)
        schedule = GemvSchedule(schedule.rows, schedule.warps, schedule.tokens)
        schedule.check(k, group_size)
        return schedule
    hopper = arch.startswith("sm_90")
    fixed = None  # the mixllm kernels with one tile each
    if schedule.predecode:  # the promotion's accumulators allow 64 x 128 a warpgroup; 128 rows where the grid fills the GPU
        wide = hopper and schedule.block_m >= 128
        fixed = Schedule(*((128, 128, span, 5, 256) if wide else (64, 128, span, 4, 128)), predecode=True)
    elif (schedule.overlap or schedule.register_a) and hopper:  # the overlapped mixllm kernel (at N = 4096 it beat the in-loop tiles)
        if schedule.block_m >= 128 and schedule.split_k == 1:  # a grid that fills the GPU unsplit: 128 rows
            fixed = Schedule(128, 128, span, 4, 256, overlap=True)
        else:
            same_blocks = schedule.split_k * 64 * 128 // (schedule.block_m * schedule.block_n)  # pick's grid in 64 x 128 tiles
            split = min(MIXLLM_MAX_OVERLAP_SPLIT, max(1, same_blocks))
            fixed = Schedule(64, 128, span, 4, 256, split, overlap=True)
    if fixed is not None:
        s = fit(fixed, k, group_size).fitted(arch, has4, has8)
        s.check(k, group_size)
        return s
    s = fit(Schedule(**{**asdict(schedule), "block_k": span, "overlap": False, "register_a": False}), k, group_size)
    limit = SHARED_BYTES.get(arch.split("+")[0], 99 * 1024)
    while s.block_m > 16 and s.block_m * s.block_n // s.threads > MIXLLM_MAX_ACC_PER_THREAD:
        s = Schedule(**{**asdict(s), "block_m": s.block_m // 2})
    while s.shared_bytes(has4, has8) > limit and (s.stages > 2 or s.block_m > 16):
        smaller = {"stages": s.stages - 1} if s.stages > 2 else {"block_m": s.block_m // 2}
        s = Schedule(**{**asdict(s), **smaller})
    s.check(k, group_size)
    return s
