"""The quantized weight formats, written down once: the contract every kernel matches.

A weight ``W`` of shape (N, K) (``y = x @ W.T``) is split by *output feature* (row):
rows listed in ``idx8`` are 8-bit, the rest (``idx4``, ascending) are 4-bit.  Every
output element is computed entirely at one precision.  ``g = k // group_size`` (the
weight group), ``group_size`` is 64, 128 (default) or 256.  Two versioned formats exist.

``WeightFormat.PROGRESSIVE`` ("mixkern.progressive.v1", QServe-style two-level; GPU kernels)::

    activations:  per token: a[m] = max_k |x[m, k]| / 127 (fp32), xq = rint(x / a[m]) in int8
    4-bit row n:  W[n, k] ~= s1[n] * w8[n, k],   w8[n, k] = (q[n, k] - z[n, g]) * s2[n, g]
                  q in [0, 15] (packed nibbles), z in [0, 15], s2 in [1, 16] (uint8),
                  s1 fp32 per row, |w8| <= 127 guaranteed (level one clipped to +-119)
    8-bit row n:  W[n, k] ~= s8[n] * q8[n, k],   q8 int8 in [-127, 127], s8 fp32 per row
    kernel:       acc = sum_k xq * w8 over all of K in one int32 accumulator;
                  y = out_dtype((fp32(acc) * a[m]) * s[n])  -- two fp32 multiplies, in this order

``WeightFormat.MIXLLM`` ("mixkern.mixllm.v1", MixLLM's configuration; GPU kernels
:mod:`mixkern.kernels.mixllm_gemv` and :mod:`mixkern.kernels.mixllm_gemm`)::

    activation groups: j = k // A with A = min(group_size, 128) (A = 64 for weight group 64);
                  a[m, j] = max_{k in j} |x[m, k]| / 127 (fp32 division), xq = rint(x / a[m, j])
                  clamped to [-127, 127]; an all-zero group has a = 0, xq = 0
    4-bit row n:  W[n, k] ~= s[n, g] * (q[n, k] - z[n, g]),  q, z in [0, 15], s fp16 > 0
                  (step one: the int8 operand is q - z in [-15, 15], integer ops only)
    8-bit row n:  W[n, k] ~= s[n, g] * q8[n, k],  q8 int8 in [-127, 127], s fp16 > 0 per (row, group)
    kernel, both row kinds alike (w = q - z or q8):
                  p[m, n, j] = sum_{k in j} xq[m, k] * w[n, k]     int32, exact (|p| < 2**21,
                                                                    so fp32(p) is exact too)
                  c[m, n, j] = fp32(a[m, j] * fp32(s[n, j * A // group_size]))   one fp32 multiply
                  acc = 0.0f;  for j = 0, 1, ..., K/A - 1 (increasing k):
                      acc = fmaf(fp32(p[m, n, j]), c[m, n, j], acc)  one rounding (fused)
                  y = out_dtype(acc)                                round to nearest even

    split-K, S slices (S divides K/A; the GPU kernels at 5..191 tokens, where a grid of whole-K
                  tiles would leave SMs idle): slice s runs the chain above from acc_s = 0.0f over
                  its own J/S groups, and y = out_dtype(((acc_0 + acc_1) + acc_2) + ...), fp32 adds
                  in slice order -- deterministic, and still within the float64 bound

Every step is IEEE round-to-nearest-even, so a GPU kernel that keeps this order (one int32
MMA chain per activation group, ``__fmul_rn`` then ``__fmaf_rn``; its slices summed in order)
is bit-exact against :func:`mixkern.reference.reference_gemm_quantized` with its ``split_k``,
and any order of the fp32 sum stays within :func:`mixkern.reference.tolerance`.  A token
whose activation group holds NaN or Inf gets ``a[m, j] = +inf`` there, so its whole output
row is non-finite (``fmaf(p, inf, acc)`` is inf or NaN) and no other token is touched.

``mixkern.groupfloat.v1`` (packed format version 1) is retired: it had no GPU kernel and
MixLLM's configuration supersedes it (per-group activation and 8-bit scales change the
stored layout); checkpoints holding it are refused, re-quantize with ``format="mixllm"``.
The reference in :mod:`mixkern.reference` is the executable form of this text.
"""

