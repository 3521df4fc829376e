"""Decode (few tokens) W4A8 + W8A8 as one TileLang launch on CUDA cores with dp4a.

At decode sizes (M <= 16) a GEMM is a weight stream: the tensor core's 64-wide tile is mostly
empty and what counts is bytes in flight.  Here every thread reads 16 bytes of one row per step
(32 4-bit codes, or 16 int8 weights twice) with 128-bit loads, and a block of ``warps``
warps covers ``rows`` output features over all of K, so all SMs pull weight bytes with
no split-K workspace.  4-bit and 8-bit features run in the same launch: the first
``ceil(n4 / rows)`` blocks take 4-bit rows, the rest 8-bit rows.

The 4-bit decode never leaves int32 words.  A packed word holds 8 codes with byte j =
``c_j | c_{j+4} << 4`` (:mod:`mixkern.packing`), so ``w & 0x0F0F0F0F`` and
``(w >> 4) & 0x0F0F0F0F`` are the codes of k..k+3 and k+4..k+7 as four bytes each,
ready for ``dp4a`` against the int8 activations.  The zero point and the integer group
scale come after the dot product, exactly:

    sum_k x_k (q_k - z) s2 = s2 * (dot(x, q) - z * sum_k x_k)

with ``sum_k x_k`` from one more dp4a against 0x01010101 per activation word, shared by
all rows of the block.  Every lane's 32 K values lie in one group (group sizes are
multiples of 64), so one (s2, z) pair per lane per row and step.  Lanes reduce with warp
shuffles, warps through shared memory, and the epilogue is the format's single float
step, bit-identical to the tensor-core kernels and the reference.
"""


import tilelang.language as T

from ..schedules import GemvSchedule
from .mixed_gemm import DTYPES, _scaled

LOW_NIBBLES = 0x0F0F0F0F
ONES = 0x01010101
K_PER_LANE = 32  # one 16-byte load of packed 4-bit codes


def _dp4a(a, b, c):
    return T.call_extern("int32", "__dp4a", a, b, c)


