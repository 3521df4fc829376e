"""Peer kernels for ``python -m mixkern.bench`` (issue 16): what one could run instead of
mixkern at the same shapes, so its columns read against more than cuBLAS fp16.

* ``gemlite_a16w4``: gemlite (mobiusml/gemlite 0.6.0.post2, Triton) fp16 activations x 4-bit
  asymmetric weights in groups of 128 (HQQ layout ``W ~= (q - z) * s``, fp16 ``s`` and ``z``,
  round-to-nearest min-max here): ``gemlite.helper.A16W4_HQQ_INT(device, dtype).from_weights(q, s, z)``.
* ``gemlite_a8w8``: gemlite int8 x int8, activations quantized per token inside the call, weights
  per output channel: ``gemlite.helper.A8W8_int8_dynamic(device, dtype).from_weights(w)``.
* ``fp8_rowwise``: ``torch._scaled_mm`` on e4m3 weights with one fp32 scale per row and
  activations quantized per token to e4m3 inside the timed op (sm_89 and newer).

gemlite is optional: importing it loads its shipped autotune configs for the GPU it finds
(``gemlite/configs/h100.json`` on an H100; shapes missing there autotune on first call), and
where it does not import the peer is skipped with a note.  Each peer is checked before it is
timed: its relative error against the fp16 product of the unquantized weights stays under
``bound`` (about twice what its rounding gives on the benchmark's Gaussian data; a kernel that
reads a wrong layout lands near 1).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

GEMLITE_VERSION = "0.6.0.post2"  # the API this module is written against
FP8 = torch.float8_e4m3fn


class Peer(NamedTuple):
    name: str  # --peers value and JSON key prefix
    label: str  # table and plot label
    bound: float  # largest sane ||y - x @ w.T|| / ||x @ w.T|| (Frobenius)
    build: Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]  # w (N, K) fp16 -> op(x)


class PeerUnavailable(RuntimeError):
    """This peer cannot run here (library absent, GPU too old); the message says why, in one line."""


def gemlite_module():
    """``gemlite.helper``, or PeerUnavailable: the import itself queries the GPU (and needs triton)."""
    try:
        import gemlite
        import gemlite.helper
    except Exception as e:  # ImportError, or a CUDA error from its import-time device query
        why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        raise PeerUnavailable(f"gemlite does not import ({why}); pip install gemlite=={GEMLITE_VERSION} "
                              "or put it on PYTHONPATH") from None
    return gemlite


def gemlite_note() -> str:
    """One line: gemlite's version and which shipped autotune config its import loaded."""
    gemlite = gemlite_module()
    tag = getattr(gemlite.core, "selected_tag", None)
    where = f"autotune configs {tag.rsplit('/', 1)[-1]}" if tag else "no shipped autotune configs for this GPU"
    version = gemlite.__version__ + ("" if gemlite.__version__ == GEMLITE_VERSION else f" (written for {GEMLITE_VERSION})")
    return f"gemlite {version}: {where} (shapes not in it autotune on first call)"


