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
    """Every mode runs and lands in the table; CUDA graphs say n/a on CPU; --json holds the rows.
    Mode linears adds the second table (decode and prefill): positive linears, lm_head, host and
    step times and shares, eager - graph n/a on CPU, timed eagerly with the CPU note."""
    out = tmp_path / "rows.json"
    assert bench.main(["--model", "tiny", "--batches", "1", "--json", str(out), *SMALL]) == 0
    text = capsys.readouterr().out
    main, linears = text.split("Where a step's time goes")
    rows = [ln for ln in main.splitlines() if ln.startswith("| ")][1:]
    assert [r.split("|")[1].strip().split()[0] for r in rows] == ["decode"] * 3 + ["prefill", "generate()"]
    assert "n/a (CPU)" in rows[2]
    for r in rows[:2] + rows[3:]:
        assert "failed" not in r and r.split("|")[5].strip().endswith("x"), r
    assert "mixkern unfused tok/s" in text
    saved = json.loads(out.read_text())
    assert saved["quantized"] == 14 and saved["fused_groups"] == 4 and len(saved["rows"]) == 5
    assert saved["mixkern_bytes"] < saved["fp16_bytes"] / 3
    lrows = [ln for ln in linears.splitlines() if ln.startswith("| ")]
    assert lrows[0].startswith("| step | batch | timed as | fp16 linears ms | mixkern linears ms | linears speedup")
    assert "fp16 linear share | mixkern linear share | fp16 host ms | mixkern host ms" in lrows[0]
    assert [r.split("|")[1].strip() for r in lrows[1:]] == ["decode", "prefill 64 tokens"]
    assert all("eager (CUDA graph n/a on CPU)" in r and "failed" not in r for r in lrows[1:])
    assert "lm_head: the fp16 head alone" in linears
    assert [(r["step"], r["batch"], r["tokens"]) for r in saved["linears"]] == [("decode", 1, 1), ("prefill", 1, 64)]
    for r in saved["linears"]:
        assert r["linears_timed"] == "eager" and r["step_timed"] == "eager", r
        for key in ("fp16_linears_s", "mixkern_linears_s", "linears_speedup", "lm_head_s", "fp16_step_s",
                    "mixkern_step_s", "fp16_linear_share", "mixkern_linear_share", "fp16_lm_head_share",
                    "mixkern_lm_head_share", "fp16_host_s", "mixkern_host_s"):
            assert isinstance(r[key], float) and r[key] > 0, (key, r)
    decode, prefill = saved["linears"]
    assert decode["fp16_eager_minus_graph_s"] == decode["mixkern_eager_minus_graph_s"] == "n/a (CPU)"
    assert prefill["fp16_eager_minus_graph_s"] is None  # no prefill graph
    eager = next(r for r in saved["rows"] if r["mode"] == "eager")
    assert decode["fp16_step_s"] == eager["fp16"] and decode["mixkern_step_s"] == eager["mixkern"]


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


def test_linears_time_the_models_own_calls(monkeypatch):
    """The linears of one step are the forward's: after fusion the fp16 names resolve to slices,
    and q/k/v and gate/up run one GEMM each (2 layers x 4 GEMMs, not 14), biases included."""
    model = bench_model.build_model(bench_model.hf_config("tiny"), "cpu")
    names = bench_model.linear_names(model)
    assert len(names) == 14 and not any("lm_head" in n for n in names)
    bench_model.quantize_decoder(model)
    import mixkern
    from mixkern import linear
    assert mixkern.fuse_projections(model) == 4
    calls = []
    real = linear.call
    monkeypatch.setattr(linear, "call", lambda x, args: calls.append(x.shape) or real(x, args))
    spec = bench_model.Spec(batches=(3,), steps=1, reps=1)
    mods = [model.get_submodule(n) for n in names]
    with torch.no_grad():
        assert bench_model.modules_seconds([(m, 3) for m in mods], torch.device("cpu"), spec) > 0
    per_step = 2 * 4
    assert len(calls) == per_step * (1 + bench_model.WARM_CALLS + spec.steps * spec.reps)
    assert all(shape[0] == 3 for shape in calls)


