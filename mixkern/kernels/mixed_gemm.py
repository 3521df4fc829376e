"""W4A8 + W8A8 on tensor cores as one TileLang launch (M > 16): int4 decoded into a shared
int8 tile, both MMA operands from shared memory.

``acc[m, n] = sum_k xq[m, k] * w8[n, k]`` in one int32 accumulator over all of K (the
progressive format has no float group scales).  Grid x walks the 4-bit feature tiles and
then the 8-bit ones, so one launch covers every output feature:

* 4-bit tiles: packed codes arrive in shared memory by TMA / cp.async (multi-stage) and the
  consumer threads decode them into a shared int8 tile ``(q - z) * s2`` (:mod:`.int4_decode`);
* 8-bit tiles: the int8 weights go straight to shared memory.

The tensor core then reads both operands from shared memory (wgmma on sm_90a, ldmatrix +
mma.sync on sm_80), so no decoded weights sit in registers beside the accumulators.
The epilogue applies every float scale once, ``y[m, idx[n]] = out((fp32(acc) * a[m]) * s[n])``,
writing straight into the feature's original column; with ``split_k > 1`` K slices add
int32 partials into a workspace with atomics (exact) and :func:`epilogue` scales it.
"""

import tilelang.language as T

from ..schedules import Schedule
from .int4_decode import DECODE_BARRIER, DECODE_SOURCE, consumer_groups, int4_decode_tile

DTYPES = {"float16": "float16", "bfloat16": "bfloat16"}


def _scaled(acc, a, s, out: str):
    """The float epilogue of the format, in its one order: out((fp32(acc) * a[m]) * s[n])."""
    return T.Cast(out, (T.Cast("float32", acc) * a) * s)


STORE_BARRIER = 6  # named barrier of the threads holding a tile, in its store (the decode's are 7..)


