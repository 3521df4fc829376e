"""The TileLang kernels on a CUDA GPU against the exact reference (skipped without CUDA)."""

import os
import random

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import mixkern
from mixkern import quantize_activation, quantize_weight, tolerance
from mixkern.reference import float64_gemm_quantized, reference_gemm_quantized
from mixkern.schedules import GemvSchedule, Schedule, pick
from kernel_jobs import STRUCTURAL, heuristic_schedules
from strategies import compile_ahead, gpu_case, within

pytestmark = pytest.mark.gpu
KS = (128, 512, 4096)  # K is compiled in; M, N and the 4-/8-bit split are dynamic
NS = (1, 7, 64, 100, 255, 300, 1000, 4096)
FRACTIONS = (0.0, 0.1, 0.5, 1.0)
DECODE_KS = (128, 4096, 14336)
DECODE_SCHEDULES = (  # the decode kernel's options: activation quantization fused in, row groups per block
    GemvSchedule(2, 4, 1, chunk=4, fused=True), GemvSchedule(4, 2, 4, chunk=16, fused=True),
    GemvSchedule(4, 8, 2, chunk=1, fused=True), GemvSchedule(1, 4, 3, chunk=8), GemvSchedule(8, 4, 1, chunk=16))
ACT_KS = (128, 896, 3584, 8960, 18944, 27648, 65536, 131072)  # odd factors, up to the K limit
SEED = int(os.environ.get("MIXKERN_SEED", random.randrange(2**31)))  # fresh shapes every run; set it to replay
ANY_SHAPES = [(r.choice([1, r.randint(2, 16), r.randint(17, 600), r.randint(601, 5000)]), r.randint(1, 20000),
               128 * r.randint(1, 256)) for r in [random.Random(SEED)] for _ in range(24)]  # (M, N, K)


def _any_shape_case(m, n, k):
    """The dtype a drawn shape runs in (alternating), and the 8-bit row counts it runs with."""
    return (torch.float16, torch.bfloat16)[(m + n + k) % 2], {f: round(f * n) for f in (0.0, 0.1, 1.0)}


@pytest.fixture(scope="module", autouse=True)
def compiled_kernels():
    """Every kernel this module runs, compiled first on all cores."""
    from mixkern.kernels.launch import arch_of, kernel_jobs, kernel_jobs_any_split, sm_count
    from mixkern.warmup import kernel_jobs as op_jobs
    device = torch.device("cuda")
    arch, sms = arch_of(device), sm_count(device)
    dtypes = ("float16", "bfloat16")
    reachable = sorted({(n, k, 128, round(f * n)) for n in NS for k in KS for f in FRACTIONS})
    jobs = op_jobs(arch, reachable, dtypes, max_tokens=4097, sms=sms)
    jobs += [j for s in STRUCTURAL for d in dtypes for j in kernel_jobs_any_split(arch, 4096, 128, s, d)]
    jobs += [j for s, (k, g) in heuristic_schedules().items() for j in kernel_jobs(arch, k, g, s, "float16")]
    jobs += [j for k in DECODE_KS for s in DECODE_SCHEDULES if _fits(s, k) for d in dtypes
             for j in kernel_jobs_any_split(arch, k, 128, s, d)]
    for m, n, k in ANY_SHAPES:
        dtype, n8s = _any_shape_case(m, n, k)
        jobs += [j for n8 in n8s.values() for j in kernel_jobs(arch, k, 128, pick(arch, m, n, k, 128, n8, sms),
                                                               str(dtype).split(".")[1], n8 < n, n8 > 0)]
    jobs += [j for k in ACT_KS for d in dtypes for j in [("act", arch, k, d)]]
    compile_ahead(dict.fromkeys(jobs))


def _fits(schedule, k):
    try:
        schedule.check(k, 128)
        return True
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    from mixkern.kernels import launch
    monkeypatch.setattr(launch, "POISON_OUTPUT", True)


def _inputs(seed, m, n, k, fraction, dtype, group_size=128):
    return gpu_case(seed, m, n, k, fraction, dtype, group_size)


