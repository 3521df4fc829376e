import dataclasses

import torch
from hypothesis import given
from hypothesis import strategies as st

from mixkern import WeightFormat, quantize_weight, reference_gemm, tolerance
from mixkern.quantize.activations import dequantize_activation
from mixkern.reference import float64_gemm_quantized, group_partial_sums, quantize_for, reference_gemm_quantized
from strategies import activations, dtypes, eight_bit_choice, formats, weights, within


def _case(data, max_n=96):
    w, gs = data.draw(weights(max_n=max_n))
    fmt = data.draw(formats)
    dtype = data.draw(dtypes)
    pw = quantize_weight(w.to(dtype), data.draw(eight_bit_choice(w.shape[0])), gs, fmt)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    m = data.draw(st.integers(1, 40))
    x = activations(gen, m, w.shape[1], dtype, scale=10.0 ** data.draw(st.floats(-2, 2)))
    return w.to(dtype), pw, x


@given(data=st.data())
def test_reference_matches_float64_of_integer_operands(data):
    _, pw, x = _case(data)
    y = reference_gemm(x, pw)
    assert y.dtype == x.dtype and y.shape == (x.shape[0], pw.shape[0])
    xq, a = quantize_for(x, pw)
    y64 = float64_gemm_quantized(xq, a, pw)
    tol = tolerance(xq, a, pw, x.dtype)
    assert within(y, y64, tol)


@given(data=st.data())
def test_reference_close_to_fp_matmul_within_quantization_error(data):
    """|y - x W^T| <= |x - xd| |W| + |xd| |W - Wd| + tol  (triangle inequality, elementwise)."""
    w, pw, x = _case(data)
    y = reference_gemm(x, pw).to(torch.float64)
    xq, a = quantize_for(x, pw)
    x64, w64 = x.to(torch.float64), w.to(torch.float64)
    xd = dequantize_activation(xq, a)
    wd = pw.dequantize(torch.float64)
    bound = (x64 - xd).abs() @ w64.abs().T + xd.abs() @ (w64 - wd).abs().T + tolerance(xq, a, pw, x.dtype)
    finite = torch.isfinite(y)
    assert bool(((y - x64 @ w64.T).abs()[finite] <= bound[finite] * (1 + 1e-9)).all())
    assert bool(((x64 @ w64.T).abs()[~finite] + bound[~finite] > torch.finfo(x.dtype).max).all())


@given(data=st.data())
def test_tolerance_admits_reordering_but_not_errors(data):
    """A kernel that sums group partials in another order passes; one off by a unit does not."""
    _, pw, x = _case(data)
    xq, a = quantize_for(x, pw)
    y64 = float64_gemm_quantized(xq, a, pw)
    tol = tolerance(xq, a, pw, x.dtype)
    if pw.format is WeightFormat.MIXLLM:
        span = pw.format.act_group_size(pw.group_size)
        partial = group_partial_sums(xq, pw.int8_rows(), span).to(torch.float32)
        s = pw.group_scales().repeat_interleave(pw.group_size // span, dim=1)
        scaled = partial * (a[:, None, :] * s[None])  # products rounded as the contract does
        reordered = scaled.flip(2).sum(dim=2)  # pairwise/reversed float32 sum, as a split-K kernel might
        assert within(reordered.to(x.dtype), y64, tol)
    # corrupt one zero point (or one 8-bit weight): some output must leave the tolerance
    if pw.idx4.numel():
        zeros = pw.zeros4.clone()
        zeros[0, 0] = (int(zeros[0, 0]) + 1) % 16 if pw.format is WeightFormat.MIXLLM else zeros[0, 0]
        scales = pw.scales4.clone()
        if pw.format is WeightFormat.PROGRESSIVE:  # change the group scale instead (zero may be 0 with code 0)
            scales[0, 0] = int(scales[0, 0]) % 8 + 1 if int(pw.codes4()[0, : pw.group_size].ne(pw.zeros4[0, 0]).sum()) else scales[0, 0]
        bad = dataclasses.replace(pw, zeros4=zeros, scales4=scales)
    else:
        q8 = pw.qweight8.clone()
        q8[0, 0] = 100 if int(q8[0, 0]) < 0 else -100
        bad = dataclasses.replace(pw, qweight8=q8)
    changed = (bad.dequantize(torch.float64) - pw.dequantize(torch.float64)).abs().sum() > 0
    if changed and bool((xq != 0).all()):
        y_bad = reference_gemm_quantized(xq, a, bad, x.dtype)
        assert not within(y_bad, y64, tol)


def test_progressive_is_one_int32_accumulator():
    """PROGRESSIVE folds every scale into the epilogue: y == (fp32(acc) * a) * s, exactly."""
    torch.manual_seed(0)
    w = torch.randn(64, 512)
    pw = quantize_weight(w, [1, 5, 9], format=WeightFormat.PROGRESSIVE)
    x = torch.randn(7, 512, dtype=torch.float16)
    xq, a = quantize_for(x, pw)
    w8 = torch.empty(64, 512, dtype=torch.int32)
    w8[pw.idx4.long()] = pw.int8_rows4().int()
    w8[pw.idx8.long()] = pw.qweight8.int()
    acc = (xq.int()[:, None, :] * w8[None]).sum(dim=2)  # genuine int32 arithmetic
    expect = ((acc.float() * a[:, None]) * pw.row_scales()[None]).half()
    assert torch.equal(reference_gemm(x, pw), expect)
