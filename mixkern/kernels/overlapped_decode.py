"""W4A8 + W8A8 on Hopper tensor cores with the int4 decode of K tile j + 1 running while the
tensor cores multiply tile j (progressive format, one launch for both precisions).

Why: in :mod:`.mixed_gemm` each consumer warpgroup decodes a tile, waits at a barrier, issues
its MMA and waits for it before decoding the next one (``T.Pipelined`` frees a stage when its
MMA is issued, so the MMA must be synchronous), and both precisions' loops cannot share
TileLang's warp specialization.  Here the pipeline is written out by hand, as in
:mod:`.overlapped_promotion`:

* a producer warpgroup issues TMA loads of the X tile and the packed-code (or int8) weight
  tile into a ``stages``-slot ring (``full`` barriers, transaction-counted), for either
  precision -- the two branches are two loops over the same kind of ring;
* each consumer warpgroup decodes its own ``block_n / warpgroups`` rows (FullCol) into one of
  two decoded buffers, issues the wgmma asynchronously, then waits only for the previous
  one (``wait_wgmma(1)``) and frees that one's ring slot (``empty``).  The accumulator is
  never read inside the loop, so ptxas keeps the wgmma asynchronous.

The int32 result and the epilogue are :mod:`.mixed_gemm`'s (bit-equal to the reference).
"""

import tilelang.language as T

from ..schedules import Schedule
from .int4_decode import DECODE_BARRIER, DECODE_SOURCE, int4_decode_tile
from .mixed_gemm import DTYPES, scaled_store

PRODUCER_THREADS = 128


def overlapped_decode_gemm(k: int, group_size: int, schedule: Schedule, out_dtype: str = "float16",
                           has4: bool = True, has8: bool = True):
    """TileLang prim_func with :func:`.mixed_gemm.mixed_gemm`'s launch arguments (no split-K)."""
    s = schedule
    bm, bn, bk, stages = s.block_m, s.block_n, s.block_k, s.stages
    if s.split_k != 1 or s.threads % 128 or bn % (64 * (s.threads // 128)) or bm % 64:
        raise ValueError(f"{s}: the overlapped decode needs split_k 1, 64-row token tiles and 64 weight rows a warpgroup")
    consumers = s.threads
    rows = bn // (consumers // 128)  # weight rows each consumer warpgroup decodes and multiplies
    m, n4, n8, n_total = T.dynamic("m"), T.dynamic("n4"), T.dynamic("n8"), T.dynamic("n_total")
    g, nk, out = k // group_size, k // bk, DTYPES[out_dtype]
    blocks4 = T.ceildiv(n4, bn) if has4 else 0
    blocks8 = T.ceildiv(n8, bn) if has8 else 0
    decode_tile = int4_decode_tile(bk, group_size, 128, rows)
    policy = T.GemmWarpPolicy.FullCol

    store = scaled_store(bm, bn, m, out)

    @T.macro
    def produce(X, Wt, X_s, W_s, full, empty, row0, by, packed):
        for j in T.serial(nk):
            T.mbarrier_wait_parity(empty[j % stages], (j // stages) % 2 ^ 1)
            T.tma_copy(X[by * bm:(by + 1) * bm, j * bk:(j + 1) * bk], X_s[j % stages, :, :], barrier=full[j % stages])
            kw = bk // 2 if packed else bk
            T.tma_copy(Wt[row0:row0 + bn, j * kw:(j + 1) * kw], W_s[j % stages, :, :], barrier=full[j % stages])
            T.barrier_arrive(full[j % stages])

    @T.macro
    def consume(X_s, W_s, D_s, S2, Z, acc, full, empty, row0, packed):
        """packed: decode tile j into D_s[j % 2] (last read by MMA j - 2, complete since iteration
        j - 1's wait) and multiply that; else multiply the int8 tile as it arrived."""
        group = T.get_thread_binding() // 128
        for j in T.serial(nk):
            T.mbarrier_wait_parity(full[j % stages], (j // stages) % 2)
            if packed:
                decode_tile(W_s, D_s, S2, Z, row0, j * bk, group, n4, (j % stages, j % 2))
                T.call_extern("handle", "mixkern_fence_decoded")
                T.sync_threads(DECODE_BARRIER + group, 128)
                T.wgmma_gemm(X_s[j % stages, :, :], D_s[j % 2, :, :], acc, transpose_B=True, policy=policy)
            else:
                T.wgmma_gemm(X_s[j % stages, :, :], W_s[j % stages, :, :], acc, transpose_B=True, policy=policy)
            T.wait_wgmma(1)
            if j > 0:
                T.barrier_arrive(empty[(j - 1) % stages])
        T.wait_wgmma(0)

    @T.prim_func
    def main(X: T.Tensor((m, k), "int8"), A: T.Tensor((m,), "float32"),
             W4: T.Tensor((n4, k // 2), "uint8"), S2: T.Tensor((n4, g), "uint8"), Z: T.Tensor((n4, g), "uint8"),
             S4: T.Tensor((n4,), "float32"), I4: T.Tensor((n4,), "int32"),
             W8: T.Tensor((n8, k), "int8"), S8: T.Tensor((n8,), "float32"), I8: T.Tensor((n8,), "int32"),
             Y: T.Tensor((m, n_total), out)):
        with T.Kernel(blocks4 + blocks8, T.ceildiv(m, bm), threads=consumers + PRODUCER_THREADS) as (bx, by):
            T.import_source(DECODE_SOURCE)
            X_s = T.alloc_shared((stages, bm, bk), "int8")
            acc = T.alloc_fragment((bm, bn), "int32")
            full = T.alloc_barrier([PRODUCER_THREADS] * stages)
            empty = T.alloc_barrier([consumers] * stages)
            tx = T.get_thread_binding()
            if has4 and (not has8 or bx < blocks4):
                P_s = T.alloc_shared((stages, bn, bk // 2), "uint8")
                D_s = T.alloc_shared((2, bn, bk), "int8")
                if tx >= consumers:
                    produce(X, W4, X_s, P_s, full, empty, bx * bn, by, True)
                else:
                    T.clear(acc)
                    consume(X_s, P_s, D_s, S2, Z, acc, full, empty, bx * bn, True)
                    store(acc, A, S4, I4, Y, None, n4, bx * bn, 0, by)
            else:
                W_s = T.alloc_shared((stages, bn, bk), "int8")
                if tx >= consumers:
                    produce(X, W8, X_s, W_s, full, empty, (bx - blocks4) * bn, by, False)
                else:
                    T.clear(acc)
                    consume(X_s, W_s, None, None, None, acc, full, empty, 0, False)
                    store(acc, A, S8, I8, Y, None, n8, (bx - blocks4) * bn, 0, by)

    return main
