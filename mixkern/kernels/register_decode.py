"""W4A8 + W8A8 on Hopper for 9 to 1024 tokens (progressive format): the weights are the wgmma's A
operand, decoded from shared memory straight into registers; the tokens are its N (swap AB), 16 to
256 of them a block.

Why: the overlapped decode (:mod:`.overlapped_decode`) puts tokens on the MMA's M side, so 16
tokens fill a 64-row wgmma a quarter, and every K step runs decode -> shared store -> proxy
fence -> named barrier -> wgmma from shared memory: at 16-64 tokens ncu finds that chain, not
memory or the tensor cores, bounding the kernel (docs/kernels.md, stop 32).  Here each
consumer thread loads the packed codes of exactly the A-fragment elements it owns (one
16-byte load per row and K tile), decodes them in registers and hands them to
``wgmma.mma_async`` (register A, shared B): no decoded tile in shared memory, no fence, no
barrier between the warps.

The fragment's K order: wgmma's A fragment gives lane ``t`` (of four per row) the 4-byte runs
at ``4t`` and ``16 + 4t`` of each 32-wide K atom, but the packed layout (:mod:`mixkern.packing`)
puts codes ``32t .. 32t + 31`` of a 128-wide K window in the 16 bytes at ``16t``.  Rather than
repack the weights, the activations are permuted to match, inside each 128-wide window
(:func:`logical_word`): a dot product does not care in which order its K terms come, so long as
A and B agree.  The activation quantization writes X in that order
(:func:`.act_quant.act_quant`, ``register_order``).

The producer warpgroup and its ring follow :mod:`.overlapped_decode` (here with the scales
prefetched and K slices that may differ by a tile); the epilogue is
:func:`.mixed_gemm.tile_store` on the transposed accumulator.
"""

import tilelang.language as T

from ..schedules import Schedule
from .int4_decode import DECODE_SOURCE, tile_groups
from .mixed_gemm import DTYPES, launch_entry, tile_store

PRODUCER_THREADS = 128
WINDOW = 128  # the K tile, and the span inside which X is permuted
ROWS_PER_WARPGROUP = 64  # one m64 wgmma atom of weight rows per consumer warpgroup
SCALE_PREFETCH = 4  # K tiles ahead that the producer loads the 4-bit rows' scales and zero points
PRODUCER_REGS, CONSUMER_REGS = 40, 232  # setmaxnreg for token tiles of REBALANCE_MIN_TOKENS on two consumer warpgroups:
REBALANCE_MIN_TOKENS = 256  # 128 int32 accumulators a thread spill at the even 168, and ptxas then serializes every wgmma


def _rebalanced(s: Schedule) -> bool:
    """Whether the producer warpgroup hands registers to the consumers (``setmaxnreg``)."""
    return s.block_m >= REBALANCE_MIN_TOKENS and s.threads == 256

REGISTER_DECODE_SOURCE = DECODE_SOURCE + r"""
// Thread t's 16 packed bytes of one weight row's 128-wide K window (codes 32t .. 32t + 31,
// mixkern.packing's word-interleaved chunks) -> its A-fragment registers of that row: physical
// word v = 2q + high of the window becomes atom q's run `high` (registers 4q + 2 * high + half;
// `half` 1 for the fragment's second row, g + 8), each byte (code - z) * s2.
__device__ __forceinline__ void mixkern_decode_regs(const void* packed, void* frag, int half, int s2, int z) {
  const uint4 w = *reinterpret_cast<const uint4*>(packed);
  unsigned* r = reinterpret_cast<unsigned*>(frag);
  const unsigned zs = (unsigned)(z * s2) * 0x01010101u;
  const unsigned m = (unsigned)s2;
  const unsigned words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    r[4 * q + half] = mixkern_sub_bytes((words[q] & 0x0F0F0F0Fu) * m, zs);
    r[4 * q + 2 + half] = mixkern_sub_bytes(((words[q] >> 4) & 0x0F0F0F0Fu) * m, zs);
  }
}

// The same for an int8 row: thread t's 32 bytes (K 32t .. 32t + 31 of the window), no decode.
__device__ __forceinline__ void mixkern_copy_regs(const void* row, void* frag, int half) {
  const uint4 lo = reinterpret_cast<const uint4*>(row)[0];
  const uint4 hi = reinterpret_cast<const uint4*>(row)[1];
  unsigned* r = reinterpret_cast<unsigned*>(frag);
  r[0 + half] = lo.x; r[2 + half] = lo.y; r[4 + half] = lo.z; r[6 + half] = lo.w;
  r[8 + half] = hi.x; r[10 + half] = hi.y; r[12 + half] = hi.z; r[14 + half] = hi.w;
}

// Keeps a fragment's 16 registers live up to here.  wgmma reads its register A operand
// asynchronously, until a wgmma.wait_group covers it, but ptxas counts the fragment dead once
// the wgmma is issued: it gave both fragments the same registers, and tile j + 1's decode
// overwrote tile j's operand while that wgmma still read it.  An empty asm is invisible to
// ptxas, so this is a real read: a 16-way xor, stored only if the block had no dynamic shared
// memory (it always has: X_s lives there), a condition ptxas cannot fold.
__device__ __forceinline__ void mixkern_hold_regs(const void* frag, void* sink) {
  const unsigned* r = reinterpret_cast<const unsigned*>(frag);
  unsigned x = 0, smem;
#pragma unroll
  for (int i = 0; i < 16; ++i) x ^= r[i];
  asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(smem));
  if (smem == 0) *reinterpret_cast<volatile unsigned*>(sink) = x;
}
"""


