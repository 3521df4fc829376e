"""The quantized weight format, written down once.

A weight ``W`` of shape (N, K) (``y = x @ W.T``) is split by *output feature* (row):
rows listed in ``idx8`` are 8-bit, the rest (``idx4``, ascending) are 4-bit.  Every
output element is computed entirely at one precision.  Two versioned formats exist;
they differ only in how the 4-bit rows carry their scales.

``WeightFormat.PROGRESSIVE`` ("mixkern.progressive.v1", QServe-style two-level)::

    4-bit row n:  W[n, k] ~= s1[n] * w8[n, k],   w8[n, k] = (q[n, k] - z[n, g]) * s2[n, g]
                  q in [0, 15] (packed nibbles), z in [0, 15], s2 in [1, 16] (uint8),
                  s1 fp32 per row, |w8| <= 127 guaranteed (level one clipped to +-119)
    8-bit row n:  W[n, k] ~= s8[n] * q8[n, k],   q8 int8 in [-127, 127], s8 fp32
    kernel:       acc = sum_k xq * w8 over all of K in one int32 accumulator;
                  y = ((fp32(acc) * a[m]) * s[n])  -- every float op in the epilogue

``WeightFormat.GROUP_FLOAT`` ("mixkern.groupfloat.v1", MixLLM's two-step dequantization)::

    4-bit row n:  W[n, k] ~= sg[n, g] * (q[n, k] - z[n, g]),  sg fp16 per group, z in [0, 15]
    8-bit row n:  as above
    kernel:       acc_g = sum_{k in g} xq * (q - z) in int32 per group;
                  t = fma(fp32(acc_g), fp32(sg), t) over groups in order (fp32);
                  y = fp32(t) * a[m]    (8-bit rows: (fp32(acc) * a[m]) * s8[n])

Activations (both): per-token symmetric int8, see :mod:`mixkern.quantize.activations`.
``g = k // group_size``; ``group_size`` is 64, 128 (default) or 256.
The reference in :mod:`mixkern.reference` is the executable form of this text.
"""

from __future__ import annotations

import enum
from itertools import accumulate
from dataclasses import dataclass, fields, replace

import torch

from .packing import NIBBLE_ORDER, unpack_int4

FORMAT_VERSION = 1
GROUP_SIZES = (64, 128, 256)
MAX_IN_FEATURES = 131072  # the longest row the GPU kernels take (activation quantization holds a row in one block)
LEVEL1_MAX = 119  # progressive level one: |w8| <= 119 keeps (q - z) * s2 inside int8


def check_in_features(k: int, group_size: int) -> None:
    """Raise ValueError unless a K-long row can be packed with this group size and run on the GPU."""
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size}")
    if k < 1 or k % group_size:
        raise ValueError(f"in_features K={k} is not a positive multiple of group_size={group_size}")
    if k > MAX_IN_FEATURES:
        raise ValueError(f"in_features K={k} exceeds mixkern's limit of {MAX_IN_FEATURES} (the GPU kernels "
                         "quantize a token's row in one block); split the layer along K")


class WeightFormat(str, enum.Enum):
    PROGRESSIVE = "mixkern.progressive.v1"
    GROUP_FLOAT = "mixkern.groupfloat.v1"

    @classmethod
    def parse(cls, value: "WeightFormat | str") -> "WeightFormat":
        if isinstance(value, cls):
            return value
        aliases = {"progressive": cls.PROGRESSIVE, "groupfloat": cls.GROUP_FLOAT, "group_float": cls.GROUP_FLOAT}
        try:
            return aliases.get(str(value).lower()) or cls(value)
        except ValueError:
            names = ", ".join([*aliases, *(f.value for f in cls)])
            raise ValueError(f"unknown weight format {value!r}; expected one of: {names}") from None


