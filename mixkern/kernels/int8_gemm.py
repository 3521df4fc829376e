"""A plain int8 tensor-core GEMM over predecoded weights (:mod:`.predecode`): the long-prompt
path, where the tensor cores, not the weight bytes, set the time.

Both operands arrive by the pipelined copy (TMA / cp.async, ``stages`` deep), nothing runs
between a tile's arrival and its MMA, and the weights' rows are already in output order, so
the epilogue writes whole tiles (``T.copy``: 16-byte runs) instead of scattering columns.

* progressive (``group_span=None``): one int32 accumulator over all of K, then
  ``y = out((fp32(acc) * a[m]) * s[n])`` -- the format's one float order;
* mixllm (``group_span`` = the activation group A): one K tile per activation group into a
  fresh int32 fragment, promoted as ``acc = fmaf(fp32(p), __fmul_rn(a[m, j], s[n, j]), acc)``
  in increasing j (bit-equal to the reference, as in :mod:`.mixllm_gemm`).  The group's
  scales travel in the same pipeline stage as its operand tiles (K-major scale arrays), so
  the promotion never waits on global memory.
"""

import tilelang.language as T

from ..schedules import Schedule
from .mixed_gemm import DTYPES, _scaled
from .overlapped_promotion import BLOCK_M, CONSUMERS, overlapped_promotion_gemm
from .promote import promote

SWIZZLE_PANEL = 8  # blocks in a rasterization panel: neighbouring blocks share X and W tiles in L2
POLICY = T.GemmWarpPolicy.FullRow  # each warpgroup takes whole rows of the tile: the widest wgmma (m64 n=block_n)


def int8_gemm(k: int, schedule: Schedule, out_dtype: str = "float16", group_span: int | None = None,
              group_size: int = 128, wgmma: bool = False):
    """TileLang prim_func for Y (M, N) from int8 X (M, K) and predecoded int8 W (N, K).

    Launch arguments, progressive: X, A fp32 (M,), W, S fp32 (N,), Y.  mixllm
    (``group_span``): X, At fp32 (K/A, Mp) activation group scales K-major (Mp >= M a multiple
    of 4), W, St fp32 (K/group_size, N) weight group scales K-major (exact copies of the fp16
    scales), Y.  ``schedule.block_k`` must be ``group_span`` for mixllm; split-K is not used.
    mixllm on Hopper (``wgmma``) with 128-row tiles on 256 threads runs
    :mod:`.overlapped_promotion` (plus a producer warpgroup of its own); other mixllm tiles run
    the synchronous promotion below.
    """
    if group_span is not None and schedule.block_k != group_span:
        raise ValueError(f"{schedule}: the mixllm promotion takes one activation group per K tile (block_k={group_span})")
    if k % schedule.block_k:
        raise ValueError(f"K={k} is not a multiple of block_k={schedule.block_k}")
    out = DTYPES[out_dtype]
    if group_span is None:
        return _row_scaled(k, schedule, out)
    if wgmma and (schedule.block_m, schedule.threads) == (BLOCK_M, CONSUMERS):
        return overlapped_promotion_gemm(k, schedule.block_n, schedule.stages, out_dtype, group_span, group_size)
    return _group_promoted(k, schedule, out, group_span, group_size)


def _tile_macros(s: Schedule, out: str):
    """(tiles, write): one K step's operand tiles into shared memory; the output tile out through
    shared memory (stmatrix, then a TMA store / 16-byte runs)."""
    bm, bn, bk = s.block_m, s.block_n, s.block_k

    @T.macro
    def tiles(X, W, X_s, W_s, bx, by, ko):
        T.copy(X[by * bm, ko * bk], X_s)
        T.copy(W[bx * bn, ko * bk], W_s)

    @T.macro
    def write(C_l, Y, bx, by):
        C_s = T.alloc_shared((bm, bn), out)
        T.copy(C_l, C_s)
        T.copy(C_s, Y[by * bm, bx * bn])

    return tiles, write


def _row_scaled(k: int, s: Schedule, out: str):
    """progressive: one int32 accumulator over all of K, then out((fp32(acc) * a[m]) * s[n])."""
    bm, bn, bk = s.block_m, s.block_n, s.block_k
    m, n = T.dynamic("m"), T.dynamic("n")
    tiles, write = _tile_macros(s, out)

    @T.prim_func
    def main(X: T.Tensor((m, k), "int8"), A: T.Tensor((m,), "float32"), W: T.Tensor((n, k), "int8"),
             S: T.Tensor((n,), "float32"), Y: T.Tensor((m, n), out)):
        with T.Kernel(T.ceildiv(n, bn), T.ceildiv(m, bm), threads=s.threads) as (bx, by):
            X_s = T.alloc_shared((bm, bk), "int8")
            W_s = T.alloc_shared((bn, bk), "int8")
            acc = T.alloc_fragment((bm, bn), "int32")
            C_l = T.alloc_fragment((bm, bn), out)
            T.use_swizzle(SWIZZLE_PANEL)
            T.clear(acc)
            for ko in T.Pipelined(k // bk, num_stages=s.stages):
                tiles(X, W, X_s, W_s, bx, by, ko)
                T.gemm(X_s, W_s, acc, transpose_B=True, policy=POLICY)
            for i, j in T.Parallel(bm, bn):
                C_l[i, j] = _scaled(acc[i, j], A[T.min(by * bm + i, m - 1)], S[T.min(bx * bn + j, n - 1)], out)
            write(C_l, Y, bx, by)

    return main


def _group_promoted(k: int, s: Schedule, out: str, span: int, group_size: int):
    """mixllm: each activation group's int32 partial promoted into fp32 in increasing k, the
    group's scales staged with its tiles."""
    bm, bn, bk = s.block_m, s.block_n, s.block_k
    m, n, mp = T.dynamic("m"), T.dynamic("n"), T.dynamic("mp")
    j_groups = k // span
    tiles, write = _tile_macros(s, out)

    @T.prim_func
    def main(X: T.Tensor((m, k), "int8"), At: T.Tensor((j_groups, mp), "float32"), W: T.Tensor((n, k), "int8"),
             St: T.Tensor((k // group_size, n), "float32"), Y: T.Tensor((m, n), out)):
        with T.Kernel(T.ceildiv(n, bn), T.ceildiv(m, bm), threads=s.threads) as (bx, by):
            X_s = T.alloc_shared((bm, bk), "int8")
            W_s = T.alloc_shared((bn, bk), "int8")
            a_s = T.alloc_shared((bm,), "float32")
            s_s = T.alloc_shared((bn,), "float32")
            acc_i = T.alloc_fragment((bm, bn), "int32")
            acc_f = T.alloc_fragment((bm, bn), "float32")
            C_l = T.alloc_fragment((bm, bn), out)
            T.use_swizzle(SWIZZLE_PANEL)
            T.clear(acc_f)
            for ko in T.Pipelined(j_groups, num_stages=s.stages):
                tiles(X, W, X_s, W_s, bx, by, ko)
                T.copy(At[ko, by * bm:(by + 1) * bm], a_s)
                T.copy(St[ko * span // group_size, bx * bn:(bx + 1) * bn], s_s)
                T.gemm(X_s, W_s, acc_i, transpose_B=True, clear_accum=True, policy=POLICY)
                for i, j in T.Parallel(bm, bn):
                    acc_f[i, j] = promote(acc_i[i, j], a_s[i], s_s[j], acc_f[i, j])
            for i, j in T.Parallel(bm, bn):
                C_l[i, j] = T.Cast(out, acc_f[i, j])
            write(C_l, Y, bx, by)

    return main
