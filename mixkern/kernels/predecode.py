"""Step one of the two-step dequantization for a whole layer at once, for long prompts: every
row becomes int8 in a workspace (4-bit rows decoded, 8-bit rows copied), each written to its
original output feature's row.

Why: at M >= ~1024 tokens the GEMM is compute-bound, and a decode inside the GEMM's K loop
stalls the tensor cores (it runs between the tile's arrival and its MMA, once per token tile).
Decoding once per call costs ~1.5 bytes of traffic per weight (half a byte read, one written,
~35 us for a 14336 x 4096 layer on an H100) and leaves the tensor cores a plain int8 GEMM
over all N rows: one precision, full pipeline stages, warp specialization. Writing rows in
their original order also folds away the output permutation (the GEMM's columns are the
output's). The int8 weights are exactly the ones the in-loop decode produces
(:mod:`.int4_decode`'s ``mixkern_decode16``), so the result is bit-equal either way.

vLLM's AWQ layer makes the same trade (dequantize, then a dense GEMM, above 256 tokens);
here the dense GEMM stays int8.
"""

import tilelang.language as T

from .int4_decode import CODES_PER_THREAD, DECODE_SOURCE

THREADS = 256
PASSES = 4  # 32-code chunks per thread per block
COPY_SOURCE = r"""
// 32 int8 weights, two 16-byte chunks, from one row to another.
__device__ __forceinline__ void mixkern_copy32(const void* src, void* dst) {
  const uint4* s = reinterpret_cast<const uint4*>(src);
  uint4* d = reinterpret_cast<uint4*>(dst);
  d[0] = s[0];
  d[1] = s[1];
}
"""


def rows_per_block(k: int) -> int:
    """Rows one block covers: :data:`PASSES` chunks of 32 codes per thread (unrolled, so a
    thread has its loads in flight together), at least one row."""
    return max(1, THREADS * PASSES * CODES_PER_THREAD // k)


def predecode(k: int, group_size: int, unit_scale: bool, has4: bool = True, has8: bool = True):
    """TileLang prim_func: Wd[I4[n]] = int8((q - z) * s2) for every 4-bit row n (``unit_scale``:
    q - z, the mixllm format), Wd[I8[n]] = W8[n] for every 8-bit row, and each row's float
    scales moved to its output feature: progressive Sd[I[n]] = S[n] (fp32 row scales);
    mixllm Sd[j, I[n]] = fp32(S[n, j]) (fp16 group scales, K-major, for :mod:`.int8_gemm`).

    Launch arguments, in the tensor-core kernels' order: progressive W4 packed uint8 (n4, K/2),
    S2 uint8 (n4, K/group), Z uint8 (n4, K/group), S4 fp32 (n4,), I4 int32 (n4,), W8 int8
    (n8, K), S8 fp32 (n8,), I8 int32 (n8,), Wd int8 (n_total, K), Sd fp32 (n_total,); mixllm
    W4, Z, S4 fp16 (n4, K/group), I4, W8, S8 fp16 (n8, K/group), I8, Wd, Sd fp32
    (K/group, n_total).  An absent precision is a one-row placeholder, as in the GEMMs.
    """
    if not (has4 or has8):
        raise ValueError("predecode needs 4-bit rows, 8-bit rows, or both")
    if k % CODES_PER_THREAD or group_size % CODES_PER_THREAD:
        raise ValueError(f"predecode needs K and group_size multiples of {CODES_PER_THREAD}, got {k}, {group_size}")
    n4, n8, n_total = T.dynamic("n4"), T.dynamic("n8"), T.dynamic("n_total")
    g, chunks_per_row = k // group_size, k // CODES_PER_THREAD
    rows = rows_per_block(k)
    chunks = rows * chunks_per_row
    blocks4 = T.ceildiv(n4, rows) if has4 else 0
    blocks8 = T.ceildiv(n8, rows) if has8 else 0

    @T.macro
    def move_scale(S, Sd, n, dst, j):
        """The row's scale(s), by the thread at the start of each weight group (mixllm) or row."""
        if unit_scale:
            if j % group_size == 0:
                Sd[j // group_size, dst] = T.Cast("float32", S[n, j // group_size])
        elif j == 0:
            Sd[dst] = S[n]

    @T.macro
    def body(W4, Z, S2, S4, I4, W8, S8, I8, Wd, Sd):
        with T.Kernel(blocks4 + blocks8, threads=THREADS) as bx:
            T.import_source(DECODE_SOURCE + COPY_SOURCE)
            tx = T.get_thread_binding()
            for p in T.unroll(T.ceildiv(chunks, THREADS)):
                c = p * THREADS + tx
                i = c // chunks_per_row
                j = (c % chunks_per_row) * CODES_PER_THREAD
                if has4 and (not has8 or bx < blocks4):
                    n = bx * rows + i
                    if c < chunks and n < n4:
                        grp = j // group_size
                        s2 = T.int32(1) if unit_scale else T.Cast("int32", S2[n, grp])
                        for h in T.unroll(2):
                            T.call_extern("handle", "mixkern_decode16", T.address_of(W4[n, j // 2 + h * 8]),
                                          T.address_of(Wd[I4[n], j + h * 16]), s2, T.Cast("int32", Z[n, grp]))
                        move_scale(S4, Sd, n, I4[n], j)
                else:
                    n = (bx - blocks4) * rows + i
                    if c < chunks and n < n8:
                        T.call_extern("handle", "mixkern_copy32", T.address_of(W8[n, j]), T.address_of(Wd[I8[n], j]))
                        move_scale(S8, Sd, n, I8[n], j)

    if unit_scale:
        @T.prim_func
        def main(W4: T.Tensor((n4, k // 2), "uint8"), Z: T.Tensor((n4, g), "uint8"), S4: T.Tensor((n4, g), "float16"),
                 I4: T.Tensor((n4,), "int32"), W8: T.Tensor((n8, k), "int8"), S8: T.Tensor((n8, g), "float16"),
                 I8: T.Tensor((n8,), "int32"), Wd: T.Tensor((n_total, k), "int8"), Sd: T.Tensor((g, n_total), "float32")):
            body(W4, Z, None, S4, I4, W8, S8, I8, Wd, Sd)
    else:
        @T.prim_func
        def main(W4: T.Tensor((n4, k // 2), "uint8"), S2: T.Tensor((n4, g), "uint8"), Z: T.Tensor((n4, g), "uint8"),
                 S4: T.Tensor((n4,), "float32"), I4: T.Tensor((n4,), "int32"), W8: T.Tensor((n8, k), "int8"),
                 S8: T.Tensor((n8,), "float32"), I8: T.Tensor((n8,), "int32"), Wd: T.Tensor((n_total, k), "int8"),
                 Sd: T.Tensor((n_total,), "float32")):
            body(W4, Z, S2, S4, I4, W8, S8, I8, Wd, Sd)
    return main