def logical_word(physical: int) -> int:
    """Where X's 4-byte word ``physical`` of a 128-wide K window goes (the fragment's K order):
    physical word ``8t + 2s + h`` (lane t's run, atom s, half h) is the MMA's word ``8s + 4h + t``."""
    t, s, h = physical // 8, (physical // 2) % 4, physical % 2
    return 8 * s + 4 * h + t


def fragment_thread(i, j):
    """The thread holding element (row i, K j) of wgmma's int8 register A fragment: warps stacked
    along the rows (16 each), lane ``4g + t`` holding rows g and g + 8 at K runs ``4t`` and
    ``16 + 4t`` of each 32-wide atom (PTX ISA, wgmma register fragments)."""
    return i // 16 * 32 + i % 8 * 4 + j % 16 // 4


def fragment_byte(i, j):
    """Where that thread keeps it: byte ``4r + j % 4`` of its registers, r = 2 * (j // 16) + (i % 16) // 8."""
    return j // 16 * 8 + i % 16 // 8 * 4 + j % 4


def fragment_layout(rows: int, bk: int):
    """The fragment as a TileLang layout.  Stated here because the decode writes the registers
    by hand; TileLang's own inference for the wgmma must agree, or the build stops with a
    layout conflict."""
    return T.Fragment((rows, bk), forward_thread_fn=fragment_thread, forward_index_fn=fragment_byte)


def check(k: int, group_size: int, schedule: Schedule) -> None:
    """Raise ValueError where this kernel cannot run (schedule kind, group size, K slices, tile shape)."""
    s = schedule
    if not s.register_a or group_size % 32:
        raise ValueError(f"{s}: the register-decode kernel runs register_a schedules and groups of a multiple of 32")
    s.check(k, group_size)


