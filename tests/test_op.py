import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mixkern
from mixkern import WeightFormat, quantize_weight, reference_gemm
from mixkern.ops import op_args
from strategies import activations, dtypes, eight_bit_choice, formats, weights


@given(wg=weights(max_n=64), data=st.data(), fmt=formats, dtype=dtypes, m=st.integers(1, 33))
def test_gemm_op_equals_reference(wg, data, fmt, dtype, m):
    w, gs = wg
    pw = quantize_weight(w, data.draw(eight_bit_choice(w.shape[0])), gs, fmt)
    x = activations(torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1))), m, w.shape[1], dtype)
    y = mixkern.gemm(x, pw)
    assert y.dtype == dtype and y.shape == (m, w.shape[0])
    assert torch.equal(y, reference_gemm(x, pw))


@pytest.mark.parametrize("fmt", list(WeightFormat))
@pytest.mark.parametrize("eight", [None, [0, 3, 17], "all"])
def test_opcheck(fmt, eight):
    torch.manual_seed(1)
    pw = quantize_weight(torch.randn(40, 256), eight, 128, fmt)
    x = torch.randn(5, 256, dtype=torch.float16)
    torch.library.opcheck(torch.ops.mixkern.gemm.default, op_args(x, pw))


def test_torch_compile_traces_the_op():
    torch.manual_seed(2)
    pw = quantize_weight(torch.randn(48, 256), [1, 2], 128)
    x = torch.randn(3, 256, dtype=torch.bfloat16)

    def f(x):
        return mixkern.gemm(x, pw).float().relu()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), f(x))


def _pw():
    return quantize_weight(torch.randn(16, 256), [3], 128)


@pytest.mark.parametrize("x, pw, err, match", [
    (lambda: torch.randn(2, 256), _pw, TypeError, "float16, bfloat16"),
    (lambda: torch.ones(2, 256, dtype=torch.int8), _pw, TypeError, "dtype"),
    (lambda: torch.randn(256, dtype=torch.float16), _pw, ValueError, "2-D"),
    (lambda: torch.randn(2, 3, 256, dtype=torch.float16), _pw, ValueError, "2-D"),
    (lambda: torch.randn(2, 128, dtype=torch.float16), _pw, ValueError, "K=128"),
    (lambda: torch.randn(0, 256, dtype=torch.float16), _pw, ValueError, "empty"),
    (lambda: torch.randn(2, 256, dtype=torch.float16, device="meta"), _pw, ValueError, "meta"),
    (lambda: torch.full((2, 256), float("nan"), dtype=torch.float16), _pw, ValueError, "NaN"),
    (lambda: torch.randn(2, 256, dtype=torch.float16), lambda: torch.randn(16, 256), TypeError, "PackedWeight"),
])
def test_gemm_rejects_bad_input(x, pw, err, match):
    with pytest.raises(err, match=match):
        mixkern.gemm(x(), pw())


def test_packed_weight_rejects_inconsistent_fields():
    import dataclasses
    pw = _pw()
    with pytest.raises(ValueError, match="zeros4"):
        dataclasses.replace(pw, zeros4=pw.zeros4[:, :1])
    with pytest.raises(ValueError, match="cover"):
        dataclasses.replace(pw, idx8=torch.tensor([4], dtype=torch.int32))
    with pytest.raises(ValueError, match="version"):
        dataclasses.replace(pw, version=99)
    with pytest.raises(ValueError, match="group_size"):
        dataclasses.replace(pw, group_size=32)
