"""The W4A8 / W8A8 GEMM of the progressive format, as TileLang kernels.

One kernel computes ``acc[n, m] = sum_k w8[n, k] * xq[m, k]`` for one set of output
features, in a single int32 accumulator over all of K (the progressive format has no
float group scales), with the weights as the MMA's left operand:

* 4-bit rows: packed codes are copied (TMA / cp.async) into shared memory, moved to
  registers, and turned into int8 there, ``(q - z) * s2`` (exact in int8 by construction),
  then fed to the int8 tensor core from registers (wgmma with A in registers on sm_90a,
  mma.sync on sm_80);
* 8-bit rows: int8 tiles straight from shared memory.

The epilogue applies every float scale once, ``y[m, idx[n]] = out((fp32(acc) * a[m]) * s[n])``,
writing straight into the feature's original column.  With ``split_k > 1`` each K slice
adds its int32 partial into a workspace with atomics (exact, order-free) and
:func:`epilogue` scales it afterwards.
"""


import tilelang.language as T

from ..schedules import Schedule

DTYPES = {"float16": "float16", "bfloat16": "bfloat16"}


def _scaled(acc, a, s, out: str):
    """The float epilogue of the format, in its one order: out((fp32(acc) * a[m]) * s[n])."""
    return T.Cast(out, (T.Cast("float32", acc) * a) * s)


@T.macro
def _decode_progressive(W_p, W_8, S2, Z, n_base, k_base, rows, group_size, block_n, block_k):
    """Registers: packed nibbles (word-interleaved order of mixkern.packing) -> int8 (q - z) * s2."""
    for i, j in T.Parallel(block_n, block_k):
        n = T.min(n_base + i, rows - 1)
        g = (k_base + j) // group_size
        code = (W_p[i, (j // 8) * 4 + j % 4] >> ((j % 8) // 4 * 4)) & T.uint8(15)
        W_8[i, j] = T.Cast("int8", (T.Cast("int16", code) - T.Cast("int16", Z[n, g])) * T.Cast("int16", S2[n, g]))


def mixed_gemm(bits: int, k: int, group_size: int, schedule: Schedule, out_dtype: str = "float16"):
    """TileLang prim_func for the ``rows`` output features of one precision (4 or 8 bits).

    Arguments at launch: X int8 (M, K), A fp32 (M,), weights (4-bit: packed uint8 (rows, K/2),
    S2 uint8 (rows, G), Z uint8 (rows, G); 8-bit: int8 (rows, K)), S fp32 (rows,), Idx int32 (rows,),
    and Y out_dtype (M, n_total) -- or, with split_k > 1, an int32 workspace Acc (M, rows).
    M, rows and n_total are dynamic: one compiled kernel serves every token count and split.
    """
    s = schedule
    bm, bn, bk = s.block_m, s.block_n, s.block_k
    m, rows, n_total = T.dynamic("m"), T.dynamic("rows"), T.dynamic("n_total")
    g = k // group_size
    k_split = k // s.split_k
    split = s.split_k > 1
    out = DTYPES[out_dtype]

    @T.macro
    def body(X, A, W, S2, Z, S, Idx, Y, Acc):
        with T.Kernel(T.ceildiv(rows, bn), T.ceildiv(m, bm), s.split_k, threads=s.threads) as (bx, by, bz):
            X_s = T.alloc_shared((bm, bk), "int8")
            acc = T.alloc_fragment((bn, bm), "int32")
            if bits == 4:
                W_s = T.alloc_shared((bn, bk // 2), "uint8")
                W_p = T.alloc_fragment((bn, bk // 2), "uint8")
                W_8 = T.alloc_fragment((bn, bk), "int8")
            else:
                W_s = T.alloc_shared((bn, bk), "int8")
            T.clear(acc)
            for ko in T.Pipelined(k_split // bk, num_stages=s.stages):
                k0 = bz * k_split + ko * bk
                T.copy(X[by * bm, k0], X_s)
                if bits == 4:
                    T.copy(W[bx * bn, k0 // 2], W_s)
                    T.copy(W_s, W_p)
                    _decode_progressive(W_p, W_8, S2, Z, bx * bn, k0, rows, group_size, bn, bk)
                    T.gemm(W_8, X_s, acc, transpose_B=True)
                else:
                    T.copy(W[bx * bn, k0], W_s)
                    T.gemm(W_s, X_s, acc, transpose_B=True)
            for i, j in T.Parallel(bn, bm):
                row = by * bm + j
                col = bx * bn + i
                if row < m and col < rows:
                    if split:
                        T.atomic_add(Acc[row, col], acc[i, j])
                    else:
                        Y[row, Idx[col]] = _scaled(acc[i, j], A[row], S[col], out)

    w_shape, w_dtype = ((rows, k // 2), "uint8") if bits == 4 else ((rows, k), "int8")
    sz_shape = (rows, g) if bits == 4 else (1, 1)  # 8-bit rows have no group scales: 1-byte placeholders
    if split:
        @T.prim_func
        def main(X: T.Tensor((m, k), "int8"), A: T.Tensor((m,), "float32"), W: T.Tensor(w_shape, w_dtype),
                 S2: T.Tensor(sz_shape, "uint8"), Z: T.Tensor(sz_shape, "uint8"), S: T.Tensor((rows,), "float32"),
                 Idx: T.Tensor((rows,), "int32"), Acc: T.Tensor((m, rows), "int32")):
            body(X, A, W, S2, Z, S, Idx, None, Acc)
    else:
        @T.prim_func
        def main(X: T.Tensor((m, k), "int8"), A: T.Tensor((m,), "float32"), W: T.Tensor(w_shape, w_dtype),
                 S2: T.Tensor(sz_shape, "uint8"), Z: T.Tensor(sz_shape, "uint8"), S: T.Tensor((rows,), "float32"),
                 Idx: T.Tensor((rows,), "int32"), Y: T.Tensor((m, n_total), out)):
            body(X, A, W, S2, Z, S, Idx, Y, None)
    return main


def epilogue(out_dtype: str = "float16", block_m: int = 16, block_n: int = 128):
    """y[m, idx[n]] = out((fp32(acc[m, n]) * a[m]) * s[n]) for a split-K int32 workspace."""
    m, rows, n_total = T.dynamic("m"), T.dynamic("rows"), T.dynamic("n_total")
    out = DTYPES[out_dtype]

    @T.prim_func
    def main(Acc: T.Tensor((m, rows), "int32"), A: T.Tensor((m,), "float32"), S: T.Tensor((rows,), "float32"),
             Idx: T.Tensor((rows,), "int32"), Y: T.Tensor((m, n_total), out)):
        with T.Kernel(T.ceildiv(rows, block_n), T.ceildiv(m, block_m), threads=128) as (bx, by):
            for i, j in T.Parallel(block_m, block_n):
                row = by * block_m + i
                col = bx * block_n + j
                if row < m and col < rows:
                    Y[row, Idx[col]] = _scaled(Acc[row, col], A[row], S[col], out)

    return main
