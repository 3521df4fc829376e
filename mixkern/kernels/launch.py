"""Compiling and launching the kernels for ``mixkern.gemm`` on CUDA.

Kernels compile once per (kind, K, group size, schedule, dtype, arch) -- M and the number
of 4-/8-bit rows are dynamic -- and are cached in memory here and on disk by TileLang
(``TILELANG_CACHE_DIR``, default ``~/.tilelang/cache``), so the hot path never compiles
after the first call.
"""

import logging
import os
from contextlib import contextmanager
from functools import lru_cache

import tilelang
import torch
from tilelang import tvm

from ..format import PackedWeight, WeightFormat
from ..schedules import AnySchedule, GemvSchedule, Schedule, for_mixllm, format_pick, pick
from . import ir_cache
from .act_quant import act_quant
from .act_quant_grouped import act_quant_grouped
from .decode_gemv import decode_gemv
from .int8_gemm import int8_gemm
from .mixed_gemm import epilogue, mixed_gemm
from .mixllm_gemm import mixllm_gemm, split_sum
from .overlapped_decode import overlapped_decode_gemm
from .overlapped_mixllm_gemm import overlapped_mixllm_gemm
from .mixllm_gemv import mixllm_gemv
from .predecode import predecode
from .register_decode import register_decode_gemm

TL_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16"}
POISON_OUTPUT = False  # tests set this: outputs start as NaN, so an unwritten element shows
PRECISION_SPLITS = ((True, True), (True, False), (False, True))  # (has 4-bit rows, has 8-bit rows)


@contextmanager
def poisoned_outputs():
    """Within: every output starts as NaN, so a checker sees any element a kernel left unwritten."""
    global POISON_OUTPUT
    before, POISON_OUTPUT = POISON_OUTPUT, True
    try:
        yield
    finally:
        POISON_OUTPUT = before


def arch_of(device: torch.device) -> str:
    """The build target for this GPU.  ``MIXKERN_ARCH=sm_80+sm_90`` runs the Ampere kernels on an
    H100: sm_80 code, shipped with sm_90 machine code built from its compute_80 PTX."""
    return os.environ.get("MIXKERN_ARCH") or _native_arch(device)


@lru_cache(maxsize=None)
def _native_arch(device: torch.device) -> str:
    """This GPU's target by its compute capability (cached: the op asks on every call)."""
    major, minor = torch.cuda.get_device_capability(device)
    if major == 9:
        return "sm_90a"  # TileLang's warp-specialized TMA + wgmma kernels need the 'a' target
    if major == 8:
        return f"sm_{major}{minor}"
    raise NotImplementedError(f"mixkern has kernels for sm_80..sm_89 and sm_90 GPUs, not compute capability {major}.{minor}")


@lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of this GPU: the schedule heuristic sizes grids by them."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def target(arch: str):
    """'sm_90a' -> that arch's cubin; 'sm_80+sm_90' -> sm_80 code in a fatbin that also runs on sm_90."""
    base, *more = arch.split("+")
    if more:
        return tvm.target.Target({"kind": "cuda", "arch": base, "code": [base, *more]})
    return tvm.target.Target({"kind": "cuda", "arch": arch})


def _pass_configs(kind: str, args: tuple) -> dict:
    """Warp specialization (a TMA producer warpgroup beside the consumers) only where it pays:
    one precision and at least two consumer warpgroups.  With both precisions the kernel has
    two pipelined loops, one per branch, which TileLang cannot split into producer and
    consumer; with one consumer warpgroup (small tiles, M <= 256) it measured up to 2x slower
    on the H100 than the plain cp.async multi-stage pipeline.  The overlapped decode's two
    branches (4-bit, 8-bit rows) run in different blocks, so their shared buffers may overlap
    (TileLang's aggressive merge): 97 instead of 161 KB at 64 x 128, two blocks per SM."""
    if kind == "int8_gemm" and len(args) > 3:  # mixllm promotion: wrong results warp-specialized (H100)
        return {"tl.disable_warp_specialized": True}
    if kind == "mixllm_mma":  # warp-specialized, it gave wrong results on the H100 (128x128 tiles, 4-bit rows only)
        return {"tl.disable_warp_specialized": True}
    if kind == "mma":
        schedule, has4, has8 = args[2], args[-2], args[-1]
        if schedule.overlap or schedule.register_a:  # own producer warpgroup; 4- and 8-bit branches share memory
            return {"tl.disable_warp_specialized": True, "tl.enable_aggressive_shared_memory_merge": True}
        if (has4 and has8) or schedule.threads < 256:
            return {"tl.disable_warp_specialized": True}
    return {}


