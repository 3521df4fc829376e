"""The mixllm format's in-loop tensor-core kernel on Hopper (64..191 tokens): while the tensor
cores multiply activation group j, each consumer warpgroup promotes group j - 1 and decodes
group j + 1.

:mod:`.mixllm_gemm` runs decode -> barrier -> MMA -> wait -> promote, one after another, per
group.  Here, as in :mod:`.overlapped_decode` and :mod:`.overlapped_promotion`, a producer
warpgroup fills a ``stages``-slot ring by TMA (X tile, packed-code or int8 weight tile) and
with plain loads (the group's activation and weight scales and the 4-bit rows' zero points,
which are strided in memory, so the decode reads only shared memory),
then arrives on the slot's ``full`` barrier; each of two consumer warpgroups owns 64 weight
rows (FullCol) and per group:

    issue wgmma(j) into fragment j % 2  ->  promote fragment (j - 1) % 2  ->  decode j + 1  ->  wait

Waiting for all once per group keeps ptxas from serializing the wgmma (see
:mod:`.overlapped_promotion`).  The promotion is the format's chain, bit-equal to the
reference and to :mod:`.mixllm_gemm`, split over K or not (grid z: each slice's chain into
the float32 workspace, :func:`.mixllm_gemm.split_sum` adds them in order).  Tiles 64 x 128 or
128 x 128: three 64 x 64 or 128 x 64 fragments a thread (two int32 partials, the fp32 sum).
"""

import tilelang.language as T

from ..format import WeightFormat
from ..schedules import Schedule
from .int4_decode import DECODE_BARRIER, DECODE_SOURCE, int4_decode_tile, stage_scales, tile_groups
from .mixed_gemm import DTYPES
from .mixllm_gemm import column_store, launch_entry
from .promote import promote

PRODUCER_THREADS = 128
PRODUCER_REGS, CONSUMER_REGS = 40, 232  # 128 * 40 + 256 * 232 <= 65,536


