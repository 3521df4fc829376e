import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mixkern import PackedWeight, gemm, quantize_weight, reference_gemm
from mixkern.format import FIELD_DEFAULTS
from mixkern.packing import pack_int4, unpack_int4
from strategies import activations, dtypes, formats


@given(rows=st.integers(0, 40), words=st.integers(1, 64), seed=st.integers(0, 2**31 - 1))
def test_round_trip_exact(rows, words, seed):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (rows, 8 * words), generator=gen, dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (rows, 4 * words) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), codes)


def test_nibble_order_is_word_interleaved():
    """Byte j of each 4-byte word holds code j (low nibble) and code j + 4 (high nibble)."""
    codes = torch.arange(16, dtype=torch.uint8)[None, :]
    packed = pack_int4(codes)
    assert packed.tolist() == [[0x40, 0x51, 0x62, 0x73, 0xC8, 0xD9, 0xEA, 0xFB]]
    word = int.from_bytes(bytes(packed[0, :4].tolist()), "little")
    assert [(word >> (8 * j)) & 0xF for j in range(4)] == [0, 1, 2, 3]
    assert [(word >> (8 * j + 4)) & 0xF for j in range(4)] == [4, 5, 6, 7]


@pytest.mark.parametrize("bad, err", [
    (torch.zeros(2, 8, dtype=torch.int8), TypeError),
    (torch.zeros(2, 12, dtype=torch.uint8), ValueError),
    (torch.full((1, 8), 16, dtype=torch.uint8), ValueError),
    (torch.zeros(8, dtype=torch.uint8), ValueError),
])
def test_pack_rejects(bad, err):
    with pytest.raises(err):
        pack_int4(bad)


# -- PackedWeight.concat_rows / split_rows: fused projections -----------------------------

@st.composite
def row_blocks(draw):
    """Weights of one input (K with odd factors), N of every size, 8-bit fractions none / some / all."""
    k, group_size = draw(st.sampled_from([(384, 64), (384, 128), (640, 64), (640, 128), (1536, 128), (1536, 256)]))
    fmt = draw(formats)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 37))
        choice = draw(st.sampled_from(["none", "some", "all"]))
        some = torch.randperm(n, generator=gen)[: draw(st.integers(0, n))].tolist()
        eight = {"none": None, "all": "all", "some": some}
        w = torch.randn(n, k, generator=gen) * 10.0 ** draw(st.floats(-2, 1))
        parts.append(quantize_weight(w, eight[choice], group_size, fmt, clip_search=False))
    return parts, activations(gen, draw(st.integers(1, 5)), k, draw(dtypes))


@given(row_blocks())
def test_concatenated_rows_compute_the_concatenated_outputs_bit_for_bit(blocks):
    parts, x = blocks
    cat = PackedWeight.concat_rows(parts)  # validated on construction
    assert cat.shape == (sum(p.out_features for p in parts), parts[0].in_features)
    assert torch.equal(gemm(x, cat), torch.cat([gemm(x, p) for p in parts], dim=1))
    assert torch.equal(reference_gemm(x, cat), torch.cat([reference_gemm(x, p) for p in parts], dim=1))
    sizes = [p.out_features for p in parts]
    for counts in (None, [p.idx8.numel() for p in parts]):  # found by searchsorted, or given
        for back, p in zip(cat.split_rows(sizes, counts), parts):
            assert back.tensors().keys() == p.tensors().keys()
            assert all(torch.equal(t, p.tensors()[name]) for name, t in back.tensors().items())


def _weight(n=8, k=256, group_size=128, fmt="progressive", eight=(1,)):
    return quantize_weight(torch.randn(n, k), list(eight), group_size, fmt, clip_search=False)


def test_concat_rows_refuses_weights_of_different_inputs():
    a = _weight()
    meta = PackedWeight.unchecked(**{**{f: getattr(a, f) for f in FIELD_DEFAULTS},
                                     **{name: t.to("meta") for name, t in a.tensors().items()}})
    for other, what in [(_weight(k=384), "in_features"), (_weight(group_size=64), "group_size"),
                        (_weight(fmt="mixllm"), "format"), (meta, "device")]:
        with pytest.raises(ValueError, match=f"part 1 has {what}"):
            PackedWeight.concat_rows([a, other])
    with pytest.raises(ValueError, match="at least one"):
        PackedWeight.concat_rows([])
    with pytest.raises(TypeError, match="part 1 is a Tensor"):
        PackedWeight.concat_rows([a, torch.zeros(8, 256)])
    with pytest.raises(ValueError, match="add up to N=8"):
        a.split_rows([3, 4])
    with pytest.raises(ValueError, match="8-bit counts"):
        a.split_rows([4, 4], [0, 0])