def _register_decode(schedule: Schedule, arch: str) -> bool:
    """Whether a tensor-core schedule runs the register-decode kernel (Hopper; elsewhere its
    tile runs the in-loop kernel, on X in plain K order)."""
    return schedule.register_a and arch.startswith("sm_90")


def build(kind: str, arch: str, *args):
    """The TileLang PrimFunc of one kernel.  Kinds and their args: 'mma', 'gemv', 'mixllm_mma'
    and 'mixllm_gemv' (k, group_size, schedule, dtype, has4, has8), 'act' (k, dtype[, zeroes a
    split-K workspace]), 'act_group' (k, activation group, dtype), 'epi' (dtype, has4),
    'mixllm_sum' (split_k, dtype),
    'predecode' (k, group_size, mixllm, has4, has8), 'int8_gemm' (k, schedule, dtype[, activation
    group, group_size for mixllm])."""
    if kind == "mma":
        if _register_decode(args[2], arch):
            return register_decode_gemm(*args)
        if args[2].overlap and arch.startswith("sm_90"):
            return overlapped_decode_gemm(*args)
        return mixed_gemm(*args, wgmma=arch.startswith("sm_90"))
    if kind == "mixllm_mma":
        if args[2].overlap and arch.startswith("sm_90"):
            return overlapped_mixllm_gemm(*args)
        return mixllm_gemm(*args, wgmma=arch.startswith("sm_90"))
    if kind == "mixllm_gemv":
        return mixllm_gemv(*args)
    if kind == "act_group":
        return act_quant_grouped(*args)
    if kind == "epi":
        return epilogue(*args)
    if kind == "mixllm_sum":
        return split_sum(*args)
    if kind == "gemv":
        return decode_gemv(*args)
    if kind == "act":
        return act_quant(*args)
    if kind == "predecode":
        return predecode(*args)
    if kind == "int8_gemm":
        return int8_gemm(*args, wgmma=arch.startswith("sm_90"))
    raise ValueError(f"unknown kernel kind {kind!r}")


@lru_cache(maxsize=None)
def compiled(kind: str, arch: str, *args):
    """One kernel, compiled (or loaded from TileLang's disk cache, its IR from mixkern's,
    :mod:`.ir_cache`)."""
    job = (kind, arch, *args)
    func = ir_cache.load(job)
    fresh = func is None
    if fresh:
        func = build(kind, arch, *args)
    log = logging.getLogger("tilelang")
    level = log.level
    log.setLevel(max(level, logging.WARNING))  # TileLang logs two INFO lines per kernel; keep user output clean
    try:
        kernel = tilelang.compile(func, target=target(arch), pass_configs=_pass_configs(kind, args))
    finally:
        log.setLevel(level)
    if fresh:
        ir_cache.store(job, func)
    return kernel


def kernel_jobs(arch: str, k: int, group_size: int, schedule: AnySchedule, dtype: str,
                has4: bool = True, has8: bool = True, fmt: WeightFormat | str = "progressive") -> list[tuple]:
    """The ``compiled`` argument tuples that one GEMM with this schedule launches (``fmt``:
    a :class:`WeightFormat` value or alias; the mixllm kernels take :func:`for_mixllm`'s schedule)."""
    if WeightFormat.parse(fmt) is WeightFormat.MIXLLM:
        return _mixllm_jobs(arch, k, group_size, schedule, dtype, has4, has8)
    if isinstance(schedule, Schedule) and schedule.predecode:
        return [("act", arch, k, dtype), ("predecode", arch, k, group_size, False, has4, has8),
                ("int8_gemm", arch, k, schedule.fitted(arch), dtype)]
    gemv = ("gemv", arch, k, group_size, schedule, dtype, has4, has8)
    if isinstance(schedule, GemvSchedule) and schedule.fused:
        return [gemv]  # quantizes x itself
    if isinstance(schedule, GemvSchedule):
        return [("act", arch, k, dtype), gemv]
    mma = ("mma", arch, k, group_size, schedule.fitted(arch, has4, has8), dtype, has4, has8)
    act = ("act", arch, k, dtype, *(() if schedule.split_k == 1 else (True,)))  # a split act also zeroes the workspace
    if _register_decode(schedule, arch):  # X in the register fragment's K order
        act = ("act", arch, k, dtype, schedule.split_k > 1, True)
    return [act, mma] if schedule.split_k == 1 else [act, mma, ("epi", arch, dtype, has4)]


