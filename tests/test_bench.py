"""The per-layer benchmark's CPU-side pieces (issues 14 and 16): argument parsing, the table and
plot from fake rows, peers skipped cleanly without gemlite or CUDA, and the peers' quantization
math against the bounds their sanity checks use."""

import importlib.util
import json
import sys

import pytest
import torch

from mixkern import bench, peers

FRACTIONS = [0.0, 0.1]


def _row(shape="4096x4096", m=16, **extra):
    """A row as run() writes it: progressive columns, plus whatever ``extra`` adds."""
    row = {"shape": shape, "m": m, "copies": 4, "fp16_ms": 0.040, "int8_ms": None, "heuristic": "h", "tuned": "t",
           "mixkern_0.1_heuristic_ms": 0.022, "err_0": 0.3, "mixkern_0_ms": 0.020, "mixkern_0_eager_ms": 0.030,
           "bits_0": 4.1, "err_0.1": 0.4, "mixkern_0.1_ms": 0.021, "mixkern_0.1_eager_ms": 0.031, "bits_0.1": 4.5,
           "mem_floor_ms": 0.003, "compute_floor_ms": 0.001}
    return {**row, **extra}


def _table_rows(text):
    return [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()]


def test_defaults_time_both_formats_and_every_peer():
    args = bench.build_parser().parse_args([])
    assert args.formats == ["progressive", "mixllm"]
    assert args.peers == ["gemlite_a16w4", "gemlite_a8w8", "fp8_rowwise"] == list(peers.PEER_NAMES)
    args = bench.build_parser().parse_args(["--formats", "progressive", "--peers"])
    assert args.formats == ["progressive"] and args.peers == []


