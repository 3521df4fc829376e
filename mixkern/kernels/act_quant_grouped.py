"""Per-(token, group) int8 activation quantization as one TileLang kernel: MixLLM's activations
(:mod:`mixkern.quantize.activations` with ``group_size`` 64 or 128, bit for bit).

A group is 64 or 128 channels = 8 or 16 threads holding one 16-byte vector (8 values) each,
so a group's absolute maximum is a butterfly of ``shfl_xor`` inside the warp: no shared
memory, no block-wide barrier, and every group of a long row is independent.  A block of
256 threads covers 2,048 channels of one token; grid x walks K, grid y the tokens.  Scales
are written as float32 (M, K / group), the layout the reference and the GEMMs read.
"""

import tilelang.language as T
from tvm import tirx

from .act_quant import magnitude

VALUES_PER_THREAD = 8  # one 16-byte vector of fp16/bf16
THREADS = 256


def act_quant_grouped(k: int, group: int, in_dtype: str = "float16"):
    """TileLang prim_func: X (M, K) fp16/bf16 -> XQ int8 (M, K), A fp32 (M, K / group)."""
    if group not in (64, 128) or k % group:
        raise ValueError(f"grouped activation quantization needs group 64 or 128 dividing K, got group={group}, K={k}")
    lanes = group // VALUES_PER_THREAD  # threads per group: 8 or 16, a power of two inside one warp
    per_block = THREADS * VALUES_PER_THREAD
    m = T.dynamic("m")

    @T.prim_func
    def main(X: T.Tensor((m, k), in_dtype), XQ: T.Tensor((m, k), "int8"), A: T.Tensor((m, k // group), "float32")):
        with T.Kernel(T.ceildiv(k, per_block), m, threads=THREADS) as (bx, by):
            tx = T.get_thread_binding(0)
            xv = T.alloc_local((VALUES_PER_THREAD,), in_dtype)
            qv = T.alloc_local((VALUES_PER_THREAD,), "int8")
            col = bx * per_block + tx * VALUES_PER_THREAD
            amax = T.alloc_var("float32")
            amax = T.float32(0)
            if col < k:  # whole groups are in or out: K is a multiple of the group
                for j in T.vectorized(VALUES_PER_THREAD):
                    xv[j] = X[by, col + j]
                for j in T.unroll(VALUES_PER_THREAD):
                    amax = T.max(amax, magnitude(xv[j]))
            # butterfly over the group's lanes; every lane of the warp takes part (full mask)
            for step in T.unroll(3):
                amax = T.max(amax, T.shfl_xor(amax, 1 << step))
            if lanes == 16:
                amax = T.max(amax, T.shfl_xor(amax, 8))
            a = amax / T.float32(127.0)
            scale = T.if_then_else(a > 0, a, T.float32(1.0))
            if col < k:
                for j in T.unroll(VALUES_PER_THREAD):
                    q = T.clamp(tirx.nearbyint(T.Cast("float32", xv[j]) / scale), T.float32(-127.0), T.float32(127.0))
                    qv[j] = T.Cast("int8", q)
                for j in T.vectorized(VALUES_PER_THREAD):
                    XQ[by, col + j] = qv[j]
                if tx % lanes == 0:
                    A[by, col // group] = a

    return main
