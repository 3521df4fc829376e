"""Hypothesis strategies shared by the tests: shapes, fractions, value ranges, dtypes."""

import os

import torch
from hypothesis import strategies as st

from mixkern import GROUP_SIZES, WeightFormat

dtypes = st.sampled_from([torch.float16, torch.bfloat16])
formats = st.sampled_from(list(WeightFormat))


@st.composite
def weights(draw, max_n=96, max_groups=4):
    """(w fp32 (N, K), group_size): LLM-like rows, random scale 1e-3..1e2, optional outlier rows/cols."""
    group_size = draw(st.sampled_from(GROUP_SIZES))
    n = draw(st.integers(1, max_n))
    k = group_size * draw(st.integers(1, max_groups))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    scale = 10.0 ** draw(st.floats(-3, 2))
    w = torch.randn(n, k, generator=gen) * scale
    if draw(st.booleans()):  # outlier rows
        rows = torch.randint(0, n, (max(1, n // 10),), generator=gen)
        w[rows] *= draw(st.floats(2, 50))
    if draw(st.booleans()):  # outlier input channels
        cols = torch.randint(0, k, (max(1, k // 50),), generator=gen)
        w[:, cols] *= draw(st.floats(2, 20))
    if draw(st.booleans()):  # a few exact zeros and an all-zero group
        w[0, :group_size] = 0
    return w.clamp(-6e4, 6e4), group_size  # finite once cast to fp16


@st.composite
def eight_bit_choice(draw, n):
    """None, 'all', a bool mask or an index list covering fractions 0..1."""
    kind = draw(st.sampled_from(["none", "all", "fraction", "mask"]))
    if kind == "none":
        return None
    if kind == "all":
        return "all"
    fraction = draw(st.floats(0, 1))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    idx = torch.randperm(n, generator=gen)[: round(fraction * n)]
    if kind == "mask":
        mask = torch.zeros(n, dtype=torch.bool)
        mask[idx] = True
        return mask
    return idx.tolist()


def activations(gen, m, k, dtype, scale=1.0, outliers=True):
    x = torch.randn(m, k, generator=gen) * scale * torch.exp(torch.randn(m, 1, generator=gen))
    if outliers:
        x[:, torch.randint(0, k, (max(1, k // 64),), generator=gen)] *= 30
    return x.clamp(-6e4, 6e4).to(dtype)  # stay finite in fp16


def within(y: torch.Tensor, y64: torch.Tensor, tol: torch.Tensor) -> bool:
    """|y - y64| <= tol elementwise; where y64 reaches y's dtype's max, y must saturate there
    with y64's sign (the dtype's max or inf: which one depends on the last rounding)."""
    top = torch.finfo(y.dtype).max
    big = y64.abs() >= top
    yd = y.to(torch.float64)
    saturated = (yd[big].abs() >= top) & (torch.sign(yd[big]) == torch.sign(y64[big]))
    return bool(saturated.all()) and bool(((yd - y64).abs()[~big] <= tol[~big]).all())


def gpu_case(seed, m, n, k, fraction, dtype, group_size=128, format="progressive", outlier_channels=False):
    """(PackedWeight, x) on the GPU for the kernel tests: weights with 5% outlier rows (x10),
    ``fraction`` of the rows 8-bit, activations with per-token magnitudes spread over e^±2 and,
    with ``outlier_channels``, a few channels x300 (what MixLLM's per-group scales are for)."""
    from mixkern import quantize_weight
    gen = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", generator=gen) * 0.05
    w[torch.randint(0, n, (max(1, n // 20),), device="cuda", generator=gen)] *= 10
    idx = torch.randperm(n, device="cuda", generator=gen)[: round(fraction * n)]
    x = torch.randn(m, k, device="cuda", generator=gen) * torch.exp(torch.randn(m, 1, device="cuda", generator=gen))
    if outlier_channels:
        x[:, torch.randint(0, k, (max(1, k // 500),), device="cuda", generator=gen)] *= 300
    return quantize_weight(w, idx.cpu().tolist(), group_size, format=format), x.to(dtype)


def compile_ahead(jobs) -> None:
    """Compile a GPU test module's kernels on all cores before its tests run (each compiles once;
    one at a time on first use would serialize them).  ``MIXKERN_COMPILE_AHEAD=0`` skips this,
    so that a ``-k`` selection of a few tests on a cold cache compiles only what it runs."""
    if os.environ.get("MIXKERN_COMPILE_AHEAD", "1") != "0":
        from mixkern.warmup import compile_jobs
        compile_jobs(list(jobs))
