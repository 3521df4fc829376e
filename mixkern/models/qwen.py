"""Qwen2.5-Coder-1.5B-Instruct from its GGUF into transformers' ``Qwen2ForCausalLM``.

The GGUF stores the weights as Q4_K / Q6_K k-quants (and F32 norms and biases); they are
dequantized with the ``gguf`` package's numpy reader, one tensor at a time, straight into
a model built on the meta device (so no random-initialized copy is ever allocated).  This
dequantized model is the *fp reference* of every accuracy table: the original bf16
checkpoint is not what ships.  The tokenizer (byte-level BPE, 151,936 tokens) comes from
the GGUF metadata through transformers' own GGUF tokenizer reader.

Why not ``from_pretrained(dir, gguf_file=...)``: transformers' GGUF model path requires
``accelerate`` and materializes the whole state dict in fp32 before the cast; the tokenizer
path has neither problem and is used as is.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

NAME = "qwen2.5-1.5b"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_LAYER_NAMES = {  # GGUF tensor name in block N -> Hugging Face module name in model.layers.N
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _needs(*modules: str) -> None:
    import importlib.util
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ModuleNotFoundError(f"the real-model path needs {' and '.join(missing)}: "
                                  f"pip install 'transformers>=5,<6' 'gguf>=0.17' (or mixkern[hf])")


def hf_name(gguf_name: str) -> str:
    """``blk.3.attn_q.bias`` -> ``model.layers.3.self_attn.q_proj.bias``."""
    stem, _, suffix = gguf_name.rpartition(".")
    if stem.startswith("blk."):
        _, layer, part = stem.split(".", 2)
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{suffix}"
    return f"{_TOP_NAMES[stem]}.{suffix}"


def _field(reader, key: str):
    field = reader.fields[key]
    return field.contents()


def qwen2_config(reader, dtype: torch.dtype):
    """The transformers ``Qwen2Config`` the GGUF metadata describes."""
    from transformers import Qwen2Config
    arch = _field(reader, "general.architecture")
    if arch != "qwen2":
        raise ValueError(f"GGUF architecture is {arch!r}, this loader reads qwen2")
    g = lambda key: _field(reader, f"qwen2.{key}")  # noqa: E731
    names = {t.name for t in reader.tensors}
    return Qwen2Config(
        vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data), hidden_size=g("embedding_length"),
        intermediate_size=g("feed_forward_length"), num_hidden_layers=g("block_count"),
        num_attention_heads=g("attention.head_count"), num_key_value_heads=g("attention.head_count_kv"),
        max_position_embeddings=g("context_length"), rms_norm_eps=float(g("attention.layer_norm_rms_epsilon")),
        rope_parameters={"rope_type": "default", "rope_theta": float(g("rope.freq_base"))},
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"), dtype=dtype)


def linear_shapes(config) -> dict[str, tuple[int, int]]:
    """(out, in) of every decoder-layer linear a Qwen2 config implies: a bits budget can be
    checked from these before any weight is read."""
    h, f = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
                 "self_attn.o_proj": (h, h), "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f)}
    return {f"model.layers.{i}.{n}": s for i in range(config.num_hidden_layers) for n, s in per_layer.items()}


def gguf_config(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """The Qwen2Config of a GGUF file, from its metadata alone (no weights read)."""
    _needs("transformers", "gguf")
    import gguf
    return qwen2_config(gguf.GGUFReader(str(path)), dtype)


def load_gguf_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """``Qwen2ForCausalLM`` (eval mode, CPU) with the GGUF's weights dequantized to ``dtype``."""
    _needs("transformers", "gguf")
    import gguf
    from transformers import Qwen2ForCausalLM

    from .._progress import progress
    reader = gguf.GGUFReader(str(path))
    config = qwen2_config(reader, dtype)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    state = {}
    for t in progress(reader.tensors, f"dequantize GGUF to {str(dtype).removeprefix('torch.')}"):
        array = gguf.quants.dequantize(t.data, t.tensor_type)  # F32 tensors come back as read-only file views
        state[hf_name(t.name)] = torch.from_numpy(array if array.flags.writeable else array.copy()).to(dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.model.rotary_emb = type(model.model.rotary_emb)(config)  # its inv_freq buffer was on meta
    return model.eval()


def load_tokenizer(path: str | os.PathLike):
    """The GGUF's byte-level BPE tokenizer as a transformers tokenizer."""
    _needs("transformers", "gguf")
    from transformers import AutoTokenizer
    path = Path(path)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def load_qwen(dtype: str | torch.dtype = "fp32", directory: str | os.PathLike | None = None):
    """(model, tokenizer) of Qwen2.5-Coder-1.5B-Instruct, fetching the GGUF on first use."""
    from .fetch import fetch_gguf
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    _needs("transformers", "gguf")
    path = fetch_gguf(directory)
    return load_gguf_model(path, dtype), load_tokenizer(path)