@dataclass(frozen=True)
class PackedWeight:
    """A mixed-precision weight of logical shape (N, K); see the module docstring for the math.

    Tensors (N4 = len(idx4), N8 = len(idx8), G = K // group_size):
      qweight4  uint8 (N4, K // 2)  4-bit codes, physical nibble order of :mod:`mixkern.packing`
      zeros4    uint8 (N4, G)       zero points in [0, 15]
      scales4   PROGRESSIVE: uint8 (N4, G) integer group scales s2 in [1, 16]
                GROUP_FLOAT: float16 (N4, G) float group scales
      chan_scale4  float32 (N4,) level-one row scales s1 (PROGRESSIVE); None for GROUP_FLOAT
      qweight8  int8 (N8, K)        8-bit rows
      scale8    float32 (N8,)       8-bit row scales
      idx4, idx8  int32, ascending, disjoint, together 0..N-1
    """

    shape: tuple[int, int]
    group_size: int
    format: WeightFormat
    idx4: torch.Tensor
    idx8: torch.Tensor
    qweight4: torch.Tensor
    zeros4: torch.Tensor
    scales4: torch.Tensor
    chan_scale4: torch.Tensor | None
    qweight8: torch.Tensor
    scale8: torch.Tensor
    version: int = FORMAT_VERSION
    nibble_order: str = NIBBLE_ORDER

    def __post_init__(self):
        self.validate()

    @classmethod
    def unchecked(cls, **values) -> "PackedWeight":
        """Build without :meth:`validate` (which syncs with the device): for the op's hot path,
        whose arguments came from a validated PackedWeight.  Traceable by torch.compile (which
        cannot call ``dataclasses.fields``: hence :data:`FIELD_DEFAULTS`)."""
        obj = object.__new__(cls)
        for name, default in FIELD_DEFAULTS.items():
            object.__setattr__(obj, name, values.get(name, default))
        return obj

    # -- structure ---------------------------------------------------------------------
    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def num_groups(self) -> int:
        return self.shape[1] // self.group_size

    @property
    def device(self) -> torch.device:
        return self.qweight4.device

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}

    def to(self, device) -> "PackedWeight":
        return replace(self, **{name: t.to(device) for name, t in self.tensors().items()})

    def validate(self) -> None:
        """Raise ValueError/TypeError if the fields do not form a valid packed weight."""
        n, k = self.shape
        g = self.group_size
        if self.version != FORMAT_VERSION:
            raise ValueError(f"packed weight format version {self.version} is not supported (this is {FORMAT_VERSION})")
        if self.nibble_order != NIBBLE_ORDER:
            raise ValueError(f"nibble order {self.nibble_order!r} is not {NIBBLE_ORDER!r}")
        if n < 1:
            raise ValueError(f"shape {self.shape} needs N >= 1")
        check_in_features(k, g)
        n4, n8 = self.idx4.numel(), self.idx8.numel()
        scale_dtype = torch.uint8 if self.format is WeightFormat.PROGRESSIVE else torch.float16
        expect = {
            "idx4": (torch.int32, (n4,)),
            "idx8": (torch.int32, (n8,)),
            "qweight4": (torch.uint8, (n4, k // 2)),
            "zeros4": (torch.uint8, (n4, k // g)),
            "scales4": (scale_dtype, (n4, k // g)),
            "qweight8": (torch.int8, (n8, k)),
            "scale8": (torch.float32, (n8,)),
        }
        if self.format is WeightFormat.PROGRESSIVE:
            expect["chan_scale4"] = (torch.float32, (n4,))
        elif self.chan_scale4 is not None:
            raise ValueError("chan_scale4 must be None for the group-float format")
        device = self.qweight4.device
        for name, (dtype, shape) in expect.items():
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"PackedWeight.{name} must be a tensor, got {type(t).__name__}")
            if t.dtype != dtype or tuple(t.shape) != shape:
                raise ValueError(f"PackedWeight.{name}: expected {dtype} {shape}, got {t.dtype} {tuple(t.shape)}")
            if t.device != device:
                raise ValueError(f"PackedWeight.{name} is on {t.device}, the rest on {device}")
        if n4 + n8 != n:
            raise ValueError(f"idx4 ({n4}) and idx8 ({n8}) must together cover all {n} output features")
        both = torch.cat((self.idx4, self.idx8)).cpu().long()
        if n and not torch.equal(torch.sort(both).values, torch.arange(n)):
            raise ValueError("idx4 and idx8 must be disjoint and cover 0..N-1")
        for name in ("idx4", "idx8"):
            idx = getattr(self, name)
            if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
                raise ValueError(f"{name} must be strictly ascending")

    # -- row blocks (fused projections) -------------------------------------------------
    @staticmethod
    def concat_rows(weights) -> "PackedWeight":
        """The output features of several weights of one input, in order, as one weight: what
        fused projections (q/k/v, gate/up) run in one GEMM.  Every output feature is computed on
        its own, so its output is the parts' outputs concatenated, bit for bit."""
        weights = list(weights)
        if not weights:
            raise ValueError("concat_rows needs at least one PackedWeight")
        for i, w in enumerate(weights):
            if not isinstance(w, PackedWeight):
                raise TypeError(f"concat_rows: part {i} is a {type(w).__name__}, not a PackedWeight")
        first = weights[0]
        for i, w in enumerate(weights[1:], 1):
            for what, mine, theirs in (("in_features", w.in_features, first.in_features),
                                       ("group_size", w.group_size, first.group_size),
                                       ("format", w.format.value, first.format.value),
                                       ("device", w.device, first.device)):
                if mine != theirs:
                    raise ValueError(f"concat_rows: part {i} has {what} {mine}, part 0 has {theirs}; "
                                     "only weights of one input, group size, format and device concatenate")
        offsets = [0, *accumulate(w.out_features for w in weights)]
        cat = {name: torch.cat([getattr(w, name) for w in weights])  # payload rows follow idx4 / idx8 order
               for name in ("qweight4", "zeros4", "scales4", "qweight8", "scale8")}
        return PackedWeight(
            shape=(offsets[-1], first.in_features), group_size=first.group_size, format=first.format,
            idx4=torch.cat([w.idx4 + o for w, o in zip(weights, offsets)]),
            idx8=torch.cat([w.idx8 + o for w, o in zip(weights, offsets)]),
            chan_scale4=None if first.chan_scale4 is None else torch.cat([w.chan_scale4 for w in weights]), **cat)

    def split_rows(self, sizes, eight_bit_counts=None, *, check: bool = True) -> list["PackedWeight"]:
        """The inverse of :meth:`concat_rows`: blocks of ``sizes`` consecutive output features as
        weights of their own (payload views, indices shifted).  ``eight_bit_counts`` (each block's
        8-bit rows, known to whoever concatenated) spares finding them (a host sync);
        ``check=False`` skips :meth:`validate` for a hot path whose input was validated."""
        sizes = [int(s) for s in sizes]
        if sum(sizes) != self.out_features or any(s < 1 for s in sizes):
            raise ValueError(f"split_rows: block sizes {sizes} must be positive and add up to N={self.out_features}")
        ends = list(accumulate(sizes))
        if eight_bit_counts is None:
            at8 = torch.searchsorted(self.idx8, torch.tensor(ends, dtype=torch.int32, device=self.device)).tolist()
        else:
            at8 = list(accumulate(int(c) for c in eight_bit_counts))
            if len(at8) != len(sizes) or at8[-1] != self.idx8.numel():
                raise ValueError(f"split_rows: 8-bit counts {list(eight_bit_counts)} do not fit blocks {sizes}")
        build = PackedWeight if check else PackedWeight.unchecked
        parts, start, a4, a8 = [], 0, 0, 0
        for end, b8 in zip(ends, at8):
            b4 = a4 + (end - start) - (b8 - a8)
            rows4, rows8 = slice(a4, b4), slice(a8, b8)
            parts.append(build(
                shape=(end - start, self.in_features), group_size=self.group_size, format=self.format,
                idx4=self.idx4[rows4] - start, idx8=self.idx8[rows8] - start, qweight4=self.qweight4[rows4],
                zeros4=self.zeros4[rows4], scales4=self.scales4[rows4], qweight8=self.qweight8[rows8],
                chan_scale4=None if self.chan_scale4 is None else self.chan_scale4[rows4], scale8=self.scale8[rows8]))
            start, a4, a8 = end, b4, b8
        return parts

    # -- sizes -------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes a kernel reads for this weight (indices included)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    @staticmethod
    def feature_bytes(k: int, group_size: int, format: "WeightFormat | str" = None, bits: int = 4) -> int:
        """Bytes one output feature of a K-long row costs at ``bits`` (4 or 8), index included:
        the unit of every bit budget (``nbytes`` equals the sum over features)."""
        fmt = WeightFormat.parse(format or WeightFormat.PROGRESSIVE)
        if bits == 8:
            return 4 + k + 4  # idx8, int8 row, fp32 scale
        g = k // group_size
        scales = g if fmt is WeightFormat.PROGRESSIVE else 2 * g
        return 4 + k // 2 + g + scales + (4 if fmt is WeightFormat.PROGRESSIVE else 0)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / (self.shape[0] * self.shape[1])

    @property
    def fraction_8bit(self) -> float:
        return self.idx8.numel() / self.shape[0]

    # -- logical views (slow, for references and tests) ---------------------------------
    def codes4(self) -> torch.Tensor:
        """uint8 (N4, K) 4-bit codes in K order."""
        return unpack_int4(self.qweight4)

    def _per_element(self, t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(self.group_size, dim=1)

    def int8_rows4(self) -> torch.Tensor:
        """int8 (N4, K): what a kernel's int4 -> int8 step yields for the 4-bit rows.

        PROGRESSIVE: (q - z) * s2; GROUP_FLOAT: q - z.  Exact in int8 by construction.
        """
        diff = self.codes4().to(torch.int16) - self._per_element(self.zeros4).to(torch.int16)
        if self.format is WeightFormat.PROGRESSIVE:
            diff = diff * self._per_element(self.scales4).to(torch.int16)
        if diff.numel() and (int(diff.min()) < -128 or int(diff.max()) > 127):
            raise ValueError("corrupt packed weight: int4 -> int8 step leaves int8 range")
        return diff.to(torch.int8)

    def row_scales(self) -> torch.Tensor:
        """float32 (N,): the per-output-feature scale of the epilogue (ones for GROUP_FLOAT 4-bit rows)."""
        s = torch.ones(self.shape[0], dtype=torch.float32, device=self.device)
        if self.format is WeightFormat.PROGRESSIVE:
            s[self.idx4] = self.chan_scale4
        s[self.idx8] = self.scale8
        return s

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(N, K) weight the integer operands and scales represent: exact in float64, rounded once to dtype."""
        n, k = self.shape
        w = torch.empty(n, k, dtype=torch.float64, device=self.device)
        w4 = self.int8_rows4().to(torch.float64)
        if self.format is WeightFormat.PROGRESSIVE:
            w4 = w4 * self.chan_scale4.to(torch.float64)[:, None]
        else:
            w4 = w4 * self._per_element(self.scales4).to(torch.float64)
        w[self.idx4] = w4
        w[self.idx8] = self.qweight8.to(torch.float64) * self.scale8.to(torch.float64)[:, None]
        return w.to(dtype)

    def __repr__(self) -> str:
        return (
            f"PackedWeight(shape={self.shape}, format={self.format.value}, group_size={self.group_size}, "
            f"8bit={self.idx8.numel()}/{self.shape[0]}, bits/weight={self.bits_per_weight:.3f}, device={self.device})"
        )


FIELD_DEFAULTS = {f.name: f.default for f in fields(PackedWeight)}  # every field, in order (MISSING: none)
