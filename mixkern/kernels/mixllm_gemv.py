"""Decode (few tokens) for the ``mixllm`` format: dp4a on CUDA cores, 4- and 8-bit rows in one
launch, one fp32 promotion per activation group in the format's order (bit-exact).

The weight stream is read as in :mod:`.decode_gemv` (16 bytes of one row per lane and step,
a block of ``warps`` warps covers ``rows`` output features over all of K), but the format
asks for one exact int32 partial per (token, row, activation group of A = 64 or 128
channels) and a float32 chain over the groups in increasing k:

    acc = fmaf(fp32(p[j]), a[m, j] * s[n, j], acc)      j = 0, 1, ..., K / A - 1

A lane's 32 channels lie in one activation group, so a group is ``A / 32`` adjacent lanes:
they add their partials with ``shfl_xor`` (integers: exact), and the group's first lane
writes the partial and its scale product ``__fmul_rn(a, s)`` to shared memory.  After each
K step one thread per (row, token) runs that step's groups through ``__fmaf_rn`` in order,
so the chain is the reference's, instruction for instruction.

The schedule is always plain (one row group per block, activations quantized by the separate
grouped kernel): on the H100 the fused and chunked forms of :mod:`.decode_gemv` ran this
kernel slower than its plain form at every decode shape measured (docs/kernels.md, "mixllm
decode"), so :func:`mixkern.schedules.for_mixllm` maps any decode pick to its plain form.
"""

import tilelang.language as T

from ..format import WeightFormat
from ..schedules import GemvSchedule
from .decode_gemv import K_PER_LANE, LOW_NIBBLES, ONES, WORDS, _dp4a
from .mixed_gemm import DTYPES
from .promote import fmaf_rn, fmul_rn