@pytest.mark.parametrize("argv", [["--formats", "groupfloat"], ["--peers", "marlin"]])
def test_unknown_format_or_peer_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_formats_without_progressive_fail_in_one_line(capsys):
    assert bench.main(["--formats", "mixllm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must include progressive" in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only exit")
def test_no_gpu_fails_in_one_line(capsys):
    assert bench.main(["--shapes", "256x256"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_each_row_is_reported_as_measured(tmp_path, capsys):
    """A cut-off run keeps what it measured: each row's table line on stderr (header first) and
    the JSON rewritten after each row."""
    path, rows = tmp_path / "b.json", []
    for m in (1, 16):
        rows.append(_row(m=m))
        bench.report_row(rows, FRACTIONS, str(path), ["progressive"], [], [])
        assert [r["m"] for r in json.loads(path.read_text())["rows"]] == [r["m"] for r in rows]
    lines = _table_rows(capsys.readouterr().err)
    assert lines[0][0] == "N x K" and [line[1] for line in lines[2:]] == ["1", "16"]


def test_table_without_extra_columns_is_the_old_table():
    lines = _table_rows(bench.table([_row()], FRACTIONS))
    assert len(lines[0]) == 13 and lines[0][-1] == "max err/tol" and lines[2][-1] == "0.40"
    assert not bench.extra_columns([_row()], FRACTIONS)


def test_table_extra_columns_show_us_and_speedup():
    """mixllm and each peer get one column, 'us (speedup)'; a failed sanity check reads 'wrong',
    an untimed cell 'n/a'; the mixllm error joins max err/tol."""
    full = _row(**{"mixllm_0_ms": 0.025, "mixllm_0.1_ms": 0.026, "err_mixllm_0": 0.9, "err_mixllm_0.1": 0.2,
                   "gemlite_a16w4_ms": 0.010, "gemlite_a16w4_relerr": 0.1,
                   "gemlite_a8w8_ms": None, "gemlite_a8w8_relerr": 0.9,
                   "gemlite_a8w8_error": "relative error 0.9 > bound 0.05: not timed",
                   "fp8_rowwise_ms": None, "fp8_rowwise_error": "RuntimeError: boom"})
    head, _, cells, other = _table_rows(bench.table([full, _row(m=1)], FRACTIONS))
    extra = dict(zip(head[12:-1], cells[12:-1]))
    assert extra == {"mixllm 0% us (vs fp16)": "25.0 (1.60x)", "mixllm 10% us (vs fp16)": "26.0 (1.54x)",
                     "gemlite A16W4 us (vs fp16)": "10.0 (4.00x)", "gemlite A8W8 us (vs fp16)": "wrong",
                     "fp8 rowwise us (vs fp16)": "n/a"}
    assert cells[-1] == "0.90"
    assert other[12:-1] == ["n/a"] * 5 and len(other) == len(head)


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_plot_draws_every_series(tmp_path):
    rows = [_row(shape=s, m=m, gemlite_a16w4_ms=0.01, fp8_rowwise_ms=None) for s in ("1x1", "2x2") for m in (1, 16)]
    bench.plot(rows, FRACTIONS, tmp_path / "p.png", title="test")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_peers_skip_without_cuda():
    usable, notes = peers.available(peers.PEER_NAMES, torch.device("cpu"))
    assert usable == [] and len(notes) == 1 and "no CUDA GPU" in notes[0]
    assert peers.available([], torch.device("cpu")) == ([], [])


def test_gemlite_absent_skips_its_columns_only(monkeypatch):
    """With a GPU (faked) but no gemlite, both gemlite peers go with one note; fp8 stays on sm_90
    and goes with a note on sm_80."""
    monkeypatch.setitem(sys.modules, "gemlite", None)  # import gemlite -> ImportError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    usable, notes = peers.available(peers.PEER_NAMES, torch.device("cuda"))
    assert [p.name for p in usable] == ["fp8_rowwise"]
    assert len(notes) == 1 and notes[0].startswith("gemlite columns skipped: gemlite does not import (ModuleNotFoundError")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    usable, notes = peers.available(["fp8_rowwise"], torch.device("cuda"))
    assert usable == [] and notes == ["fp8_rowwise skipped: e4m3 _scaled_mm needs sm_89 or newer, this GPU is sm_80"]
    with pytest.raises(peers.PeerUnavailable, match="pip install gemlite==0.6.0.post2"):
        peers.build_gemlite_a16w4(torch.zeros(8, 128, dtype=torch.float16))


def _problem(n=512, k=1024, m=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=gen) * 0.02).half()
    x = torch.randn(m, k, generator=gen).half()
    return x, w, x.float() @ w.float().T


def test_fp8_rowwise_math():
    """Each row's max lands on 448 exactly, every value within e4m3's half-ulp (2**-4 relative,
    or 2**-10 absolute below the normal range), zero rows stay zero, and the simulated
    _scaled_mm stays well inside the fp8 peer's bound."""
    x, w, ref = _problem()
    q, s = peers.fp8_rowwise(w)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (w.shape[0], 1) and s.dtype == torch.float32
    assert torch.equal(q.float().abs().amax(dim=1), torch.full((w.shape[0],), 448.0))
    scaled = w.float() / s
    assert ((q.float() - scaled).abs() <= torch.maximum(scaled.abs() * 2.0**-4, torch.tensor(2.0**-10))).all()
    qz, sz = peers.fp8_rowwise(torch.zeros(2, 64, dtype=torch.float16))
    assert torch.equal(qz.float(), torch.zeros(2, 64)) and torch.isfinite(sz).all()
    xq, sx = peers.fp8_rowwise(x)
    y = (xq.float() * sx) @ (q.float() * s).T
    err = peers.relative_error(y, ref)
    assert 0.01 < err < peers.PEERS[2].bound / 1.5


def test_int4_groups_math_and_bounds():
    """Codes in [0, 15], integer zeros, each group's range covered; the 4-bit weights' product error
    and an int8 per-token x per-channel product sit well inside their peers' bounds."""
    x, w, ref = _problem()
    q, s, z = peers.quantize_int4_groups(w, 128)
    assert q.dtype == torch.uint8 and q.max() <= 15 and s.shape == z.shape == (512, 8) and s.dtype == torch.float16
    assert torch.equal(z, z.round()) and z.min() >= 0 and z.max() <= 15
    wd = peers.dequantize_int4_groups(q, s, z)
    assert (wd - w.float()).abs().max() <= s.float().max()  # within one step (clamped ends included)
    err4 = peers.relative_error(x.float() @ wd.T, ref)
    assert 0.03 < err4 < peers.PEERS[0].bound / 1.5
    sw = w.float().abs().amax(1, keepdim=True) / 127
    sx = x.float().abs().amax(1, keepdim=True) / 127
    err8 = peers.relative_error(((x.float() / sx).round() * sx) @ ((w.float() / sw).round() * sw).T, ref)
    assert err8 < peers.PEERS[1].bound / 2


def test_relative_error_nan_fails_every_bound():
    _, _, ref = _problem(n=8, k=128, m=2)
    err = peers.relative_error(torch.full_like(ref, float("nan")), ref)
    assert not all(err <= p.bound for p in peers.PEERS)


@pytest.mark.parametrize("fmt", ["progressive", "mixllm"])
def test_check_in_token_chunks_matches_one_pass(fmt, monkeypatch):
    """The reference runs a few tokens at a time (mixllm's is (M, N, K/128)); chunking changes nothing."""
    from mixkern.quantize import quantize_weight
    gen = torch.Generator().manual_seed(1)
    w = (torch.randn(64, 256, generator=gen) * 0.02).half()
    x = torch.randn(5, 256, generator=gen).half()
    pw = quantize_weight(w, [1, 5], format=fmt)
    whole = bench.check(x, pw)
    import mixkern.reference
    monkeypatch.setattr(mixkern.reference, "FLOAT64_TERMS_PER_SLICE", 128)  # 1 or 2 tokens per chunk
    assert bench.check(x, pw) == whole <= 1.0


def test_fp8_rowwise_op_on_cpu():
    """The timed fp8 op itself, where this torch has a CPU _scaled_mm: fp16 out, inside the bound."""
    x, w, ref = _problem(n=256, k=512, m=3)
    try:
        y = peers.build_fp8_rowwise(w)(x)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"no CPU _scaled_mm here: {e}")
    assert y.dtype == torch.float16 and y.shape == (3, 256)
    assert peers.relative_error(y, ref) < peers.PEERS[2].bound


def test_peer_failures_cost_their_cell_only(monkeypatch, capsys):
    """A peer that fails to build, one whose output is wrong and one that raises each leave an
    error in the row (and 'n/a' / 'wrong' in the table); a sane one is timed."""
    def fake_timing(fn, copies):  # runs every copy, as the graph capture would
        for i in range(copies):
            fn(i)
        return 0.01
    monkeypatch.setattr(bench, "_rotated_ms", fake_timing)
    x, w, _ = _problem(n=64, k=128, m=2)
    good = peers.Peer("fp8_rowwise", "fp8 rowwise", 0.08, lambda w: (lambda x: x @ w.T))
    bad = peers.Peer("gemlite_a8w8", "gemlite A8W8", 0.05, lambda w: (lambda x: -(x @ w.T)))
    boom = peers.Peer("gemlite_a16w4", "gemlite A16W4", 0.2, lambda w: (lambda x: 1 / 0))

    def no_kernel(w):
        raise peers.PeerUnavailable("no kernel\nsecond line")
    unbuildable = good._replace(name="x", build=no_kernel)
    ops = bench._build_peers([good, bad, boom, unbuildable], [w, w.clone()])
    assert ops[unbuildable] == "PeerUnavailable: no kernel"
    row = {"shape": "64x128", "m": 2, "fp16_ms": 0.02}
    bench._time_peers(row, x, [x, x.clone()], w, ops, 2)
    assert row["fp8_rowwise_ms"] == 0.01 and row["fp8_rowwise_relerr"] < 1e-3 and "fp8_rowwise_error" not in row
    assert row["gemlite_a8w8_ms"] is None and row["gemlite_a8w8_error"].startswith("relative error 2 > bound")
    assert row["gemlite_a16w4_error"] == "ZeroDivisionError: division by zero"
    assert row["x_error"] == "build failed: PeerUnavailable: no kernel"
    assert [bench._cell(row, f"{n}_ms") for n in ("fp8_rowwise", "gemlite_a8w8", "gemlite_a16w4")] == \
        ["10.0 (2.00x)", "wrong", "n/a"]
    assert capsys.readouterr().err.count("64x128 M=2") == 3


def test_format_without_cuda_kernel_is_dropped_with_a_note(monkeypatch):
    """NotImplementedError from a format's op (mixllm before its kernel) drops that format for
    the rest of the run, with one note; progressive is untouched."""
    def no_kernel(x, pw, schedule=None):
        raise NotImplementedError("mixkern.mixllm.v1 has no CUDA kernel yet\nmore")
    monkeypatch.setattr(bench, "check", no_kernel)
    formats, notes, row = ["progressive", "mixllm"], [], {}
    bench._time_formats(row, None, [], {"mixllm": {0.0: [object()]}}, formats, 1, notes)
    assert formats == ["progressive"] and row == {}
    assert notes == ["mixllm columns skipped: NotImplementedError: mixkern.mixllm.v1 has no CUDA kernel yet"]
