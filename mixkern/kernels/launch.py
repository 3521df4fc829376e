"""Compiling and launching the kernels for ``mixkern.gemm`` on CUDA.

Kernels compile once per (kind, K, group size, schedule, dtype, arch) -- M and the number
of 4-/8-bit rows are dynamic -- and are cached in memory here and on disk by TileLang
(``TILELANG_CACHE_DIR``, default ``~/.tilelang/cache``), so the hot path never compiles
after the first call.
"""

from functools import lru_cache

import tilelang
import torch
from tilelang import tvm

from ..format import PackedWeight, WeightFormat
from ..schedules import Schedule, pick
from .act_quant import act_quant
from .mixed_gemm import epilogue, mixed_gemm

TL_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16"}
POISON_OUTPUT = False  # tests set this: outputs start as NaN, so an unwritten element shows


def arch_of(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    if major == 9:
        return "sm_90a"  # TileLang's warp-specialized TMA + wgmma kernels need the 'a' target
    if major == 8:
        return f"sm_{major}{minor}"
    raise NotImplementedError(f"mixkern has kernels for sm_80..sm_89 and sm_90 GPUs, not compute capability {major}.{minor}")


def target(arch: str):
    return tvm.target.Target({"kind": "cuda", "arch": arch})


@lru_cache(maxsize=None)
def compiled(kind: str, arch: str, *args):
    """Build and compile one kernel: kind 'w4'/'w8' (args k, group_size, schedule, dtype), 'act' (k, dtype), 'epi' (dtype)."""
    if kind in ("w4", "w8"):
        k, group_size, schedule, dtype = args
        func = mixed_gemm(4 if kind == "w4" else 8, k, group_size, schedule, dtype)
    elif kind == "act":
        func = act_quant(*args)
    elif kind == "epi":
        func = epilogue(*args)
    else:
        raise ValueError(f"unknown kernel kind {kind!r}")
    return tilelang.compile(func, target=target(arch))


@lru_cache(maxsize=None)
def _placeholder(device) -> torch.Tensor:
    return torch.zeros(1, 1, dtype=torch.uint8, device=device)


def quantize_activation_cuda(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m, k = x.shape
    xq = torch.empty(m, k, dtype=torch.int8, device=x.device)
    a = torch.empty(m, dtype=torch.float32, device=x.device)
    compiled("act", arch_of(x.device), k, TL_DTYPES[x.dtype])(x, xq, a)
    return xq, a


def _run_rows(kind, xq, a, weights, s2, z, scale, idx, y, schedule: Schedule, group_size, arch):
    kernel = compiled(kind, arch, xq.shape[1], group_size, schedule, TL_DTYPES[y.dtype])
    if schedule.split_k == 1:
        kernel(xq, a, weights, s2, z, scale, idx, y)
        return
    acc = torch.zeros(xq.shape[0], weights.shape[0], dtype=torch.int32, device=xq.device)
    kernel(xq, a, weights, s2, z, scale, idx, acc)
    compiled("epi", arch, TL_DTYPES[y.dtype])(acc, a, scale, idx, y)


def gemm_cuda(x: torch.Tensor, pw: PackedWeight, schedule4: Schedule | None = None,
              schedule8: Schedule | None = None) -> torch.Tensor:
    """y = mixkern.gemm(x, pw) with the TileLang kernels (progressive format)."""
    if pw.format is not WeightFormat.PROGRESSIVE:
        raise NotImplementedError(
            f"{pw.format.value} has no CUDA kernel; quantize with format='progressive' (the default) "
            "or run this op on CPU")
    arch = arch_of(x.device)
    m, k = x.shape
    xq, a = quantize_activation_cuda(x)
    y = torch.empty(m, pw.shape[0], dtype=x.dtype, device=x.device)
    if POISON_OUTPUT:
        y.fill_(float("nan"))
    n4, n8 = pw.idx4.numel(), pw.idx8.numel()
    if n4:
        s4 = schedule4 or pick(arch, m, n4, k, pw.group_size)
        _run_rows("w4", xq, a, pw.qweight4, pw.scales4, pw.zeros4, pw.chan_scale4, pw.idx4, y, s4, pw.group_size, arch)
    if n8:
        s8 = schedule8 or pick(arch, m, n8, k, pw.group_size)
        ph = _placeholder(x.device)
        _run_rows("w8", xq, a, pw.qweight8, ph, ph, pw.scale8, pw.idx8, y, s8, pw.group_size, arch)
    return y
