import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mixkern.packing import pack_int4, unpack_int4


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
