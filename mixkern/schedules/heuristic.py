"""A schedule for any shape the tuned table lacks, from M, N, K, the precision mix and the GPU.

The rules restate what the H100 tuning of eight Llama-3 shapes found (the tables'
``evidence``; docs/kernels.md), in terms that carry over to other shapes -- how many
blocks a grid has against the GPU's SM count, and how long one block's K loop is:

* **M = 1**: the dp4a GEMV with the activation quantization fused in, one K step per
  block (``warps = K / 1024`` rounded up to a power of two), 8 rows per block while that still gives half a block per SM,
  4 row groups streamed per block once there are 1.5 waves of them.  K > 8192, or a step
  longer than K (idle lanes: K not a multiple of warps x 1024): the plain GEMV -- a fused
  block re-quantizes all of x, and at long K that costs more than a launch; with idle lanes
  the fused kernel measured 1.09-1.69x slower than the plain one (H100; K = 1536, 3584, 5120).
* **M <= 4**: the GEMV with 4 tokens per block, 8 rows, and as many warps as keep ~8 warps
  per SM busy (at least 2 at long K, where one warp's loop over K gets long).
* **9 <= M <= 1024** (sm_90a, progressive format; at 17-64 tokens only up to K = 12288, from 513
  only where N >= 3584 and N x K >= 4096 x 4096): the
  register-decode kernel (:mod:`mixkern.kernels.register_decode`, :func:`registered`): weights
  decoded straight into the wgmma's register A operand, tokens as its N.  Up to 64 tokens 128
  weight rows a block unsplit on layers with half a wave of them, else 64 rows with K split until
  1.5 blocks per SM; from 65 tokens the 128 x 64, 128 x 128, 192 x 128 or 256 x 128 (tokens x
  rows) tile and split of lowest fitted cost.  Where it applies it comes before every rule below and the tuned tables.
* **M <= 16**: on sm_90a, layers with K >= 8192 and N >= 3072 run the overlapped decode below;
  otherwise the GEMV with 8 tokens per block (16 at long K) for N < 8192, and from N = 8192
  the 16-token tensor-core tile, split over K (K >= 16384) until two blocks per SM.
* **M <= 64** otherwise: 64 x 64 tensor-core tiles (32 x 64 when there is not half a block per SM),
  K split in 4 from K = 8192 (the one-warpgroup pipeline is latency-bound: more, shorter
  blocks win).
* **M > 384**, or 192-384 where the overlapped grid would split K into slices under 3072 (sm_90a,
  N a multiple of 8, half a wave of 64 x 128 tiles): the predecoded GEMM -- the layer decoded to int8 once, then
  a plain int8 GEMM (:mod:`mixkern.kernels.predecode`, :mod:`mixkern.kernels.int8_gemm`) --
  with the widest of 128 x 256, 128 x 128, 64 x 128 tiles whose grid fills 0.8 of a wave.  It
  beat every in-loop-decode tile from M = 192 on four Llama-3 shapes, in both formats
  (1.05-1.32x at 192, up to 2x at 4096), and lost below 128 on the large ones.
* **17 <= M <= 384** (sm_90a; from 5 tokens on long, wide layers): the in-loop kernel with the
  decode overlapped with asynchronous wgmma (:mod:`mixkern.kernels.overlapped_decode`): 64 x
  128 tiles up to 64 tokens (64 x 256 on layers whose grid of them still fills a wave); at 65-128
  tokens 128 x 128 where it fills the GPU unsplit or at K >= 7168 in at most four slices, else
  the one of 64 x 128 and 64 x 64 that fills it in the fewest slices; K split in two, four or
  eight (at least 1024 a slice) until the grid fills 0.7 of a wave.  A layer none of them fills
  (tensor-parallel shards, small models; K >= 3072) runs 64 x 64 split as far as it goes (stop 31:
  every pick this changed ran 1.05-2.15x faster on the H100), up to 64 tokens with 64-wide K tiles at
  twice the split where K / 128 splits no further and the grid stays under 0.6 of a wave (stop 32:
  1.03-1.15x on seven layers).  On the H100 (10% 8-bit, ten
  shapes at 32 / 64 / 128 tokens) it took N = 4096 layers at 128 tokens from 0.41-0.51x to
  0.61-1.24x cuBLAS fp16 and 28672 x 8192 at 32 tokens to 1.99x; it lost on 18944 x 3584 at
  32 tokens (40.1 against 35.5 us) and by 7% on 2048 x 8192 at 32 / 64 (docs/kernels.md).
  Above 128 tokens the token tile is 64, 128, 192 or 256 rows (at most the format's
  ``overlap_rows``, and two tiles of them), whichever :func:`_overlap_cost` rates fastest: each block decodes its weight tile once whatever its token rows, so one
  192-row tile beat two 128-row ones 1.2-1.6x at 192 tokens.  This beat the predecoded GEMM
  1.09-2.08x at 192-384 tokens on nine of ten shapes (H100), except where K is split into
  slices of 2048 or less (4096 x 4096: 0.70-0.92x; slices of 3584 and more won 1.4-1.6x),
  which stay predecoded.
* **M <= 256** otherwise: 128 x 128 tiles with two consumer warpgroups when the grid has half
  a block per SM, else 64 x 128.
* **M > 256** otherwise: 256 x 128 tiles when they fill ~0.9 waves, else 128 x 128, else 64 x 128.
* Grids under a block per SM (two for one-warpgroup tiles) at K >= 4096 split K, at most
  8 ways and never below 2048 per slice.

The precision mix counts because a mixed layer launches ``ceil(n4 / bn) + ceil(n8 / bn)``
tensor-core blocks; shared memory is fitted later (:meth:`Schedule.fitted`).  The result is
a starting point: ``python -m mixkern.autotune --model CONFIG`` tunes a model's own shapes,
and ``python -m mixkern.bench --heuristic TABLE`` measures how far this guess lands from
a tuned table.
"""