from __future__ import annotations

import enum
import math
from itertools import accumulate
from dataclasses import dataclass, fields, replace

import torch

from .packing import NIBBLE_ORDER, unpack_int4

FORMAT_VERSION = 2  # 2: groupfloat retired, mixllm added (per-group fp16 8-bit scales)
READABLE_FORMAT_VERSIONS = (1, 2)  # version 1's progressive layout is version 2's; its groupfloat is refused
GROUP_SIZES = (64, 128, 256)
ACT_GROUP_MAX = 128  # MixLLM's activation group: min(weight group, 128)
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


RETIRED = ("groupfloat", "group_float", "mixkern.groupfloat.v1")


class WeightFormat(str, enum.Enum):
    PROGRESSIVE = "mixkern.progressive.v1"
    MIXLLM = "mixkern.mixllm.v1"

    @classmethod
    def parse(cls, value: "WeightFormat | str") -> "WeightFormat":
        if isinstance(value, cls):
            return value
        if str(value).lower() in RETIRED:
            raise ValueError(f"weight format {value!r} is retired: mixkern.groupfloat.v1 (packed format version 1) "
                             "had no GPU kernel and MixLLM's configuration replaces it; re-quantize the "
                             "floating-point weights with format='mixllm'")
        aliases = {"progressive": cls.PROGRESSIVE, "mixllm": cls.MIXLLM}
        try:
            return aliases.get(str(value).lower()) or cls(value)
        except ValueError:
            names = ", ".join([*aliases, *(f.value for f in cls)])
            raise ValueError(f"unknown weight format {value!r}; expected one of: {names}") from None

    def act_group_size(self, group_size: int) -> int | None:
        """Activation scale granularity along K: None (per token) or MixLLM's group."""
        return None if self is WeightFormat.PROGRESSIVE else min(group_size, ACT_GROUP_MAX)


