"""The ``mixllm`` format on tensor cores (M > 16): one K tile per activation group, its int32
MMA partial promoted into a float32 accumulator by ``a[m, j] * s[n, j]`` (bit-exact).

MixLLM's two-step dequantization: the 4-bit codes become int8 ``q - z`` in shared memory
(step one, :mod:`.int4_decode` with unit scale; 8-bit rows are int8 already), the tensor
core multiplies one activation group (block_k = A = 128, or 64) into a fresh int32
fragment, and step two applies the float scales once per group:

    acc[m, n] = fmaf(fp32(p[m, n, j]), __fmul_rn(a[m, j], s[n, j]), acc[m, n])

in increasing j -- each thread runs the format's chain for its own fragment elements, so
the result equals the reference bit for bit (no split-K: it would reorder the chain).  The
group's scales are staged in shared memory (a column of ``a`` and a row of ``s`` per tile)
beside the operand tiles.  As in the DeepGEMM-style fp8 GEMMs (1 x 128 activation scales),
the promotion costs one FMA per accumulator per group.
"""

import tilelang.language as T

from ..format import WeightFormat
from ..schedules import Schedule
from .int4_decode import DECODE_BARRIER, DECODE_SOURCE, consumer_groups, int4_decode_tile
from .mixed_gemm import DTYPES
from .promote import promote


def column_store(bm: int, bn: int, m, out: str):
    """A macro writing a (bm, bn) fp32 tile into its features' original columns of Y (the
    mixllm in-loop kernels' epilogue): Y[row, Idx[col]] = out(acc_f), inside M and the rows."""

    @T.macro
    def store(acc_f, Idx, Y, rows, col0, by):
        for i, j in T.Parallel(bm, bn):
            row = by * bm + i
            col = col0 + j
            if row < m and col < rows:
                Y[row, Idx[col]] = T.Cast(out, acc_f[i, j])

    return store


def mixllm_gemm(k: int, group_size: int, schedule: Schedule, out_dtype: str = "float16",
                has4: bool = True, has8: bool = True, wgmma: bool = True):
    """TileLang prim_func for all output features of one mixllm layer.

    Launch arguments: X int8 (M, K), A fp32 (M, K/A) activation group scales, W4 packed
    uint8 (n4, K/2), Z uint8 (n4, K/group), S4 fp16 (n4, K/group), I4 int32 (n4,), W8 int8
    (n8, K), S8 fp16 (n8, K/group), I8 int32 (n8,), Y (M, n_total).  ``schedule.block_k``
    must be the activation group A; ``split_k`` must be 1.
    """
    if not (has4 or has8):
        raise ValueError("mixllm_gemm needs 4-bit rows, 8-bit rows, or both")
    span = WeightFormat.MIXLLM.act_group_size(group_size)
    s = schedule
    if s.block_k != span or s.split_k != 1:
        raise ValueError(f"{s}: the mixllm kernel takes one activation group per K tile (block_k={span}) and no split-K")
    bm, bn, bk = s.block_m, s.block_n, s.block_k
    m, n4, n8, n_total = T.dynamic("m"), T.dynamic("n4"), T.dynamic("n8"), T.dynamic("n_total")
    g, j_groups = k // group_size, k // span
    out = DTYPES[out_dtype]
    blocks4 = T.ceildiv(n4, bn) if has4 else 0
    blocks8 = T.ceildiv(n8, bn) if has8 else 0
    groups, group_threads, group_rows = consumer_groups(s.threads, bn, wgmma)
    policy = T.GemmWarpPolicy.FullCol if groups > 1 else T.GemmWarpPolicy.Square
    decode_tile = int4_decode_tile(bk, group_size, group_threads, group_rows, unit_scale=True)

    @T.macro
    def promote_group(acc_i, acc_f, A, S, a_s, s_s, rows, n_base, by, ko):
        """Step two for one activation group: acc_f += fp32(acc_i) * (a * s), fused, one rounding."""
        for i in T.Parallel(bm):
            a_s[i] = A[T.min(by * bm + i, m - 1), ko]
        for j in T.Parallel(bn):
            s_s[j] = T.Cast("float32", S[T.min(n_base + j, rows - 1), ko * span // group_size])
        for i, j in T.Parallel(bm, bn):
            acc_f[i, j] = promote(acc_i[i, j], a_s[i], s_s[j], acc_f[i, j])

    store = column_store(bm, bn, m, out)

    @T.prim_func
    def main(X: T.Tensor((m, k), "int8"), A: T.Tensor((m, j_groups), "float32"),
             W4: T.Tensor((n4, k // 2), "uint8"), Z: T.Tensor((n4, g), "uint8"), S4: T.Tensor((n4, g), "float16"),
             I4: T.Tensor((n4,), "int32"), W8: T.Tensor((n8, k), "int8"), S8: T.Tensor((n8, g), "float16"),
             I8: T.Tensor((n8,), "int32"), Y: T.Tensor((m, n_total), out)):
        with T.Kernel(blocks4 + blocks8, T.ceildiv(m, bm), threads=s.threads) as (bx, by):
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
                for ko in T.Pipelined(j_groups, num_stages=s.stages):
                    T.copy(X[by * bm, ko * bk], X_s)
                    T.copy(W4[bx * bn, ko * bk // 2], P_s)
                    group = T.get_thread_binding() // group_threads
                    T.sync_threads(DECODE_BARRIER + group, group_threads)
                    decode_tile(P_s, W_s, None, Z, bx * bn, ko * bk, group, n4)
                    T.call_extern("handle", "mixkern_fence_decoded")
                    T.sync_threads(DECODE_BARRIER + group, group_threads)
                    T.gemm(X_s, W_s, acc_i, transpose_B=True, policy=policy, clear_accum=True)
                    promote_group(acc_i, acc_f, A, S4, a_s, s_s, n4, bx * bn, by, ko)
                store(acc_f, I4, Y, n4, bx * bn, by)
            else:
                X_s = T.alloc_shared((bm, bk), "int8")
                W_s = T.alloc_shared((bn, bk), "int8")
                for ko in T.Pipelined(j_groups, num_stages=s.stages):
                    T.copy(X[by * bm, ko * bk], X_s)
                    T.copy(W8[(bx - blocks4) * bn, ko * bk], W_s)
                    T.gemm(X_s, W_s, acc_i, transpose_B=True, policy=policy, clear_accum=True)
                    promote_group(acc_i, acc_f, A, S8, a_s, s_s, n8, (bx - blocks4) * bn, by, ko)
                store(acc_f, I8, Y, n8, (bx - blocks4) * bn, by)

    return main
