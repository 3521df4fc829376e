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

Two schedule options serve one-token decode, where the weight stream is short and every
microsecond of latency shows:

* ``chunk`` row groups per block, streamed: each lane holds one whole row group's weight
  words in registers; the next group's loads are issued before the current group's
  reduction and stores, and the first group's before anything else, so loads stay in flight
  while the block reduces (a block per row group pays launch, ramp-up and a cold load each);
* ``fused``: the block quantizes its tokens' activations itself (the rule of
  :mod:`mixkern.quantize.activations`, bit for bit) while its first weight loads are in
  flight, and keeps each lane's int8 x words in registers for all its row groups: no
  separate launch and no int8 x round trip through memory.  Each lane reads only the x
  values it multiplies; the block shares one absolute maximum per token.
"""


import tilelang.language as T
from tvm import tirx

from ..schedules import GemvSchedule
from .act_quant import magnitude
from .mixed_gemm import DTYPES, _scaled

LOW_NIBBLES = 0x0F0F0F0F
ONES = 0x01010101
K_PER_LANE = 32  # one 16-byte load of packed 4-bit codes
WORDS = 8  # register words per lane, row and step: 16 bytes of int8 weights (4-bit rows use 4)


def _dp4a(a, b, c):
    return T.call_extern("int32", "__dp4a", a, b, c)


def decode_gemv(k: int, group_size: int, schedule: GemvSchedule, out_dtype: str = "float16",
                has4: bool = True, has8: bool = True):
    """TileLang prim_func: Y[m, idx[n]] for the 4-bit rows (if has4) and 8-bit rows (if has8).

    Launch arguments: X -- fp16/bf16 (M, K) if ``schedule.fused``, else int8 viewed as int32
    words (M, K/4); A fp32 (M,), the token scales (written by a fused kernel); then for the
    4-bit rows W4 packed codes as int32 words (n4, K/8), S2 and Z uint8 (n4, K/group),
    S4 fp32 (n4,), I4 int32 (n4,); for the 8-bit rows W8 int8 as int32 words (n8, K/4),
    S8 fp32 (n8,), I8 int32 (n8,); and Y (M, n_total).  M, n4, n8, n_total are dynamic.
    """
    if not (has4 or has8):
        raise ValueError("decode_gemv needs 4-bit rows, 8-bit rows, or both")
    schedule.check(k, group_size)
    rows, warps, tokens, chunk, fused = schedule.rows, schedule.warps, schedule.tokens, schedule.chunk, schedule.fused
    streamed = schedule.streamed
    threads = 32 * warps
    step_k = threads * K_PER_LANE
    steps = schedule.steps(k)
    out = DTYPES[out_dtype]
    m, n4, n8, n_total = T.dynamic("m"), T.dynamic("n4"), T.dynamic("n8"), T.dynamic("n_total")
    blocks4 = T.ceildiv(n4, rows) if has4 else 0
    blocks8 = T.ceildiv(n8, rows) if has8 else 0
    groups = blocks4 + blocks8  # row groups: the 4-bit ones first, then the 8-bit ones
    n_acc = rows * tokens
    held = steps if streamed else 1  # steps of weight words a lane holds in registers

    @T.macro
    def load_group(W4, S2, Z, W8, raw, meta, rb, step, h, kc):
        """Issue this lane's loads of one step of row group rb into raw[h] / meta[h] (no use yet)."""
        if rb < blocks4:
            for r in T.unroll(rows):
                n = T.min(rb * rows + r, n4 - 1)  # a group's last rows may repeat row n4-1; never stored
                for v in T.vectorized(4):
                    raw[(h * rows + r) * WORDS + v] = W4[n, kc // 8 + v]
                meta[(h * rows + r) * 2] = T.Cast("int32", S2[n, kc // group_size])
                meta[(h * rows + r) * 2 + 1] = T.Cast("int32", Z[n, kc // group_size])
        else:
            for r in T.unroll(rows):
                n = T.min((rb - blocks4) * rows + r, n8 - 1)
                for v in T.vectorized(WORDS):
                    raw[(h * rows + r) * WORDS + v] = W8[n, kc // 4 + v]

    @T.macro
    def x_words(X, xw, xv, sx, t, by, step, kc):
        """This lane's 32 int8 x values of one step as 8 words, and their sum."""
        if fused:
            for v in T.unroll(8):
                xv[v] = xw[(t * steps + step) * 8 + v]
        else:
            for v in T.vectorized(8):
                xv[v] = X[T.min(by * tokens + t, m - 1), kc // 4 + v]
        sx[0] = 0
        for v in T.unroll(8):
            sx[0] = _dp4a(xv[v], T.int32(ONES), sx[0])

    @T.macro
    def dot_group(X, xw, raw, meta, acc, wv, xv, sx, rb, by, step, h, kc):
        """acc[r, t] += this lane's share of row r . token t over one step."""
        if rb < blocks4:
            for r in T.unroll(rows):
                for v in T.unroll(4):
                    word = raw[(h * rows + r) * WORDS + v]
                    wv[r * 8 + 2 * v] = word & T.int32(LOW_NIBBLES)
                    wv[r * 8 + 2 * v + 1] = (word >> 4) & T.int32(LOW_NIBBLES)
            for t in T.unroll(tokens):
                x_words(X, xw, xv, sx, t, by, step, kc)
                for r in T.unroll(rows):
                    dot = T.alloc_var("int32")
                    dot = 0
                    for v in T.unroll(8):
                        dot = _dp4a(wv[r * 8 + v], xv[v], dot)
                    s2, z = meta[(h * rows + r) * 2], meta[(h * rows + r) * 2 + 1]
                    acc[r * tokens + t] += s2 * (dot - z * sx[0])
        else:
            for t in T.unroll(tokens):
                x_words(X, xw, xv, sx, t, by, step, kc)
                for r in T.unroll(rows):
                    for v in T.unroll(8):
                        acc[r * tokens + t] = _dp4a(raw[(h * rows + r) * WORDS + v], xv[v], acc[r * tokens + t])

    @T.macro
    def load_all(W4, S2, Z, W8, raw, meta, rb, tx):
        """Streamed: issue every step's loads of row group rb."""
        if rb < groups:
            for step in T.unroll(steps):
                kc = step * step_k + tx * K_PER_LANE
                if kc < k:
                    load_group(W4, S2, Z, W8, raw, meta, rb, step, step, kc)

    @T.macro
    def quantize_x(X, A, xw, xh, amax_part, a_tok, tx, bx, by):
        """Fused activation quantization: a = max|x| / 127 per token (one block-wide maximum),
        then this lane's x words clamp(rint(x / a), -127, 127) packed four int8 to an int32."""
        for t in T.unroll(tokens):
            token = T.min(by * tokens + t, m - 1)
            amax = T.alloc_var("float32")
            amax = T.float32(0)
            for step in T.unroll(steps):
                kc = step * step_k + tx * K_PER_LANE
                if kc < k:
                    for j in T.unroll(K_PER_LANE // 8):
                        for v in T.vectorized(8):
                            xh[v] = X[token, kc + j * 8 + v]
                        for v in T.unroll(8):
                            amax = T.max(amax, magnitude(xh[v]))
            amax = T.warp_reduce_max(amax)
            if tx % 32 == 0:
                amax_part[t, tx // 32] = amax
        T.sync_threads()
        for t in T.unroll(tokens):
            token = T.min(by * tokens + t, m - 1)
            amax = T.alloc_var("float32")
            amax = amax_part[t, 0]
            for w in T.unroll(1, warps):
                amax = T.max(amax, amax_part[t, w])
            a = amax / T.float32(127.0)
            scale = T.if_then_else(a > 0, a, T.float32(1.0))
            if tx == 0:
                a_tok[t] = a
                if bx == 0 and by * tokens + t < m:
                    A[by * tokens + t] = a  # the token scales, for whoever wants them
            for step in T.unroll(steps):
                kc = step * step_k + tx * K_PER_LANE
                for j in T.unroll(K_PER_LANE // 8):
                    if kc < k:
                        for v in T.vectorized(8):
                            xh[v] = X[token, kc + j * 8 + v]
                    for half in T.unroll(2):
                        word = T.alloc_var("int32")
                        word = 0
                        for b in T.unroll(4):
                            q = T.clamp(tirx.nearbyint(T.Cast("float32", xh[half * 4 + b]) / scale),
                                        T.float32(-127.0), T.float32(127.0))
                            word = word | ((T.Cast("int32", q) & 255) << (8 * b))
                        xw[(t * steps + step) * 8 + j * 2 + half] = word
        T.sync_threads()

    @T.macro
    def reduce_and_store(acc, part, a_tok, I4, S4, I8, S8, Y, rb, tx, by):
        """Lanes by warp shuffles, warps through shared memory; one float epilogue per output."""
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
                if rb < blocks4:
                    if rb * rows + r < n4:
                        Y[token, I4[rb * rows + r]] = _scaled(total, a_tok[tx % tokens], S4[rb * rows + r], out)
                else:
                    if (rb - blocks4) * rows + r < n8:
                        Y[token, I8[(rb - blocks4) * rows + r]] = _scaled(
                            total, a_tok[tx % tokens], S8[(rb - blocks4) * rows + r], out)
        T.sync_threads()  # part is reused by the next row group

    x_shape, x_dtype = ((m, k), DTYPES[out_dtype]) if fused else ((m, k // 4), "int32")

    @T.prim_func
    def main(X: T.Tensor(x_shape, x_dtype), A: T.Tensor((m,), "float32"),
             W4: T.Tensor((n4, k // 8), "int32"), S2: T.Tensor((n4, k // group_size), "uint8"),
             Z: T.Tensor((n4, k // group_size), "uint8"), S4: T.Tensor((n4,), "float32"),
             I4: T.Tensor((n4,), "int32"), W8: T.Tensor((n8, k // 4), "int32"),
             S8: T.Tensor((n8,), "float32"), I8: T.Tensor((n8,), "int32"),
             Y: T.Tensor((m, n_total), out)):
        with T.Kernel(T.ceildiv(groups, chunk), T.ceildiv(m, tokens), threads=threads) as (bx, by):
            tx = T.get_thread_binding(0)
            acc = T.alloc_local((n_acc,), "int32")
            raw = T.alloc_local((held * rows * WORDS,), "int32")
            meta = T.alloc_local((held * rows * 2,), "int32")
            wv = T.alloc_local((rows * 8,), "int32")
            xv = T.alloc_local((8,), "int32")
            sx = T.alloc_local((1,), "int32")
            part = T.alloc_shared((warps, n_acc), "int32")
            a_tok = T.alloc_shared((tokens,), "float32")
            xw = T.alloc_local((tokens * steps * 8 if fused else 1,), "int32")
            if streamed:
                load_all(W4, S2, Z, W8, raw, meta, bx * chunk, tx)  # in flight during what follows
            if fused:
                xh = T.alloc_local((8,), x_dtype)
                amax_part = T.alloc_shared((tokens, warps), "float32")
                quantize_x(X, A, xw, xh, amax_part, a_tok, tx, bx, by)
            else:
                if tx < tokens:
                    a_tok[tx] = A[T.min(by * tokens + tx, m - 1)]
                T.sync_threads()
            for c in T.serial(chunk):
                rb = bx * chunk + c
                if rb < groups:
                    for i in T.unroll(n_acc):
                        acc[i] = 0
                    if streamed:
                        for step in T.unroll(steps):
                            kc = step * step_k + tx * K_PER_LANE
                            if kc < k:
                                dot_group(X, xw, raw, meta, acc, wv, xv, sx, rb, by, step, step, kc)
                        if c + 1 < chunk:
                            load_all(W4, S2, Z, W8, raw, meta, rb + 1, tx)  # in flight during the reduction
                    else:
                        for step in T.serial(steps):
                            kc = step * step_k + tx * K_PER_LANE
                            if kc < k:
                                load_group(W4, S2, Z, W8, raw, meta, rb, step, 0, kc)
                                dot_group(X, xw, raw, meta, acc, wv, xv, sx, rb, by, step, 0, kc)
                    reduce_and_store(acc, part, a_tok, I4, S4, I8, S8, Y, rb, tx, by)

    return main
