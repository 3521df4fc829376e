"""The mixllm format's TileLang kernels on a CUDA GPU against the exact reference (skipped
without CUDA): grouped activation quantization, the decode GEMV, the tensor-core kernel.

Bit-equality is the claim (every kernel keeps the format's fp32 chain order, in its K slices
when split: the reference is asked for the same slices); the float64
bound (:func:`mixkern.tolerance`) is checked too, so a failure says which one broke."""

import os
import random

import pytest
import torch

import mixkern
from mixkern import quantize_activation, tolerance
from mixkern.reference import float64_gemm_quantized, quantize_for, reference_gemm_quantized, token_slices
from mixkern.schedules import format_pick
from kernel_jobs import STRUCTURAL
from strategies import compile_ahead, gpu_case, within

pytestmark = pytest.mark.gpu
SEED = int(os.environ.get("MIXKERN_SEED", random.randrange(2**31)))  # fresh shapes every run; set it to replay
GROUPS = (64, 128, 256)
SPLITS = (0.0, 0.1, 1.0)
FORMAT = format_pick("mixllm")  # pick's keywords for this format, as the op passes them
ANY_SHAPES = [(r.choice([1, r.randint(2, 16), r.randint(17, 600), r.randint(601, 5000)]), r.randint(1, 20000),
               128 * r.randint(1, 256)) for r in [random.Random(SEED + 1)] for _ in range(16)]  # (M, N, K)
ACT_KS = (128, 896, 3584, 8960, 18944, 131072)
MODEL_MS = (1, 3, 17, 100, 3000)  # awkward token counts nobody tuned for


def _model_layers():
    """(N, K) of every distinct layer of two real models (K = 1536, 3584, 8960, 18944)."""
    from mixkern.shapes import CONFIGS, layer_shapes
    return sorted({s for name in ("qwen2.5-1.5b", "qwen2.5-7b") for s in layer_shapes(CONFIGS[name]).values()})


