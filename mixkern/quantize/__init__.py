"""Quantizers: weights to the packed format, activations to per-token int8."""

from .activations import quantize_activation
from .weights import CLIP_RATIOS, eight_bit_index, quantize_weight

__all__ = ["quantize_activation", "quantize_weight", "eight_bit_index", "CLIP_RATIOS"]