def quantize_int4_groups(w: torch.Tensor, group_size: int = 128):
    """Min-max round-to-nearest 4-bit in HQQ's layout: (q uint8 (N, K) in [0, 15], s fp16 (N, G),
    z fp16 (N, G)) with ``w ~= (q - z) * s``; q is taken against the fp16-rounded s."""
    n, k = w.shape
    g = w.float().reshape(n, k // group_size, group_size)
    lo, hi = g.amin(-1), g.amax(-1)
    s = ((hi - lo) / 15).clamp(min=torch.finfo(torch.float16).tiny).half()
    z = (-lo / s.float()).round().clamp(0, 15)
    q = (g / s.float()[..., None] + z[..., None]).round().clamp(0, 15)
    return q.to(torch.uint8).reshape(n, k), s, z.half()


def dequantize_int4_groups(q, s, z) -> torch.Tensor:
    """float32 ``(q - z) * s`` of :func:`quantize_int4_groups`' output."""
    n, k = q.shape
    groups = s.shape[1]
    return ((q.float().reshape(n, groups, -1) - z.float()[..., None]) * s.float()[..., None]).reshape(n, k)


def build_gemlite_a16w4(w: torch.Tensor):
    q, s, z = quantize_int4_groups(w, 128)
    return gemlite_module().helper.A16W4_HQQ_INT(device=w.device, dtype=w.dtype).from_weights(q, s, z)


def build_gemlite_a8w8(w: torch.Tensor):
    return gemlite_module().helper.A8W8_int8_dynamic(device=w.device, dtype=w.dtype).from_weights(w)


def fp8_rowwise(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t (R, C) -> (e4m3 (R, C), fp32 scale (R, 1)) with t ~= q * scale per row; each row's
    max |t| lands on 448, e4m3's largest finite value (clamped: 448 * (1 + eps) would be NaN)."""
    tf = t.float()
    fmax = torch.finfo(FP8).max
    scale = (tf.abs().amax(dim=1, keepdim=True) / fmax).clamp(min=1e-12)
    return (tf / scale).clamp(-fmax, fmax).to(FP8), scale


def fp8_rowwise_mm(x: torch.Tensor, wq_t: torch.Tensor, scale_w: torch.Tensor) -> torch.Tensor:
    """The timed fp8 op, fp16 in to fp16 out: x quantized per token, then one ``_scaled_mm``."""
    xq, scale_x = fp8_rowwise(x)
    return torch._scaled_mm(xq, wq_t, scale_a=scale_x, scale_b=scale_w, out_dtype=x.dtype)


def build_fp8_rowwise(w: torch.Tensor):
    """``_scaled_mm`` wants B column-major: the (K, N) transpose of the row-major (N, K) codes."""
    wq, scale = fp8_rowwise(w)
    wq_t, scale_w = wq.t(), scale.reshape(1, -1).contiguous()
    return lambda x: fp8_rowwise_mm(x, wq_t, scale_w)


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """Frobenius ||y - ref|| / ||ref|| in float32 (NaN anywhere gives NaN, which no bound passes)."""
    return ((y.float() - ref).norm() / ref.norm()).item()


PEERS = (
    Peer("gemlite_a16w4", "gemlite A16W4", 0.20, build_gemlite_a16w4),  # RTN g128: ~0.10
    Peer("gemlite_a8w8", "gemlite A8W8", 0.05, build_gemlite_a8w8),  # int8 x int8: ~0.012
    Peer("fp8_rowwise", "fp8 rowwise", 0.08, build_fp8_rowwise),  # e4m3 x e4m3: ~0.037
)
PEER_NAMES = tuple(p.name for p in PEERS)


def available(names, device: torch.device) -> tuple[list[Peer], list[str]]:
    """(the peers among ``names`` that can run on ``device``, one note per skipped group)."""
    wanted = [p for p in PEERS if p.name in names]
    if device.type != "cuda" or not torch.cuda.is_available():
        return [], [f"peers skipped ({', '.join(p.name for p in wanted)}): no CUDA GPU"] if wanted else []
    usable, notes = [], []
    if any(p.name.startswith("gemlite") for p in wanted):
        try:
            notes.append(gemlite_note())
        except PeerUnavailable as e:
            notes.append(f"gemlite columns skipped: {e}")
            wanted = [p for p in wanted if not p.name.startswith("gemlite")]
    for p in wanted:
        if p.name == "fp8_rowwise" and torch.cuda.get_device_capability(device) < (8, 9):
            notes.append(f"fp8_rowwise skipped: e4m3 _scaled_mm needs sm_89 or newer, this GPU is "
                         f"sm_{''.join(map(str, torch.cuda.get_device_capability(device)))}")
            continue
        usable.append(p)
    return usable, notes