from __future__ import annotations

from . import OVERLAP_ROWS, GemvSchedule, Schedule, SMS, AnySchedule

MIN_K_PER_SPLIT = 2048
FUSED_MAX_K = 8192  # longer rows: the plain GEMV (see the module docstring)
TENSOR_CORE_MIN_N = 8192  # M <= 16: from here the 16-token tensor-core tile beats the GEMV
PREDECODE_MIN_M = 192  # from here decoding the whole layer first, then a plain int8 GEMM, can win (H100, both formats)
OVERLAP_MIN_M = 5  # from here to OVERLAP_MAX_M the overlapped decode, where its grid fills the GPU (H100)
OVERLAP_ANY_LAYER_MIN_M = 17  # below, only on long, wide layers (_few_tokens_overlap)
OVERLAP_FEW_TOKENS_MIN_K = 8192
OVERLAP_FEW_TOKENS_MIN_N = 3072
OVERLAP_MAX_M = 384  # above, the predecoded GEMM (H100: it won at 512 tokens on the K = 4096 layers)
OVERLAP_WIDE_ROWS = (64, 128, 192, 256)  # token tiles of the overlapped decode above 128 tokens
OVERLAP_DECODE_ROWS = 128  # a block's decode costs about as much as this many more token rows of MMA (H100 fit)
PREDECODE_MIN_SLICE = 3072  # from 192 tokens an overlapped grid split into shorter K slices loses to the predecoded GEMM
OVERLAP_MIN_K_PER_SPLIT = 1024
OVERLAP_MAX_SPLIT = 8
OVERLAP_FILL = 0.7  # of a wave (one block per SM): the overlapped decode's grid, split over K until it reaches this
OVERLAP_TILES = (Schedule(64, 128, 128, 4, 256, overlap=True), Schedule(128, 128, 128, 4, 256, overlap=True))
OVERLAP_WIDE_WEIGHT_TILE = Schedule(64, 256, 128, 4, 256, overlap=True)  # up to 64 tokens, on large layers
OVERLAP_NARROW_TILE = Schedule(64, 64, 128, 4, 128, overlap=True)  # one consumer warpgroup: twice the blocks of 64 x 128
OVERLAP_NARROWING_TILES = (*OVERLAP_TILES[::-1], OVERLAP_NARROW_TILE)  # 65..128 tokens, widest first
SPLIT_128_MIN_K = 7168  # 65..128 tokens: a split 128 x 128 grid needs K this long ...
SPLIT_128_MAX_SLICES = 4  # ... and at most this many slices (_split_128_pays)
NARROW_OVERLAP_MIN_K = 3072  # shorter narrow layers keep the in-loop tiles (H100: mixllm's version lost up to 0.79x at K = 2048)
NARROW_HALF_K_MAX_M = 64  # up to here a narrow layer whose K / 128 splits no further takes 64-wide K tiles (_half_k_tiles)
HALF_K_TILE = 64
HALF_K_MAX_FILL = 0.6  # ... where its 128-wide grid fills less than this of a wave (H100: 0.55 gained, 0.67 lost)
OVERLAP_WIDE_MIN_SLICE = 2048
OVERLAP_WIDE_FILL = 0.8  # of a wave, unsplit
PREDECODE_TILES = (Schedule(128, 256, 128, 3, 256, predecode=True), Schedule(128, 128, 128, 4, 256, predecode=True),
                   Schedule(64, 128, 128, 4, 128, predecode=True))


