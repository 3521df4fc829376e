"""The register-decode kernel's K order, on the CPU: which thread's registers hold which weight
(the kernel's decode, restated byte for byte) and where the activation quantization puts each
X word must agree, so that the wgmma's dot products are exactly W x.  The GPU tests check the
kernel itself against the reference (``pytest -m gpu``)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixkern.kernels.act_quant import register_word
from mixkern.kernels.register_decode import WINDOW, fragment_byte, fragment_thread, logical_word
from mixkern.packing import pack_int4

ROWS, THREADS = 64, 128  # one consumer warpgroup's m64 atom


def decoded_registers(packed: torch.Tensor, window: int, tx: int) -> list[int]:
    """Thread tx's 64 fragment bytes for one 128-wide K window, as ``mixkern_decode_regs`` writes
    them (zero point 0, scale 1): for each of its rows (half 0: g, 1: g + 8), the 16 packed bytes
    at 16t, word q's low nibbles into register 4q + half, its high nibbles into 4q + 2 + half."""
    row, t = tx // 32 * 16 + tx % 32 // 4, tx % 4
    regs = [0] * 64
    for half in range(2):
        chunk = packed[row + 8 * half, window * 64 + 16 * t: window * 64 + 16 * t + 16].tolist()
        for q in range(4):
            word = chunk[4 * q: 4 * q + 4]
            for e in range(4):
                regs[4 * (4 * q + half) + e] = word[e] & 15
                regs[4 * (4 * q + 2 + half) + e] = word[e] >> 4
    return regs


def register_order(x: torch.Tensor) -> torch.Tensor:
    """X with each row's 8-value vectors' words where the activation kernel writes them."""
    out = torch.empty_like(x)
    for v in range(x.shape[1] // 8):
        for h in range(2):
            out[:, register_word(v, h): register_word(v, h) + 4] = x[:, 8 * v + 4 * h: 8 * v + 4 * h + 4]
    return out


def test_the_register_k_order_is_a_permutation_of_each_window():
    assert sorted(logical_word(p) for p in range(WINDOW // 4)) == list(range(WINDOW // 4))
    starts = sorted(register_word(v, h) for v in range(3 * WINDOW // 8) for h in range(2))
    assert starts == list(range(0, 3 * WINDOW, 4))  # every word of three windows once, none leaves its window
    assert all(register_word(v, h) // WINDOW == v * 8 // WINDOW for v in range(48) for h in range(2))


def test_every_fragment_element_has_one_thread_and_byte():
    seen = {(fragment_thread(i, j), fragment_byte(i, j)) for i in range(ROWS) for j in range(WINDOW)}
    assert len(seen) == ROWS * WINDOW and {t for t, _ in seen} == set(range(THREADS))
    assert {b for _, b in seen} == set(range(ROWS * WINDOW // THREADS))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), windows=st.integers(1, 3), tokens=st.integers(1, 8))
def test_the_decoded_fragments_times_register_ordered_x_is_w_x(seed, windows, tokens):
    gen = torch.Generator().manual_seed(seed)
    k = windows * WINDOW
    codes = torch.randint(0, 16, (ROWS, k), generator=gen, dtype=torch.uint8)
    x = torch.randint(-127, 128, (tokens, k), generator=gen, dtype=torch.int64)
    packed = pack_int4(codes)
    xr = register_order(x)
    got = torch.zeros(ROWS, tokens, dtype=torch.int64)
    for w in range(windows):
        regs = [decoded_registers(packed, w, tx) for tx in range(THREADS)]
        frag = torch.tensor([[regs[fragment_thread(i, j)][fragment_byte(i, j)] for j in range(WINDOW)]
                             for i in range(ROWS)], dtype=torch.int64)
        got += frag @ xr[:, w * WINDOW:(w + 1) * WINDOW].T  # what the wgmma sums over this window
    assert torch.equal(got, codes.to(torch.int64) @ x.T)
