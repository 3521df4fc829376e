"""Physical packing of 4-bit codes: the one pack/unpack pair every other module goes through.

Layout (``NIBBLE_ORDER``): codes along K are taken eight at a time; the eight codes
``c0..c7`` of one block fill one little-endian 32-bit word, whose byte ``j`` (j = 0..3)
holds ``c_j`` in its low nibble and ``c_{j+4}`` in its high nibble.  A kernel that loads
a word ``w`` then gets four codes per instruction in int8 lanes:

    (w >> 0) & 0x0F0F0F0F  ->  c0 c1 c2 c3
    (w >> 4) & 0x0F0F0F0F  ->  c4 c5 c6 c7

so a 16-byte load yields 32 codes in K order with two logic ops per four codes, and
rows stay contiguous in K (a row of K codes is K/2 bytes), which 16-byte vector
loads and async copies need.
"""

from __future__ import annotations

import torch

NIBBLE_ORDER = "word-interleaved-v1"
CODES_PER_WORD = 8


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack uint8 codes in [0, 15] of shape (R, K), K % 8 == 0, into uint8 (R, K // 2)."""
    if codes.dtype != torch.uint8:
        raise TypeError(f"pack_int4 expects uint8 codes, got {codes.dtype}")
    if codes.dim() != 2 or codes.shape[1] % CODES_PER_WORD:
        raise ValueError(f"pack_int4 expects shape (R, K) with K % 8 == 0, got {tuple(codes.shape)}")
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError("pack_int4: codes must lie in [0, 15]")
    rows, k = codes.shape
    blocks = codes.reshape(rows, k // CODES_PER_WORD, 2, 4)  # [.., half, j]
    packed = blocks[:, :, 0, :] | (blocks[:, :, 1, :] << 4)  # byte j = c_j | c_{j+4} << 4
    return packed.reshape(rows, k // 2).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 (R, K // 2) -> uint8 codes (R, K)."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_int4 expects uint8, got {packed.dtype}")
    if packed.dim() != 2 or packed.shape[1] % (CODES_PER_WORD // 2):
        raise ValueError(f"unpack_int4 expects shape (R, K // 2) with K % 8 == 0, got {tuple(packed.shape)}")
    rows, half_k = packed.shape
    words = packed.reshape(rows, half_k // 4, 1, 4)
    codes = torch.cat((words & 0x0F, words >> 4), dim=2)  # [.., half, j]
    return codes.reshape(rows, half_k * 2).contiguous()