REGISTER_MIN_M, REGISTER_MAX_M = 5, 1024  # the register-decode kernel's token counts (H100: measured at 2-1024)
REGISTER_FEW_MAX_M = 8  # 5-8 tokens only on layers of more than REGISTER_FEW_MIN_WEIGHTS (N x K): there the dp4a GEMV
REGISTER_FEW_MIN_WEIGHTS = 4096 * 4096  # for 5-8 tokens won (4096 x 4096 0.93x, 1024 x 4096 0.74x); at 2-4 tokens the
# 4-token GEMV won on most layers (0.70-0.93x; 1.00-1.05x on 14336 x 4096 and 18944 x 3584 only), H100, stop 35
REGISTER_LONG_MIN_M = 513  # from here only on layers of at least REGISTER_LONG_MIN_WEIGHTS (N x K) and N (below, the
REGISTER_LONG_MIN_WEIGHTS, REGISTER_LONG_MIN_N = 4096 * 4096, 3584  # predecoded GEMM won at 1024 tokens: 1024 x 4096
# 0.83x, 2048 x 11008 0.67x, its blocks re-reading long rows of X from L2)
REGISTER_TOKEN_TILES = (16, 32, 64)  # up to 64 tokens its token tiles: the smallest that holds M (few distinct kernels)
REGISTER_MAX_K_ABOVE_16 = 12288  # above 16 tokens only up to this K: longer layers (4096 x 14336, 3584 x 18944,
# 8192 x 28672) ran 0.76-0.99x of the overlapped picks at 24-32 tokens (H100, stop 33)
REGISTER_WIDE_MIN_FILL = 0.5  # of a wave: 128-row blocks unsplit from here ...
REGISTER_FILL = 1.5  # ... else 64-row blocks, K split in two, four or eight until this many blocks per SM
REGISTER_MAX_SPLIT = 8
# 65..1024 tokens: (token rows, weight rows, threads) -> us per K tile and wave of such blocks, and what a K split
# adds per million outputs (int32 workspace atomics, the epilogue kernel); fitted by least squares on 38 H100 cells
# (8 layer shapes at 128-512 tokens, splits 1, 2, 4), the 256-row tile's on 40 more (256-1024 tokens) and raised
# from 0.686 to 0.72 where that lowered the regret (1.017x the best timed tile on average over 56 cells)
REGISTER_WIDE_TILES = {(128, 64, 128): 0.343, (128, 128, 256): 0.466, (192, 128, 256): 0.566, (256, 128, 256): 0.72}
REGISTER_WIDE_SPLITS = (1, 2, 4)  # (the 256-token tile unsplit only: split, it ran 0.69-0.96x of the others on
REGISTER_WIDE_UNSPLIT_TOKENS = 256  # 2048 x 11008 and 4096 x 14336, and gained 1.11x once)
REGISTER_SPLIT_US_PER_MILLION = 10.7
REGISTER_WIDE_STAGES = 4