def _mixllm_jobs(arch: str, k: int, group_size: int, schedule: AnySchedule, dtype: str,
                 has4: bool, has8: bool) -> list[tuple]:
    """mixllm: the grouped activation quantization, then the decode or tensor-core kernel with
    one K tile per activation group (and the split-K sum, or the predecode and int8 GEMM)."""
    schedule = for_mixllm(schedule, k, group_size, arch, has4, has8)
    span = WeightFormat.MIXLLM.act_group_size(group_size)
    if isinstance(schedule, Schedule) and schedule.predecode:
        return [("act_group", arch, k, span, dtype), ("predecode", arch, k, group_size, True, has4, has8),
                ("int8_gemm", arch, k, schedule, dtype, span, group_size)]
    kind = "mixllm_gemv" if isinstance(schedule, GemvSchedule) else "mixllm_mma"
    main = (kind, arch, k, group_size, schedule, dtype, has4, has8)
    if isinstance(schedule, Schedule) and schedule.split_k > 1:  # K slices into a float32 workspace, summed in order
        return [("act_group", arch, k, span, dtype), main, ("mixllm_sum", arch, schedule.split_k, dtype)]
    return [("act_group", arch, k, span, dtype), main]


def kernel_jobs_any_split(arch: str, k: int, group_size: int, schedule: AnySchedule, dtype: str,
                          fmt: str = "progressive") -> list[tuple]:
    """``kernel_jobs`` for every mix of 4- and 8-bit rows a weight can have, without repeats."""
    return list(dict.fromkeys(j for has4, has8 in PRECISION_SPLITS
                              for j in kernel_jobs(arch, k, group_size, schedule, dtype, has4, has8, fmt)))