def field_layout(fmt: WeightFormat, n4: int, n8: int, k: int, group_size: int) -> dict:
    """{field: (dtype, shape)} of every tensor a PackedWeight of this format holds."""
    g = k // group_size
    common = {"idx4": (torch.int32, (n4,)), "idx8": (torch.int32, (n8,)), "qweight4": (torch.uint8, (n4, k // 2)),
              "zeros4": (torch.uint8, (n4, g)), "qweight8": (torch.int8, (n8, k))}
    if fmt is WeightFormat.PROGRESSIVE:
        return {**common, "scales4": (torch.uint8, (n4, g)), "chan_scale4": (torch.float32, (n4,)),
                "scale8": (torch.float32, (n8,))}
    return {**common, "scales4": (torch.float16, (n4, g)), "scale8": (torch.float16, (n8, g))}


@dataclass(frozen=True)
class PackedWeight:
    """A mixed-precision weight of logical shape (N, K); see the module docstring for the math.

    Tensors (N4 = len(idx4), N8 = len(idx8), G = K // group_size):
      qweight4  uint8 (N4, K // 2)  4-bit codes, physical nibble order of :mod:`mixkern.packing`
      zeros4    uint8 (N4, G)       zero points in [0, 15]
      scales4   PROGRESSIVE: uint8 (N4, G) integer group scales s2 in [1, 16]
                MIXLLM: float16 (N4, G) group scales
      chan_scale4  float32 (N4,) level-one row scales s1 (PROGRESSIVE); None for MIXLLM
      qweight8  int8 (N8, K)        8-bit rows
      scale8    PROGRESSIVE: float32 (N8,) row scales; MIXLLM: float16 (N8, G) group scales
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
        expect = field_layout(self.format, n4, n8, k, g)
        if "chan_scale4" not in expect and self.chan_scale4 is not None:
            raise ValueError(f"chan_scale4 must be None for the {self.format.value} format")
        device = self.qweight4.device
        for name, (dtype, shape) in expect.items():
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"PackedWeight.{name} must be a tensor, got {type(t).__name__}")
            if t.dtype != dtype or tuple(t.shape) != shape:
                raise ValueError(f"PackedWeight.{name}: expected {dtype} {shape} for {self.format.value}, "
                                 f"got {t.dtype} {tuple(t.shape)}")
            if t.device != device:
                raise ValueError(f"PackedWeight.{name} is on {t.device}, the rest on {device}")
        if self.format is WeightFormat.MIXLLM:  # the NaN rule needs finite positive scales
            for name in ("scales4", "scale8"):
                s = getattr(self, name)
                if s.numel() and not bool((torch.isfinite(s) & (s > 0)).all()):
                    raise ValueError(f"PackedWeight.{name}: mixllm scales must be finite and positive")
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
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        n4, n8 = (1, 0) if bits == 4 else (0, 1)
        return sum(dtype.itemsize * math.prod(shape)
                   for dtype, shape in field_layout(fmt, n4, n8, k, group_size).values())

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

        PROGRESSIVE: (q - z) * s2; MIXLLM: q - z.  Exact in int8 by construction.
        """
        diff = self.codes4().to(torch.int16) - self._per_element(self.zeros4).to(torch.int16)
        if self.format is WeightFormat.PROGRESSIVE:
            diff = diff * self._per_element(self.scales4).to(torch.int16)
        if diff.numel() and (int(diff.min()) < -128 or int(diff.max()) > 127):
            raise ValueError("corrupt packed weight: int4 -> int8 step leaves int8 range")
        return diff.to(torch.int8)

    def row_scales(self) -> torch.Tensor:
        """float32 (N,): PROGRESSIVE's per-output-feature epilogue scale (s1 or s8)."""
        if self.format is not WeightFormat.PROGRESSIVE:
            raise ValueError(f"{self.format.value} has group scales, no per-row scale; see group_scales()")
        s = torch.empty(self.shape[0], dtype=torch.float32, device=self.device)
        s[self.idx4] = self.chan_scale4
        s[self.idx8] = self.scale8
        return s

    def int8_rows(self) -> torch.Tensor:
        """int8 (N, K): every row's integer MMA operand in output-feature order."""
        w = torch.empty(self.shape, dtype=torch.int8, device=self.device)
        w[self.idx4] = self.int8_rows4()
        w[self.idx8] = self.qweight8
        return w

    def group_scales(self) -> torch.Tensor:
        """float32 (N, G): MIXLLM's weight group scale of every row (fp16 values, exact in fp32)."""
        if self.format is not WeightFormat.MIXLLM:
            raise ValueError(f"{self.format.value} has no float group scales")
        s = torch.empty(self.shape[0], self.num_groups, dtype=torch.float32, device=self.device)
        s[self.idx4] = self.scales4.to(torch.float32)
        s[self.idx8] = self.scale8.to(torch.float32)
        return s

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(N, K) weight the integer operands and scales represent: exact in float64, rounded once to dtype."""
        w = self.int8_rows().to(torch.float64)
        if self.format is WeightFormat.PROGRESSIVE:
            return (w * self.row_scales().to(torch.float64)[:, None]).to(dtype)
        return (w * self._per_element(self.group_scales().to(torch.float64))).to(dtype)

    def __repr__(self) -> str:
        return (
            f"PackedWeight(shape={self.shape}, format={self.format.value}, group_size={self.group_size}, "
            f"8bit={self.idx8.numel()}/{self.shape[0]}, bits/weight={self.bits_per_weight:.3f}, device={self.device})"
        )


FIELD_DEFAULTS = {f.name: f.default for f in fields(PackedWeight)}  # every field, in order (MISSING: none)
