"""The ``mixllm`` format on tensor cores (M > 16): one K tile per activation group, its int32
MMA partial promoted into a float32 accumulator by ``a[m, j] * s[n, j]`` (bit-exact).

MixLLM's two-step dequantization: the 4-bit codes become int8 ``q - z`` in shared memory
(step one, :mod:`.int4_decode` with unit scale; 8-bit rows are int8 already), the tensor
core multiplies one activation group (block_k = A = 128, or 64) into a fresh int32
fragment, and step two applies the float scales once per group:

    acc[m, n] = fmaf(fp32(p[m, n, j]), __fmul_rn(a[m, j], s[n, j]), acc[m, n])

in increasing j -- each thread runs the format's chain for its own fragment elements, so
the result equals the reference bit for bit.  Split over K (grid z), each slice runs its own
chain from zero into a float32 workspace and :func:`split_sum` adds the slices in order: the
format's split-K contract, bit-equal to the reference with the same ``split_k``.  The
group's scales are staged in shared memory (a column of ``a`` and a row of ``s`` per tile)
beside the operand tiles.  As in the DeepGEMM-style fp8 GEMMs (1 x 128 activation scales),
the promotion costs one FMA per accumulator per group.
"""

import tilelang.language as T

from ..format import WeightFormat
from ..schedules import Schedule
from .int4_decode import DECODE_BARRIER, DECODE_SOURCE, consumer_groups, int4_decode_tile
from .mixed_gemm import DTYPES, STORE_BARRIER, stage_columns
from .promote import fadd_rn, promote


def column_store(bm: int, bn: int, m, out: str, consumers: int):
    """A macro writing a (bm, bn) fp32 tile into its features' original columns (the mixllm
    in-loop kernels' epilogue): ``Y[row0 + row, Idx[col]] = out(acc_f)`` inside M and the
    precision's rows -- Y is the output, or with split-K the float32 workspace of the K slices,
    slice ``s`` at rows ``row0 = s * M``.  As in :func:`.mixed_gemm.tile_store`, the tile's
    column indices go to shared memory first (:func:`.mixed_gemm.stage_columns`, after a
    barrier of the ``consumers`` threads holding the tile: the buffer may overlay the main
    loop's), so no store waits on its own index load."""
    stage = stage_columns(bn, consumers)

    @T.macro
    def store(acc_f, Idx, Y, rows, col0, by, row0):
        idx_s = T.alloc_shared((bn,), "int32")
        tx = T.get_thread_binding()
        T.sync_threads(STORE_BARRIER, consumers)
        stage(idx_s, None, Idx, None, rows, col0, tx)
        T.sync_threads(STORE_BARRIER, consumers)
        for i, j in T.Parallel(bm, bn):
            if by * bm + i < m and col0 + j < rows:
                Y[row0 + by * bm + i, idx_s[j]] = T.Cast(out, acc_f[i, j])

    return store