@pytest.fixture(scope="module", autouse=True)
def compiled_kernels():
    """Every kernel this module runs, compiled first on all cores."""
    from mixkern.kernels.launch import arch_of, kernel_jobs, kernel_jobs_any_split, sm_count
    from mixkern.schedules import fit, pick
    device = torch.device("cuda")
    arch, sms = arch_of(device), sm_count(device)
    jobs = [j for s in STRUCTURAL for g in GROUPS for d in ("float16", "bfloat16")
            for j in kernel_jobs_any_split(arch, _k_for(g), g, fit(s, _k_for(g), g), d, "mixllm")]
    for m, n, k in ANY_SHAPES:
        jobs += [j for f in SPLITS for j in kernel_jobs(arch, k, 128, pick(arch, m, n, k, 128, round(f * n), sms, **FORMAT),
                                                          _dtype(m, n, k), round(f * n) < n, f > 0, "mixllm")]
    jobs += [j for n, k in _model_layers() for m in MODEL_MS
             for j in kernel_jobs(arch, k, 128, pick(arch, m, n, k, 128, n // 10, sms, **FORMAT), "float16", fmt="mixllm")]
    jobs += [("act_group", arch, k, g, d) for k in ACT_KS for g in (64, 128) for d in ("float16", "bfloat16")]
    compile_ahead(dict.fromkeys(jobs))


def _k_for(group_size):
    return {64: 3584, 128: 4096, 256: 4608}[group_size]


def _dtype(m, n, k):
    return ("float16", "bfloat16")[(m + n + k) % 2]


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    from mixkern.kernels import launch
    monkeypatch.setattr(launch, "POISON_OUTPUT", True)


def _inputs(seed, m, n, k, fraction, dtype, group_size=128):
    return gpu_case(seed, m, n, k, fraction, dtype, group_size, "mixllm", outlier_channels=True)


def _check(x, pw, schedule=None):
    """Kernel output vs the reference: no unwritten element, inside the float64 bound, and the
    fraction of elements not bit-equal (the tests want 0)."""
    from mixkern.kernels.launch import gemm_cuda
    y = gemm_cuda(x, pw, schedule) if schedule else mixkern.gemm(x, pw)
    xq, a = quantize_for(x, pw)
    assert not torch.isnan(y).any(), "kernel left outputs unwritten"
    for sl in token_slices(x.shape[0], pw):  # the float64 terms are (M, N, K / A): a few tokens at a time
        assert within(y[sl], float64_gemm_quantized(xq[sl], a[sl], pw), tolerance(xq[sl], a[sl], pw, x.dtype))
    return (y != _reference(xq, a, pw, x.dtype, schedule)).float().mean().item()


def _reference(xq, a, pw, dtype, schedule=None):
    """The reference in the fp32 order of the kernel the op runs: its K slices, if split."""
    from mixkern.kernels.launch import chain_slices
    return reference_gemm_quantized(xq, a, pw, dtype, split_k=chain_slices(xq.shape[0], pw, xq.device, schedule))


@pytest.mark.parametrize("schedule", STRUCTURAL, ids=lambda s: s.key)
@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("m", [1, 3, 16, 77])
def test_every_code_path_is_bit_exact(schedule, group_size, m):
    """Each code path (one- and multi-token decode, fused picks run plain; small and large tensor-core tiles; a
    split-K schedule into a float32 workspace summed in order), each weight group (activation groups 64, 128),
    every precision mix and dtype, on awkward M and N; split-K schedules split."""
    from mixkern.schedules import fit
    k = _k_for(group_size)
    s = fit(schedule, k, group_size)
    for fraction in SPLITS:
        for dtype in (torch.float16, torch.bfloat16):
            pw, x = _inputs(m * 7 + group_size, m, 520, k, fraction, dtype, group_size)
            assert _check(x, pw, s) == 0.0


@pytest.mark.parametrize("m, n, k", ANY_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("fraction", SPLITS)
def test_any_k_and_n(m, n, k, fraction):
    """K any multiple of 128 up to 32768, N up to 20000, M up to 5000, drawn afresh each run
    (MIXKERN_SEED replays a draw), the op's own schedule: bit-equal to the reference."""
    dtype = getattr(torch, _dtype(m, n, k))
    pw, x = _inputs(SEED + m + n + k, m, n, k, fraction, dtype)
    assert _check(x, pw) == 0.0, f"MIXKERN_SEED={SEED}"


MID_CASES = [(64, 14336, 4096, 128), (77, 14000, 4096, 128), (100, 28672, 8192, 128), (128, 14336, 4096, 128),
             (129, 18944, 3584, 128), (191, 11008, 4096, 128), (96, 14336, 3584, 64), (70, 14336, 4608, 256),
             (32, 4096, 14336, 128), (100, 4096, 4096, 128), (150, 2000, 8192, 128), (40, 3584, 18944, 64),  # split K
             (200, 14336, 4096, 128), (256, 4000, 14336, 64),  # two 128-row tiles (from 192 tokens: none split)
             (5, 4096, 14336, 128), (12, 3100, 8192, 64),  # few tokens on long, wide layers
             (32, 1280, 8192, 128), (100, 2000, 11008, 128), (48, 3000, 3584, 64)]  # narrow layers: progressive's 64 x 64


@pytest.mark.parametrize("m, n, k, group_size", MID_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("fraction", SPLITS)
def test_mid_prompts_run_the_overlapped_kernel_exactly(m, n, k, group_size, fraction):
    """5..256 tokens on wide layers: the op picks the overlapped mixllm kernel on Hopper
    (promotion of group j - 1 and decode of j + 1 beside the MMA of j), split over K where the
    grid is short (N = 2000..4096), bit-equal to the reference in the same K slices for every
    weight group, precision mix and dtype, N off the tile grid."""
    from mixkern.kernels.launch import arch_of, sm_count
    from mixkern.schedules import for_mixllm, pick
    device = torch.device("cuda")
    arch = arch_of(device)
    pw, x = _inputs(SEED + m + group_size, m, n, k, fraction, (torch.float16, torch.bfloat16)[m % 2], group_size)
    schedule = for_mixllm(pick(arch, m, n, k, group_size, round(fraction * n), sm_count(device), **FORMAT), k, group_size, arch)
    assert schedule.overlap or arch != "sm_90a"
    assert (schedule.split_k > 1) == (n <= 4096 and m < 192) or arch != "sm_90a"
    assert _check(x, pw) == 0.0, f"MIXKERN_SEED={SEED}"


FEW_TOKEN_CASES = [(5, 2000, 14336, 128), (16, 4000, 4096, 128), (13, 1000, 8192, 128), (8, 3000, 4608, 256),
                   (16, 2000, 4096, 64)]


@pytest.mark.parametrize("m, n, k, group_size", FEW_TOKEN_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("fraction", SPLITS)
def test_few_tokens_at_long_k_run_the_split_tile_exactly(m, n, k, group_size, fraction):
    """5..16 tokens at K >= 4096 where the progressive pick is the multi-token GEMV: mixllm runs
    the 32 x 64 tensor-core tile split over K (for_mixllm), bit-equal in its K slices."""
    from mixkern.kernels.launch import arch_of, sm_count
    from mixkern.schedules import Schedule, for_mixllm, pick
    device = torch.device("cuda")
    arch = arch_of(device)
    pw, x = _inputs(SEED + m + k, m, n, k, fraction, (torch.float16, torch.bfloat16)[m % 2], group_size)
    schedule = for_mixllm(pick(arch, m, n, k, group_size, round(fraction * n), sm_count(device), **FORMAT), k, group_size, arch)
    assert isinstance(schedule, Schedule) and (schedule.block_m, schedule.split_k) == (32, 4)
    assert _check(x, pw) == 0.0, f"MIXKERN_SEED={SEED}"


@pytest.mark.parametrize("n, k", _model_layers(), ids=lambda v: str(v))
def test_real_model_layers(n, k):
    """Every layer shape of Qwen2.5-1.5B and -7B (fused q/k/v and gate/up included), 10% 8-bit
    rows, at M = 1, 3, 17, 100, 3000 with the op's own schedule: bit-equal to the reference."""
    for m in MODEL_MS:
        pw, x = _inputs(m + n + k, m, n, k, 0.1, torch.float16)
        assert _check(x, pw) == 0.0, f"M={m}"


@pytest.mark.parametrize("k", ACT_KS)
@pytest.mark.parametrize("group", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_grouped_activation_quantization_is_the_reference_rule(k, group, dtype):
    """xq and a (M, K / group) bit-equal to quantize_activation(x, group_size=group), with an
    all-zero group (a = 0), an outlier channel, and NaN / Inf groups (a = inf there only)."""
    from mixkern.kernels.launch import quantize_activation_cuda
    gen = torch.Generator(device="cuda").manual_seed(k + group)
    x = (torch.randn(5, k, device="cuda", generator=gen) * 3).to(dtype)
    x[0, :group] = 0
    x[1, 5] = 1000
    x[2, k - 1] = float("nan")
    x[3, k // 2] = float("inf")
    xq, a = quantize_activation_cuda(x, group_size=group)
    xq_ref, a_ref = quantize_activation(x, group_size=group, check=False)
    assert torch.equal(a, a_ref)
    finite = torch.isfinite(a_ref).repeat_interleave(group, dim=1)
    assert torch.equal(xq[finite], xq_ref[finite])


@pytest.mark.parametrize("m", [1, 3, 16, 77])
def test_a_non_finite_token_poisons_only_its_own_row(m):
    from mixkern.kernels.launch import chain_slices, gemm_cuda
    pw, x = _inputs(m, m, 700, 4096, 0.1, torch.float16)
    x[0, 17] = float("nan")
    y = gemm_cuda(x, pw)
    assert not torch.isfinite(y[0]).any()
    if m > 1:
        xq, a = quantize_for(x[1:], pw)
        split = chain_slices(m, pw, x.device)  # the kernel ran for m tokens
        assert torch.equal(y[1:], reference_gemm_quantized(xq, a, pw, x.dtype, split_k=split))


def test_mixlinear_and_cuda_graph_run_the_mixllm_kernels():
    """A mixllm MixLinear on the GPU is the op, eager and replayed from a CUDA graph."""
    pw, x = _inputs(3, 5, 1536, 1536, 0.1, torch.bfloat16)
    layer = mixkern.MixLinear(pw)
    xq, a = quantize_for(x, pw)
    ref = _reference(xq, a, pw, x.dtype)
    assert torch.equal(layer(x), ref)
    static_x = x.clone()
    layer(static_x)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = layer(static_x)
    static_x.copy_(x.flip(0))
    graph.replay()
    xq, a = quantize_for(x.flip(0), pw)
    assert torch.equal(y, _reference(xq, a, pw, x.dtype))
