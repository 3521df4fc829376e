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

``fused``: the block quantizes its own tokens' activations (the rule of
:mod:`mixkern.quantize.activations` per group, bit for bit): a group's absolute maximum is
a ``shfl_xor`` butterfly over its lanes, so no block-wide barrier is needed, and the int8 x
words and group scales stay in registers for all the block's row groups.
"""

import tilelang.language as T
from tvm import tirx

from ..format import WeightFormat
from ..schedules import GemvSchedule
from .act_quant import magnitude
from .decode_gemv import K_PER_LANE, LOW_NIBBLES, ONES, WORDS, _dp4a
from .mixed_gemm import DTYPES
from .promote import fmaf_rn, fmul_rn


def mixllm_gemv(k: int, group_size: int, schedule: GemvSchedule, out_dtype: str = "float16",
                has4: bool = True, has8: bool = True):
    """TileLang prim_func: Y[m, idx[n]] for the mixllm format's 4-bit rows (if has4) and 8-bit rows (if has8).

    Launch arguments: X -- fp16/bf16 (M, K) if ``schedule.fused``, else int8 viewed as int32
    words (M, K/4); A fp32 (M, K/A) the activation group scales (written by a fused kernel);
    W4 packed codes as int32 words (n4, K/8), Z uint8 (n4, K/group), S4 fp16 (n4, K/group),
    I4 int32 (n4,); W8 int8 as int32 words (n8, K/4), S8 fp16 (n8, K/group), I8 int32 (n8,);
    Y (M, n_total).  M, n4, n8, n_total are dynamic.
    """
    if not (has4 or has8):
        raise ValueError("mixllm_gemv needs 4-bit rows, 8-bit rows, or both")
    schedule.check(k, group_size)
    span = WeightFormat.MIXLLM.act_group_size(group_size)
    lanes = span // K_PER_LANE  # lanes per activation group: 2 or 4
    rows, warps, tokens, fused = schedule.rows, schedule.warps, schedule.tokens, schedule.fused
    threads = 32 * warps
    step_k = threads * K_PER_LANE
    step_groups = step_k // span
    steps = schedule.steps(k)
    out = DTYPES[out_dtype]
    m, n4, n8, n_total = T.dynamic("m"), T.dynamic("n4"), T.dynamic("n8"), T.dynamic("n_total")
    blocks4 = T.ceildiv(n4, rows) if has4 else 0
    blocks8 = T.ceildiv(n8, rows) if has8 else 0
    groups = blocks4 + blocks8
    n_acc = rows * tokens

    @T.macro
    def load_rows(W4, Z, S4, W8, S8, raw, zs, ws, rb, kc):
        """This lane's 16 bytes of every row of row group rb at channel kc, with its zero and scale."""
        if rb < blocks4:
            for r in T.unroll(rows):
                n = T.min(rb * rows + r, n4 - 1)  # a group's last rows may repeat row n4-1; never stored
                for v in T.vectorized(4):
                    raw[r * WORDS + v] = W4[n, kc // 8 + v]
                zs[r] = T.Cast("int32", Z[n, kc // group_size])
                ws[r] = T.Cast("float32", S4[n, kc // group_size])
        else:
            for r in T.unroll(rows):
                n = T.min((rb - blocks4) * rows + r, n8 - 1)
                for v in T.vectorized(WORDS):
                    raw[r * WORDS + v] = W8[n, kc // 4 + v]
                ws[r] = T.Cast("float32", S8[n, kc // group_size])

    @T.macro
    def x_words(X, A, xw, xa, xv, sx, xs, t, by, step, kc):
        """This lane's 32 int8 x values of one step as 8 words, their sum and their group's scale."""
        token = T.min(by * tokens + t, m - 1)
        if fused:
            for v in T.unroll(8):
                xv[v] = xw[(t * steps + step) * 8 + v]
            xs[0] = xa[t * steps + step]
        else:
            for v in T.vectorized(8):
                xv[v] = X[token, kc // 4 + v]
            xs[0] = A[token, kc // span]
        sx[0] = 0
        for v in T.unroll(8):
            sx[0] = _dp4a(xv[v], T.int32(ONES), sx[0])

    @T.macro
    def group_partials(X, A, xw, xa, raw, zs, ws, wv, xv, sx, xs, P_s, C_s, rb, by, step, kc, tx):
        """Every (row, token) partial of this lane's activation group, exact, into P_s / C_s."""
        if rb < blocks4:
            for r in T.unroll(rows):
                for v in T.unroll(4):
                    word = raw[r * WORDS + v]
                    wv[r * 8 + 2 * v] = word & T.int32(LOW_NIBBLES)
                    wv[r * 8 + 2 * v + 1] = (word >> 4) & T.int32(LOW_NIBBLES)
        for t in T.unroll(tokens):
            x_words(X, A, xw, xa, xv, sx, xs, t, by, step, kc)
            for r in T.unroll(rows):
                p = T.alloc_var("int32")
                p = 0
                if kc < k:  # whole activation groups are in or out (K is a multiple of the group)
                    if rb < blocks4:
                        for v in T.unroll(8):
                            p = _dp4a(wv[r * 8 + v], xv[v], p)
                        p = p - zs[r] * sx[0]
                    else:
                        for v in T.unroll(8):
                            p = _dp4a(raw[r * WORDS + v], xv[v], p)
                p = p + T.shfl_xor(p, 1)  # all lanes of the warp take part (full mask)
                if lanes == 4:
                    p = p + T.shfl_xor(p, 2)
                if kc < k and tx % lanes == 0:
                    P_s[r * tokens + t, (tx // lanes) % step_groups] = p
                    C_s[r * tokens + t, (tx // lanes) % step_groups] = fmul_rn(xs[0], ws[r])

    @T.macro
    def quantize_x(X, A, xw, xa, xh, tx, bx, by):
        """Fused: each lane's 32 x values per (token, step) to int8 words, one scale per group
        (the group's maximum by a butterfly over its lanes)."""
        for t in T.unroll(tokens):
            token = T.min(by * tokens + t, m - 1)
            for step in T.unroll(steps):
                kc = step * step_k + tx * K_PER_LANE
                amax = T.alloc_var("float32")
                amax = T.float32(0)
                if kc < k:
                    for j in T.unroll(K_PER_LANE // 8):
                        for v in T.vectorized(8):
                            xh[j * 8 + v] = X[token, kc + j * 8 + v]
                    for v in T.unroll(K_PER_LANE):
                        amax = T.max(amax, magnitude(xh[v]))
                amax = T.max(amax, T.shfl_xor(amax, 1))
                if lanes == 4:
                    amax = T.max(amax, T.shfl_xor(amax, 2))
                a = amax / T.float32(127.0)
                scale = T.if_then_else(a > 0, a, T.float32(1.0))
                xa[t * steps + step] = a
                if kc < k and bx == 0 and tx % lanes == 0 and by * tokens + t < m:
                    A[by * tokens + t, kc // span] = a  # the group scales, for whoever wants them
                for w in T.unroll(8):
                    word = T.alloc_var("int32")
                    word = 0
                    for b in T.unroll(4):
                        q = T.clamp(tirx.nearbyint(T.Cast("float32", xh[w * 4 + b]) / scale),
                                    T.float32(-127.0), T.float32(127.0))
                        word = word | ((T.Cast("int32", q) & 255) << (8 * b))
                    xw[(t * steps + step) * 8 + w] = word

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
    def k_step(X, A, W4, Z, S4, W8, S8, xw, xa, raw, zs, ws, wv, xv, sx, xs, P_s, C_s, acc, rb, by, step, tx):
        kc = step * step_k + tx * K_PER_LANE
        if kc < k:
            load_rows(W4, Z, S4, W8, S8, raw, zs, ws, rb, kc)
        group_partials(X, A, xw, xa, raw, zs, ws, wv, xv, sx, xs, P_s, C_s, rb, by, step, kc, tx)
        chain_step(P_s, C_s, acc, step, tx)

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

    x_shape, x_dtype = ((m, k), out) if fused else ((m, k // 4), "int32")
    g = k // group_size

    @T.prim_func
    def main(X: T.Tensor(x_shape, x_dtype), A: T.Tensor((m, k // span), "float32"),
             W4: T.Tensor((n4, k // 8), "int32"), Z: T.Tensor((n4, g), "uint8"), S4: T.Tensor((n4, g), "float16"),
             I4: T.Tensor((n4,), "int32"), W8: T.Tensor((n8, k // 4), "int32"), S8: T.Tensor((n8, g), "float16"),
             I8: T.Tensor((n8,), "int32"), Y: T.Tensor((m, n_total), out)):
        with T.Kernel(T.ceildiv(groups, schedule.chunk), T.ceildiv(m, tokens), threads=threads) as (bx, by):
            tx = T.get_thread_binding(0)
            acc = T.alloc_local((1,), "float32")
            raw = T.alloc_local((rows * WORDS,), "int32")
            zs = T.alloc_local((rows,), "int32")
            ws = T.alloc_local((rows,), "float32")
            wv = T.alloc_local((rows * 8,), "int32")
            xv = T.alloc_local((8,), "int32")
            sx = T.alloc_local((1,), "int32")
            xs = T.alloc_local((1,), "float32")
            P_s = T.alloc_shared((n_acc, step_groups + 1), "int32")  # +1: the chain's column reads avoid bank conflicts
            C_s = T.alloc_shared((n_acc, step_groups + 1), "float32")
            xw = T.alloc_local((tokens * steps * 8 if fused else 1,), "int32")
            xa = T.alloc_local((tokens * steps if fused else 1,), "float32")
            if fused:
                xh = T.alloc_local((K_PER_LANE,), x_dtype)
                quantize_x(X, A, xw, xa, xh, tx, bx, by)
            for c in T.serial(schedule.chunk):
                rb = bx * schedule.chunk + c
                if rb < groups:
                    acc[0] = T.float32(0)
                    if fused:  # unrolled: the register-held x words are indexed by the step
                        for step in T.unroll(steps):
                            k_step(X, A, W4, Z, S4, W8, S8, xw, xa, raw, zs, ws, wv, xv, sx, xs, P_s, C_s, acc, rb, by, step, tx)
                    else:
                        for step in T.serial(steps):
                            k_step(X, A, W4, Z, S4, W8, S8, xw, xa, raw, zs, ws, wv, xv, sx, xs, P_s, C_s, acc, rb, by, step, tx)
                    store(acc, I4, I8, Y, rb, tx, by)

    return main