def mixllm_gemv(k: int, group_size: int, schedule: GemvSchedule, out_dtype: str = "float16",
                has4: bool = True, has8: bool = True):
    """TileLang prim_func: Y[m, idx[n]] for the mixllm format's 4-bit rows (if has4) and 8-bit rows (if has8).

    Launch arguments: X int8 viewed as int32 words (M, K/4); A fp32 (M, K/A) the activation
    group scales; W4 packed codes as int32 words (n4, K/8), Z uint8 (n4, K/group), S4 fp16
    (n4, K/group), I4 int32 (n4,); W8 int8 as int32 words (n8, K/4), S8 fp16 (n8, K/group),
    I8 int32 (n8,); Y (M, n_total).  M, n4, n8, n_total are dynamic.
    """
    if not (has4 or has8):
        raise ValueError("mixllm_gemv needs 4-bit rows, 8-bit rows, or both")
    if schedule.streamed:
        raise ValueError(f"{schedule.key}: mixllm_gemv runs plain schedules (for_mixllm maps a decode pick to one)")
    schedule.check(k, group_size)
    span = WeightFormat.MIXLLM.act_group_size(group_size)
    lanes = span // K_PER_LANE  # lanes per activation group: 2 or 4
    rows, tokens = schedule.rows, schedule.tokens
    threads = 32 * schedule.warps
    step_k = threads * K_PER_LANE
    step_groups = step_k // span
    out = DTYPES[out_dtype]
    m, n4, n8, n_total = T.dynamic("m"), T.dynamic("n4"), T.dynamic("n8"), T.dynamic("n_total")
    blocks4 = T.ceildiv(n4, rows) if has4 else 0
    blocks8 = T.ceildiv(n8, rows) if has8 else 0
    n_acc = rows * tokens
    rows_outer = rows >= tokens

    @T.macro
    def load_rows(W4, Z, S4, W8, S8, raw, zs, ws, rb, kc):
        """This lane's 16 bytes of every row of row group rb at channel kc, with its zero and scale."""
        if rb < blocks4:
            for r in T.unroll(rows):
                n = T.min(rb * rows + r, n4 - 1)  # a group's last rows may repeat row n4-1; never stored
                for v in T.vectorized(4):  # 4-bit rows pack their 4 words densely (measured faster at 4 tokens)
                    raw[r * 4 + v] = W4[n, kc // 8 + v]
                zs[r] = T.Cast("int32", Z[n, kc // group_size])
                ws[r] = T.Cast("float32", S4[n, kc // group_size])
        else:
            for r in T.unroll(rows):
                n = T.min((rb - blocks4) * rows + r, n8 - 1)
                for v in T.vectorized(WORDS):
                    raw[r * WORDS + v] = W8[n, kc // 4 + v]
                ws[r] = T.Cast("float32", S8[n, kc // group_size])

    @T.macro
    def x_words(X, A, xv, sx, xs, t, by, kc):
        """Token t's 32 int8 x values of this lane as 8 words (xv[8t:8t+8]), their sum sx[t] and
        their group's scale xs[t]."""
        token = T.min(by * tokens + t, m - 1)
        for v in T.vectorized(8):
            xv[t * 8 + v] = X[token, kc // 4 + v]
        xs[t] = A[token, kc // span]
        sx[t] = 0
        for v in T.unroll(8):
            sx[t] = _dp4a(xv[t * 8 + v], T.int32(ONES), sx[t])

    @T.macro
    def unpack(raw, wv, r, slot):
        """Row r's 32 4-bit codes as 8 words of bytes 0..15 into wv[8 slot:]."""
        for v in T.unroll(4):
            word = raw[r * 4 + v]
            wv[slot * 8 + 2 * v] = word & T.int32(LOW_NIBBLES)
            wv[slot * 8 + 2 * v + 1] = (word >> 4) & T.int32(LOW_NIBBLES)

    @T.macro
    def publish(p, xs, ws, P_s, C_s, r, t, kc, tx):
        """Add the group's lanes' partials (exact) and hand (partial, a * s) to the chain."""
        p = p + T.shfl_xor(p, 1)  # all lanes of the warp take part (full mask)
        if lanes == 4:
            p = p + T.shfl_xor(p, 2)
        if kc < k and tx % lanes == 0:
            P_s[r * tokens + t, (tx // lanes) % step_groups] = p
            C_s[r * tokens + t, (tx // lanes) % step_groups] = fmul_rn(xs[t], ws[r])

    @T.macro
    def precision_partials(X, A, raw, zs, ws, wv, xv, sx, xs, P_s, C_s, by, kc, tx, four):
        """group_partials for a row group of one precision (``four``: 4-bit): the branch stays
        outside the unrolled loops, so each is one straight block the compiler can schedule."""
        if rows_outer:
            for t in T.unroll(tokens):
                x_words(X, A, xv, sx, xs, t, by, kc)
        elif four:
            for r in T.unroll(rows):
                unpack(raw, wv, r, r)
        for outer in T.unroll(rows if rows_outer else tokens):
            if rows_outer:
                if four:
                    unpack(raw, wv, outer, 0)
            else:
                x_words(X, A, xv, sx, xs, outer, by, kc)
            for inner in T.unroll(tokens if rows_outer else rows):
                r, t = (outer, inner) if rows_outer else (inner, outer)
                slot = 0 if rows_outer else r
                p = T.alloc_var("int32")
                p = 0
                if kc < k:  # whole activation groups are in or out (K is a multiple of the group)
                    if four:
                        for v in T.unroll(8):
                            p = _dp4a(wv[slot * 8 + v], xv[t * 8 + v], p)
                        p = p - zs[r] * sx[t]
                    else:
                        for v in T.unroll(8):
                            p = _dp4a(raw[r * WORDS + v], xv[t * 8 + v], p)
                publish(p, xs, ws, P_s, C_s, r, t, kc, tx)

    @T.macro
    def group_partials(X, A, raw, zs, ws, wv, xv, sx, xs, P_s, C_s, rb, by, kc, tx):
        """Every (row, token) partial of this lane's activation group, exact, into P_s / C_s.
        The outer loop runs over the larger of rows and tokens, so what stays live across it is
        the smaller: all tokens' x words and one row's unpacked codes, or all rows' codes and
        one token's x words (fewer registers at 2..4 tokens and 8 rows)."""
        if rb < blocks4:
            precision_partials(X, A, raw, zs, ws, wv, xv, sx, xs, P_s, C_s, by, kc, tx, True)
        else:
            precision_partials(X, A, raw, zs, ws, wv, xv, sx, xs, P_s, C_s, by, kc, tx, False)

    @T.macro
    def chain_step(P_s, C_s, acc, step, tx):
        """One thread per (row, token): this step's groups into the fp32 chain, in k order."""
        T.sync_threads()
        if tx < n_acc:
            for j in T.unroll(step_groups):  # unrolled: the shared loads issue ahead of the dependent FMAs
                if step * step_k + j * span < k:
                    acc[0] = fmaf_rn(T.Cast("float32", P_s[tx, j]), C_s[tx, j], acc[0])
        T.sync_threads()  # P_s / C_s are rewritten by the next step

    @T.macro
    def store(acc, I4, I8, Y, rb, tx, by):
        token = by * tokens + tx % tokens
        r = tx // tokens
        if tx < n_acc and token < m:
            if rb < blocks4:
                if rb * rows + r < n4:
                    Y[token, I4[rb * rows + r]] = T.Cast(out, acc[0])
            else:
                if (rb - blocks4) * rows + r < n8:
                    Y[token, I8[(rb - blocks4) * rows + r]] = T.Cast(out, acc[0])

    g = k // group_size

    @T.prim_func
    def main(X: T.Tensor((m, k // 4), "int32"), A: T.Tensor((m, k // span), "float32"),
             W4: T.Tensor((n4, k // 8), "int32"), Z: T.Tensor((n4, g), "uint8"), S4: T.Tensor((n4, g), "float16"),
             I4: T.Tensor((n4,), "int32"), W8: T.Tensor((n8, k // 4), "int32"), S8: T.Tensor((n8, g), "float16"),
             I8: T.Tensor((n8,), "int32"), Y: T.Tensor((m, n_total), out)):
        with T.Kernel(blocks4 + blocks8, T.ceildiv(m, tokens), threads=threads) as (rb, by):
            tx = T.get_thread_binding(0)
            acc = T.alloc_local((1,), "float32")
            raw = T.alloc_local((rows * WORDS,), "int32")
            zs = T.alloc_local((rows,), "int32")
            ws = T.alloc_local((rows,), "float32")
            wv = T.alloc_local((8 if rows_outer else rows * 8,), "int32")
            xv = T.alloc_local((tokens * 8,), "int32")
            sx = T.alloc_local((tokens,), "int32")
            xs = T.alloc_local((tokens,), "float32")
            P_s = T.alloc_shared((n_acc, step_groups + 1), "int32")  # +1: the chain's column reads avoid bank conflicts
            C_s = T.alloc_shared((n_acc, step_groups + 1), "float32")
            acc[0] = T.float32(0)
            for step in T.serial(schedule.steps(k)):
                kc = step * step_k + tx * K_PER_LANE
                if kc < k:
                    load_rows(W4, Z, S4, W8, S8, raw, zs, ws, rb, kc)
                group_partials(X, A, raw, zs, ws, wv, xv, sx, xs, P_s, C_s, rb, by, kc, tx)
                chain_step(P_s, C_s, acc, step, tx)
            store(acc, I4, I8, Y, rb, tx, by)

    return main
