"""Per-token int8 activation quantization as one TileLang kernel (the rule of
:mod:`mixkern.quantize.activations`, bit for bit: IEEE fp32 division, round half to even).

One block per token, so decode's few tokens still spread over SMs.  Every thread loads
whole 16-byte vectors (8 values) of its token's row into registers, ``vectors`` of them,
so the row is read from memory once for any K that is a multiple of 8 up to
:data:`MAX_K`: the block has as many warps as the row needs (any count from 1 to 32, not a
power of two), each warp reduces its absolute maximum with shuffles and the warps meet in
shared memory.  Then ``xq = clamp(rint(x / a), -127, 127)`` from the same registers,
``a = amax / 127``.  A NaN counts as +inf in the maximum, so a token holding NaN or Inf
gets ``a = inf`` and every output of that token is non-finite, while the other tokens are
untouched (the reference does the same).

With ``workspace``, each block also zeroes its token's row of an int32 workspace: the
split-K GEMM's partial sums, which so need no memset launch of their own (2.5 us on the H100,
ncu).  With ``register_order``, each 128-wide window of a row is written in the K order of
:mod:`.register_decode`'s weight fragments (4-byte words permuted by
:func:`.register_decode.logical_word`).
"""

from dataclasses import dataclass

import tilelang.language as T
from tvm import tirx

from ..format import MAX_IN_FEATURES
from .register_decode import WINDOW, logical_word

VALUES_PER_VECTOR = 8  # 16 bytes of fp16/bf16
MAX_WARPS = 32
MAX_VECTORS = 16  # per thread: 128 values held in 64 registers
MAX_K = MAX_WARPS * 32 * MAX_VECTORS * VALUES_PER_VECTOR  # the longest row one block holds
assert MAX_K >= MAX_IN_FEATURES, "the format promises rows this kernel cannot hold"


@dataclass(frozen=True)
class ActQuantPlan:
    """How one block covers a K-long row: ``warps`` warps, ``vectors`` 16-byte vectors per thread."""
    warps: int
    vectors: int

    @classmethod
    def for_k(cls, k: int) -> "ActQuantPlan":
        """The fewest vectors per thread that fit in 32 warps, then the fewest warps that cover the
        row with them (idle lanes only in the last warp, or where the row is under 256 values)."""
        if k % VALUES_PER_VECTOR or not 0 < k <= MAX_K:
            raise ValueError(f"activation quantization needs K a positive multiple of {VALUES_PER_VECTOR} "
                             f"up to {MAX_K}, got K={k}")
        vecs = k // VALUES_PER_VECTOR
        vectors = -(-vecs // (MAX_WARPS * 32))
        return cls(warps=-(-vecs // (32 * vectors)), vectors=vectors)


def magnitude(v):
    """|v| in fp32, with NaN as +inf: fp32 max drops NaN, so the token's scale would stay finite."""
    f = T.Cast("float32", v)
    return T.if_then_else(tirx.isnan(f), T.infinity("float32"), T.abs(f))


def act_quant(k: int, in_dtype: str = "float16", workspace: bool = False, register_order: bool = False):
    """TileLang prim_func: X (M, K) fp16/bf16 -> XQ int8 (M, K), A fp32 (M,) token scales; with
    ``workspace``, also WS int32 (M, any width) zeroed; with ``register_order``, XQ's 128-wide
    windows in the register-decode kernel's K order (K a multiple of 128)."""
    if register_order and k % WINDOW:
        raise ValueError(f"the register K order permutes {WINDOW}-wide windows; K={k} is not a multiple")
    plan = ActQuantPlan.for_k(k)
    threads, m = 32 * plan.warps, T.dynamic("m")
    body = quantize_rows(k, in_dtype, plan, register_order)

    if workspace:
        width = T.dynamic("width")

        @T.prim_func
        def main(X: T.Tensor((m, k), in_dtype), XQ: T.Tensor((m, k), "int8"), A: T.Tensor((m,), "float32"),
                 WS: T.Tensor((m, width), "int32")):
            with T.Kernel(m, threads=threads) as bx:
                body(X, XQ, A, bx)
                for i in T.serial(T.ceildiv(width, threads)):  # coalesced 4-byte stores: a few per thread
                    col = i * threads + T.get_thread_binding(0)
                    if col < width:
                        WS[bx, col] = 0
        return main

    @T.prim_func
    def main(X: T.Tensor((m, k), in_dtype), XQ: T.Tensor((m, k), "int8"), A: T.Tensor((m,), "float32")):
        with T.Kernel(m, threads=threads) as bx:
            body(X, XQ, A, bx)

    return main


def register_word(vector, half):
    """Where the ``half``-th 4-byte word of 8-value vector ``vector`` of a row goes in the register
    K order: its window's start plus :func:`.register_decode.logical_word` of its physical word
    ``2 * (vector % 16) + half`` inside the window."""
    return vector // 16 * WINDOW + 4 * logical_word(2 * (vector % 16) + half)


def quantize_rows(k: int, in_dtype: str, plan: ActQuantPlan, register_order: bool = False):
    """The macro quantizing token ``bx``'s row (one block, ``plan``'s warps and vectors)."""
    warps, vectors = plan.warps, plan.vectors
    threads, vecs, vw = 32 * warps, k // VALUES_PER_VECTOR, VALUES_PER_VECTOR

    @T.macro
    def body(X, XQ, A, bx):
        tx = T.get_thread_binding(0)
        xv = T.alloc_local((vectors * vw,), in_dtype)
        qv = T.alloc_local((vw,), "int8")
        part = T.alloc_shared((warps,), "float32")
        amax = T.alloc_var("float32")
        amax = T.float32(0)
        for i in T.unroll(vectors):
            if tx + i * threads < vecs:
                for j in T.vectorized(vw):
                    xv[i * vw + j] = X[bx, (tx + i * threads) * vw + j]
                for j in T.unroll(vw):
                    amax = T.max(amax, magnitude(xv[i * vw + j]))
        amax = T.warp_reduce_max(amax)
        if tx % 32 == 0:
            part[tx // 32] = amax
        T.sync_threads()
        amax = part[0]
        for w in T.unroll(1, warps):
            amax = T.max(amax, part[w])
        a = amax / T.float32(127.0)
        scale = T.if_then_else(a > 0, a, T.float32(1.0))
        for i in T.unroll(vectors):
            if tx + i * threads < vecs:
                for j in T.unroll(vw):
                    q = T.clamp(tirx.nearbyint(T.Cast("float32", xv[i * vw + j]) / scale),
                                T.float32(-127.0), T.float32(127.0))
                    qv[j] = T.Cast("int8", q)
                if register_order:
                    for h in T.unroll(2):
                        for j in T.vectorized(4):
                            XQ[bx, register_word(tx + i * threads, h) + j] = qv[4 * h + j]
                else:
                    for j in T.vectorized(vw):
                        XQ[bx, (tx + i * threads) * vw + j] = qv[j]
        if tx == 0:
            A[bx] = a

    return body