def launch_entry(body, k: int, group_size: int, out_dtype: str, split: bool, dims: tuple):
    """The prim_func of a mixllm in-loop kernel: its launch arguments (see :func:`mixllm_gemm`)
    around ``body``, a macro taking them.  The last argument is Y, or split over K the float32
    workspace WS (S * M, N): each K slice's accumulators, in the output's columns, summed by
    :func:`split_sum`.  ``dims``: the body's dynamic (m, n4, n8, n_total)."""
    m, n4, n8, n_total = dims
    g, groups = k // group_size, k // WeightFormat.MIXLLM.act_group_size(group_size)
    rows_out, out = (T.dynamic("m_ws"), "float32") if split else (m, DTYPES[out_dtype])

    @T.prim_func
    def main(X: T.Tensor((m, k), "int8"), A: T.Tensor((m, groups), "float32"),
             W4: T.Tensor((n4, k // 2), "uint8"), Z: T.Tensor((n4, g), "uint8"), S4: T.Tensor((n4, g), "float16"),
             I4: T.Tensor((n4,), "int32"), W8: T.Tensor((n8, k), "int8"), S8: T.Tensor((n8, g), "float16"),
             I8: T.Tensor((n8,), "int32"), Y: T.Tensor((rows_out, n_total), out)):
        body(X, A, W4, Z, S4, I4, W8, S8, I8, Y)

    return main


def split_sum(split_k: int, out_dtype: str = "float16", block_n: int = 512):
    """Y (M, N) from the split-K workspace WS (split_k * M, N) float32:
    ``y = out(((ws_0 + ws_1) + ws_2) + ...)``, the slices added in order (the format's split-K
    contract: deterministic).  One token row and four columns a thread, each a plain load."""
    m, n = T.dynamic("m"), T.dynamic("n")
    out = DTYPES[out_dtype]

    def in_order(WS, row, col):  # a Python loop: one unrolled expression, __fadd_rn never reassociated
        total = WS[row, col]
        for s in range(1, split_k):
            total = fadd_rn(total, WS[s * m + row, col])
        return total

    @T.prim_func
    def main(WS: T.Tensor((split_k * m, n), "float32"), Y: T.Tensor((m, n), out)):
        with T.Kernel(m, T.ceildiv(n, block_n), threads=128) as (row, bx):  # M on x: no 65,535 limit
            for j in T.Parallel(block_n):
                if bx * block_n + j < n:
                    Y[row, bx * block_n + j] = T.Cast(out, in_order(WS, row, bx * block_n + j))

    return main


def mixllm_gemm(k: int, group_size: int, schedule: Schedule, out_dtype: str = "float16",
                has4: bool = True, has8: bool = True, wgmma: bool = True):
    """TileLang prim_func for all output features of one mixllm layer.

    Launch arguments: X int8 (M, K), A fp32 (M, K/A) activation group scales, W4 packed
    uint8 (n4, K/2), Z uint8 (n4, K/group), S4 fp16 (n4, K/group), I4 int32 (n4,), W8 int8
    (n8, K), S8 fp16 (n8, K/group), I8 int32 (n8,), Y (M, n_total) -- or, with split_k > 1,
    the float32 workspace (split_k * M, n_total) of :func:`launch_entry`.  ``schedule.block_k``
    must be the activation group A.
    """
    if not (has4 or has8):
        raise ValueError("mixllm_gemm needs 4-bit rows, 8-bit rows, or both")
    span = WeightFormat.MIXLLM.act_group_size(group_size)
    s = schedule
    if s.block_k != span or (k // span) % s.split_k:
        raise ValueError(f"{s}: the mixllm kernel takes one activation group per K tile (block_k={span}), "
                         f"split_k dividing the {k // span} groups")
    bm, bn, bk = s.block_m, s.block_n, s.block_k
    m, n4, n8, n_total = T.dynamic("m"), T.dynamic("n4"), T.dynamic("n8"), T.dynamic("n_total")
    slice_groups = k // span // s.split_k
    split = s.split_k > 1
    out = "float32" if split else DTYPES[out_dtype]
    blocks4 = T.ceildiv(n4, bn) if has4 else 0
    blocks8 = T.ceildiv(n8, bn) if has8 else 0
    groups, group_threads, group_rows = consumer_groups(s.threads, bn, wgmma)
    policy = T.GemmWarpPolicy.FullCol if groups > 1 else T.GemmWarpPolicy.Square
    decode_tile = int4_decode_tile(bk, group_size, group_threads, group_rows, unit_scale=True)

    @T.macro
    def promote_group(acc_i, acc_f, A, S, a_s, s_s, rows, n_base, by, j):
        """Step two for activation group j: acc_f += fp32(acc_i) * (a * s), fused, one rounding."""
        for i in T.Parallel(bm):
            a_s[i] = A[T.min(by * bm + i, m - 1), j]
        for c in T.Parallel(bn):
            s_s[c] = T.Cast("float32", S[T.min(n_base + c, rows - 1), j * span // group_size])
        for i, c in T.Parallel(bm, bn):
            acc_f[i, c] = promote(acc_i[i, c], a_s[i], s_s[c], acc_f[i, c])

    store = column_store(bm, bn, m, out, s.threads)

    @T.macro
    def body(X, A, W4, Z, S4, I4, W8, S8, I8, Y):
        with T.Kernel(blocks4 + blocks8, T.ceildiv(m, bm), s.split_k, threads=s.threads) as (bx, by, bz):
            T.import_source(DECODE_SOURCE)
            acc_i = T.alloc_fragment((bm, bn), "int32")
            acc_f = T.alloc_fragment((bm, bn), "float32")
            a_s = T.alloc_shared((bm,), "float32")
            s_s = T.alloc_shared((bn,), "float32")
            T.clear(acc_f)
            if has4 and (not has8 or bx < blocks4):
                X_s = T.alloc_shared((bm, bk), "int8")
                W_s = T.alloc_shared((bn, bk), "int8")
                P_s = T.alloc_shared((bn, bk // 2), "uint8")
                for ko in T.Pipelined(slice_groups, num_stages=s.stages):
                    j = bz * slice_groups + ko
                    T.copy(X[by * bm, j * bk], X_s)
                    T.copy(W4[bx * bn, j * bk // 2], P_s)
                    group = T.get_thread_binding() // group_threads
                    T.sync_threads(DECODE_BARRIER + group, group_threads)
                    decode_tile(P_s, W_s, None, Z, bx * bn, j * bk, group, n4)
                    T.call_extern("handle", "mixkern_fence_decoded")
                    T.sync_threads(DECODE_BARRIER + group, group_threads)
                    T.gemm(X_s, W_s, acc_i, transpose_B=True, policy=policy, clear_accum=True)
                    promote_group(acc_i, acc_f, A, S4, a_s, s_s, n4, bx * bn, by, j)
                store(acc_f, I4, Y, n4, bx * bn, by, bz * m)
            else:
                X_s = T.alloc_shared((bm, bk), "int8")
                W_s = T.alloc_shared((bn, bk), "int8")
                for ko in T.Pipelined(slice_groups, num_stages=s.stages):
                    j = bz * slice_groups + ko
                    T.copy(X[by * bm, j * bk], X_s)
                    T.copy(W8[(bx - blocks4) * bn, j * bk], W_s)
                    T.gemm(X_s, W_s, acc_i, transpose_B=True, policy=policy, clear_accum=True)
                    promote_group(acc_i, acc_f, A, S8, a_s, s_s, n8, (bx - blocks4) * bn, by, j)
                store(acc_f, I8, Y, n8, (bx - blocks4) * bn, by, bz * m)

    return launch_entry(body, k, group_size, out_dtype, split, (m, n4, n8, n_total))
