import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mixkern import PackedWeight, WeightFormat, quantize_activation, quantize_weight
from mixkern.quantize.weights import eight_bit_index
from strategies import activations, dtypes, eight_bit_choice, formats, weights

EPS32 = 2.0**-24


def _per_element(t, group_size):
    return t.to(torch.float64).repeat_interleave(group_size, dim=1)


def _element_bounds(pw: PackedWeight, w: torch.Tensor) -> torch.Tensor:
    """Per-element |W - dequant(W)| bound without clipping: half a step of the finest scale in use."""
    bound = torch.empty(pw.shape, dtype=torch.float64)
    gs = pw.group_size
    if pw.format is WeightFormat.PROGRESSIVE:
        s1 = pw.chan_scale4.to(torch.float64)[:, None]
        s2 = _per_element(pw.scales4, gs)
        bound[pw.idx4] = s1 * (0.5 + s2 / 2)  # level one rounding + level two half step
    else:  # half a step, plus the fp16 rounding of the scale stretched over 15 steps
        bound[pw.idx4] = _per_element(pw.scales4, gs) * (0.5 + 15 * 2.0**-11)
    if pw.format is WeightFormat.MIXLLM:  # fp16 scale per (row, group), rounded up: no clipping
        bound[pw.idx8] = _per_element(pw.scale8, gs) * 0.5
    else:
        bound[pw.idx8] = pw.scale8.to(torch.float64)[:, None] * 0.5
    return bound * (1 + 8 * EPS32) + 8 * EPS32 * w.abs().to(torch.float64) + 1e-30


@given(wg=weights(), data=st.data(), fmt=formats, dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]))
def test_dequantization_error_within_half_step(wg, data, fmt, dtype):
    w, gs = wg
    w = w.to(dtype)
    choice = data.draw(eight_bit_choice(w.shape[0]))
    pw = quantize_weight(w, choice, gs, fmt, clip_search=False)
    err = (pw.dequantize(torch.float64) - w.to(torch.float64)).abs()
    assert bool((err <= _element_bounds(pw, w)).all()), float((err / _element_bounds(pw, w)).max())
    # the 8-bit rows are the ones asked for
    assert torch.equal(pw.idx8.long(), eight_bit_index(choice, w.shape[0]))


@given(wg=weights(), data=st.data(), fmt=formats)
def test_codes_and_scales_in_range(wg, data, fmt):
    w, gs = wg
    pw = quantize_weight(w, data.draw(eight_bit_choice(w.shape[0])), gs, fmt)
    codes = pw.codes4()
    assert codes.numel() == 0 or int(codes.max()) <= 15
    assert pw.zeros4.numel() == 0 or int(pw.zeros4.max()) <= 15
    assert pw.qweight8.numel() == 0 or int(pw.qweight8.abs().max()) <= 127
    rows4 = pw.int8_rows4()  # raises if the int4 -> int8 step could overflow
    assert rows4.numel() == 0 or int(rows4.abs().max()) <= 127
    if fmt is WeightFormat.PROGRESSIVE and pw.scales4.numel():
        assert 1 <= int(pw.scales4.min()) and int(pw.scales4.max()) <= 16


@given(wg=weights(max_n=32), fmt=formats)
def test_clip_search_never_worse_than_min_max(wg, fmt):
    w, gs = wg
    def group_sq_err(pw):
        e = (pw.dequantize(torch.float64) - w.to(torch.float64)).square()
        return e.reshape(w.shape[0], -1, gs).sum(dim=2)
    searched = group_sq_err(quantize_weight(w, None, gs, fmt, clip_search=True))
    plain = group_sq_err(quantize_weight(w, None, gs, fmt, clip_search=False))
    if fmt is WeightFormat.MIXLLM:  # per-group choice: never worse in any group
        assert bool((searched <= plain * (1 + 1e-9) + 1e-300).all())
    else:  # level two is searched against the unrounded level one: never worse in total, up to level-one rounding
        assert searched.sum() <= plain.sum() * 1.02 + 1e-300


@given(data=st.data(), dtype=dtypes, m=st.integers(1, 17), k=st.integers(1, 300), scale=st.floats(-4, 3))
def test_activation_quantization(data, dtype, m, k, scale):
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    x = activations(gen, m, k, dtype, scale=10.0**scale)
    if data.draw(st.booleans()):
        x[0] = 0
    xq, a = quantize_activation(x)
    assert xq.dtype == torch.int8 and a.dtype == torch.float32 and a.shape == (m,)
    assert int(xq.abs().max()) <= 127
    xf = x.to(torch.float64)
    err = (xf - a.to(torch.float64)[:, None] * xq.to(torch.float64)).abs()
    # half a step, plus the fp32 rounding of the quotient x / a (|x / a| <= 127)
    assert bool((err <= a.to(torch.float64)[:, None] * (0.5 + 128 * 2.0**-24) + 1e-30).all())
    nonzero = xf.abs().amax(dim=1) > 0
    assert bool((xq[nonzero].abs().amax(dim=1) == 127).all())  # the largest element hits the top code
    assert bool((a[~nonzero] == 0).all()) and bool((xq[~nonzero] == 0).all())


@pytest.mark.parametrize("make, kwargs, err, match", [
    (lambda: torch.randn(4, 128).half().masked_fill(torch.eye(4, 128, dtype=torch.bool), float("nan")), {}, ValueError, "NaN"),
    (lambda: torch.full((4, 128), float("inf")), {}, ValueError, "Inf"),
    (lambda: torch.randint(0, 5, (4, 128)), {}, TypeError, "dtype"),
    (lambda: torch.randn(128), {}, ValueError, "2-D"),
    (lambda: torch.randn(0, 128), {}, ValueError, "empty"),
    (lambda: torch.randn(4, 200), {}, ValueError, "multiple of group_size"),
    (lambda: torch.randn(4, 128), {"group_size": 32}, ValueError, "group_size"),
    (lambda: torch.randn(4, 128), {"eight_bit_features": [5]}, ValueError, r"\[0, 4\)"),
    (lambda: torch.randn(4, 128), {"eight_bit_features": [1, 1]}, ValueError, "repeated"),
    (lambda: torch.randn(4, 128), {"eight_bit_features": [0.5]}, TypeError, "ints"),
    (lambda: torch.randn(4, 128), {"eight_bit_features": torch.ones(3, dtype=torch.bool)}, ValueError, "mask"),
    (lambda: torch.randn(4, 128), {"eight_bit_features": "some"}, ValueError, "'all'"),
    (lambda: torch.randn(4, 128), {"format": "int3"}, ValueError, "unknown weight format"),
    (lambda: torch.randn(4, 128) * 1e35, {"format": "mixllm"}, ValueError, "too large"),
    (lambda: torch.randn(4, 128) * 1e35, {"format": "mixllm", "eight_bit_features": "all"}, ValueError, "too large"),
    (lambda: torch.randn(4, 128), {"format": "groupfloat"}, ValueError, "retired.*format='mixllm'"),
])
def test_quantize_weight_rejects(make, kwargs, err, match):
    with pytest.raises(err, match=match):
        quantize_weight(make(), **kwargs)


@pytest.mark.parametrize("x, err", [
    (torch.tensor([[1.0, float("nan")]], dtype=torch.float16), ValueError),
    (torch.ones(2, 3, dtype=torch.int32), TypeError),
    (torch.ones(3, dtype=torch.float16), ValueError),
])
def test_quantize_activation_rejects(x, err):
    with pytest.raises(err):
        quantize_activation(x)