def _check(x, pw, schedule=None):
    from mixkern.kernels.launch import gemm_cuda
    y = gemm_cuda(x, pw, schedule) if schedule else mixkern.gemm(x, pw)
    xq, a = quantize_activation(x)
    y_ref = reference_gemm_quantized(xq, a, pw, x.dtype)
    assert not torch.isnan(y).any(), "kernel left outputs unwritten"
    assert within(y, float64_gemm_quantized(xq, a, pw), tolerance(xq, a, pw, x.dtype))
    return (y != y_ref).float().mean().item()  # fraction of outputs not bit-equal to the reference


@settings(max_examples=60)
@given(m=st.one_of(st.integers(1, 20), st.integers(1, 600), st.sampled_from([4096, 4097])),
       n=st.sampled_from(NS), k=st.sampled_from(KS),
       fraction=st.sampled_from(FRACTIONS), dtype=st.sampled_from([torch.float16, torch.bfloat16]),
       seed=st.integers(0, 2**31 - 1))
def test_gemm_kernels_match_reference(m, n, k, fraction, dtype, seed):
    """The op's own schedule for any M: N and K from fixed sets, so the fixture compiles every
    kernel these draws can reach up front (any N: test_any_k_and_n)."""
    x_pw = _inputs(seed, m, n, k, fraction, dtype)
    assert _check(x_pw[1], x_pw[0]) == 0.0


@pytest.mark.parametrize("schedule, k, group_size",
                         [(s, 4096, 128) for s in STRUCTURAL] + [(s, k, g) for s, (k, g) in heuristic_schedules().items()],
                         ids=lambda v: getattr(v, "key", str(v)))
@pytest.mark.parametrize("m", [1, 3, 16, 77])
def test_every_heuristic_schedule(schedule, k, group_size, m):
    """Each code path (every precision mix and dtype), and each schedule the heuristic picks for
    a real model's layer at the K it picks it for (10% 8-bit), on awkward M and N."""
    structural = (schedule, k) in [(s, 4096) for s in STRUCTURAL]
    for fraction, dtype in ([(f, d) for f in (0.0, 0.1, 1.0) for d in (torch.float16, torch.bfloat16)]
                            if structural else [(0.1, torch.float16)]):
        pw, x = _inputs(m, m, 520, k, fraction, dtype, group_size)
        assert _check(x, pw, schedule) == 0.0


MID_SHAPES = [(64, 14336, 4096), (77, 14000, 4096), (100, 28672, 8192), (128, 14336, 4096), (129, 18944, 3584),
              (191, 11008, 4096), (20, 14336, 4096), (33, 4096, 14336), (128, 4096, 4096), (150, 3584, 18944),
              (40, 2000, 8192), (200, 14336, 4096), (300, 4096, 14336), (384, 18944, 3584), (257, 1000, 8192),
              (5, 4096, 14336), (12, 8000, 8192), (40, 28000, 8192), (32, 1280, 8192), (50, 1000, 4096),
              (96, 3000, 3584), (100, 2000, 11008), (40, 2000, 11008), (24, 1500, 8960)]
# (M, N, K) that the overlapped decode serves on an H100: 33 / 128 / 150 / 40 / 300 / 257 / 5 / 12 split K, 200 .. 384
# wide token tiles, 12 and 40 the 64 x 256 tile (split, unsplit); below 17 tokens only long, wide layers; the last
# four narrow layers on the 64 x 64 tile (split 8, 4, unsplit, 2 of K = 11008), two on its 64-wide K tiles in four slices