def _producer(s: Schedule, group_size: int, k: int):
    """Per K tile j, slot j % stages: the X tile and the weight tile by TMA, and for packed codes
    the tile's group scales and zero points, one weight row a producer thread.  Those are
    strided bytes (no TMA), so each thread loads them :data:`SCALE_PREFETCH` tiles ahead into
    registers and stores tile j's into the slot before arriving on its ``full`` barrier (which
    publishes them): a load waited on in the tile that uses it set the pace at ~0.5 us a tile
    on the H100, and staging a whole K slice's up front took one latency per byte loaded."""
    bt, bw, bk, stages = s.block_m, s.block_n, s.block_k, s.stages
    per_slice, groups, ahead = s.slice_tiles(k), tile_groups(bk, group_size), SCALE_PREFETCH

    @T.macro
    def prefetch(S2, Z, s2v, zv, at, row, tile, nk):
        """Tile ``tile``'s scales of ``row`` into register slot ``at`` (none past the slice)."""
        if tile < nk:
            for t in T.unroll(groups):
                s2v[at * groups + t] = S2[row, tile * groups + t]
                zv[at * groups + t] = Z[row, tile * groups + t]

    @T.macro
    def produce(X, Wt, S2, Z, X_s, W_s, S2_s, Z_s, full, empty, row0, rows, by, bz, nk, packed):
        if _rebalanced(s):
            T.dec_max_nreg(PRODUCER_REGS)
        p = T.get_thread_binding() % PRODUCER_THREADS
        first = bz * per_slice  # the slice's first K tile
        if packed:
            s2v = T.alloc_local((ahead * groups,), "uint8")
            zv = T.alloc_local((ahead * groups,), "uint8")
            for d in T.unroll(ahead):
                prefetch(S2, Z, s2v, zv, d, T.min(row0 + p, rows - 1), first + d, first + nk)
        for j in T.serial(nk):
            k0 = (first + j) * bk
            T.mbarrier_wait_parity(empty[j % stages], (j // stages) % 2 ^ 1)
            T.tma_copy(X[by * bt:(by + 1) * bt, k0:k0 + bk], X_s[j % stages, :, :], barrier=full[j % stages])
            kw, w0 = (bk // 2, k0 // 2) if packed else (bk, k0)
            T.tma_copy(Wt[row0:row0 + bw, w0:w0 + kw], W_s[j % stages, :, :], barrier=full[j % stages])
            if packed:
                if p < bw:
                    for t in T.unroll(groups):
                        S2_s[j % stages, t, p] = s2v[t]
                        Z_s[j % stages, t, p] = zv[t]
                for d in T.unroll(ahead - 1):
                    for t in T.unroll(groups):
                        s2v[d * groups + t] = s2v[(d + 1) * groups + t]
                        zv[d * groups + t] = zv[(d + 1) * groups + t]
                prefetch(S2, Z, s2v, zv, ahead - 1, T.min(row0 + p, rows - 1), first + j + ahead, first + nk)
            T.barrier_arrive(full[j % stages])

    return produce


def _consumer(s: Schedule, group_size: int):
    """Clear the accumulator (after taking the registers the producer gave back, for
    :func:`_rebalanced` tiles), then per K tile j: wait for slot j % stages, fill register fragment j % 2 with this thread's two
    rows (decoded or copied), issue the wgmma on it and the slot's X tile, then wait for the one
    before, hold its fragment up to there (``mixkern_hold_regs``: else ptxas reuses its registers
    while that wgmma still reads them) and free its slot.  The loop body runs two tiles, one per
    fragment, so each fragment is written by its own decode code."""
    bk, stages = s.block_k, s.stages
    per_group = min(group_size, bk)  # K of one scale inside a tile
    policy = T.GemmWarpPolicy.FullRow

    @T.macro
    def fill(W_s, S2_s, Z_s, frag, j, packed):
        tx = T.get_thread_binding()
        row, t = tx // 32 * 16 + tx % 32 // 4, tx % 4
        for half in T.unroll(2):
            if packed:
                g = 32 * t // per_group  # the tile's group of this thread's 32 codes
                T.call_extern("handle", "mixkern_decode_regs", T.address_of(W_s[j % stages, row + 8 * half, 16 * t]),
                              T.address_of(frag[0, 0]), half, T.Cast("int32", S2_s[j % stages, g, row + 8 * half]),
                              T.Cast("int32", Z_s[j % stages, g, row + 8 * half]))
            else:
                T.call_extern("handle", "mixkern_copy_regs", T.address_of(W_s[j % stages, row + 8 * half, 32 * t]),
                              T.address_of(frag[0, 0]), half)

    @T.macro
    def step(X_s, W_s, S2_s, Z_s, frag, other, acc, full, empty, j, packed):
        """Tile j into ``frag``; then tile j - 1's wgmma (on ``other``) is done: hold ``other``
        to here and free its slot."""
        T.mbarrier_wait_parity(full[j % stages], (j // stages) % 2)
        fill(W_s, S2_s, Z_s, frag, j, packed)
        T.wgmma_gemm(frag, X_s[j % stages, :, :], acc, transpose_B=True, policy=policy)
        T.wait_wgmma(1)
        if j > 0:
            T.call_extern("handle", "mixkern_hold_regs", T.address_of(other[0, 0]), T.address_of(X_s[0, 0, 0]))
            T.barrier_arrive(empty[(j - 1) % stages])

    @T.macro
    def consume(X_s, W_s, S2_s, Z_s, frag0, frag1, acc, full, empty, nk, packed):
        if _rebalanced(s):
            T.inc_max_nreg(CONSUMER_REGS)
        T.clear(acc)
        for jj in T.serial(T.ceildiv(nk, 2)):  # two tiles an iteration, so each fragment has its own decode
            step(X_s, W_s, S2_s, Z_s, frag0, frag1, acc, full, empty, 2 * jj, packed)
            if 2 * jj + 1 < nk:
                step(X_s, W_s, S2_s, Z_s, frag1, frag0, acc, full, empty, 2 * jj + 1, packed)
        T.wait_wgmma(0)

    return consume


def register_decode_gemm(k: int, group_size: int, schedule: Schedule, out_dtype: str = "float16",
                         has4: bool = True, has8: bool = True):
    """TileLang prim_func with :func:`.mixed_gemm.mixed_gemm`'s launch arguments, X in the
    fragment's K order (:func:`logical_word`); ``block_m`` tiles tokens (the MMA's N),
    ``block_n`` = 64 weight rows a consumer warpgroup (its M)."""
    check(k, group_size, schedule)
    s = schedule
    bt, bw, bk, stages, consumers = s.block_m, s.block_n, s.block_k, s.stages, s.threads
    dims = m, n4, n8, _ = T.dynamic("m"), T.dynamic("n4"), T.dynamic("n8"), T.dynamic("n_total")
    per_slice, tiles = s.slice_tiles(k), k // bk
    blocks4 = T.ceildiv(n4, bw) if has4 else 0
    blocks8 = T.ceildiv(n8, bw) if has8 else 0
    produce = _producer(s, group_size, k)
    consume = _consumer(s, group_size)
    store = tile_store(bt, bw, m, DTYPES[out_dtype], s.split_k > 1, consumers, transposed=True)

    @T.macro
    def body(X, A, W4, S2, Z, S4, I4, W8, S8, I8, Y, Acc):
        with T.Kernel(blocks4 + blocks8, T.ceildiv(m, bt), s.split_k,
                      threads=consumers + PRODUCER_THREADS) as (bx, by, bz):
            T.import_source(REGISTER_DECODE_SOURCE)
            X_s = T.alloc_shared((stages, bt, bk), "int8")
            frag0 = T.alloc_fragment((bw, bk), "int8")
            frag1 = T.alloc_fragment((bw, bk), "int8")
            acc = T.alloc_fragment((bw, bt), "int32")
            T.annotate_layout({frag0: fragment_layout(bw, bk), frag1: fragment_layout(bw, bk)})
            full = T.alloc_barrier([PRODUCER_THREADS] * stages)
            empty = T.alloc_barrier([consumers] * stages)
            tx = T.get_thread_binding()
            nk = T.min(per_slice, tiles - bz * per_slice)  # this K slice's tiles (the last may be short)
            if has4 and (not has8 or bx < blocks4):
                P_s = T.alloc_shared((stages, bw, bk // 2), "uint8")
                S2_s = T.alloc_shared((stages, tile_groups(bk, group_size), bw), "uint8")
                Z_s = T.alloc_shared((stages, tile_groups(bk, group_size), bw), "uint8")
                if tx >= consumers:
                    produce(X, W4, S2, Z, X_s, P_s, S2_s, Z_s, full, empty, bx * bw, n4, by, bz, nk, True)
                else:
                    consume(X_s, P_s, S2_s, Z_s, frag0, frag1, acc, full, empty, nk, True)
                    store(acc, A, S4, I4, Y, Acc, n4, bx * bw, 0, by)
            else:
                W_s = T.alloc_shared((stages, bw, bk), "int8")
                if tx >= consumers:
                    produce(X, W8, None, None, X_s, W_s, None, None, full, empty, (bx - blocks4) * bw, n8, by, bz, nk,
                            False)
                else:
                    consume(X_s, W_s, None, None, frag0, frag1, acc, full, empty, nk, False)
                    store(acc, A, S8, I8, Y, Acc, n8, (bx - blocks4) * bw, n4 if has4 else 0, by)

    return launch_entry(body, k, group_size, out_dtype, s.split_k > 1, dims)
