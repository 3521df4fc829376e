"""The fast (not bit-exact) mixllm CPU path, ``CPUMixLinear(exact=False)``: within the format's
tolerance of the float64 ideal, close to the exact fp32 FMA chain, and the checks would catch
a wrong path (a misplaced scale lands far outside the tolerance)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixkern import MixLinear, quantize_weight
from mixkern.lm import LMConfig, TinyLM
from mixkern.models.cpu_gemm import CPUMixLinear, decoded_rows, gemm_decoded, mixllm_float64, use_cpu_gemm
from mixkern.model import QuantConfig, quantize_model
from mixkern.reference import act_group_weight_scales, float64_gemm_quantized, quantize_for, tolerance
from strategies import activations, dtypes, eight_bit_choice, weights, within


def _fast_and_exact(x: torch.Tensor, pw) -> tuple[torch.Tensor, torch.Tensor]:
    d = decoded_rows(pw)
    return (gemm_decoded(x, d, pw.out_features, pw.group_size, exact=False),
            gemm_decoded(x, d, pw.out_features, pw.group_size))


@settings(max_examples=40, deadline=None)
@given(weights(max_groups=12), dtypes, st.integers(1, 24), st.data())
def test_fast_path_within_tolerance_of_float64_and_of_the_exact_path(wg, dtype, m, data):
    """Group sizes 64/128/256, outlier rows and input channels (weights and activations),
    every 8-bit fraction, fp16 and bf16, activation scales 1e-2..1e3."""
    w, group_size = wg
    pw = quantize_weight(w, data.draw(eight_bit_choice(w.shape[0])), group_size, "mixllm")
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    x = activations(gen, m, w.shape[1], dtype, scale=10.0 ** data.draw(st.floats(-2, 3)))
    fast, exact = _fast_and_exact(x, pw)
    xq, a = quantize_for(x, pw)
    tol = tolerance(xq, a, pw, dtype)
    assert fast.dtype == dtype and fast.shape == exact.shape
    assert within(fast, float64_gemm_quantized(xq, a, pw), tol)
    assert within(fast, exact.to(torch.float64), tol)  # both conform: they differ by output roundings


def test_fast_path_on_real_layer_shapes_differs_from_exact_in_few_elements_by_an_ulp():
    """Qwen2.5-1.5B's down_proj K (8960, 70 groups, an 1140-sized outlier channel) and gate_proj's K."""
    gen = torch.Generator().manual_seed(0)
    for k in (8960, 1536):
        pw = quantize_weight(torch.randn(96, k, generator=gen) * 0.02, list(range(0, 96, 9)), 128, "mixllm")
        x = activations(gen, 16, k, torch.float16, scale=2.0)
        x[:, 7] = 1140.0
        fast, exact = _fast_and_exact(x, pw)
        xq, a = quantize_for(x, pw)
        assert within(fast, float64_gemm_quantized(xq, a, pw), tolerance(xq, a, pw, torch.float16))
        differ = fast != exact
        assert differ.float().mean() < 0.01
        ulp = torch.finfo(torch.float16).eps * exact[differ].float().abs()
        assert bool(((fast[differ].float() - exact[differ].float()).abs() <= ulp).all())


@pytest.mark.parametrize("group_size", [64, 128, 256])
def test_the_check_catches_a_wrong_fast_path(group_size):
    """The tolerance is tight enough to fail plausible bugs: scales of the neighbouring group,
    the weight scale of the wrong activation group (group 256 holds two), a dropped group."""
    gen = torch.Generator().manual_seed(group_size)
    pw = quantize_weight(torch.randn(24, 4 * group_size, generator=gen) * 0.05, [2, 5], group_size, "mixllm")
    x = activations(gen, 5, 4 * group_size, torch.bfloat16, scale=3.0)
    xq, a = quantize_for(x, pw)
    s, span = act_group_weight_scales(pw)
    w, y64, tol = pw.int8_rows(), float64_gemm_quantized(xq, a, pw), tolerance(xq, a, pw, torch.bfloat16)
    assert within(mixllm_float64(xq, a, w, s, span).to(torch.bfloat16), y64, tol)
    s_flip = s.flip(1)  # with group 256, repeat order matters: both halves of a weight group share one scale
    dropped = a.clone()
    dropped[:, -1] = 0
    for bad in (mixllm_float64(xq, a.roll(1, 1), w, s, span), mixllm_float64(xq, a, w, s_flip, span),
                mixllm_float64(xq, dropped, w, s, span)):
        assert not within(bad.to(torch.bfloat16), y64, tol)


def test_fast_path_keeps_a_non_finite_token_to_its_own_row():
    """The format's rule (a = inf in a non-finite group) carries over: that token's row only."""
    gen = torch.Generator().manual_seed(3)
    pw = quantize_weight(torch.randn(16, 512, generator=gen), [1], 128, "mixllm")
    x = activations(gen, 4, 512, torch.float16)
    x[2, 300] = float("inf")
    xq, a = quantize_for(x, pw, check=False)
    s, span = act_group_weight_scales(pw)
    y = mixllm_float64(xq, a, pw.int8_rows(), s, span)
    assert not torch.isfinite(y[2]).any() and bool(torch.isfinite(y[[0, 1, 3]]).all())


def test_cpu_mixlinear_fast_flag_progressive_unchanged_mixllm_within_tolerance():
    """exact=False changes only mixllm layers; checkpoints (state_dict keys) are unchanged; fp32
    input computes in fp16 as MixLinear does, and the bias is added after, as MixLinear does."""
    gen = torch.Generator().manual_seed(4)
    w, bias = torch.randn(48, 384, generator=gen) * 0.05, torch.randn(48, generator=gen)
    for fmt in ("progressive", "mixllm"):
        packed = quantize_weight(w, [3, 7], 128, fmt)
        slow, fast = MixLinear(packed, bias), CPUMixLinear(packed, bias, exact=False)
        assert slow.state_dict().keys() == fast.state_dict().keys() and "exact=False" in repr(fast)
        nobias = CPUMixLinear(packed, exact=False)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = torch.randn(2, 5, 384, generator=gen).to(dtype)
            got, plain = fast(x), nobias(x)
            assert got.dtype == dtype and got.shape == (2, 5, 48)
            assert torch.equal(got, plain + bias.to(dtype))
            if fmt == "progressive":
                assert torch.equal(got, slow(x))
                continue
            cdt = torch.float16 if dtype == torch.float32 else dtype
            xq, a = quantize_for(x.reshape(-1, 384).to(cdt), packed)
            assert torch.equal(plain.reshape(-1, 48), plain.reshape(-1, 48).to(cdt).to(dtype))  # computed in cdt
            assert within(plain.reshape(-1, 48).to(cdt), float64_gemm_quantized(xq, a, packed),
                          tolerance(xq, a, packed, cdt))


def test_use_cpu_gemm_exact_false_swaps_every_layer_and_stays_close():
    torch.manual_seed(0)
    model = TinyLM(LMConfig(d_model=128, n_layers=1, d_ff=256, seq_len=16))
    calib = [torch.randint(0, 256, (2, 17))]
    quantize_model(model, calib, QuantConfig(fraction=0.1, format="mixllm"))
    tokens = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        want = model(tokens).float()
        use_cpu_gemm(model, exact=False)
        layers = [m for m in model.modules() if isinstance(m, MixLinear)]
        assert layers and all(isinstance(m, CPUMixLinear) and not m.exact for m in layers)
        got = model(tokens).float()
    assert torch.allclose(got, want, rtol=1e-2, atol=1e-2)
