"""Tensor parallelism on ``torch.distributed``: PackedWeight shards, Megatron-style layers, whole models.

mixkern's format is per output feature (row), so it shards without requantizing:

* column-parallel (q/k/v, gate/up): each rank holds a contiguous block of output features;
  8-bit rows fall wherever they are and each shard re-indexes its ``idx4``/``idx8`` to local
  positions.  The input is replicated; ``gather_output`` all-gathers the outputs.
* row-parallel (o, down): each rank holds a contiguous block of K, cut at group boundaries.
  The per-token activation scale must be the unsharded op's, so the ranks first all-reduce
  (MAX) each token's local ``max|x|``; every rank then quantizes its slice with that scale,
  computes its float32 partial output (the format's epilogue over its K), and the partials
  are all-reduced (SUM) in float32 before the one cast to the output dtype; bias once, after.

Numerical contract (``P`` ranks; ``tolerance``/``float64_gemm_quantized`` of :mod:`mixkern.reference`):

* :func:`shard` is exact: a shard's tensors are slices of the unsharded ones.
* Column-parallel outputs equal the unsharded ``mixkern.gemm`` bit for bit: every output
  feature is computed on one rank from the whole x, and the all-gather only moves bits
  (CPU reference: always; CUDA kernels: the progressive format has one int32 accumulator
  per output and a fixed epilogue, split-K or not).
* Row-parallel: the integer operands (``xq``, ``a``) equal the unsharded op's exactly.  Rank
  r's partial ``y_r`` is within ``T_r = tolerance(xq_r, a, W_r, float32)`` of its float64 value
  (the contract any conforming kernel meets), the all-reduce adds P float32 numbers in some
  order (at most ``gamma_{P-1} * sum|y_r|``, ``gamma_n = n u / (1 - n u)``, ``u = 2**-24``), and
  the cast to the output dtype rounds once::

      |y - y64| <= 2 e_out |y64| + (1 + e_out) (T + gamma_{P-1} (S + T)),
      T = sum_r T_r,  S = sum_r |y_r64|,  e_out = the output dtype's unit roundoff

  (:func:`row_parallel_tolerance`).  Where partials cancel (S >> |y|) the bound follows S:
  the price of summing float epilogues instead of integers.  At P = 1 the layer is bit-equal
  to the op.  Every rank holds the same output when the backend's all-reduce gives every rank
  the same sum (gloo and NCCL's ring/tree algorithms do; the tests check gloo).

Until ``mixkern.gemm`` takes the tokens' ``amax`` and returns float32 (docs/parallel.md), the
row-parallel partial runs the exact reference (:mod:`mixkern.reference`) on every device:
correct on a GPU, not fast.

Modules: :mod:`.sharding` (``shard``, ``shard_plan``), :mod:`.layers` (the layers and the
row-parallel numerics), :mod:`.hf` (``shard_model``, ``load_sharded`` for Hugging Face
Llama/Qwen2-style models).
"""
from .hf import LayerPlan, load_sharded, plan_layers, shard_model
from .layers import (ColumnParallelMixLinear, RowParallelMixLinear, partial_gemm, quantize_slice, quantize_with_amax,
                     row_parallel_gemm, row_parallel_tolerance, token_amax)
from .sharding import COLUMN, ROW, ShardPlan, shard, shard_layer, shard_plan

__all__ = ["shard", "shard_layer", "shard_plan", "ShardPlan", "COLUMN", "ROW",
           "ColumnParallelMixLinear", "RowParallelMixLinear", "row_parallel_gemm", "row_parallel_tolerance",
           "partial_gemm", "quantize_slice", "quantize_with_amax", "token_amax",
           "shard_model", "load_sharded", "plan_layers", "LayerPlan"]
