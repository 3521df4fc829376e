"""Per-token int8 activation quantization as one TileLang kernel (the rule of
:mod:`mixkern.quantize.activations`, bit for bit: IEEE fp32 division, round half to even).

Each block owns ``block_m`` rows (one by default, so decode's few rows still spread over
many SMs): a first pass over K finds every row's absolute maximum, a second pass writes
``xq = clamp(rint(x / a), -127, 127)`` and ``a = amax / 127``.
"""


import tilelang.language as T
from tvm import tirx


def act_quant(k: int, in_dtype: str = "float16", block_m: int = 1, block_k: int = 2048, threads: int = 256):
    m = T.dynamic("m")
    while k % block_k:
        block_k //= 2

    @T.prim_func
    def main(X: T.Tensor((m, k), in_dtype), XQ: T.Tensor((m, k), "int8"), A: T.Tensor((m,), "float32")):
        with T.Kernel(T.ceildiv(m, block_m), threads=threads) as bx:
            x = T.alloc_fragment((block_m, block_k), "float32")
            part = T.alloc_fragment((block_m,), "float32")
            amax = T.alloc_fragment((block_m,), "float32")
            T.fill(amax, 0.0)
            for ko in T.serial(k // block_k):
                T.copy(X[bx * block_m, ko * block_k], x)
                T.reduce_absmax(x, part, dim=1)
                for i in T.Parallel(block_m):
                    amax[i] = T.max(amax[i], part[i])
            for i in T.Parallel(block_m):
                amax[i] = amax[i] / T.float32(127.0)
            for ko in T.serial(k // block_k):
                T.copy(X[bx * block_m, ko * block_k], x)
                for i, j in T.Parallel(block_m, block_k):
                    scale = T.if_then_else(amax[i] > 0, amax[i], T.float32(1.0))
                    q = T.clamp(tirx.nearbyint(x[i, j] / scale), T.float32(-127.0), T.float32(127.0))
                    if bx * block_m + i < m:
                        XQ[bx * block_m + i, ko * block_k + j] = T.Cast("int8", q)
            for i in T.Parallel(block_m):
                if bx * block_m + i < m:
                    A[bx * block_m + i] = amax[i]

    return main
