"""mixkern: MixLLM-style mixed-precision LLM quantization (W4A8 + W8A8 per output feature).

    pw = mixkern.quantize_weight(w, eight_bit_features=idx)   # PackedWeight
    y  = mixkern.gemm(x, pw)                                   # torch.ops.mixkern.gemm
    mixkern.quantize_model(model, calib_batches, mixkern.QuantConfig(bits=4.4))  # nn.Linear -> MixLinear
    mixkern.fuse_projections(model)   # q/k/v and gate/up: one activation quantization and one GEMM each

The format's exact math is in :mod:`mixkern.format`; :mod:`mixkern.reference` executes it.
"""

from .format import FORMAT_VERSION, GROUP_SIZES, PackedWeight, WeightFormat
from .ops import gemm
from .packing import pack_int4, unpack_int4
from .quantize import quantize_activation, quantize_weight
from .reference import reference_gemm, tolerance
from .linear import MixLinear
from .fusion import fuse_projections, unfuse_projections
from .model import QuantConfig, load_quantized, quantize_model, save_quantized
from .warmup import warmup

__version__ = "0.1.0"

__all__ = [
    "PackedWeight", "WeightFormat", "FORMAT_VERSION", "GROUP_SIZES",
    "quantize_weight", "quantize_activation", "gemm", "reference_gemm", "tolerance",
    "pack_int4", "unpack_int4",
    "quantize_model", "QuantConfig", "MixLinear", "save_quantized", "load_quantized", "warmup",
    "fuse_projections", "unfuse_projections",
]