def quantize_activation_cuda(x: torch.Tensor, arch: str | None = None,
                             group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) fp16/bf16 on a GPU -> (xq int8 (M, K), a fp32 (M,)) by the activation kernel;
    with ``group_size`` (64 or 128), a (M, K / group_size) by the grouped kernel (mixllm)."""
    arch, (m, k), dtype = arch or arch_of(x.device), x.shape, TL_DTYPES[x.dtype]
    if group_size is None:
        return _quantize(compiled("act", arch, k, dtype), x, None)
    return _quantize(compiled("act_group", arch, k, group_size, dtype), x, group_size)


def _quantize(act_kernel, x: torch.Tensor, span: int | None, *workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """(xq, a) by ``act_kernel``, which also zeroes a split-K ``workspace`` if one is given."""
    xq = torch.empty(x.shape, dtype=torch.int8, device=x.device)  # torch.empty: faster than new_empty
    a = _scales(x, span)
    act_kernel(_aligned(x), xq, a, *workspace)
    return xq, a


def _scales(x: torch.Tensor, span: int | None) -> torch.Tensor:
    """The activation scales' buffer: float32 (M,) per token, (M, K / span) per group."""
    m, k = x.shape
    return torch.empty((m,) if span is None else (m, k // span), dtype=torch.float32, device=x.device)


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous at a 16-byte boundary, for the kernels' 128-bit loads (no copy when it is)."""
    t = t.contiguous()
    return t.clone() if t.data_ptr() % 16 else t


def _words(t: torch.Tensor) -> torch.Tensor:
    """A byte tensor as int32 words for the decode kernel's 128-bit loads."""
    return _aligned(t).view(torch.int32)


@lru_cache(maxsize=None)
def _empty_rows(device, k: int, group_size: int, words: bool, mixllm: bool) -> dict:
    """One-row stand-ins for the absent precision in the one-launch kernels' fixed signatures
    (weights as int32 words for the decode kernels, as bytes for the tensor-core ones), in
    each format's kernel argument order."""
    z = lambda *shape, dtype=torch.int32: torch.zeros(*shape, dtype=dtype, device=device)  # noqa: E731
    g = k // group_size
    w4, w8 = (z(1, k // 8), z(1, k // 4)) if words else (z(1, k // 2, dtype=torch.uint8), z(1, k, dtype=torch.int8))
    if mixllm:  # W4, Z, S4 (fp16 group scales), I4 / W8, S8 (fp16 group scales), I8
        return {4: (w4, z(1, g, dtype=torch.uint8), z(1, g, dtype=torch.float16), z(1)),
                8: (w8, z(1, g, dtype=torch.float16), z(1))}
    return {4: (w4, z(1, g, dtype=torch.uint8), z(1, g, dtype=torch.uint8), z(1, dtype=torch.float32), z(1)),
            8: (w8, z(1, dtype=torch.float32), z(1))}


def _launcher(kernel):
    """What to call to launch ``kernel``: its TVM-FFI function where TileLang exposes it.  The
    JIT kernel's own ``__call__`` re-marshals the argument list in Python on every launch
    (allocating declared outputs, none here: every output is an argument); the function checks
    each argument's dtype, shape and device itself, in C++.  Anything else (another backend,
    a test's recorder) is called as it is."""
    adapter = getattr(kernel, "adapter", None)
    get = getattr(adapter, "_get_executable", None)
    if get is None or getattr(adapter, "result_idx", None) or getattr(adapter, "_ffi_callee_allocated_output_abi", False):
        return kernel
    return get()


class _Plan:
    """What one launch needs that does not depend on the tensors: the compiled kernels (exactly
    ``kernel_jobs``, the list warmup compiles) and stand-ins for an absent precision.  Built
    once per shape and schedule, so a repeated call costs one cache lookup, the output and
    the launches -- no schedule pick, kernel-cache hashing or weight validation."""

    __slots__ = ("act", "main", "epi", "predecode", "words", "empty4", "empty8", "span", "mixllm", "group_size",
                 "split_k")

    def __init__(self, arch: str, device: torch.device, k: int, group_size: int, has4: bool, has8: bool,
                 schedule: AnySchedule, dtype: torch.dtype, fmt: WeightFormat = WeightFormat.PROGRESSIVE):
        jobs = kernel_jobs(arch, k, group_size, schedule, TL_DTYPES[dtype], has4, has8, fmt)
        kernels = {job[0]: _launcher(compiled(*job)) for job in jobs}
        self.act = kernels.get("act") or kernels.get("act_group")  # none: a fused decode kernel
        self.epi, self.predecode = kernels.get("epi") or kernels.get("mixllm_sum"), kernels.get("predecode")
        self.split_k = next((job[2] for job in jobs if job[0] == "mixllm_sum"), 1)  # mixllm's fp32 K slices
        self.main = next(kernels[kind] for kind in ("gemv", "mma", "mixllm_gemv", "mixllm_mma", "int8_gemm")
                         if kind in kernels)
        self.words = any(job[0] in ("gemv", "mixllm_gemv") for job in jobs)  # for_mixllm may map a GEMV to a tile
        self.span = fmt.act_group_size(group_size)  # None: one activation scale per token
        self.mixllm, self.group_size = fmt is WeightFormat.MIXLLM, group_size
        empty = _empty_rows(device, k, group_size, self.words, self.mixllm)
        self.empty4, self.empty8 = (None if has4 else empty[4]), (None if has8 else empty[8])

    def weight_rows(self, rows4: tuple, rows8: tuple) -> tuple[tuple, tuple]:
        """The kernels' weight arguments from a layer's row tensors (each format's order, weights
        first): words for the decode kernels, a one-row stand-in for an absent precision."""
        rows4 = self.empty4 or ((_words(rows4[0]), *rows4[1:]) if self.words else rows4)
        rows8 = self.empty8 or ((_words(rows8[0]), *rows8[1:]) if self.words else rows8)
        return rows4, rows8

    def run(self, x: torch.Tensor, n: int, rows4: tuple, rows8: tuple) -> torch.Tensor:
        """y (M, N); rows4 / rows8: the layer's row tensors (see :meth:`weight_rows`)."""
        return self.launch(x, n, *self.weight_rows(rows4, rows8))

    def launch(self, x: torch.Tensor, n: int, rows4: tuple, rows8: tuple) -> torch.Tensor:
        """y (M, N) from x and the prepared :meth:`weight_rows`."""
        m = x.shape[0]
        y = torch.empty(m, n, dtype=x.dtype, device=x.device)
        if POISON_OUTPUT:
            y.fill_(float("nan"))
        if self.act is None:  # the fused decode kernel quantizes x itself ('a' is its scratch)
            self.main(_aligned(x), _scales(x, self.span), *rows4, *rows8, y)
            return y
        if self.epi is not None and self.mixllm:  # split-K: each K slice's fp32 chain, then their sum in order
            ws = torch.empty(self.split_k * m, n, dtype=torch.float32, device=x.device)  # every element written
            self.main(*_quantize(self.act, x, self.span), *rows4, *rows8, ws)
            self.epi(ws, y)
            return y
        if self.epi is not None:  # split-K: exact int32 partial sums, then one epilogue pass
            acc = torch.empty(m, n, dtype=torch.int32, device=x.device)
            xq, a = _quantize(self.act, x, self.span, acc)  # which zeroes acc: no memset launch
            self.main(xq, a, *rows4, *rows8, acc)
            self.epi(acc, a, rows4[3], rows4[4], rows8[1], rows8[2], y)
            return y
        xq, a = _quantize(self.act, x, self.span)
        if self.predecode is not None:
            self._run_predecoded(xq, a, rows4, rows8, y)
        elif self.words:
            self.main(_words(xq), a, *rows4, *rows8, y)
        else:
            self.main(xq, a, *rows4, *rows8, y)
        return y

    def _run_predecoded(self, xq: torch.Tensor, a: torch.Tensor, rows4: tuple, rows8: tuple, y: torch.Tensor):
        """The whole layer's int8 weights and scales in output order (an N x K workspace), then
        the plain int8 GEMM; mixllm's activation scales go K-major for its pipelined loads."""
        (m, k), n = xq.shape, y.shape[1]
        wd = torch.empty(n, k, dtype=torch.int8, device=xq.device)
        sd = torch.empty((k // self.group_size, n) if self.mixllm else (n,), dtype=torch.float32, device=xq.device)
        self.predecode(*rows4, *rows8, wd, sd)
        self.main(xq, _k_major(a) if self.mixllm else a, wd, sd, y)


def _k_major(a: torch.Tensor) -> torch.Tensor:
    """(M, G) activation group scales as (G, Mp), Mp = M rounded up to 4: each group's scales
    are one 16-byte-aligned row, as the predecoded mixllm GEMM's TMA loads need."""
    m, groups = a.shape
    at = torch.empty(groups, -(-m // 4) * 4, dtype=a.dtype, device=a.device)
    at[:, :m].copy_(a.t())
    return at


@lru_cache(maxsize=None)
def _plan(arch: str, device: torch.device, k: int, group_size: int, has4: bool, has8: bool,
          schedule: AnySchedule, dtype: torch.dtype, fmt: WeightFormat) -> _Plan:
    return _Plan(arch, device, k, group_size, has4, has8, schedule, dtype, fmt)


@lru_cache(maxsize=16384)
def _picked_plan(arch: str, device: torch.device, m: int, n: int, k: int, group_size: int, n8: int, has4: bool,
                 dtype: torch.dtype, fmt: WeightFormat) -> _Plan:
    """The plan of the schedule ``pick`` chooses, keyed by everything that choice depends on
    (M exactly: the heuristic looks at more than M's bucket)."""
    schedule = pick(arch, m, n, k, group_size, n8, sm_count(device), **format_pick(fmt))
    return _plan(arch, device, k, group_size, has4, n8 > 0, schedule, dtype, fmt)


def _plan_for(m: int, k: int, dtype: torch.dtype, device: torch.device, n4: int, n8: int, n: int,
              group_size: int, fmt: WeightFormat, schedule: AnySchedule | None, arch: str | None) -> _Plan:
    arch = arch or arch_of(device)
    if schedule is None:
        return _picked_plan(arch, device, m, n, k, group_size, n8, n4 > 0, dtype, fmt)
    schedule.check(k, group_size, n)
    return _plan(arch, device, k, group_size, n4 > 0, n8 > 0, schedule, dtype, fmt)


def _format_rows(fmt: WeightFormat, idx4, idx8, qweight4, zeros4, scales4, chan_scale4, qweight8, scale8) -> tuple:
    """(rows4, rows8): a layer's tensors in its format's kernel argument order."""
    if fmt is WeightFormat.MIXLLM:
        return (qweight4, zeros4, scales4, idx4), (qweight8, scale8, idx8)
    return (qweight4, scales4, zeros4, chan_scale4, idx4), (qweight8, scale8, idx8)


def gemm_flat(x: torch.Tensor, idx4, idx8, qweight4, zeros4, scales4, chan_scale4, qweight8, scale8, n: int,
              group_size: int, fmt: WeightFormat, schedule: AnySchedule | None = None,
              arch: str | None = None) -> torch.Tensor:
    """:func:`gemm_cuda` on the op's flat arguments (the CUDA kernel of ``torch.ops.mixkern.gemm``).
    The weight is trusted: it was validated when it was quantized or loaded."""
    m, k = x.shape
    plan = _plan_for(m, k, x.dtype, x.device, idx4.shape[0], idx8.shape[0], n, group_size, fmt, schedule, arch)
    return plan.run(x, n, *_format_rows(fmt, idx4, idx8, qweight4, zeros4, scales4, chan_scale4, qweight8, scale8))


def _copied(given: tuple, built: tuple, stand_in) -> bool:
    """Whether :meth:`_Plan.weight_rows` copied this precision's weight (a misaligned view)."""
    return built is not stand_in and built[0].data_ptr() != given[0].data_ptr()


def prepare(m: int, k: int, dtype: torch.dtype, device: torch.device, idx4, idx8, qweight4, zeros4, scales4,
            chan_scale4, qweight8, scale8, n: int, group_size: int, fmt: WeightFormat):
    """``launch(x) -> y`` for one layer and M tokens of ``dtype``: the schedule picked, kernels
    looked up and weight arguments built once, so that a call is the output's allocation and
    the launches (:class:`~mixkern.MixLinear`'s eager hot path).  x must be (M, K) on ``device``."""
    plan = _plan_for(m, k, dtype, device, idx4.shape[0], idx8.shape[0], n, group_size, fmt, None, None)
    given = _format_rows(fmt, idx4, idx8, qweight4, zeros4, scales4, chan_scale4, qweight8, scale8)
    rows4, rows8 = plan.weight_rows(*given)
    if _copied(given[0], rows4, plan.empty4) or _copied(given[1], rows8, plan.empty8):
        return lambda x: plan.run(x, n, *given)  # rebuilt per call, so in-place writes are seen
    run = plan.launch

    def launch(x: torch.Tensor) -> torch.Tensor:
        return run(x, n, rows4, rows8)
    return launch


def chain_slices(m: int, pw: PackedWeight, device: torch.device, schedule: AnySchedule | None = None) -> int:
    """The K slices of the mixllm fp32 chain that ``gemm_cuda`` runs for M tokens (1 for the
    progressive format, whose split-K sums are exact): a bit-exact check passes it to
    :func:`mixkern.reference.reference_gemm_quantized` as ``split_k``."""
    if pw.format is not WeightFormat.MIXLLM:
        return 1
    (n, k), n8, arch = pw.shape, pw.idx8.shape[0], arch_of(device)
    schedule = schedule or pick(arch, m, n, k, pw.group_size, n8, sm_count(device), **format_pick(pw.format))
    return getattr(for_mixllm(schedule, k, pw.group_size, arch, pw.idx4.shape[0] > 0, n8 > 0), "split_k", 1)


def gemm_cuda(x: torch.Tensor, pw: PackedWeight, schedule: AnySchedule | None = None,
              arch: str | None = None) -> torch.Tensor:
    """y = mixkern.gemm(x, pw) with the TileLang kernels (either format); ``schedule`` and
    ``arch`` override the table's choice and the GPU's own build target (the autotuner uses them)."""
    return gemm_flat(x, pw.idx4, pw.idx8, pw.qweight4, pw.zeros4, pw.scales4, pw.chan_scale4, pw.qweight8,
                     pw.scale8, pw.shape[0], pw.group_size, pw.format, schedule, arch)
