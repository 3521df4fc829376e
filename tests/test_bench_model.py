"""The whole-model serving benchmark on CPU: the tiny preset end to end (the reference op),
per-rank config derivation against mixkern.shapes, and one-line errors."""

import importlib.util
import json

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from mixkern import bench, bench_model  # noqa: E402
from mixkern.linear import MixLinear  # noqa: E402
from mixkern.shapes import CONFIGS, DecoderConfig, layer_shapes  # noqa: E402

SMALL = ["--device", "cpu", "--context", "32", "--prefill", "64", "--steps", "2"]


def _shapes(model) -> dict[str, tuple[int, int]]:
    """(N, K) of layer 0's projections, named as mixkern.shapes.layer_shapes names them."""
    layer = model.model.layers[0]
    attn, mlp = layer.self_attn, layer.mlp
    return {"q": tuple(attn.q_proj.weight.shape), "kv": tuple(attn.k_proj.weight.shape),
            "o": tuple(attn.o_proj.weight.shape), "up": tuple(mlp.up_proj.weight.shape),
            "down": tuple(mlp.down_proj.weight.shape)}


def _expected(c: DecoderConfig, tp: int) -> dict[str, tuple[int, int]]:
    return {k: v for k, v in layer_shapes(c, tp).items() if k in ("q", "kv", "o", "up", "down")}


def test_tiny_run_end_to_end(capsys, tmp_path):
    """Every mode runs and lands in the table; CUDA graphs say n/a on CPU; --json holds the rows."""
    out = tmp_path / "rows.json"
    assert bench.main(["--model", "tiny", "--batches", "1", "--json", str(out), *SMALL]) == 0
    text = capsys.readouterr().out
    rows = [ln for ln in text.splitlines() if ln.startswith("| ")][1:]
    assert [r.split("|")[1].strip().split()[0] for r in rows] == ["decode"] * 3 + ["prefill", "generate()"]
    assert "n/a (CPU)" in rows[2]
    for r in rows[:2] + rows[3:]:
        assert "failed" not in r and r.split("|")[5].strip().endswith("x"), r
    assert "mixkern unfused tok/s" in text
    saved = json.loads(out.read_text())
    assert saved["quantized"] == 14 and saved["fused_groups"] == 4 and len(saved["rows"]) == 5
    assert saved["mixkern_bytes"] < saved["fp16_bytes"] / 3


@pytest.mark.parametrize("name,tp", [("llama3-70b", 8), ("llama3-8b", 1), ("llama3-8b", 4), ("qwen2.5-7b", 4),
                                     ("qwen2.5-0.5b", 2), ("llama2-70b", 8)])
def test_rank_config_has_the_shard_shapes(name, tp):
    """One TP rank's model (built on the meta device) has mixkern.shapes' per-rank shapes."""
    config = bench_model.hf_config(name, tp, layers=1)
    model = bench_model.build_model(config, "meta")
    assert config.num_hidden_layers == 1 == len(model.model.layers)
    assert _shapes(model) == _expected(CONFIGS[name], tp)
    assert model.lm_head.out_features == -(-bench_model.SERVING[name][1] // tp)  # vocab-parallel head


def test_config_json_path(tmp_path):
    from transformers import Qwen2Config
    Qwen2Config(hidden_size=512, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=2,
                num_hidden_layers=6, vocab_size=300).save_pretrained(tmp_path)
    config = bench_model.hf_config(str(tmp_path / "config.json"), tp=4, layers=2)
    model = bench_model.build_model(config, "meta")
    assert type(model).__name__ == "Qwen2ForCausalLM" and len(model.model.layers) == 2
    assert _shapes(model) == _expected(DecoderConfig.from_hf(str(tmp_path)), 4)


@pytest.mark.parametrize("name,tp,layers,needle", [
    ("llama9-1t", 1, None, "neither a serving preset"), ("qwen2.5-7b", 8, None, "does not divide heads 28"),
    ("llama3-8b", 3, None, "does not divide"), ("tiny", 1, 3, "has 2 decoder layers")])
def test_config_errors(name, tp, layers, needle):
    with pytest.raises(ValueError, match=needle):
        bench_model.hf_config(name, tp, layers)


def test_cli_errors_are_one_line(capsys):
    for argv, needle in [(["--model", "nope", "--device", "cpu"], "neither a serving preset"),
                         (["--model", "llama3-8b", "--tp", "3", "--device", "cpu"], "does not divide"),
                         (["--model", "tiny", "--device", "nonsense"], "--device nonsense")]:
        assert bench.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    if not torch.cuda.is_available():
        assert bench.main(["--model", "tiny"]) == 2
        assert "--device cpu" in capsys.readouterr().err
    if importlib.util.find_spec("matplotlib") is None:
        assert bench.main(["--model", "tiny", "--device", "cpu", "--plot", "x.png"]) == 2
        assert "pip install 'mixkern[plot]'" in capsys.readouterr().err


def test_a_failing_mode_fills_its_cell_and_the_rest_run(monkeypatch):
    """The decoder's linears (and only they) become MixLinears; a mode that raises reports
    'failed: <reason>' and the next mode still runs."""
    model = bench_model.build_model(bench_model.hf_config("tiny"), "cpu")
    assert bench_model.quantize_decoder(model) == 14
    assert type(model.lm_head) is nn.Linear and isinstance(model.model.layers[1].mlp.down_proj, MixLinear)

    def boom(*args):
        raise RuntimeError("no luck\nsecond line")
    monkeypatch.setattr(bench_model, "prefill_seconds", boom)
    spec = bench_model.Spec(batches=(1,), context=16, steps=2, reps=1, modes=("prefill", "eager"))
    got = bench_model.measure(model, spec)
    assert got["prefill", 1] == "failed: RuntimeError: no luck" and isinstance(got["eager", 1], float)
    rows = [{"mode": m, "batch": 1, "tokens": 1, "fp16": 0.5, "mixkern": got[m, 1], "unfused": None}
            for m in ("prefill", "eager")]
    table = bench_model.table(rows, spec, layers=2)
    assert "| 1 | 2.0 | failed: RuntimeError: no luck | - | 250.000 | - |" in table  # 0.5 s / 2 layers
