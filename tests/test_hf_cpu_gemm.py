"""The fast CPU evaluation path equals mixkern.gemm's CPU reference bit for bit, and any
mixed packing is a row selection of the all-4-bit and all-8-bit packings."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixkern import MixLinear, quantize_weight, reference_gemm
from mixkern.model import select_rows
from mixkern.models.cpu_gemm import CPUMixLinear, decoded_rows, gemm_decoded
from mixkern.quantize.salience import all_precisions
from strategies import activations, dtypes, eight_bit_choice, formats, weights


@settings(max_examples=25)
@given(weights(max_groups=12), formats, dtypes, st.integers(1, 24), st.data())
def test_decoded_gemm_is_the_reference_bit_for_bit(wg, fmt, dtype, m, data):
    """Exact equality, not a tolerance: both sum the same integers exactly (int32 here, float64
    there) and then run the same float32 epilogue steps in the same order."""
    w, group_size = wg
    pw = quantize_weight(w, data.draw(eight_bit_choice(w.shape[0])), group_size, fmt)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    x = activations(gen, m, w.shape[1], dtype, scale=10.0 ** data.draw(st.floats(-2, 3)))
    assert torch.equal(gemm_decoded(x, decoded_rows(pw), *pw.shape[:1], group_size), reference_gemm(x, pw))


def test_decoded_gemm_on_a_real_layer_shape():
    """The down_proj of a 1.5B model: K = 8960, where an int32 accumulator holds up to 1.45e8."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 8960, generator=gen) * 0.02
    pw = quantize_weight(w, [1, 5, 60])
    x = activations(gen, 3, 8960, torch.float16, scale=50.0)
    x[:, 7] = 1140.0  # Qwen2.5's down_proj outlier size
    assert torch.equal(gemm_decoded(x, decoded_rows(pw), 64, 128), reference_gemm(x, pw))


@settings(max_examples=30)
@given(weights(), formats, st.data())
def test_any_8_bit_choice_is_a_row_selection(wg, fmt, data):
    w, group_size = wg
    choice = data.draw(eight_bit_choice(w.shape[0]))
    want = quantize_weight(w, choice, group_size, fmt)
    got = select_rows(*all_precisions(w, group_size, fmt), choice)
    for name, t in want.tensors().items():
        assert torch.equal(getattr(got, name), t), name


def test_cpu_mixlinear_matches_mixlinear_and_keeps_checkpoints_unchanged():
    gen = torch.Generator().manual_seed(2)
    packed = quantize_weight(torch.randn(96, 256, generator=gen) * 0.05, [3, 7, 50], 128)
    bias = torch.randn(96, generator=gen)
    slow, fast = MixLinear(packed, bias), CPUMixLinear(packed, bias)
    assert slow.state_dict().keys() == fast.state_dict().keys()
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = torch.randn(2, 5, 256, generator=gen).to(dtype)
        assert torch.equal(fast(x), slow(x))
