"""The int4 -> int8 decode of a shared-memory tile, for the tensor-core kernels: step one of
the two-step dequantization (codes become int8 in shared memory before the MMA reads them).

Each thread takes 32 packed codes (16 bytes, always inside one group) and writes two
16-byte chunks of the decoded tile with word arithmetic: ``w & 0x0F0F0F0F`` is four codes as
bytes, one 32-bit multiply by ``s2 <= 16`` scales all four without carries (``15 * 16 <
256``), and a carry-free byte subtraction of ``z * s2`` gives the int8 weights, bit-equal to
the reference's ``int8((q - z) * s2)``.  The mixllm format decodes ``q - z`` (``s2 = 1``).
"""

import tilelang.language as T

CODES_PER_THREAD = 32  # one 16-byte load of packed codes; always inside one group
DECODE_BARRIER = 7  # named barriers 7.. : one per group of consumer threads that decode together

DECODE_SOURCE = r"""
// Carry-free byte subtraction: each byte of the result is (a - b) mod 256.
__device__ __forceinline__ unsigned mixkern_sub_bytes(unsigned a, unsigned b) {
  return ((a | 0x80808080u) - (b & 0x7F7F7F7Fu)) ^ ((a ^ ~b) & 0x80808080u);
}

// 16 packed codes (two words, word-interleaved, mixkern.packing) -> 16 int8 weights (q - z) * s2
// in K order, stored as one 16-byte chunk (a whole chunk of any swizzled shared layout).
__device__ __forceinline__ void mixkern_decode16(const void* packed, void* out, int s2, int z) {
  const uint2 w = *reinterpret_cast<const uint2*>(packed);
  const unsigned zs = (unsigned)(z * s2) * 0x01010101u;
  const unsigned m = (unsigned)s2;
  uint4 r;
  r.x = mixkern_sub_bytes((w.x & 0x0F0F0F0Fu) * m, zs);
  r.y = mixkern_sub_bytes(((w.x >> 4) & 0x0F0F0F0Fu) * m, zs);
  r.z = mixkern_sub_bytes((w.y & 0x0F0F0F0Fu) * m, zs);
  r.w = mixkern_sub_bytes(((w.y >> 4) & 0x0F0F0F0Fu) * m, zs);
  *reinterpret_cast<uint4*>(out) = r;
}

// Make this thread's decoded stores visible to the tensor core's async proxy (wgmma reads
// shared memory through it); Ampere's mma.sync reads through ldmatrix and needs no fence.
__device__ __forceinline__ void mixkern_fence_decoded() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
"""


def tile_groups(bk: int, group_size: int) -> int:
    """Weight groups one K tile spans (1 when a group is at least a tile long)."""
    return max(1, bk // group_size)


def int4_decode_tile(bk: int, group_size: int, group_threads: int, group_rows: int, unit_scale: bool = False,
                     staged_scales: bool = False):
    """A macro decoding one (rows, bk) tile of packed codes P_s into int8 W_s, for the
    ``group_rows`` rows of consumer group ``group`` (``group_threads`` threads, 32 codes each
    per pass).  ``unit_scale``: weights are ``q - z`` (mixllm; S2 is not read).  P_s and W_s
    may be rings of tiles, (slots, rows, ...): then ``slots`` = (slot of P_s, slot of W_s).
    ``staged_scales``: S2 and Z are the tile's scales already in shared memory, (P_s's slots,
    :func:`tile_groups`, tile rows) -- no global load waits inside the decode; else they are
    the layer's (n4, K / group) arrays in global memory."""
    chunks = group_rows * bk // CODES_PER_THREAD

    @T.macro
    def decode_tile(P_s, W_s, S2, Z, n_base, k0, group, n4, slots=None):
        ring_p, ring_w = ((), ()) if slots is None else ((slots[0],), (slots[1],))  # leading ring index, if any
        tx = T.get_thread_binding() % group_threads
        for p in T.serial(T.ceildiv(chunks, group_threads)):
            c = p * group_threads + tx
            i = group * group_rows + c // (bk // CODES_PER_THREAD)
            j = (c % (bk // CODES_PER_THREAD)) * CODES_PER_THREAD
            if staged_scales:  # this chunk's group scale and zero point
                at = (*ring_p, j // group_size, i)
            else:
                at = (T.min(n_base + i, n4 - 1), (k0 + j) // group_size)
            s2 = T.int32(1) if unit_scale else T.Cast("int32", S2[at])
            if c < chunks:
                for h in T.unroll(2):  # two 16-byte chunks: each stays contiguous under any swizzle
                    T.call_extern("handle", "mixkern_decode16", T.address_of(P_s[(*ring_p, i, j // 2 + h * 8)]),
                                  T.address_of(W_s[(*ring_w, i, j + h * 16)]), s2, T.Cast("int32", Z[at]))

    return decode_tile


def consumer_groups(threads: int, bn: int, wgmma: bool) -> tuple[int, int, int]:
    """(groups, threads per group, rows per group) of the decoding threads.  With wgmma, each
    warpgroup multiplies its own block_n / warpgroups weight rows (FullCol policy) and decodes
    exactly those: warpgroups then sync only among themselves, and one warpgroup's decode
    overlaps another's MMA.  Otherwise all threads decode all rows."""
    groups = threads // 128 if wgmma and bn % (64 * (threads // 128)) == 0 else 1
    return groups, threads // groups, bn // groups


def stage_scales(bn: int, bk: int, group_size: int, unit_scale: bool = False):
    """A macro for a producer warpgroup: the group scales (unless ``unit_scale``) and zero points of
    tile rows row0.. at K offset k0 into slot ``slot`` of S2_s / Z_s (slots, :func:`tile_groups`,
    bn), plain loads (the rows are strided in memory); the producer's arrive on the slot's
    barrier then publishes them to the consumers that wait on it."""

    @T.macro
    def stage(S2, Z, S2_s, Z_s, slot, row0, k0, n4):
        for t in T.serial(tile_groups(bk, group_size)):
            for c in T.Parallel(bn):
                n = T.min(row0 + c, n4 - 1)
                if not unit_scale:
                    S2_s[slot, t, c] = S2[n, k0 // group_size + t]
                Z_s[slot, t, c] = Z[n, k0 // group_size + t]

    return stage
