"""The ``mixllm`` format (MixLLM's configuration): its contract executed exactly, its
activation groups, its quantizer, validation and checkpoints.  Float64 / exact-rational oracles."""

import json
import os
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mixkern
from mixkern import PackedWeight, QuantConfig, WeightFormat, load_quantized, quantize_model, quantize_weight, save_quantized
from mixkern.lm import LMConfig, TinyLM
from mixkern.ops import FORMAT_IDS, weight_args
from mixkern.quantize.activations import dequantize_activation, quantize_activation
from mixkern.reference import (fma32, float64_gemm_quantized, quantize_for, reference_gemm, reference_gemm_quantized,
                               tolerance)
from strategies import activations, dtypes, within

MIXLLM = WeightFormat.MIXLLM


def _round_f32(q: Fraction) -> float:
    """The float32 nearest the rational q, ties to even: an oracle independent of float64."""
    r = np.float32(float(q))
    cands = [r, np.nextafter(r, np.float32(np.inf)), np.nextafter(r, np.float32(-np.inf))]
    def key(c):
        return abs(Fraction(float(c)) - q), int(np.array(c).view(np.int32)) & 1
    return float(min(cands, key=key))


def _exact_fma(p, c, acc) -> float:
    return _round_f32(Fraction(int(p)) * Fraction(float(c)) + Fraction(float(acc)))


def test_fma32_rounds_once_even_where_float64_rounding_would_not():
    """1 + (2**-24 + 2**-60): float64 lands on the float32 midpoint and would round down to 1;
    a fused multiply-add rounds once, up to 1 + 2**-23.  (2**36 + 1 = 1774001 * 38737.)"""
    p, c, acc = torch.tensor([1774001.0], dtype=torch.float64), torch.tensor([38737 * 2.0**-60]), torch.ones(1)
    assert float(c) == 38737 * 2.0**-60 and float((p * c.double() + 1).float()) == 1.0  # the naive way is wrong
    assert float(fma32(p, c, acc)) == 1 + 2.0**-23 == _exact_fma(p, c, acc)


@given(seed=st.integers(0, 2**31 - 1), spread=st.integers(0, 60))
def test_fma32_is_correctly_rounded(seed, spread):
    gen = torch.Generator().manual_seed(seed)
    p = torch.randint(-(2**21) + 1, 2**21, (64,), generator=gen).double()
    c = (torch.randn(64, generator=gen) * 2.0 ** torch.randint(-30, 10, (64,), generator=gen)).float()
    acc = (torch.randn(64, generator=gen) * 2.0 ** torch.randint(-30, 10, (64,), generator=gen) * 2.0**spread).float()
    got = fma32(p, c, acc)
    assert [float(v) for v in got] == [_exact_fma(*t) for t in zip(p.tolist(), c.tolist(), acc.tolist())]


@st.composite
def mixllm_cases(draw, max_m=12):
    """(w, pw, x): K with odd factors, any N, groups 64/128, 8-bit fractions 0 / some / all, outlier channels."""
    k = draw(st.sampled_from([384, 640, 1536, 3584]))
    gs, n, m = draw(st.sampled_from([64, 128])), draw(st.integers(1, 70)), draw(st.integers(1, max_m))
    dtype = draw(dtypes)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    w = (torch.randn(n, k, generator=gen) * 10.0 ** draw(st.floats(-2, 1))).to(dtype)
    eight = {"none": None, "all": "all",
             "some": torch.randperm(n, generator=gen)[: draw(st.integers(1, n))].tolist()}[draw(st.sampled_from(["none", "some", "all"]))]
    pw = quantize_weight(w, eight, gs, "mixllm")
    x = activations(gen, m, k, dtype, scale=10.0 ** draw(st.floats(-2, 2)), outliers=False)
    if draw(st.booleans()):  # a few outlier channels, x100..x1000
        cols = torch.randint(0, k, (draw(st.integers(1, 4)),), generator=gen)
        x[:, cols] = (x[:, cols].float() * draw(st.floats(100, 1000))).clamp(-6e4, 6e4).to(dtype)
    return w, pw, x