def registered(arch: str, m: int, n: int, k: int, group_size: int, sms: int) -> Schedule | None:
    """The register-decode schedule (:mod:`mixkern.kernels.register_decode`) for an M x N x K
    layer, or None where it does not apply: sm_90a, REGISTER_MIN_M..REGISTER_MAX_M tokens (5-8 only
    where N x K > 4096 x 4096, 17-64 only up to K = REGISTER_MAX_K_ABOVE_16, from 513 only where
    N >= 3584 and N x K >= 4096 x 4096), K a multiple of 128 and groups of a multiple of 32.  Up to
    64 tokens :func:`_register_few`, above :func:`_register_wide` (docs/kernels.md: on the H100 the
    cells this rule takes ran 1.02-1.38x faster than the picks they replaced at 12-64 tokens,
    except 1024 x 4096 at 12-16 tokens, 0.79x, and 18944 x 3584 at 64, 0.97x; 5-8 tokens
    1.02-1.36x; 65-1024 tokens: stop 34)."""
    if arch.split("+")[0] != "sm_90a" or not REGISTER_MIN_M <= m <= REGISTER_MAX_M or k % 128 or group_size % 32:
        return None
    if m >= REGISTER_LONG_MIN_M and (n * k < REGISTER_LONG_MIN_WEIGHTS or n < REGISTER_LONG_MIN_N):
        return None
    if m <= REGISTER_FEW_MAX_M and n * k <= REGISTER_FEW_MIN_WEIGHTS:
        return None
    if m > REGISTER_TOKEN_TILES[-1]:
        return _register_wide(m, n, k, sms)
    if m > 16 and k > REGISTER_MAX_K_ABOVE_16:
        return None
    return _register_few(m, n, k, sms)


def _register_few(m: int, n: int, k: int, sms: int) -> Schedule:
    """5..64 tokens, one token tile of 16, 32 or 64.  Layers with half a wave of 128-row blocks
    run them unsplit (splitting cost 1.2-1.6x at 64 tokens on 14336 x 4096 and 28672 x 8192);
    narrower ones run 64-row blocks, K split in powers of two (slices may differ by a tile)
    until 1.5 blocks per SM."""
    tokens = next(t for t in REGISTER_TOKEN_TILES if m <= t)
    if _ceil(n, 128) >= REGISTER_WIDE_MIN_FILL * sms:
        return Schedule(tokens, 128, 128, 6, 256, register_a=True)
    tile = Schedule(tokens, 64, 128, 6, 128, register_a=True)
    while tile.split_k < REGISTER_MAX_SPLIT and _ceil(n, 64) * tile.split_k < REGISTER_FILL * sms:
        more = Schedule(tokens, 64, 128, 6, 128, 2 * tile.split_k, register_a=True)
        if not _register_slices(more, k):
            break
        tile = more
    return tile


def _register_slices(tile: Schedule, k: int) -> bool:
    """Whether a split register-decode tile's K slices each hold two 128-wide tiles or more, none empty."""
    return k // tile.block_k >= 2 * tile.split_k and tile.slices_filled(k)


def _register_wide(m: int, n: int, k: int, sms: int) -> Schedule:
    """65..1024 tokens: of the REGISTER_WIDE_TILES, each split 1, 2 or 4 ways (slices of two
    tiles or more, none empty; 256 token rows unsplit), the one with the lowest fitted cost: waves of blocks x K tiles a
    slice x the tile's cost, plus what a split adds per output (M rounded up to 64, so that
    :func:`distinct_token_counts` still reaches every choice).  Wider token tiles decode each
    weight tile for more tokens; narrower ones and splits fill the SMs on small grids."""
    best = None
    outputs = 64 * _ceil(m, 64) * n  # M rounded up to 64: the choice changes only where ceil(M / 64) does
    for (tokens, rows, threads), per_tile in REGISTER_WIDE_TILES.items():
        for split in REGISTER_WIDE_SPLITS if tokens < REGISTER_WIDE_UNSPLIT_TOKENS else (1,):
            tile = Schedule(tokens, rows, 128, REGISTER_WIDE_STAGES, threads, split, register_a=True)
            if split > 1 and not _register_slices(tile, k):
                continue
            waves = _ceil(_ceil(n, rows) * _ceil(m, tokens) * split, sms)
            cost = waves * tile.slice_tiles(k) * per_tile + (split > 1) * REGISTER_SPLIT_US_PER_MILLION * outputs / 1e6
            if best is None or cost < best[0]:
                best = (cost, tile)
    return best[1]


def sm_count(arch: str, sms: int | None = None) -> int:
    """The SM count to plan for: the live GPU's when known, else the arch's flagship part."""
    return sms or SMS.get(arch.split("+")[0], 108)


