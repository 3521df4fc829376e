"""The mixllm int8 GEMM over predecoded weights, Hopper only: each activation group's promotion
runs while the tensor cores multiply the next group.

Why: with a synchronous MMA the promotion ``acc = fmaf(fp32(p), a * s, acc)`` (a conversion
and two float ops per accumulator per 128 of K) and the MMA of one warpgroup take turns, and ncu
showed half the issue slots idle (docs/kernels.md).  Here each consumer warpgroup keeps two
int32 fragments: it issues group j + 1's wgmma into one (``T.wgmma_gemm``, no implicit wait),
promotes group j's from the other while that MMA runs, then waits (``T.wait_wgmma(0)``).
Waiting for all, not ``wait_wgmma(1)``, is deliberate: when the wgmma pipeline never drains
inside the loop, ptxas cannot tell which fragment is in flight and serializes every wgmma
(warning C7514); draining once per group keeps the overlap and the asynchrony.

The pipeline is written out by hand, because ``T.Pipelined`` frees a stage when its MMA is
issued, not when it completes: a producer warpgroup issues TMA loads of the operand tiles and
both scale rows into ``stages`` ring slots (``full`` barriers, transaction-counted); the
consumers release a slot (``empty`` barriers) only after the MMA that read it has completed
and its scales were used.  Tile 128 x block_n: two consumer warpgroups of 64 rows each, three
64 x block_n fragments a thread (two int32, one fp32), hence ``setmaxnreg``.

The promotion order and roundings are the format's (:mod:`.promote`): bit-equal to the
reference and to :mod:`.int8_gemm`'s synchronous kernel.
"""

import tilelang.language as T

from .mixed_gemm import DTYPES
from .promote import promote

BLOCK_M = 128  # two consumer warpgroups of 64 token rows
CONSUMERS = 256
PRODUCER_REGS, CONSUMER_REGS = 40, 232  # 128 * 40 + 256 * 232 <= 65,536
SWIZZLE_PANEL = 8
POLICY = T.GemmWarpPolicy.FullRow


def overlapped_promotion_gemm(k: int, block_n: int, stages: int, out_dtype: str = "float16", span: int = 128,
                              group_size: int = 128):
    """TileLang prim_func: Y (M, N) from int8 X (M, K), At fp32 (K/span, Mp) activation group
    scales K-major (Mp >= M, a multiple of 4: TMA rows of 16 bytes), predecoded int8 W (N, K)
    and St fp32 (K/group_size, N) weight group scales K-major."""
    if k % span:
        raise ValueError(f"K={k} is not a multiple of the activation group {span}")
    if block_n > 128:  # three (64, block_n) fragments a thread must fit CONSUMER_REGS
        raise ValueError(f"block_n={block_n}: the overlapped promotion holds at most 128 columns a tile")
    out = DTYPES[out_dtype]
    bm, bn, bk, groups = BLOCK_M, block_n, span, k // span
    m, n, mp = T.dynamic("m"), T.dynamic("n"), T.dynamic("mp")

    @T.macro
    def issue(j, acc, X_s, W_s, full):
        """Group j's MMA into a fresh fragment, not waited for."""
        T.mbarrier_wait_parity(full[j % stages], (j // stages) % 2)
        T.wgmma_gemm(X_s[j % stages, :, :], W_s[j % stages, :, :], acc, transpose_B=True,
                     clear_accum=True, policy=POLICY)

    @T.macro
    def retire(j, acc, acc_f, a_s, s_s, empty):
        """Group j's MMA has completed (waited for): promote it into acc_f and free its ring slot."""
        T.warpgroup_fence_operand(acc, num_regs=bm * bn // CONSUMERS)  # keep the reads after that wait
        for i, c in T.Parallel(bm, bn):
            acc_f[i, c] = promote(acc[i, c], a_s[j % stages, i], s_s[j % stages, c], acc_f[i, c])
        T.barrier_arrive(empty[j % stages])

    @T.prim_func
    def main(X: T.Tensor((m, k), "int8"), At: T.Tensor((groups, mp), "float32"), W: T.Tensor((n, k), "int8"),
             St: T.Tensor((k // group_size, n), "float32"), Y: T.Tensor((m, n), out)):
        with T.Kernel(T.ceildiv(n, bn), T.ceildiv(m, bm), threads=CONSUMERS + 128) as (bx, by):
            X_s = T.alloc_shared((stages, bm, bk), "int8")
            W_s = T.alloc_shared((stages, bn, bk), "int8")
            a_s = T.alloc_shared((stages, bm), "float32")
            s_s = T.alloc_shared((stages, bn), "float32")
            C_s = T.alloc_shared((bm, bn), out)
            acc0 = T.alloc_fragment((bm, bn), "int32")
            acc1 = T.alloc_fragment((bm, bn), "int32")
            acc_f = T.alloc_fragment((bm, bn), "float32")
            C_l = T.alloc_fragment((bm, bn), out)
            full = T.alloc_barrier([128] * stages)
            empty = T.alloc_barrier([CONSUMERS] * stages)
            tx = T.get_thread_binding()
            T.use_swizzle(SWIZZLE_PANEL)

            if tx >= CONSUMERS:
                T.set_max_nreg(PRODUCER_REGS, 0)
                for j in T.serial(groups):
                    T.mbarrier_wait_parity(empty[j % stages], (j // stages) % 2 ^ 1)
                    T.tma_copy(X[by * bm:(by + 1) * bm, j * bk:(j + 1) * bk], X_s[j % stages, :, :],
                               barrier=full[j % stages])
                    T.tma_copy(W[bx * bn:(bx + 1) * bn, j * bk:(j + 1) * bk], W_s[j % stages, :, :],
                               barrier=full[j % stages])
                    T.tma_copy(At[j, by * bm:(by + 1) * bm], a_s[j % stages, :], barrier=full[j % stages])
                    T.tma_copy(St[j * span // group_size, bx * bn:(bx + 1) * bn], s_s[j % stages, :],
                               barrier=full[j % stages])
                    T.barrier_arrive(full[j % stages])
            else:
                T.set_max_nreg(CONSUMER_REGS, 1)
                T.clear(acc_f)
                issue(0, acc0, X_s, W_s, full)
                T.wait_wgmma(0)
                for h in T.serial((groups - 1) // 2):
                    issue(2 * h + 1, acc1, X_s, W_s, full)
                    retire(2 * h, acc0, acc_f, a_s, s_s, empty)
                    T.wait_wgmma(0)
                    issue(2 * h + 2, acc0, X_s, W_s, full)
                    retire(2 * h + 1, acc1, acc_f, a_s, s_s, empty)
                    T.wait_wgmma(0)
                if groups % 2 == 0:  # one group left after the pairs: groups - 1 is odd
                    issue(groups - 1, acc1, X_s, W_s, full)
                    retire(groups - 2, acc0, acc_f, a_s, s_s, empty)
                    T.wait_wgmma(0)
                    retire(groups - 1, acc1, acc_f, a_s, s_s, empty)
                else:
                    retire(groups - 1, acc0, acc_f, a_s, s_s, empty)
                for i, c in T.Parallel(bm, bn):
                    C_l[i, c] = T.Cast(out, acc_f[i, c])
                T.copy(C_l, C_s)
                T.copy(C_s, Y[by * bm, bx * bn])

    return main