def decode_gemv(k: int, group_size: int, schedule: GemvSchedule, out_dtype: str = "float16",
                has4: bool = True, has8: bool = True):
    """TileLang prim_func: Y[m, idx[n]] for the 4-bit rows (if has4) and 8-bit rows (if has8).

    Launch arguments: X int8 viewed as int32 words (M, K/4), A fp32 (M,), then for the
    4-bit rows W4 packed codes as int32 words (n4, K/8), S2 and Z uint8 (n4, K/group),
    S4 fp32 (n4,), I4 int32 (n4,); for the 8-bit rows W8 int8 as int32 words (n8, K/4),
    S8 fp32 (n8,), I8 int32 (n8,); and Y (M, n_total).  M, n4, n8, n_total are dynamic.
    """
    if not (has4 or has8):
        raise ValueError("decode_gemv needs 4-bit rows, 8-bit rows, or both")
    schedule.check(k, group_size)
    rows, warps, tokens = schedule.rows, schedule.warps, schedule.tokens
    threads = 32 * warps
    step_k = threads * K_PER_LANE
    steps = (k + step_k - 1) // step_k
    out = DTYPES[out_dtype]
    m, n4, n8, n_total = T.dynamic("m"), T.dynamic("n4"), T.dynamic("n8"), T.dynamic("n_total")
    blocks4 = T.ceildiv(n4, rows) if has4 else 0
    blocks8 = T.ceildiv(n8, rows) if has8 else 0
    n_acc = rows * tokens

    @T.macro
    def load_x(X, xv, sx, token, kc):
        for v in T.vectorized(8):
            xv[v] = X[token, kc // 4 + v]
        sx[0] = 0
        for v in T.unroll(8):
            sx[0] = _dp4a(xv[v], T.int32(ONES), sx[0])

    @T.macro
    def rows4(X, W4, S2, Z, acc, wv, xv, sx, zs, s2, raw, bx, by, kc):
        for r in T.unroll(rows):
            n = T.min(bx * rows + r, n4 - 1)  # a block's last rows may repeat row n4-1; never stored
            for v in T.vectorized(4):
                raw[v] = W4[n, kc // 8 + v]
            for v in T.unroll(4):
                wv[r * 8 + 2 * v] = raw[v] & T.int32(LOW_NIBBLES)
                wv[r * 8 + 2 * v + 1] = (raw[v] >> 4) & T.int32(LOW_NIBBLES)
            s2[r] = T.Cast("int32", S2[n, kc // group_size])
            zs[r] = T.Cast("int32", Z[n, kc // group_size])
        for t in T.unroll(tokens):
            load_x(X, xv, sx, T.min(by * tokens + t, m - 1), kc)
            for r in T.unroll(rows):
                dot = T.alloc_var("int32")
                dot = 0
                for v in T.unroll(8):
                    dot = _dp4a(wv[r * 8 + v], xv[v], dot)
                acc[r * tokens + t] += s2[r] * (dot - zs[r] * sx[0])

    @T.macro
    def rows8(X, W8, acc, wv, xv, sx, bx, by, kc):
        for r in T.unroll(rows):
            n = T.min((bx - blocks4) * rows + r, n8 - 1)
            for v in T.vectorized(8):
                wv[r * 8 + v] = W8[n, kc // 4 + v]
        for t in T.unroll(tokens):
            load_x(X, xv, sx, T.min(by * tokens + t, m - 1), kc)
            for r in T.unroll(rows):
                for v in T.unroll(8):
                    acc[r * tokens + t] = _dp4a(wv[r * 8 + v], xv[v], acc[r * tokens + t])

    @T.prim_func
    def main(X: T.Tensor((m, k // 4), "int32"), A: T.Tensor((m,), "float32"),
             W4: T.Tensor((n4, k // 8), "int32"), S2: T.Tensor((n4, k // group_size), "uint8"),
             Z: T.Tensor((n4, k // group_size), "uint8"), S4: T.Tensor((n4,), "float32"),
             I4: T.Tensor((n4,), "int32"), W8: T.Tensor((n8, k // 4), "int32"),
             S8: T.Tensor((n8,), "float32"), I8: T.Tensor((n8,), "int32"),
             Y: T.Tensor((m, n_total), out)):
        with T.Kernel(blocks4 + blocks8, T.ceildiv(m, tokens), threads=threads) as (bx, by):
            tx = T.get_thread_binding(0)
            acc = T.alloc_local((n_acc,), "int32")
            wv = T.alloc_local((rows * 8,), "int32")
            xv = T.alloc_local((8,), "int32")
            raw = T.alloc_local((4,), "int32")
            sx = T.alloc_local((1,), "int32")
            s2 = T.alloc_local((rows,), "int32")
            zs = T.alloc_local((rows,), "int32")
            part = T.alloc_shared((warps, n_acc), "int32")
            for i in T.unroll(n_acc):
                acc[i] = 0
            for step in T.serial(steps):
                kc = step * step_k + tx * K_PER_LANE
                if kc < k:
                    if bx < blocks4:
                        rows4(X, W4, S2, Z, acc, wv, xv, sx, zs, s2, raw, bx, by, kc)
                    else:
                        rows8(X, W8, acc, wv, xv, sx, bx, by, kc)
            for i in T.unroll(n_acc):
                acc[i] = T.warp_reduce_sum(acc[i])
                if tx % 32 == 0:
                    part[tx // 32, i] = acc[i]
            T.sync_threads()
            if tx < n_acc:
                total = T.alloc_var("int32")
                total = 0
                for w in T.unroll(warps):
                    total += part[w, tx]
                token = by * tokens + tx % tokens
                r = tx // tokens
                if token < m:
                    if bx < blocks4:
                        if bx * rows + r < n4:
                            Y[token, I4[bx * rows + r]] = _scaled(total, A[token], S4[bx * rows + r], out)
                    else:
                        if (bx - blocks4) * rows + r < n8:
                            Y[token, I8[(bx - blocks4) * rows + r]] = _scaled(
                                total, A[token], S8[(bx - blocks4) * rows + r], out)

    return main