def test_linears_rows_use_the_graph_step_and_keep_failures(tmp_path):
    """On a GPU the share's whole step is the CUDA-graph row's and eager - graph is the host time
    the graph removes; prefill uses its eager row; a failed part stays its text, its ratios None."""
    spec = bench_model.Spec(batches=(1, 8), prefill=128)
    rows = [{"mode": "eager", "batch": 1, "fp16": 1.0e-3, "mixkern": 1.4e-3},
            {"mode": "graph", "batch": 1, "fp16": 0.4e-3, "mixkern": 0.3e-3},
            {"mode": "eager", "batch": 8, "fp16": 2.0e-3, "mixkern": 2.0e-3},
            {"mode": "graph", "batch": 8, "fp16": "failed: OutOfMemoryError", "mixkern": 1.0e-3},
            {"mode": "prefill", "batch": 1, "fp16": 8.0e-3, "mixkern": 6.0e-3}]
    for r in rows:
        r.update(tokens=128 if r["mode"] == "prefill" else r["batch"], unfused=None)
    fp16 = {("decode", 1): {"linears": 0.2e-3, "lm_head": 0.1e-3, "host": 0.9e-3},
            ("decode", 8): {"linears": 0.5e-3, "lm_head": 0.1e-3, "host": 1.0e-3},
            ("prefill", 1): {"linears": 5.0e-3, "lm_head": 0.1e-3, "host": 2.0e-3}}
    mix = {("decode", 1): {"linears": 0.1e-3, "host": 1.3e-3}, ("decode", 8): {"linears": "failed: boom", "host": 1e-3},
           ("prefill", 1): {"linears": 2.5e-3, "host": 2.5e-3}}
    got = bench_model.linears_rows(rows, fp16, mix, spec, gpu=True)
    b1, b8, pre = got
    assert b1["step_timed"] == "graph" and b1["linears_timed"] == "graph"
    assert b1["fp16_linear_share"] == pytest.approx(0.5) and b1["mixkern_linear_share"] == pytest.approx(1 / 3)
    assert b1["linears_speedup"] == pytest.approx(2.0) and b1["fp16_lm_head_share"] == pytest.approx(0.25)
    assert b1["fp16_eager_minus_graph_s"] == pytest.approx(0.6e-3)
    assert b1["mixkern_eager_minus_graph_s"] == pytest.approx(1.1e-3)
    assert b8["step_timed"] == "eager" and b8["fp16_step_s"] == 2.0e-3  # the graph row failed: eager instead
    assert b8["mixkern_linears_s"] == "failed: boom" and b8["linears_speedup"] is None
    assert b8["mixkern_linear_share"] is None and b8["fp16_eager_minus_graph_s"] == "failed: OutOfMemoryError"
    assert pre["tokens"] == 128 and pre["step_timed"] == "eager" and pre["fp16_linear_share"] == pytest.approx(0.625)
    assert pre["fp16_eager_minus_graph_s"] is None
    table = bench_model.linears_table(got, spec)
    assert "| decode | 1 | CUDA graph | 0.200 | 0.100 | 2.00x | 0.100 | 0.400 | 0.300 | 50.0% | 33.3% |" in table
    assert "| decode | 8 | linears CUDA graph, step eager | 0.500 | failed: boom | - |" in table
    assert "| prefill 128 tokens | 1 | linears CUDA graph, step eager |" in table
    if importlib.util.find_spec("matplotlib") is not None:  # bars for the rows with numbers only
        bench_model.plot(rows, spec, str(tmp_path / "p.png"), "t", got)
        assert (tmp_path / "p.png").stat().st_size > 1000
