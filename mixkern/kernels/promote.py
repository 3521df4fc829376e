"""Step two of the mixllm format's two-step dequantization, as exact instructions:

    acc = __fmaf_rn(fp32(p), __fmul_rn(a[m, j], s[n, j]), acc)

``__fmul_rn`` / ``__fmaf_rn`` fix each rounding (nvcc may neither contract nor reorder them),
so every kernel's chain is the reference's bit for bit (:mod:`mixkern.format`).  One home for
the three kernels that promote (decode, in-loop tensor core, predecoded tensor core).

Measured on the H100 (docs/kernels.md, issue 14): this promotion's instruction form is not
what holds the tensor-core kernels back.  An exact add/subtract conversion (``p +
0x4B400000`` reinterpreted, minus 1.5 * 2^23) in place of the ``I2F`` cast executed 17% more
instructions and ran 1-5% slower; each thread's scales in registers instead of shared loads
per element moved the time by +-3%.  The 64 x 128 predecoded kernel holds 254 registers, so
2 CTAs per SM, each waiting on its synchronous wgmma before it promotes.
"""

import tilelang.language as T


def fmul_rn(a, b):
    return T.call_extern("float32", "__fmul_rn", a, b)


def fadd_rn(a, b):
    return T.call_extern("float32", "__fadd_rn", a, b)


def fmaf_rn(a, b, c):
    return T.call_extern("float32", "__fmaf_rn", a, b, c)


def promote(p, a, s, acc):
    """acc + fp32(p) * (a * s) in the format's order and roundings; p one group's int32 partial."""
    return fmaf_rn(T.Cast("float32", p), fmul_rn(a, s), acc)