def stage_columns(bn: int, consumers: int):
    """A macro staging a tile's ``bn`` column indices ``Idx[col0 + j]`` (inside the precision's
    ``rows``) into ``idx_s``, and their scales ``S`` into ``s_s`` unless those are None: one load
    a thread of the ``consumers`` holding the tile (the in-loop stores' shared first step)."""

    @T.macro
    def stage(idx_s, s_s, Idx, S, rows, col0, tx):
        for t in T.serial(-(-bn // consumers)):
            if t * consumers + tx < bn and col0 + t * consumers + tx < rows:
                idx_s[t * consumers + tx] = Idx[col0 + t * consumers + tx]
                if s_s is not None:
                    s_s[t * consumers + tx] = S[col0 + t * consumers + tx]

    return stage


def tile_store(bm: int, bn: int, m, out: str, split: bool = False, consumers: int = 128, transposed: bool = False):
    """A macro writing a (bm, bn) int32 tile into its features' original columns of Y through the
    format's epilogue (:func:`_scaled`), inside M and the precision's rows:
    ``store(acc, A, S, Idx, Y, Acc, rows, col0, acc_col0, by)`` (``consumers``: the threads
    holding the tile); with ``split``, adding it into the split-K workspace Acc instead (exact
    int32 atomics; :func:`epilogue` applies the scales once every K slice is in).
    ``transposed``: the accumulator is (bn weight rows, bm tokens), the register-decode
    kernel's swapped MMA (:mod:`.register_decode`).

    The tile's column indices and scales and its token scales go to shared memory first, one
    load a thread: read from global memory inside the element loop, each element waited on its
    own index load before its store -- 7-10 us for a 64 x 128 tile on the H100, more than the
    tile's whole main loop at 32 tokens (ncu, then A/B of the store's parts).  TileLang may
    place these buffers over the main loop's (their lifetimes do not overlap), hence the
    barrier before they are written: every thread holding the tile is past its last MMA."""
    shape = (bn, bm) if transposed else (bm, bn)  # the accumulator's, and the element loop's

    def token(u, v):  # the token row of accumulator element (u, v)
        return v if transposed else u

    def column(u, v):  # its column inside the tile
        return u if transposed else v

    if split:
        @T.macro
        def add(acc, A, S, Idx, Y, Acc, rows, col0, acc_col0, by):
            for u, v in T.Parallel(*shape):
                if by * bm + token(u, v) < m and col0 + column(u, v) < rows:
                    T.atomic_add(Acc[by * bm + token(u, v), acc_col0 + col0 + column(u, v)], acc[u, v])
        return add
    stage = stage_columns(bn, consumers)

    @T.macro
    def store(acc, A, S, Idx, Y, Acc, rows, col0, acc_col0, by):
        idx_s = T.alloc_shared((bn,), "int32")
        s_s = T.alloc_shared((bn,), "float32")
        a_s = T.alloc_shared((bm,), "float32")
        tx = T.get_thread_binding()
        T.sync_threads(STORE_BARRIER, consumers)  # the staging may reuse the main loop's shared memory
        stage(idx_s, s_s, Idx, S, rows, col0, tx)
        for t in T.serial(-(-bm // consumers)):
            if t * consumers + tx < bm and by * bm + t * consumers + tx < m:
                a_s[t * consumers + tx] = A[by * bm + t * consumers + tx]
        T.sync_threads(STORE_BARRIER, consumers)
        for u, v in T.Parallel(*shape):
            if by * bm + token(u, v) < m and col0 + column(u, v) < rows:
                Y[by * bm + token(u, v), idx_s[column(u, v)]] = _scaled(acc[u, v], a_s[token(u, v)], s_s[column(u, v)], out)

    return store


def mixed_gemm(k: int, group_size: int, schedule: Schedule, out_dtype: str = "float16",
               has4: bool = True, has8: bool = True, wgmma: bool = True):
    """TileLang prim_func for all output features of one layer (the 4-bit ones if has4, the
    8-bit ones if has8).

    Launch arguments: X int8 (M, K), A fp32 (M,), W4 packed uint8 (n4, K/2), S2 and Z uint8
    (n4, K/group), S4 fp32 (n4,), I4 int32 (n4,), W8 int8 (n8, K), S8 fp32 (n8,), I8 int32
    (n8,), and Y out_dtype (M, n_total) -- or, with split_k > 1, an int32 workspace Acc
    (M, 4-bit rows + 8-bit rows), 8-bit columns after the 4-bit ones.  M, n4, n8, n_total are
    dynamic (an absent precision is a one-row placeholder).  ``wgmma``: the target is sm_90a.
    """
    if not (has4 or has8):
        raise ValueError("mixed_gemm needs 4-bit rows, 8-bit rows, or both")
    s = schedule
    bm, bn, bk = s.block_m, s.block_n, s.block_k
    m, n4, n8, n_total = T.dynamic("m"), T.dynamic("n4"), T.dynamic("n8"), T.dynamic("n_total")
    k_split = k // s.split_k
    out = DTYPES[out_dtype]
    blocks4 = T.ceildiv(n4, bn) if has4 else 0
    blocks8 = T.ceildiv(n8, bn) if has8 else 0
    groups, group_threads, group_rows = consumer_groups(s.threads, bn, wgmma)
    policy = T.GemmWarpPolicy.FullCol if groups > 1 else T.GemmWarpPolicy.Square

    decode_tile = int4_decode_tile(bk, group_size, group_threads, group_rows)

    store = tile_store(bm, bn, m, out, s.split_k > 1, s.threads)

    @T.macro
    def body(X, A, W4, S2, Z, S4, I4, W8, S8, I8, Y, Acc):
        with T.Kernel(blocks4 + blocks8, T.ceildiv(m, bm), s.split_k, threads=s.threads) as (bx, by, bz):
            T.import_source(DECODE_SOURCE)
            acc = T.alloc_fragment((bm, bn), "int32")
            T.clear(acc)
            # Each precision has its own loop and buffers: TileLang multi-buffers a shared buffer
            # per pipelined loop, so the two loops cannot share one.
            if has4 and (not has8 or bx < blocks4):
                X_s = T.alloc_shared((bm, bk), "int8")
                W_s = T.alloc_shared((bn, bk), "int8")
                P_s = T.alloc_shared((bn, bk // 2), "uint8")
                for ko in T.Pipelined(k_split // bk, num_stages=s.stages):
                    k0 = bz * k_split + ko * bk
                    T.copy(X[by * bm, k0], X_s)
                    T.copy(W4[bx * bn, k0 // 2], P_s)
                    # W_s has one buffer: a group decodes its rows once its last MMA on them is
                    # done, and multiplies once all of them are written
                    group = T.get_thread_binding() // group_threads
                    T.sync_threads(DECODE_BARRIER + group, group_threads)
                    decode_tile(P_s, W_s, S2, Z, bx * bn, k0, group, n4)
                    T.call_extern("handle", "mixkern_fence_decoded")
                    T.sync_threads(DECODE_BARRIER + group, group_threads)
                    T.gemm(X_s, W_s, acc, transpose_B=True, policy=policy)
                store(acc, A, S4, I4, Y, Acc, n4, bx * bn, 0, by)
            else:
                X_s = T.alloc_shared((bm, bk), "int8")
                W_s = T.alloc_shared((bn, bk), "int8")
                for ko in T.Pipelined(k_split // bk, num_stages=s.stages):
                    k0 = bz * k_split + ko * bk
                    T.copy(X[by * bm, k0], X_s)
                    T.copy(W8[(bx - blocks4) * bn, k0], W_s)
                    T.gemm(X_s, W_s, acc, transpose_B=True, policy=policy)
                store(acc, A, S8, I8, Y, Acc, n8, (bx - blocks4) * bn, n4 if has4 else 0, by)

    return launch_entry(body, k, group_size, out_dtype, s.split_k > 1, (m, n4, n8, n_total))


def launch_entry(body, k: int, group_size: int, out_dtype: str, split: bool, dims: tuple):
    """The prim_func of a progressive in-loop kernel: its launch arguments (see
    :func:`mixed_gemm`) around ``body``, a macro taking them with Y or, split over K, the int32
    workspace Acc (the other one None).  ``dims``: the body's dynamic (m, n4, n8, n_total)."""
    m, n4, n8, n_total = dims
    n_acc = T.dynamic("n_acc")  # split-K workspace columns: the real 4-bit rows, then the 8-bit rows
    g, out = k // group_size, DTYPES[out_dtype]
    if split:
        @T.prim_func
        def main(X: T.Tensor((m, k), "int8"), A: T.Tensor((m,), "float32"),
                 W4: T.Tensor((n4, k // 2), "uint8"), S2: T.Tensor((n4, g), "uint8"), Z: T.Tensor((n4, g), "uint8"),
                 S4: T.Tensor((n4,), "float32"), I4: T.Tensor((n4,), "int32"),
                 W8: T.Tensor((n8, k), "int8"), S8: T.Tensor((n8,), "float32"), I8: T.Tensor((n8,), "int32"),
                 Acc: T.Tensor((m, n_acc), "int32")):
            body(X, A, W4, S2, Z, S4, I4, W8, S8, I8, None, Acc)
    else:
        @T.prim_func
        def main(X: T.Tensor((m, k), "int8"), A: T.Tensor((m,), "float32"),
                 W4: T.Tensor((n4, k // 2), "uint8"), S2: T.Tensor((n4, g), "uint8"), Z: T.Tensor((n4, g), "uint8"),
                 S4: T.Tensor((n4,), "float32"), I4: T.Tensor((n4,), "int32"),
                 W8: T.Tensor((n8, k), "int8"), S8: T.Tensor((n8,), "float32"), I8: T.Tensor((n8,), "int32"),
                 Y: T.Tensor((m, n_total), out)):
            body(X, A, W4, S2, Z, S4, I4, W8, S8, I8, Y, None)
    return main


def epilogue(out_dtype: str = "float16", has4: bool = True, block_n: int = 256):
    """Y from a split-K int32 workspace Acc (M, 4-bit rows + 8-bit rows), 4-bit columns first:
    y[m, idx[n]] = out((fp32(acc[m, n]) * a[m]) * s[n]).  An absent precision's S/I are
    one-row placeholders, hence the real 4-bit column count ``n4_real``.  One token row and
    two columns a thread: each thread's loads are independent, so their latencies overlap
    (16 rows a thread, one after another, took 18.6 us at 64 x 4096 on the H100; ncu)."""
    m, n4, n8, n_total = T.dynamic("m"), T.dynamic("n4"), T.dynamic("n8"), T.dynamic("n_total")
    cols = T.dynamic("n_acc")
    out = DTYPES[out_dtype]
    n4_real = n4 if has4 else 0

    @T.prim_func
    def main(Acc: T.Tensor((m, cols), "int32"), A: T.Tensor((m,), "float32"),
             S4: T.Tensor((n4,), "float32"), I4: T.Tensor((n4,), "int32"),
             S8: T.Tensor((n8,), "float32"), I8: T.Tensor((n8,), "int32"), Y: T.Tensor((m, n_total), out)):
        with T.Kernel(m, T.ceildiv(cols, block_n), threads=128) as (row, bx):  # M on x: no 65,535 limit
            for j in T.Parallel(block_n):
                col = bx * block_n + j
                if col < n4_real:
                    Y[row, I4[col]] = _scaled(Acc[row, col], A[row], S4[col], out)
                elif col < cols:
                    Y[row, I8[col - n4_real]] = _scaled(Acc[row, col], A[row], S8[col - n4_real], out)

    return main