@pytest.mark.parametrize("m, n, k", MID_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("fraction", [0.0, 0.1, 1.0])
def test_mid_prompts_run_the_overlapped_decode_exactly(m, n, k, fraction):
    """5..384 tokens: the op picks the overlapped decode (Hopper), split over K where N is short,
    and it is bit-equal to the reference for either precision alone and mixed, N off the tile grid."""
    from mixkern.kernels.launch import arch_of, sm_count
    device = torch.device("cuda")
    dtype = (torch.float16, torch.bfloat16)[m % 2]
    pw, x = _inputs(SEED + m, m, n, k, fraction, dtype)
    schedule = pick(arch_of(device), m, n, k, 128, round(fraction * n), sm_count(device))
    assert schedule.overlap or arch_of(device) != "sm_90a"
    assert _check(x, pw) == 0.0, f"MIXKERN_SEED={SEED}"


@pytest.mark.parametrize("m, n, k", ANY_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("fraction", [0.0, 0.1, 1.0])
def test_any_k_and_n(m, n, k, fraction):
    """K any multiple of 128 up to 32768, N up to 20000, M up to 5000: drawn afresh each run
    (MIXKERN_SEED replays a draw), the op's own schedule choice, bit-equal to the reference."""
    dtype, _ = _any_shape_case(m, n, k)
    pw, x = _inputs(SEED + m + n + k, m, n, k, fraction, dtype)
    assert _check(x, pw) == 0.0, f"MIXKERN_SEED={SEED}"


@pytest.mark.parametrize("m", [1, 3, 16, 77])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_non_finite_token_poisons_only_its_own_row(m, dtype):
    """NaN or Inf in one token: that token's outputs are all non-finite (its scale is inf), every
    other token's are exact -- on the fused and plain decode paths and the tensor-core path."""
    from mixkern.kernels.launch import gemm_cuda
    pw, x = _inputs(m, m, 700, 4096, 0.1, dtype)
    bad = {0: float("nan"), m - 1: float("inf")} if m > 1 else {0: float("nan")}
    for row, value in bad.items():
        x[row, 17 * (row + 1)] = value
    y = gemm_cuda(x, pw)
    assert not torch.isfinite(y[list(bad)]).any()
    clean = [r for r in range(m) if r not in bad]
    if clean:
        xq, a = quantize_activation(x[clean])
        assert torch.equal(y[clean], reference_gemm_quantized(xq, a, pw, dtype))


@settings(max_examples=60)
@given(m=st.integers(1, 16), n=st.one_of(st.integers(1, 300), st.sampled_from([4096, 1000])),
       k=st.sampled_from(DECODE_KS), schedule=st.sampled_from(DECODE_SCHEDULES),
       fraction=st.sampled_from([0.0, 0.1, 1.0]), dtype=st.sampled_from([torch.float16, torch.bfloat16]),
       zero_row=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_decode_kernel_options_match_reference(m, n, k, schedule, fraction, dtype, zero_row, seed):
    """Fused activation quantization and several row groups per block: bit-equal to the reference,
    also with a token of zeros (scale 0) and K shorter than one block step."""
    assume(_fits(schedule, k))
    pw, x = _inputs(seed, m, n, k, fraction, dtype)
    if zero_row:
        x[m // 2] = 0
    assert _check(x, pw, schedule) == 0.0


@given(m=st.integers(1, 70), k=st.sampled_from(ACT_KS), dtype=st.sampled_from([torch.float16, torch.bfloat16]),
       scale=st.floats(-3, 3), seed=st.integers(0, 2**31 - 1))
def test_activation_kernel_is_bit_exact(m, k, dtype, scale, seed):
    from mixkern.kernels.launch import quantize_activation_cuda
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = (torch.randn(m, k, device="cuda", generator=gen) * 10**scale).to(dtype)
    x[0, : k // 2] = 0
    xq, a = quantize_activation_cuda(x)
    xq_ref, a_ref = quantize_activation(x)
    assert torch.equal(a, a_ref) and torch.equal(xq, xq_ref)


def test_mixlinear_and_quantize_model_run_the_kernels_exactly():
    from mixkern import MixLinear, QuantConfig, quantize_model
    from mixkern.lm import LMConfig, TinyLM
    from mixkern.reference import reference_gemm
    torch.manual_seed(0)
    packed = quantize_weight(torch.randn(300, 512, device="cuda") * 0.05, list(range(0, 300, 9)), 128)
    layer = MixLinear(packed)
    for m in (1, 7, 300):
        x = torch.randn(2, m, 512, device="cuda").half()
        assert torch.equal(layer(x), reference_gemm(x.reshape(-1, 512), packed).reshape(2, m, 300))
    model = TinyLM(LMConfig(d_model=128, n_layers=2, n_heads=2, d_ff=256, seq_len=32)).cuda().eval()
    batches = [torch.randint(0, 256, (4, 33), device="cuda") for _ in range(2)]
    report = quantize_model(model, batches, QuantConfig(fraction=0.1))
    assert report.fraction_8bit > 0 and torch.isfinite(model.half()(batches[0][:, :-1]).float()).all()