@given(mixllm_cases())
def test_reference_within_tolerance_of_float64_and_the_op_equals_it(case):
    _, pw, x = case
    y = reference_gemm(x, pw)
    assert y.dtype == x.dtype and y.shape == (x.shape[0], pw.out_features)
    xq, a = quantize_for(x, pw)
    assert a.shape == (x.shape[0], pw.in_features // pw.group_size)
    assert within(y, float64_gemm_quantized(xq, a, pw), tolerance(xq, a, pw, x.dtype))
    assert torch.equal(mixkern.gemm(x, pw), y)


@given(mixllm_cases(max_m=6))
def test_reference_close_to_fp_matmul_within_quantization_error(case):
    """|y - x W^T| <= |x - xd| |W| + |xd| |W - Wd| + tol (elementwise triangle inequality)."""
    w, pw, x = case
    y = reference_gemm(x, pw).to(torch.float64)
    xq, a = quantize_for(x, pw)
    x64, w64 = x.to(torch.float64), w.to(torch.float64)
    xd, wd = dequantize_activation(xq, a), pw.dequantize(torch.float64)
    bound = (x64 - xd).abs() @ w64.abs().T + xd.abs() @ (w64 - wd).abs().T + tolerance(xq, a, pw, x.dtype)
    finite = torch.isfinite(y)  # an output beyond the dtype's range may round to inf
    assert bool(((y - x64 @ w64.T).abs()[finite] <= bound[finite] * (1 + 1e-9)).all())
    assert bool(((x64 @ w64.T).abs()[~finite] + bound[~finite] > torch.finfo(x.dtype).max).all())


@pytest.mark.parametrize("split_k", [1, 2, 4])
def test_reference_is_the_fma_chain_bit_for_bit(split_k):
    """Genuine int32 partials per activation group, c = fp32(a * s), one rounding per fmaf
    (exact rationals), groups in increasing k: the reference equals this to the bit.  Split
    over K, each slice's chain starts from zero and the slices add in order, one float32
    rounding each (the format's split-K contract)."""
    torch.manual_seed(split_k)
    w, x = torch.randn(5, 512), torch.randn(3, 512, dtype=torch.float16) * 3
    x[:, 7] *= 400
    pw = quantize_weight(w, [1, 4], 256, "mixllm")  # weight group 256: two activation groups per scale
    xq, a = quantize_for(x, pw)
    assert a.shape == (3, 4)
    wi, s = pw.int8_rows().int(), pw.group_scales()
    expect = torch.empty(3, 5, dtype=torch.float16)
    for m in range(3):
        for n in range(5):
            total = torch.tensor(0.0)
            for first in range(0, 4, 4 // split_k):
                acc = 0.0
                for j in range(first, first + 4 // split_k):
                    p = int((xq[m, j * 128:(j + 1) * 128].int() * wi[n, j * 128:(j + 1) * 128]).sum())
                    c = (a[m, j] * s[n, j // 2]).item()  # float32 * float32 in torch: one rounding
                    acc = _exact_fma(p, c, acc)
                total = torch.tensor(acc, dtype=torch.float32) if first == 0 else total + torch.tensor(acc, dtype=torch.float32)
            expect[m, n] = total.half()
    assert torch.equal(reference_gemm_quantized(xq, a, pw, torch.float16, split_k=split_k), expect)
    if split_k == 1:
        assert torch.equal(reference_gemm(x, pw), expect)


@given(case=mixllm_cases(max_m=6), data=st.data())
def test_split_k_stays_within_the_float64_bound(case, data):
    """Any K split the format allows (dividing the activation groups) is within tolerance of the
    float64 result, like the whole-K chain; a split that does not divide them is refused."""
    _, pw, x = case
    xq, a = quantize_for(x, pw)
    groups = a.shape[1]
    split = data.draw(st.sampled_from([s for s in (2, 3, 4, 7, 8) if groups % s == 0] or [1]))
    y = reference_gemm_quantized(xq, a, pw, x.dtype, split_k=split)
    assert within(y, float64_gemm_quantized(xq, a, pw), tolerance(xq, a, pw, x.dtype))
    with pytest.raises(ValueError, match="does not divide"):
        reference_gemm_quantized(xq, a, pw, x.dtype, split_k=groups + 1)


# -- activations per (token, group) ------------------------------------------------------------

@given(data=st.data(), dtype=dtypes, m=st.integers(1, 9), groups=st.integers(1, 12), gs=st.sampled_from([64, 128]),
       scale=st.floats(-4, 3))
def test_group_activation_quantization(data, dtype, m, groups, gs, scale):
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    x = activations(gen, m, groups * gs, dtype, scale=10.0**scale)
    if data.draw(st.booleans()):
        x[0, :gs] = 0  # an all-zero group
    xq, a = quantize_activation(x, group_size=gs)
    assert xq.dtype == torch.int8 and a.dtype == torch.float32 and a.shape == (m, groups)
    # each (token, group) is exactly the per-token rule applied to that span
    rows_q, rows_a = quantize_activation(x.reshape(m * groups, gs))
    assert torch.equal(xq, rows_q.reshape(m, -1)) and torch.equal(a, rows_a.reshape(m, groups))
    step = a.to(torch.float64).repeat_interleave(gs, dim=1)
    err = (x.to(torch.float64) - dequantize_activation(xq, a)).abs()
    assert bool((err <= step * (0.5 + 128 * 2.0**-24) + 1e-30).all())
    span_max = xq.abs().reshape(m, groups, gs).amax(dim=2)
    assert bool((span_max[a > 0] == 127).all()) and bool((span_max[a == 0] == 0).all())


@given(data=st.data(), k=st.sampled_from([1536, 3584]), gs=st.sampled_from([64, 128]), m=st.integers(1, 8),
       factor=st.floats(100, 1000), dtype=dtypes)
def test_group_scales_contain_outlier_channels(data, k, gs, m, factor, dtype):
    """A few channels x100..x1000 (at most one group in 8 holding one): per-token scales crush
    every other channel to a code or two, per-group scales only their own group; the group
    activation error is far below the per-token one."""
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(m, k, generator=gen)
    groups = torch.randperm(k // gs, generator=gen)[: data.draw(st.integers(1, k // gs // 8))]
    cols = groups * gs + torch.randint(0, gs, groups.shape, generator=gen)
    x[:, cols] = factor * (1 + x[:, cols].abs()) * torch.sign(x[:, cols])  # |outlier| >= factor in every token
    x = x.to(dtype)
    def error(group_size):
        return float((x.double() - dequantize_activation(*quantize_activation(x, group_size=group_size))).norm())
    assert error(gs) < 0.5 * error(None)


def test_non_finite_token_makes_only_its_output_row_non_finite():
    torch.manual_seed(3)
    pw = quantize_weight(torch.randn(12, 384), [2, 5], 128, "mixllm")
    x = torch.randn(4, 384, dtype=torch.float16)
    bad = x.clone()
    bad[1, 200], bad[2, 5] = float("nan"), float("inf")
    xq, a = quantize_activation(bad, group_size=128, check=False)
    assert a[1, 1] == a[2, 0] == float("inf") and torch.isfinite(a[[0, 3]]).all()
    y = torch.ops.mixkern.gemm.default(bad, *weight_args(pw))  # the raw op: no NaN check
    assert not torch.isfinite(y[1:3]).any()
    assert torch.equal(y[[0, 3]], reference_gemm(x[[0, 3]], pw))


@pytest.mark.parametrize("kwargs, match", [
    ({"group_size": 32}, "group_size"), ({"group_size": 256}, "group_size"),
    ({"group_size": 128, "amax": torch.ones(2)}, "per token"),
])
def test_group_activation_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantize_activation(torch.randn(2, 384, dtype=torch.float16), **kwargs)
    with pytest.raises(ValueError, match="multiple"):
        quantize_activation(torch.randn(2, 200, dtype=torch.float16), group_size=64)


# -- format: layout, bytes, validation, retirement -----------------------------------------------

def test_layout_and_bytes():
    torch.manual_seed(4)
    pw = quantize_weight(torch.randn(10, 640), [0, 9], 128, "mixllm")
    assert pw.chan_scale4 is None and pw.scales4.dtype == pw.scale8.dtype == torch.float16
    assert pw.scales4.shape == (8, 5) and pw.scale8.shape == (2, 5) and pw.zeros4.dtype == torch.uint8
    per4, per8 = PackedWeight.feature_bytes(640, 128, "mixllm", 4), PackedWeight.feature_bytes(640, 128, "mixllm", 8)
    assert (per4, per8) == (4 + 320 + 5 + 2 * 5, 4 + 640 + 2 * 5)  # index, codes, zeros, fp16 scales
    assert pw.nbytes == 8 * per4 + 2 * per8 and pw.bits_per_weight == 8 * pw.nbytes / 6400


def _replace(pw, **changes):
    return PackedWeight(**{**{f: getattr(pw, f) for f in ("shape", "group_size", "format", "idx4", "idx8", "qweight4",
                                                         "zeros4", "scales4", "chan_scale4", "qweight8", "scale8")},
                           **changes})


@pytest.mark.parametrize("change, match", [
    (lambda pw: {"scale8": pw.scale8[:, 0].float()}, "scale8: expected torch.float16"),
    (lambda pw: {"scales4": pw.scales4.float()}, "scales4: expected torch.float16"),
    (lambda pw: {"chan_scale4": torch.ones(pw.idx4.numel())}, "chan_scale4 must be None"),
    (lambda pw: {"scale8": torch.zeros_like(pw.scale8)}, "finite and positive"),
    (lambda pw: {"scales4": pw.scales4.masked_fill(torch.eye(*pw.scales4.shape, dtype=torch.bool), float("nan"))},
     "finite and positive"),
    (lambda pw: {"format": WeightFormat.PROGRESSIVE}, "expected torch.uint8"),
])
def test_validation_errors(change, match):
    pw = quantize_weight(torch.randn(6, 256), [1, 2], 128, "mixllm")
    _replace(pw)  # the unchanged fields validate
    with pytest.raises(ValueError, match=match):
        _replace(pw, **change(pw))


def test_groupfloat_is_retired_with_a_message_naming_the_version():
    for name in ("groupfloat", "mixkern.groupfloat.v1"):
        with pytest.raises(ValueError, match=r"retired.*version 1.*format='mixllm'"):
            WeightFormat.parse(name)
    assert WeightFormat.parse("mixllm") is MIXLLM and WeightFormat.parse(MIXLLM.value) is MIXLLM


def test_the_op_tells_the_formats_apart():
    assert FORMAT_IDS[MIXLLM] != FORMAT_IDS[WeightFormat.PROGRESSIVE]


def test_torch_compile_traces_the_mixllm_op():
    torch.manual_seed(5)
    pw = quantize_weight(torch.randn(24, 384), [1, 2], 128, "mixllm")
    x = torch.randn(3, 384, dtype=torch.bfloat16)
    compiled = torch.compile(lambda x: mixkern.gemm(x, pw).float().relu(), backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), mixkern.gemm(x, pw).float().relu())


# -- quantize_model and checkpoints -------------------------------------------------------------

SMALL = LMConfig(d_model=128, n_layers=2, n_heads=2, d_ff=256, seq_len=32)


def _quantized(tmp_path):
    torch.manual_seed(0)
    model = TinyLM(SMALL).eval()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (2, SMALL.seq_len + 1), generator=gen) for _ in range(2)]
    report = quantize_model(model, batches, QuantConfig(fraction=0.25, format="mixllm", group_size=64))
    save_quantized(model, str(tmp_path), report)
    return model, report


def test_quantize_model_and_checkpoint_round_trip(tmp_path):
    model, report = _quantized(tmp_path)
    layers = [m for m in model.modules() if isinstance(m, mixkern.MixLinear)]
    assert layers and all(m.format is MIXLLM for m in layers) and 0 < report.fraction_8bit < 1
    total = sum(m.packed.nbytes for m in layers) * 8 / sum(m.in_features * m.out_features for m in layers)
    assert total == pytest.approx(report.average_bits, rel=1e-12)
    loaded = load_quantized(str(tmp_path))
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    for a, b in zip(layers, (m for m in loaded.modules() if isinstance(m, mixkern.MixLinear))):
        assert all(torch.equal(t, b.packed.tensors()[k]) for k, t in a.packed.tensors().items())


def test_old_groupfloat_checkpoint_is_refused(tmp_path):
    _quantized(tmp_path)
    path = os.path.join(tmp_path, "mixkern_config.json")
    cfg = json.load(open(path))
    cfg["packed_format_version"] = 1
    for info in cfg["layers"].values():
        info["format"] = "mixkern.groupfloat.v1"
    json.dump(cfg, open(path, "w"))
    with pytest.raises(ValueError, match=r"mixkern_config.json: layer .*retired.*version 1"):
        load_quantized(str(tmp_path))
