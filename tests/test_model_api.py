"""quantize_model / MixLinear / save_quantized / load_quantized and the CLIs, on CPU at small scale."""

import json
import os

import pytest
import torch
from torch import nn

import mixkern
from mixkern import MixLinear, QuantConfig, load_quantized, quantize_model, quantize_weight, save_quantized
from mixkern.lm import LMConfig, TinyLM, next_token_loss
from mixkern.reference import reference_gemm

SMALL = LMConfig(d_model=128, n_layers=2, n_heads=2, d_ff=256, seq_len=32)


def _model(seed=0):
    torch.manual_seed(seed)
    return TinyLM(SMALL).eval()


def _batches(seed=0, count=2):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (4, SMALL.seq_len + 1), generator=gen) for _ in range(count)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_mixlinear_equals_the_reference_op(dtype):
    torch.manual_seed(1)
    w, b = torch.randn(96, 256) * 0.05, torch.randn(96)
    packed = quantize_weight(w, [3, 7, 50], 128)
    layer = MixLinear(packed, b)
    x = torch.randn(2, 5, 256).to(dtype)
    compute = dtype if dtype != torch.float32 else torch.float16
    want = (reference_gemm(x.reshape(-1, 256).to(compute), packed).reshape(2, 5, 96).to(dtype) + b.to(dtype))
    assert torch.equal(layer(x), want)
    with pytest.raises(ValueError, match="input features"):
        layer(torch.randn(3, 128))


def test_mixlinear_keeps_its_scales_fp32_through_half():
    layer = MixLinear(quantize_weight(torch.randn(8, 128), [1], 128)).half()
    assert layer.chan_scale4.dtype == layer.scale8.dtype == torch.float32 and layer.qweight4.dtype == torch.uint8


def test_quantize_model_replaces_linears_and_meets_the_budget():
    model = _model()
    report = quantize_model(model, _batches(), QuantConfig(bits=4.6))
    mixed = [m for m in model.modules() if isinstance(m, MixLinear)]
    assert len(mixed) == 14 and isinstance(model.lm_head, nn.Linear)
    assert report.average_bits <= 4.6 and report.fraction_8bit > 0
    total = sum(m.packed.nbytes for m in mixed) * 8 / sum(m.in_features * m.out_features for m in mixed)
    assert total == pytest.approx(report.average_bits, rel=1e-12)  # the budget counts the real bytes
    loss = next_token_loss(model, _batches(5)[0])
    assert torch.isfinite(loss)


def test_quantize_model_refuses_bad_configs():
    with pytest.raises(ValueError, match="group_size"):
        quantize_model(_model(), _batches(), QuantConfig(group_size=100))
    with pytest.raises(ValueError, match="not both"):
        quantize_model(_model(), _batches(), QuantConfig(bits=4.4, fraction=0.1))
    with pytest.raises(ValueError, match="no nn.Linear"):
        quantize_model(_model(), _batches(), QuantConfig(skip=("",)))
    odd = nn.Sequential(nn.Linear(100, 8))
    with pytest.raises(ValueError, match="multiple of group_size"):
        quantize_model(odd, [torch.randn(2, 100)], QuantConfig(), loss_fn=lambda m, b: m(b).sum())


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = _model()
    report = quantize_model(model, _batches(), QuantConfig(fraction=0.1))
    save_quantized(model, tmp_path, report)
    loaded = load_quantized(tmp_path)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = _batches(9)[0][:, :-1]
    assert torch.equal(model(ids), loaded(ids))
    cfg = json.loads((tmp_path / "mixkern_config.json").read_text())
    assert cfg["quant_config"]["fraction"] == 0.1 and cfg["layers"]["blocks.0.q_proj"]["eight_bit_features"] == \
        model.blocks[0].q_proj.idx8.tolist()
    skeleton = _model(seed=3)
    assert torch.equal(load_quantized(tmp_path, skeleton)(ids), model(ids))


def test_corrupt_truncated_or_mismatched_checkpoints_are_refused(tmp_path):
    model = _model()
    save_quantized(model, tmp_path, quantize_model(model, _batches(), QuantConfig(fraction=0.2)))
    weights, cfg_path = tmp_path / "model.safetensors", tmp_path / "mixkern_config.json"
    good, good_cfg = weights.read_bytes(), cfg_path.read_text()

    data = bytearray(good)
    data[-100] ^= 0x01  # one flipped bit in the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        load_quantized(tmp_path)
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="truncated|past the end"):
        load_quantized(tmp_path)
    weights.write_bytes(good)

    cfg = json.loads(good_cfg)
    cfg["layers"]["blocks.0.q_proj"]["eight_bit_features"] = [0]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="8-bit features differ"):
        load_quantized(tmp_path)
    cfg = json.loads(good_cfg)
    cfg["packed_format_version"] = 99
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="version"):
        load_quantized(tmp_path)
    cfg_path.write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        load_quantized(tmp_path)
    cfg_path.write_text(good_cfg)
    wrong = TinyLM(LMConfig(d_model=256, n_layers=2, n_heads=2, d_ff=256, seq_len=32))
    with pytest.raises(ValueError):
        load_quantized(tmp_path, wrong)
    os.remove(weights)
    with pytest.raises(FileNotFoundError):
        load_quantized(tmp_path)


def test_clis_end_to_end(tmp_path, capsys):
    from mixkern.eval import main as eval_main
    from mixkern.lm import main as lm_main
    from mixkern.quantize.__main__ import main as quantize_main
    lm, q = str(tmp_path / "lm"), str(tmp_path / "q")
    assert lm_main(["--out", lm, "--steps", "3", "--batch", "2", "--d-model", "128", "--layers", "1", "--d-ff", "256"]) == 0
    assert quantize_main(["--model", lm, "--out", q, "--bits", "4.8", "--calib-seqs", "4", "--batch", "2"]) == 0
    assert eval_main(["--model", lm, "--quantized", q, "--tokens", "512"]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert eval_main(["--model", lm, "--table", "--tokens", "512", "--calib-seqs", "4"]) == 0
    out = capsys.readouterr().out
    assert "| MixLLM global 10% |" in out and "| random, bits of global 10% |" in out and "| fp reference (fp32, cpu) |" in out
    assert quantize_main(["--model", lm, "--out", q, "--bits", "2.0", "--calib-seqs", "4"]) == 2
    assert "below the all-4-bit cost" in capsys.readouterr().err
    assert eval_main(["--model", str(tmp_path / "nothing")]) == 2


def test_corpus_is_real_text_with_disjoint_splits():
    from mixkern import corpus
    test, calib = corpus.tokens("test"), corpus.tokens("calib")
    assert test.numel() > 100_000 and calib.numel() > 100_000
    assert bytes(test[:64].tolist()).decode().startswith("In the beginning God created")
    with pytest.raises(ValueError):
        corpus.tokens("dev")


def test_top_level_api_is_exported():
    for name in ("quantize_model", "QuantConfig", "MixLinear", "save_quantized", "load_quantized"):
        assert hasattr(mixkern, name)
