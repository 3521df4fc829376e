"""W4A8 + W8A8 on Hopper tensor cores with the int4 decode of K tile j + 1 running while the
tensor cores multiply tile j (progressive format, one launch for both precisions).

Why: in :mod:`.mixed_gemm` each consumer warpgroup decodes a tile, waits at a barrier, issues
its MMA and waits for it before decoding the next one (``T.Pipelined`` frees a stage when its
MMA is issued, so the MMA must be synchronous), and both precisions' loops cannot share
TileLang's warp specialization.  Here the pipeline is written out by hand, as in
:mod:`.overlapped_promotion`:

* a producer warpgroup issues TMA loads of the X tile and the packed-code (or int8) weight
  tile into a ``stages``-slot ring (``full`` barriers, transaction-counted), for either
  precision -- the two branches are two loops over the same kind of ring -- and stages the
  4-bit tile's group scales and zero points beside it (plain loads: a decode that read them
  from global memory stalled on each tile, ncu);
* each consumer warpgroup decodes its own ``block_n / warpgroups`` rows (FullCol) into one of
  two decoded buffers, issues the wgmma asynchronously, then waits only for the previous
  one (``wait_wgmma(1)``) and frees that one's ring slot (``empty``).  The accumulator is
  never read inside the loop, so ptxas keeps the wgmma asynchronous.

The int32 result and the epilogue are :mod:`.mixed_gemm`'s (bit-equal to the reference),
split-K included: with ``split_k > 1`` grid z walks K slices and each adds its int32 partial
into the workspace (exact atomics), so a layer with few weight tiles (N = 4096) still fills
the GPU.  The 4-bit and 8-bit branches' buffers overlap in shared memory (a block runs one
branch; ``launch._pass_configs``), so a 64 x 128 block takes 97 KB and two fit on an SM
(:func:`blocks_per_sm`).
"""

import tilelang.language as T

from ..schedules import Schedule
from .int4_decode import DECODE_BARRIER, DECODE_SOURCE, int4_decode_tile, stage_scales, tile_groups
from .mixed_gemm import DTYPES, launch_entry, tile_store

PRODUCER_THREADS = 128
SM_SHARED_BYTES = 228 * 1024  # an H100 SM's shared memory, 1 KB of it reserved per resident block


def blocks_per_sm(schedule: Schedule, has4: bool, has8: bool) -> int:
    """Blocks of this kernel an SM can hold by shared memory (1 or 2), which ptxas is asked to
    keep to (85 registers a thread for two)."""
    return 2 if 2 * (schedule.shared_bytes(has4, has8) + 2 * 1024) <= SM_SHARED_BYTES else 1