def choose(arch: str, m: int, n: int, k: int, group_size: int = 128, n8: int = 0,
           sms: int | None = None, overlap_rows: int = OVERLAP_ROWS) -> AnySchedule:
    """The schedule for an (M, N, K) layer with ``n8`` of its N features 8-bit on ``arch``;
    ``overlap_rows``: the widest token tile the weight format's overlapped kernel runs."""
    sms = sm_count(arch, sms)
    if m == 1:
        return _one_token(n, k, sms)
    if m <= 4:
        return _few_tokens(n, k, sms)
    tile = overlapped(arch, m, n, k, n8, sms, overlap_rows)
    if m <= 16 and tile is None and n < TENSOR_CORE_MIN_N:
        long_k = k > FUSED_MAX_K
        return GemvSchedule(rows=4, warps=2 if long_k else 4, tokens=16 if long_k else 8)
    if predecoded(arch, m, n, sms) and (tile is None or (tile.split_k > 1 and k // tile.split_k < PREDECODE_MIN_SLICE)):
        return _predecoded_tile(m, n, sms)
    return tile or _tensor_core(m, n, k, group_size, n8, sms)


def _one_token(n: int, k: int, sms: int) -> GemvSchedule:
    warps = min(8, _pow2_ceil(_ceil(k, 1024)))  # one step covers K (powers of two: fewer distinct kernels)
    if k > FUSED_MAX_K or k % (warps * 1024):
        return GemvSchedule(rows=4, warps=2, tokens=1)
    rows = next((r for r in (8, 4, 2) if _ceil(n, r) >= sms // 2), 1)
    chunk = 4 if _ceil(n, rows) >= 6 * sms else 1  # 4 row groups a block, still 1.5 blocks per SM
    return GemvSchedule(rows=rows, warps=warps, tokens=1, chunk=chunk, fused=True)


def _few_tokens(n: int, k: int, sms: int) -> GemvSchedule:
    blocks = _ceil(n, 8)
    warps = _pow2_floor(max(1, 8 * sms // blocks))  # ~8 warps per SM
    warps = min(4, max(warps, 2 if k > FUSED_MAX_K else 1))
    return GemvSchedule(rows=8, warps=warps, tokens=4)


def predecoded(arch: str, m: int, n: int, sms: int) -> bool:
    """Whether an M x N GEMM runs predecoded: on sm_90a (the sm_80 build compiles in CI but has
    not run on a GPU yet: ``MIXKERN_ARCH=sm_80+sm_90 python scripts/predecode_check.py
    --check-only`` is the check that would enable it), long enough to be compute-bound, output
    rows of whole 16-byte runs (the TMA epilogue), and at least half a wave of its smallest
    tiles (a narrower layer keeps the in-loop kernel, which can split K)."""
    smallest = PREDECODE_TILES[-1]
    blocks = _ceil(m, smallest.block_m) * _ceil(n, smallest.block_n)
    return (arch.split("+")[0] == "sm_90a" and m >= PREDECODE_MIN_M and smallest.stores_rows(n)
            and 2 * blocks >= sms)


def overlapped(arch: str, m: int, n: int, k: int, n8: int, sms: int, overlap_rows: int = OVERLAP_ROWS) -> Schedule | None:
    """The overlapped-decode schedule for an M x N x K layer on ``arch``, or None where it does not
    apply: sm_90a and OVERLAP_MIN_M <= M <= OVERLAP_MAX_M, below 17 tokens only for long,
    wide layers (:func:`_few_tokens_overlap`), and at most two token tiles of ``overlap_rows``
    (each token tile decodes the weights again; mixllm's kernel takes 128 rows, and with three
    of them it lost to the predecoded GEMM on the H100).  Up to 64 tokens: 64 x 256 where
    :func:`_wide_weight_tile` allows, else 64 x 128 if its grid of 4-bit and 8-bit tiles, split
    over K as far as :func:`_overlap_split` allows, fills OVERLAP_FILL of a wave; at 65..128
    tokens 128 x 128 where it fills so and :func:`_split_128_pays`, else the one of 64 x 128 and 64
    x 64 that fills in the fewest slices; a layer none fills, :func:`_narrow_layer_tile`; above
    128 tokens, the token tile of OVERLAP_WIDE_ROWS (up to ``overlap_rows``) that
    :func:`_overlap_cost` rates fastest."""
    if arch.split("+")[0] != "sm_90a" or not OVERLAP_MIN_M <= m <= min(OVERLAP_MAX_M, 2 * overlap_rows):
        return None
    if m < OVERLAP_ANY_LAYER_MIN_M and not _few_tokens_overlap(n, k):
        return None
    if m > 128:
        tiles = [_split_tile(Schedule(bm, 128, 128, 4, 256, overlap=True), m, n, k, n8, sms)
                 for bm in OVERLAP_WIDE_ROWS if bm <= overlap_rows]
        return min(tiles, key=lambda t: _overlap_cost(t, m, n, k, n8, sms))
    if m <= 64:
        wide = _split_tile(OVERLAP_WIDE_WEIGHT_TILE, m, n, k, n8, sms)
        if _wide_weight_tile(wide, m, n, k, n8, sms):
            return wide
    tiles = [_split_tile(t, m, n, k, n8, sms) for t in (OVERLAP_TILES[:1] if m <= 64 else OVERLAP_NARROWING_TILES)]
    filled = [t for t in tiles if _blocks(t, m, n, n8) * t.split_k >= OVERLAP_FILL * sms]
    if m > 64 and filled and filled[0].block_m == 128 and _split_128_pays(filled[0], k):
        return filled[0]
    filled = [t for t in filled if t.block_m == 64]
    if filled:  # up to 64 tokens 64 x 128; above, the 64-row tile needing the fewest K slices (ties: the wider)
        return min(filled, key=lambda t: t.split_k)
    return _narrow_layer_tile(m, n, k, n8, sms)


def _split_128_pays(tile: Schedule, k: int) -> bool:
    """65..128 tokens: whether a 128 x 128 grid that fills the GPU runs rather than the 64-row
    tiles.  One 128-row block decodes its weights once for all the tokens (two 64-row blocks decode
    them twice), but each K slice costs a pass over the output: unsplit it always ran; split, it won
    only at K >= SPLIT_128_MIN_K in at most four slices (H100, some twenty layer shapes at 80-128 tokens:
    4096 x 7168, 4096 x 14336, 3584 x 18944, 8192 x 8192, 7168 x 8192 1.04-1.27x over the 64-row
    tiles; at K <= 5120 or in 8 slices it lost 1.02-1.47x to a 64-row tile in fewer slices)."""
    return tile.split_k == 1 or (k >= SPLIT_128_MIN_K and tile.split_k <= SPLIT_128_MAX_SLICES)


def _narrow_layer_tile(m: int, n: int, k: int, n8: int, sms: int) -> Schedule | None:
    """17..128 tokens on a layer too narrow for a 64 x 128 grid to fill the GPU even split over K
    (tensor-parallel shards, small models): the 64 x 64 overlapped tile, split as far as
    :func:`_overlap_split` goes, from K = NARROW_OVERLAP_MIN_K.  On the H100 (10% 8-bit, 32 and 64
    tokens) it beat the one-warpgroup in-loop tiles these layers ran 1.14-2.06x on nine layers of
    896-4608 features and K = 3072-14336 (mixllm's 64 x 128 version 0.94-2.61x); at K = 2048 it
    gained 1.02-1.13x but mixllm's version lost up to 0.79x, and at K = 1024 / 1536 it tied
    (docs/kernels.md, "Narrow layers")."""
    if m < OVERLAP_ANY_LAYER_MIN_M or k < NARROW_OVERLAP_MIN_K:
        return None
    tile = _split_tile(OVERLAP_NARROW_TILE, m, n, k, n8, sms)
    return _half_k_tiles(tile, m, n, k, n8, sms) if m <= NARROW_HALF_K_MAX_M else tile


def _half_k_tiles(tile: Schedule, m: int, n: int, k: int, n8: int, sms: int) -> Schedule:
    """``tile`` (17..64 tokens, a narrow layer's 64 x 64 split grid) with 64-wide K tiles at twice
    the split, where its grid stayed under HALF_K_MAX_FILL of a wave only because K / 128 has no
    further factor of two (K = 11008 = 86 x 128, 8960, 4864, 4480, 5504, 4736): more, shorter
    blocks.  On the H100 at 24 / 32 / 64 tokens this ran 1.03-1.15x faster on seven such layers whose
    grid filled 0.24-0.55 of a wave (2048 x 11008, 1536 x 8960, 896 x 4864: 1.13-1.15x) and 0.90-0.92x
    on 5120 x 3456, at 0.67; at 128 tokens only 1.00-1.09x, so 65..128 tokens keep 128-wide tiles
    (docs/kernels.md, "Narrow layers")."""
    split = 2 * tile.split_k
    short = _blocks(tile, m, n, n8) * tile.split_k < HALF_K_MAX_FILL * sms
    stopped_by_k = k % (tile.block_k * split) != 0 and _overlap_splittable(k, split, HALF_K_TILE)
    if short and stopped_by_k:
        return Schedule(tile.block_m, tile.block_n, HALF_K_TILE, tile.stages, tile.threads, split, overlap=True)
    return tile


def _few_tokens_overlap(n: int, k: int) -> bool:
    """5..16 tokens: whether the overlapped decode (a 64-row token tile, mostly empty) replaces the
    multi-token GEMV and the 16-token tensor-core tile.  On the H100 (8 and 16 tokens, 10% 8-bit)
    it won 1.28-1.56x at K >= 8192 on five layers of 3584 to 28672 features; it tied or lost at
    K = 3584 / 4096 (14336 x 4096 1.00x, 18944 x 3584 0.85x: too few K tiles to fill its
    pipeline) and against the GEMV on narrow layers (2048 x 8192 0.75x at 8 tokens)."""
    return k >= OVERLAP_FEW_TOKENS_MIN_K and n >= OVERLAP_FEW_TOKENS_MIN_N


def _wide_weight_tile(tile: Schedule, m: int, n: int, k: int, n8: int, sms: int) -> bool:
    """Whether the 64 x 256 tile (128 weight rows a warpgroup: m64n128 wgmma, half the blocks of
    64 x 128) runs a layer: its K slices at least 2048 and its grid at least 0.8 of a wave
    unsplit, a whole wave split (a split grid pays atomics and an epilogue launch).  On the H100
    at 8-64 tokens it beat 64 x 128 by 1.02-1.15x on 28672 x 8192, 8192 x 28672 and 8192 x 8192
    (one 3% loss, 8192 x 8192 at 64 tokens) and lost 7-21% on 14336 x 4096 (split in two to 114
    blocks), 4096 x 14336 (slices of 1792) and the layers it leaves below a wave."""
    blocks = _blocks(tile, m, n, n8) * tile.split_k
    return k // tile.split_k >= OVERLAP_WIDE_MIN_SLICE and blocks >= (sms if tile.split_k > 1 else OVERLAP_WIDE_FILL * sms)


def _blocks(tile: Schedule, m: int, n: int, n8: int) -> int:
    """Blocks of one K slice of a mixed layer's grid: a 4-bit and an 8-bit tile set."""
    return _ceil(m, tile.block_m) * (_ceil(n - n8, tile.block_n) + _ceil(n8, tile.block_n))


def _split_tile(tile: Schedule, m: int, n: int, k: int, n8: int, sms: int) -> Schedule:
    """``tile`` split over K as far as :func:`_overlap_split` goes for its grid."""
    split = _overlap_split(k, _blocks(tile, m, n, n8), sms)
    return Schedule(tile.block_m, tile.block_n, tile.block_k, tile.stages, tile.threads, split, overlap=True)


def _overlap_cost(tile: Schedule, m: int, n: int, k: int, n8: int, sms: int) -> float:
    """Relative time of an overlapped-decode grid: its waves (one block per SM) times a block's
    work, (token rows + OVERLAP_DECODE_ROWS) x its K slice.  On the H100 sweep behind it (ten
    shapes at 192 / 256 / 384 / 512 tokens, tiles of 128 / 192 / 256 rows split 1 / 2 / 4) the
    tile it rates fastest ran on average 2% slower than the fastest one."""
    waves = _ceil(_blocks(tile, m, n, n8) * tile.split_k, sms)
    return waves * (tile.block_m + OVERLAP_DECODE_ROWS) * k / tile.split_k


def _overlap_split(k: int, blocks: int, sms: int) -> int:
    """K slices (powers of two, at most OVERLAP_MAX_SPLIT, each at least OVERLAP_MIN_K_PER_SPLIT long) until the
    grid fills OVERLAP_FILL of a wave."""
    split = 1
    while blocks * split < OVERLAP_FILL * sms and _overlap_splittable(k, split * 2):
        split *= 2
    return split


def _overlap_splittable(k: int, split: int, block_k: int = 128) -> bool:
    """Whether K splits into ``split`` slices of whole ``block_k`` tiles, each at least
    OVERLAP_MIN_K_PER_SPLIT long, within OVERLAP_MAX_SPLIT slices."""
    return split <= OVERLAP_MAX_SPLIT and k % (block_k * split) == 0 and k // split >= OVERLAP_MIN_K_PER_SPLIT


def _predecoded_tile(m: int, n: int, sms: int) -> Schedule:
    """The widest tile whose grid still fills 0.8 of a wave, else the smallest."""
    return next((t for t in PREDECODE_TILES if _ceil(m, t.block_m) * _ceil(n, t.block_n) >= 0.8 * sms), PREDECODE_TILES[-1])


def _tensor_core(m: int, n: int, k: int, group_size: int, n8: int, sms: int) -> Schedule:
    def blocks(s: Schedule) -> int:
        return _ceil(m, s.block_m) * (_ceil(n - n8, s.block_n) + _ceil(n8, s.block_n))

    if m <= 16:
        tile = Schedule(16, 64, 128, 4 if n * k <= 1 << 26 else 3, 128)
        split = _split(k, group_size, blocks(tile), sms, 4 * 4096, tile.threads)
    elif m <= 64:
        split = 4 if k >= 8192 and _splittable(k, group_size, 4) else 1
        tile = Schedule(64, 64, 128, 3, 128)
        if m <= 32 or blocks(tile) * split < sms // 2:
            tile = Schedule(32, 64, 128, 3, 128)
        return Schedule(tile.block_m, tile.block_n, tile.block_k, tile.stages, tile.threads, split)
    elif m <= 256:
        tile = Schedule(128, 128, 128, 3, 256)
        if blocks(tile) < sms // 2:
            tile = Schedule(64, 128, 128, 2, 256)
        split = _split(k, group_size, blocks(tile), sms, 4096, tile.threads)
    else:
        tiles = (Schedule(256, 128, 128, 3, 256), Schedule(128, 128, 128, 3, 256), Schedule(64, 128, 128, 2, 256))
        need = (0.9 * sms, 0.45 * sms, 0)
        tile = next(t for t, want in zip(tiles, need) if blocks(t) >= want)
        split = _split(k, group_size, blocks(tile), sms, 4096, tile.threads)
    return Schedule(tile.block_m, tile.block_n, tile.block_k, tile.stages, tile.threads, split)


def _split(k: int, group_size: int, blocks: int, sms: int, long_k: int, threads: int) -> int:
    """K slices at long K until the grid has a block per SM for two-warpgroup tiles, two for
    one-warpgroup tiles (a second resident block hides the other's latency)."""
    target = sms * (2 if threads == 128 else 1)
    split = 1
    while k >= long_k and split < 8 and blocks * split < target and _splittable(k, group_size, split * 2):
        split *= 2
    return split


def _splittable(k: int, group_size: int, split: int) -> bool:
    return k % (128 * split) == 0 and k // split >= MIN_K_PER_SPLIT


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _pow2_ceil(v: int) -> int:
    return 1 << (v - 1).bit_length()


def _pow2_floor(v: int) -> int:
    return 1 << (v.bit_length() - 1)


def distinct_token_counts(max_tokens: int) -> list[int]:
    """Token counts that reach every distinct choice of :func:`choose` (and of the tables,
    which are constant per M bucket) for M in 1..max_tokens.  M enters the rules only through
    the bucket bounds (all <= 256 but the last), the rules' bounds (<= 384, multiples of 64
    beyond 256) and ``ceil(M / block_m)`` with block_m 64, 128, 192 or 256, which changes only
    just past a multiple of 64 beyond M = 256."""
    small = range(1, min(max_tokens, 256) + 1)
    large = (v for j in range(4, max_tokens // 64 + 1) for v in (64 * j, 64 * j + 1))
    return sorted({*small, *(v for v in large if v <= max_tokens)})


def every_schedule() -> list[AnySchedule]:
    """Every schedule :func:`choose` can return (for compile tests: all of them must build)."""
    out = set()
    for m in (1, 2, 8, 16, 17, 33, 64, 65, 129, 256, 257, 385):
        for n in (1, 64, 512, 4096, 8192, 65536):
            for k in (128, 4096, 8192, 16384, 65536):
                for sms in (1, 132):
                    out.add(choose("sm_90a", m, n, k, 128, 0, sms))
    return sorted(out, key=lambda s: s.key)
