"""Per-token int8 activation quantization as one TileLang kernel (the rule of
:mod:`mixkern.quantize.activations`, bit for bit: IEEE fp32 division, round half to even).

One block per token, so decode's few tokens still spread over SMs.  When the row fits in
registers (up to 64 values per thread at 1024 threads) it is read once: absolute maximum
across the block, then ``xq = clamp(rint(x / a), -127, 127)`` from the same registers --
one global round trip, which is what a one-token (decode) call waits for.  Longer rows take
two passes in ``block_k`` chunks.  ``a = amax / 127``.
"""


import tilelang.language as T
from tvm import tirx

MAX_THREADS = 1024
MAX_VALUES_PER_THREAD = 64


def act_quant(k: int, in_dtype: str = "float16"):
    m = T.dynamic("m")
    threads = max(32, min(MAX_THREADS, k // 8))  # >= 8 values (16 bytes) per thread when K allows
    one_pass = k % threads == 0 and k // threads <= MAX_VALUES_PER_THREAD
    block_k = k if one_pass else next(b for b in (8192, 4096, 2048, 1024, 512, 256, 128, 64, 32) if k % b == 0)

    @T.macro
    def quantize(XQ, x, amax, bx, ko):
        for i, j in T.Parallel(1, block_k):
            scale = T.if_then_else(amax[i] > 0, amax[i], T.float32(1.0))
            q = T.clamp(tirx.nearbyint(x[i, j] / scale), T.float32(-127.0), T.float32(127.0))
            XQ[bx, ko * block_k + j] = T.Cast("int8", q)

    @T.prim_func
    def main(X: T.Tensor((m, k), in_dtype), XQ: T.Tensor((m, k), "int8"), A: T.Tensor((m,), "float32")):
        with T.Kernel(m, threads=threads) as bx:
            x = T.alloc_fragment((1, block_k), "float32")
            part = T.alloc_fragment((1,), "float32")
            amax = T.alloc_fragment((1,), "float32")
            T.fill(amax, 0.0)
            for ko in T.serial(k // block_k):
                T.copy(X[bx, ko * block_k], x)
                T.reduce_absmax(x, part, dim=1)
                amax[0] = T.max(amax[0], part[0])
            amax[0] = amax[0] / T.float32(127.0)
            if one_pass:
                quantize(XQ, x, amax, bx, 0)
            else:
                for ko in T.serial(k // block_k):
                    T.copy(X[bx, ko * block_k], x)
                    quantize(XQ, x, amax, bx, ko)
            A[bx] = amax[0]

    return main
