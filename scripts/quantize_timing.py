"""How long quantize_model takes on Qwen2.5-Coder-1.5B's architecture, and that the result runs.

    python scripts/quantize_timing.py [--device cuda] [--calib-seqs 16] [--seq-len 512] [--layers 28]

The real weights (1.1 GB) cannot travel to a GPU machine that reaches no network, so this
builds transformers' ``Qwen2ForCausalLM`` at the real shapes (28 layers, hidden 1536, FFN
8960, 12/2 heads, 151,936 tokens) with random weights and random calibration tokens:
timing depends on shapes, not values.  It runs the whole ``quantize_model`` (every row at
4 and 8 bits, MixLLM salience streamed over the calibration batches, global 10%
allocation, packing), prints the per-step seconds, then decodes 8 tokens greedily with
the quantized model (GPU kernels on CUDA) and checks its logits are finite.
"""

import argparse
import sys
import time

import torch


def qwen15b_config(layers: int, dtype: torch.dtype):
    from transformers import Qwen2Config
    return Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=layers,
                       num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                       rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                       tie_word_embeddings=False, dtype=dtype)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--calib-seqs", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    args = p.parse_args()
    from transformers import Qwen2ForCausalLM

    from mixkern.model import QuantConfig, quantize_model
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(args.device):
        model = Qwen2ForCausalLM(qwen15b_config(args.layers, dtype)).to(dtype).eval()
    batches = [torch.randint(0, 151936, (1, args.seq_len + 1), device=args.device) for _ in range(args.calib_seqs)]
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = quantize_model(model, batches, QuantConfig(fraction=0.10, second_order="mixllm"))
    if args.device == "cuda":
        torch.cuda.synchronize()
    t_quant = time.perf_counter() - t0
    model = model.half() if args.device == "cuda" else model  # the GPU kernels take fp16/bf16 activations
    t0 = time.perf_counter()
    prompt = torch.randint(0, 151936, (1, 16), device=args.device)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True)
    t_gen = time.perf_counter() - t0
    finite = all(torch.isfinite(l).all().item() for l in out.logits)
    steps = " | ".join(f"{v:.1f}" for v in report.seconds.values())
    print(f"\n| device | layers | calibration tokens | build s | {' | '.join(f'{k} s' for k in report.seconds)} | quantize_model total s "
          f"| 8-bit features | bits/weight | generate 8 tokens s (first use: kernel compiles) | logits finite |")
    print("|---|---:|---:|---:|" + "---:|" * len(report.seconds) + "---:|---:|---:|---:|---|")
    print(f"| {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}) | {args.layers} "
          f"| {args.calib_seqs * args.seq_len} | {t_build:.1f} | {steps} | {t_quant:.1f} | {report.fraction_8bit:.1%} "
          f"| {report.average_bits:.3f} | {t_gen:.1f} | {finite} |")
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