def _producer(s: Schedule, group_size: int, groups: int, m):
    """The producer warpgroup's macro: per group j of the block's K slice, wait for slot j % stages
    to be free, TMA the X tile and the weight tile (packed codes or int8) into it, load the
    group's activation and weight scales and the 4-bit rows' zero points (strided in memory:
    plain loads), then arrive on the slot's ``full`` barrier, which publishes them."""
    bm, bn, bk, stages = s.block_m, s.block_n, s.block_k, s.stages
    span = WeightFormat.MIXLLM.act_group_size(group_size)
    stage_zeros = stage_scales(bn, bk, group_size, unit_scale=True)

    @T.macro
    def produce(X, Wt, A, S, Z, X_s, W_s, a_s, s_s, z_s, full, empty, row0, rows, by, bz, packed):
        for j in T.serial(groups):  # slot j % stages; the layer's activation group bz * groups + j
            T.mbarrier_wait_parity(empty[j % stages], (j // stages) % 2 ^ 1)
            kw, jg = (bk // 2 if packed else bk), bz * groups + j
            T.tma_copy(X[by * bm:(by + 1) * bm, jg * bk:(jg + 1) * bk], X_s[j % stages, :, :], barrier=full[j % stages])
            T.tma_copy(Wt[row0:row0 + bn, jg * kw:(jg + 1) * kw], W_s[j % stages, :, :], barrier=full[j % stages])
            for i in T.Parallel(bm):
                a_s[j % stages, i] = A[T.min(by * bm + i, m - 1), jg]
            for c in T.Parallel(bn):
                s_s[j % stages, c] = T.Cast("float32", S[T.min(row0 + c, rows - 1), jg * span // group_size])
            if packed:
                stage_zeros(None, Z, None, z_s, j % stages, row0, jg * bk, rows)
            T.barrier_arrive(full[j % stages])  # release: the scale stores above are seen by the waiters

    return produce


def _consumer(s: Schedule, group_size: int, groups: int, n4):
    """The consumer warpgroups' macro: issue(j) -> retire(j - 1) -> decode(j + 1) -> wait, over the
    block's ``groups`` activation groups, the two int32 fragments alternating; retire promotes
    a group into the fp32 fragment (the format's chain) and frees its ring slot."""
    bm, bn, bk, stages = s.block_m, s.block_n, s.block_k, s.stages
    decode_tile = int4_decode_tile(bk, group_size, 128, bn // 2, unit_scale=True, staged_scales=True)
    policy = T.GemmWarpPolicy.FullCol

    @T.macro
    def decode(j, P_s, D_s, z_s, full):
        T.mbarrier_wait_parity(full[j % stages], (j // stages) % 2)
        group = T.get_thread_binding() // 128
        decode_tile(P_s, D_s, None, z_s, 0, j * bk, group, n4, (j % stages, j % 2))
        T.call_extern("handle", "mixkern_fence_decoded")
        T.sync_threads(DECODE_BARRIER + group, 128)

    @T.macro
    def issue(j, acc, X_s, B_s, full, packed):
        if packed:  # B_s: the decoded pair, ready since decode(j)
            T.wgmma_gemm(X_s[j % stages, :, :], B_s[j % 2, :, :], acc, transpose_B=True, clear_accum=True, policy=policy)
        else:
            T.mbarrier_wait_parity(full[j % stages], (j // stages) % 2)
            T.wgmma_gemm(X_s[j % stages, :, :], B_s[j % stages, :, :], acc, transpose_B=True, clear_accum=True,
                         policy=policy)

    @T.macro
    def retire(j, acc, acc_f, a_s, s_s, empty):
        T.warpgroup_fence_operand(acc, num_regs=bm * bn // 256)
        for i, c in T.Parallel(bm, bn):
            acc_f[i, c] = promote(acc[i, c], a_s[j % stages, i], s_s[j % stages, c], acc_f[i, c])
        T.barrier_arrive(empty[j % stages])

    @T.macro
    def step(j, acc_new, acc_old, X_s, B_s, P_s, z_s, acc_f, a_s, s_s, full, empty, packed):
        issue(j, acc_new, X_s, B_s, full, packed)
        retire(j - 1, acc_old, acc_f, a_s, s_s, empty)
        if packed:
            if j + 1 < groups:
                decode(j + 1, P_s, B_s, z_s, full)
        T.wait_wgmma(0)

    @T.macro
    def consume(X_s, B_s, P_s, z_s, acc0, acc1, acc_f, a_s, s_s, full, empty, packed):
        if packed:
            decode(0, P_s, B_s, z_s, full)
        issue(0, acc0, X_s, B_s, full, packed)
        if packed and groups > 1:
            decode(1, P_s, B_s, z_s, full)
        T.wait_wgmma(0)
        for h in T.serial((groups - 1) // 2):
            step(2 * h + 1, acc1, acc0, X_s, B_s, P_s, z_s, acc_f, a_s, s_s, full, empty, packed)
            step(2 * h + 2, acc0, acc1, X_s, B_s, P_s, z_s, acc_f, a_s, s_s, full, empty, packed)
        if groups % 2 == 0:
            issue(groups - 1, acc1, X_s, B_s, full, packed)
            retire(groups - 2, acc0, acc_f, a_s, s_s, empty)
            T.wait_wgmma(0)
            retire(groups - 1, acc1, acc_f, a_s, s_s, empty)
        else:
            retire(groups - 1, acc0, acc_f, a_s, s_s, empty)

    return consume


def overlapped_mixllm_gemm(k: int, group_size: int, schedule: Schedule, out_dtype: str = "float16",
                           has4: bool = True, has8: bool = True):
    """TileLang prim_func with :func:`.mixllm_gemm.mixllm_gemm`'s launch arguments."""
    span = WeightFormat.MIXLLM.act_group_size(group_size)
    s = schedule
    bm, bn, bk, stages = s.block_m, s.block_n, s.block_k, s.stages
    if bm not in (64, 128) or (bn, s.threads, bk) != (128, 256, span) or (k // span) % s.split_k:
        raise ValueError(f"{s}: the overlapped mixllm kernel runs 64 or 128 x 128 tiles on 256 threads, one group per K "
                         f"tile, split_k dividing the {k // span} groups")
    m, n4, n8, n_total = T.dynamic("m"), T.dynamic("n4"), T.dynamic("n8"), T.dynamic("n_total")
    groups = k // span // s.split_k  # this K slice's activation groups (all of K unless split)
    split = s.split_k > 1
    blocks4 = T.ceildiv(n4, bn) if has4 else 0
    blocks8 = T.ceildiv(n8, bn) if has8 else 0
    produce, consume = _producer(s, group_size, groups, m), _consumer(s, group_size, groups, n4)
    store = column_store(bm, bn, m, "float32" if split else DTYPES[out_dtype], 256)

    @T.macro
    def body(X, A, W4, Z, S4, I4, W8, S8, I8, Y):
        with T.Kernel(blocks4 + blocks8, T.ceildiv(m, bm), s.split_k, threads=256 + PRODUCER_THREADS) as (bx, by, bz):
            T.import_source(DECODE_SOURCE)
            X_s = T.alloc_shared((stages, bm, bk), "int8")
            a_s = T.alloc_shared((stages, bm), "float32")
            s_s = T.alloc_shared((stages, bn), "float32")
            acc0 = T.alloc_fragment((bm, bn), "int32")
            acc1 = T.alloc_fragment((bm, bn), "int32")
            acc_f = T.alloc_fragment((bm, bn), "float32")
            full = T.alloc_barrier([PRODUCER_THREADS] * stages)
            empty = T.alloc_barrier([256] * stages)
            tx = T.get_thread_binding()
            if has4 and (not has8 or bx < blocks4):
                P_s = T.alloc_shared((stages, bn, bk // 2), "uint8")
                D_s = T.alloc_shared((2, bn, bk), "int8")
                z_s = T.alloc_shared((stages, tile_groups(bk, group_size), bn), "uint8")
                if tx >= 256:
                    T.set_max_nreg(PRODUCER_REGS, 0)
                    produce(X, W4, A, S4, Z, X_s, P_s, a_s, s_s, z_s, full, empty, bx * bn, n4, by, bz, True)
                else:
                    T.set_max_nreg(CONSUMER_REGS, 1)
                    T.clear(acc_f)
                    consume(X_s, D_s, P_s, z_s, acc0, acc1, acc_f, a_s, s_s, full, empty, True)
                    store(acc_f, I4, Y, n4, bx * bn, by, bz * m)
            else:
                W_s = T.alloc_shared((stages, bn, bk), "int8")
                if tx >= 256:
                    T.set_max_nreg(PRODUCER_REGS, 0)
                    produce(X, W8, A, S8, None, X_s, W_s, a_s, s_s, None, full, empty, (bx - blocks4) * bn, n8, by, bz, False)
                else:
                    T.set_max_nreg(CONSUMER_REGS, 1)
                    T.clear(acc_f)
                    consume(X_s, W_s, None, None, acc0, acc1, acc_f, a_s, s_s, full, empty, False)
                    store(acc_f, I8, Y, n8, (bx - blocks4) * bn, by, bz * m)

    return launch_entry(body, k, group_size, out_dtype, split, (m, n4, n8, n_total))
