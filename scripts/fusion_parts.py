"""The fused projections of one decoder layer, part by part, against fp16 (GPU; issue 13):

    python scripts/fusion_parts.py                       # llama3-8b shapes, 1 16 512 2048 tokens, < 2 min
    python scripts/fusion_parts.py --model qwen2.5-7b --m 16 512

Builds a 1-layer model of the preset's shapes (random weights, 10% 8-bit rows), fuses q/k/v and
gate/up, and times each part captured 20 times in one CUDA graph (µs a call: the median replay,
by triton's do_bench, over the 20 calls): the fused GEMM alone, the siblings as the forward
calls them (views of the fused output), the same siblings followed by a contiguous copy each
(what stop 34's slices did), and the whole MLP both ways, beside the fp16 layers.  Prints a
markdown table.
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

import mixkern
from mixkern import bench_model
from mixkern.bench import _rotated_ms

CALLS = 20  # calls captured in one graph: its launch is paid once for all of them


def graph_us(fn) -> float:
    """µs per call of ``fn``, :data:`CALLS` calls captured back to back in one CUDA graph
    (:func:`mixkern.bench._rotated_ms`, the per-layer benchmark's timer; same operands each call)."""
    return _rotated_ms(lambda i: fn(), CALLS) * 1e3


def parts(layer, fp16: dict, m: int, device) -> dict[str, float]:
    """{part: µs} at ``m`` tokens for one fused layer and its fp16 linears."""
    att, mlp = layer.self_attn, layer.mlp
    x = torch.randn(m, att.q_proj.in_features, dtype=torch.float16, device=device)
    h = torch.randn(m, mlp.down_proj.in_features, dtype=torch.float16, device=device)
    qkv = lambda: (att.q_proj(x), att.k_proj(x), att.v_proj(x))  # noqa: E731
    gate_up = lambda: (mlp.gate_proj(x), mlp.up_proj(x))  # noqa: E731
    copied = lambda mlp_: mlp_.down_proj(F.silu(mlp_.gate_proj(x).contiguous()) * mlp_.up_proj(x).contiguous())  # noqa: E731
    fp = {name.split(".")[-1]: lin for name, lin in fp16.items()}
    return {
        "fp16 q + k + v": graph_us(lambda: (fp["q_proj"](x), fp["k_proj"](x), fp["v_proj"](x))),
        "fused q/k/v GEMM alone": graph_us(lambda: att.q_k_v_proj(x)),
        "q, k, v slices, contiguous copies": graph_us(lambda: [t.contiguous() for t in qkv()]),
        "q, k, v slices, views": graph_us(qkv),
        "fp16 gate + up": graph_us(lambda: (fp["gate_proj"](x), fp["up_proj"](x))),
        "fused gate/up GEMM alone": graph_us(lambda: mlp.gate_up_proj(x)),
        "gate, up slices, contiguous copies": graph_us(lambda: [t.contiguous() for t in gate_up()]),
        "gate, up slices, views": graph_us(gate_up),
        "fp16 down": graph_us(lambda: fp["down_proj"](h)),
        "down": graph_us(lambda: mlp.down_proj(h)),
        "whole MLP, fp16": graph_us(lambda: fp["down_proj"](F.silu(fp["gate_proj"](x)) * fp["up_proj"](x))),
        "whole MLP, copies": graph_us(lambda: copied(mlp)),
        "whole MLP, views": graph_us(lambda: mlp(x)),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama3-8b", help="a serving preset of mixkern.bench --model")
    p.add_argument("--m", type=int, nargs="+", default=[1, 16, 512, 2048], help="token counts")
    args = p.parse_args(argv)
    device = torch.device("cuda")
    model = bench_model.build_model(bench_model.hf_config(args.model, layers=1), device)
    fp16 = {n: copy.deepcopy(m) for n, m in model.model.layers[0].named_modules() if isinstance(m, torch.nn.Linear)}
    bench_model.quantize_decoder(model)
    mixkern.fuse_projections(model)
    with torch.no_grad():
        cols = {m: parts(model.model.layers[0], fp16, m, device) for m in args.m}
    print(f"\n{args.model}, one layer, µs a call (CUDA graph, {torch.cuda.get_device_name()})\n")
    print("| part | " + " | ".join(f"{m} tokens" for m in args.m) + " |")
    print("|---|" + "---:|" * len(args.m))
    for part in cols[args.m[0]]:
        print(f"| {part} | " + " | ".join(f"{cols[m][part]:.1f}" for m in args.m) + " |")


if __name__ == "__main__":
    main()