def overlapped_decode_gemm(k: int, group_size: int, schedule: Schedule, out_dtype: str = "float16",
                           has4: bool = True, has8: bool = True):
    """TileLang prim_func with :func:`.mixed_gemm.mixed_gemm`'s launch arguments (split-K: the
    int32 workspace in place of Y)."""
    s = schedule
    bm, bn, bk, stages = s.block_m, s.block_n, s.block_k, s.stages
    if s.threads % 128 or bn % (64 * (s.threads // 128)) or bm % 64 or k % (bk * s.split_k):
        raise ValueError(f"{s}: the overlapped decode needs 64-row token tiles, 64 weight rows a warpgroup "
                         f"and K = {k} a multiple of block_k * split_k")
    consumers = s.threads
    rows = bn // (consumers // 128)  # weight rows each consumer warpgroup decodes and multiplies
    dims = m, n4, n8, _ = T.dynamic("m"), T.dynamic("n4"), T.dynamic("n8"), T.dynamic("n_total")
    nk, k_split, out = k // (bk * s.split_k), k // s.split_k, DTYPES[out_dtype]
    blocks4 = T.ceildiv(n4, bn) if has4 else 0
    blocks8 = T.ceildiv(n8, bn) if has8 else 0
    decode_tile = int4_decode_tile(bk, group_size, 128, rows, staged_scales=True)
    stage = stage_scales(bn, bk, group_size)
    policy = T.GemmWarpPolicy.FullCol

    store = tile_store(bm, bn, m, out, s.split_k > 1, consumers)

    @T.macro
    def produce(X, Wt, S2, Z, X_s, W_s, S2_s, Z_s, full, empty, row0, by, bz, packed):
        """Slot j % stages: the X tile and the weight tile by TMA; for packed codes also their
        group scales and zero points (staged: the decode then reads only shared memory)."""
        for j in T.serial(nk):
            k0 = bz * k_split + j * bk
            T.mbarrier_wait_parity(empty[j % stages], (j // stages) % 2 ^ 1)
            T.tma_copy(X[by * bm:(by + 1) * bm, k0:k0 + bk], X_s[j % stages, :, :], barrier=full[j % stages])
            kw = bk // 2 if packed else bk
            w0 = k0 // 2 if packed else k0
            T.tma_copy(Wt[row0:row0 + bn, w0:w0 + kw], W_s[j % stages, :, :], barrier=full[j % stages])
            if packed:
                stage(S2, Z, S2_s, Z_s, j % stages, row0, k0, n4)
            T.barrier_arrive(full[j % stages])  # release: the scale stores above are seen by the waiters

    @T.macro
    def consume(X_s, W_s, D_s, S2_s, Z_s, acc, full, empty, bz, packed):
        """packed: decode tile j into D_s[j % 2] (last read by MMA j - 2, complete since iteration
        j - 1's wait) and multiply that; else multiply the int8 tile as it arrived."""
        group = T.get_thread_binding() // 128
        for j in T.serial(nk):
            T.mbarrier_wait_parity(full[j % stages], (j // stages) % 2)
            if packed:
                decode_tile(W_s, D_s, S2_s, Z_s, 0, bz * k_split + j * bk, group, n4, (j % stages, j % 2))
                T.call_extern("handle", "mixkern_fence_decoded")
                T.sync_threads(DECODE_BARRIER + group, 128)
                T.wgmma_gemm(X_s[j % stages, :, :], D_s[j % 2, :, :], acc, transpose_B=True, policy=policy)
            else:
                T.wgmma_gemm(X_s[j % stages, :, :], W_s[j % stages, :, :], acc, transpose_B=True, policy=policy)
            T.wait_wgmma(1)
            if j > 0:
                T.barrier_arrive(empty[(j - 1) % stages])
        T.wait_wgmma(0)

    @T.macro
    def body(X, A, W4, S2, Z, S4, I4, W8, S8, I8, Y, Acc):
        with T.Kernel(blocks4 + blocks8, T.ceildiv(m, bm), s.split_k,
                      threads=consumers + PRODUCER_THREADS) as (bx, by, bz):
            T.import_source(DECODE_SOURCE)
            T.annotate_min_blocks_per_sm(blocks_per_sm(s, has4, has8))
            X_s = T.alloc_shared((stages, bm, bk), "int8")
            acc = T.alloc_fragment((bm, bn), "int32")
            full = T.alloc_barrier([PRODUCER_THREADS] * stages)
            empty = T.alloc_barrier([consumers] * stages)
            tx = T.get_thread_binding()
            if has4 and (not has8 or bx < blocks4):
                P_s = T.alloc_shared((stages, bn, bk // 2), "uint8")
                D_s = T.alloc_shared((2, bn, bk), "int8")
                S2_s = T.alloc_shared((stages, tile_groups(bk, group_size), bn), "uint8")
                Z_s = T.alloc_shared((stages, tile_groups(bk, group_size), bn), "uint8")
                if tx >= consumers:
                    produce(X, W4, S2, Z, X_s, P_s, S2_s, Z_s, full, empty, bx * bn, by, bz, True)
                else:
                    T.clear(acc)
                    consume(X_s, P_s, D_s, S2_s, Z_s, acc, full, empty, bz, True)
                    store(acc, A, S4, I4, Y, Acc, n4, bx * bn, 0, by)
            else:
                W_s = T.alloc_shared((stages, bn, bk), "int8")
                if tx >= consumers:
                    produce(X, W8, None, None, X_s, W_s, None, None, full, empty, (bx - blocks4) * bn, by, bz, False)
                else:
                    T.clear(acc)
                    consume(X_s, W_s, None, None, None, acc, full, empty, bz, False)
                    store(acc, A, S8, I8, Y, Acc, n8, (bx - blocks4) * bn, n4 if has4 else 0, by)

    return launch_entry(body, k, group_size, out_dtype, s.split_k > 1, dims)
