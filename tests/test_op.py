import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mixkern
from mixkern import WeightFormat, quantize_weight, reference_gemm
from mixkern.ops import op_args
from strategies import activations, dtypes, eight_bit_choice, formats, weights


@given(wg=weights(max_n=64), data=st.data(), fmt=formats, dtype=dtypes, m=st.integers(1, 33))
def test_gemm_op_equals_reference(wg, data, fmt, dtype, m):
    w, gs = wg
    pw = quantize_weight(w, data.draw(eight_bit_choice(w.shape[0])), gs, fmt)
    x = activations(torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1))), m, w.shape[1], dtype)
    y = mixkern.gemm(x, pw)
    assert y.dtype == dtype and y.shape == (m, w.shape[0])
    assert torch.equal(y, reference_gemm(x, pw))


@pytest.mark.parametrize("fmt", list(WeightFormat))
@pytest.mark.parametrize("eight", [None, [0, 3, 17], "all"])
def test_opcheck(fmt, eight):
    torch.manual_seed(1)
    pw = quantize_weight(torch.randn(40, 256), eight, 128, fmt)
    x = torch.randn(5, 256, dtype=torch.float16)
    torch.library.opcheck(torch.ops.mixkern.gemm.default, op_args(x, pw))


def test_torch_compile_traces_the_op():
    torch.manual_seed(2)
    pw = quantize_weight(torch.randn(48, 256), [1, 2], 128)
    x = torch.randn(3, 256, dtype=torch.bfloat16)

    def f(x):
        return mixkern.gemm(x, pw).float().relu()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), f(x))


def _pw():
    return quantize_weight(torch.randn(16, 256), [3], 128)


@pytest.mark.parametrize("x, pw, err, match", [
    (lambda: torch.randn(2, 256), _pw, TypeError, "float16, bfloat16"),
    (lambda: torch.ones(2, 256, dtype=torch.int8), _pw, TypeError, "dtype"),
    (lambda: torch.randn(256, dtype=torch.float16), _pw, ValueError, "2-D"),
    (lambda: torch.randn(2, 3, 256, dtype=torch.float16), _pw, ValueError, "2-D"),
    (lambda: torch.randn(2, 128, dtype=torch.float16), _pw, ValueError, "K=128"),
    (lambda: torch.randn(0, 256, dtype=torch.float16), _pw, ValueError, "empty"),
    (lambda: torch.randn(2, 256, dtype=torch.float16, device="meta"), _pw, ValueError, "meta"),
    (lambda: torch.full((2, 256), float("nan"), dtype=torch.float16), _pw, ValueError, "NaN"),
    (lambda: torch.randn(2, 256, dtype=torch.float16), lambda: torch.randn(16, 256), TypeError, "PackedWeight"),
])
def test_gemm_rejects_bad_input(x, pw, err, match):
    with pytest.raises(err, match=match):
        mixkern.gemm(x(), pw())


def test_packed_weight_rejects_inconsistent_fields():
    import dataclasses
    pw = _pw()
    with pytest.raises(ValueError, match="zeros4"):
        dataclasses.replace(pw, zeros4=pw.zeros4[:, :1])
    with pytest.raises(ValueError, match="cover"):
        dataclasses.replace(pw, idx8=torch.tensor([4], dtype=torch.int32))
    with pytest.raises(ValueError, match="version"):
        dataclasses.replace(pw, version=99)
    with pytest.raises(ValueError, match="group_size"):
        dataclasses.replace(pw, group_size=32)


def test_autograd_raw_op_records_nothing_wrappers_refuse_backward():
    """The op is not differentiable: torch.ops.mixkern.gemm's output never requires grad (its
    Autograd key falls through); mixkern.gemm and MixLinear raise at backward, not silently."""
    torch.manual_seed(3)
    pw = _pw()
    x = torch.randn(2, 256, dtype=torch.float16, requires_grad=True)
    raw = torch.ops.mixkern.gemm.default(*op_args(x, pw))
    assert not raw.requires_grad and raw.grad_fn is None
    assert torch.equal(raw, reference_gemm(x.detach(), pw))
    for y in (mixkern.gemm(x, pw), mixkern.MixLinear(pw)(x)):
        assert torch.equal(y, raw)
        with pytest.raises(RuntimeError, match="no backward"):
            y.float().sum().backward()
    with torch.no_grad():
        assert not mixkern.MixLinear(pw)(x).requires_grad


def test_mixlinear_caches_op_args_until_buffers_change():
    torch.manual_seed(4)
    layer = mixkern.MixLinear(_pw())
    x = torch.randn(3, 256, dtype=torch.float16)
    y = layer(x)
    args = layer._op_cache[1]
    assert torch.equal(layer(x), y) and layer._op_cache[1] is args  # no rebuild on a repeated call
    other = _pw()
    layer.load_state_dict(mixkern.MixLinear(other).state_dict(), assign=True)  # new buffer objects
    assert torch.equal(layer(x), reference_gemm(x, other))
    assert layer._op_cache[1] is not args
    layer.load_state_dict(mixkern.MixLinear(_pw()).state_dict())  # in place: same objects, new data
    assert torch.equal(layer(x), reference_gemm(x, layer.packed))
    layer.half()  # _apply: the cache is dropped, packed dtypes kept
    assert layer._op_cache[1] is None and layer.scale8.dtype == torch.float32
    assert torch.equal(layer(x), reference_gemm(x, layer.packed))


@pytest.mark.parametrize("x, match", [
    (lambda: torch.randn(2, 128, dtype=torch.float16), "256 input features"),
    (lambda: torch.randn(0, 256, dtype=torch.float16), "empty"),
    (lambda: torch.randn(2, 256, dtype=torch.float16, device="meta"), "meta"),
])
def test_mixlinear_rejects_bad_input(x, match):
    with pytest.raises(ValueError, match=match):
        mixkern.MixLinear(_pw())(x())


@pytest.mark.parametrize("fmt", list(WeightFormat))
def test_mixlinear_compiles_fullgraph(fmt):
    torch.manual_seed(5)
    layer = mixkern.MixLinear(quantize_weight(torch.randn(16, 256), [3], 128, fmt), torch.randn(16))
    x = torch.randn(2, 3, 256)  # fp32: computed in fp16, cast back
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), layer(x))


@pytest.fixture
def recorded_launches(monkeypatch):
    """launch.py with its kernels replaced by recorders (no GPU): [(kind, args)] in launch order."""
    launch = pytest.importorskip("mixkern.kernels.launch")
    calls, compiles = [], []

    def compiled(kind, *job):
        compiles.append((kind, *job))
        return lambda *args: calls.append((kind, args))

    monkeypatch.setattr(launch, "compiled", compiled)
    monkeypatch.setattr(launch, "sm_count", lambda device: 132)
    launch._plan.cache_clear(), launch._picked_plan.cache_clear()
    yield launch, calls, compiles
    launch._plan.cache_clear(), launch._picked_plan.cache_clear()  # no recorder plans left for GPU tests


def _launch_cases():
    from mixkern.schedules import GemvSchedule, Schedule
    return [GemvSchedule(fused=True), GemvSchedule(), Schedule(block_m=16, block_n=64), Schedule(split_k=2)]


@pytest.mark.parametrize("case", range(4))
@pytest.mark.parametrize("eight", [None, [0, 3, 17], "all"])
def test_launch_passes_each_kernel_its_arguments(recorded_launches, case, eight):
    """The CUDA path's launch sequence, checked on CPU: which kernels, which tensors in which
    slots (4-bit rows: qweight, scales, zeros, chan scale, idx; 8-bit: qweight, scale, idx)."""
    launch, calls, compiles = recorded_launches
    schedule = _launch_cases()[case]
    pw = quantize_weight(torch.randn(24, 256), eight, 128)
    x = torch.randn(3, 256, dtype=torch.float16)
    for _ in range(2):  # the second call reuses the plan: nothing compiled or looked up again
        calls.clear()
        y = launch.gemm_cuda(x, pw, schedule, "sm_90a")
    assert len(compiles) == len({c[0] for c in compiles}) and y.shape == (3, 24) and y.dtype == x.dtype
    kinds = [kind for kind, _ in calls]
    main = calls[kinds.index("gemv" if case < 2 else "mma")][1]
    words = case < 2
    rows4, rows8 = main[2:7], main[7:10]
    for got, want in zip(rows4 + rows8, (pw.qweight4, pw.scales4, pw.zeros4, pw.chan_scale4, pw.idx4,
                                         pw.qweight8, pw.scale8, pw.idx8)):
        if want.numel():  # else a one-row stand-in of the absent precision; qweights as words for gemv
            assert got is want or (got.data_ptr() == want.data_ptr() and got.view(want.dtype).shape == want.shape)
    assert (rows4[0].dtype == torch.int32) == words and (rows8[0].dtype == torch.int32) == words
    if case == 0:
        assert kinds == ["gemv"] and main[0] is x and main[-1] is y
        return
    act = calls[0][1]
    assert kinds[0] == "act" and act[0] is x and act[1].dtype == torch.int8 and act[2].shape == (3,)
    assert main[0].data_ptr() == act[1].data_ptr() and main[0].view(torch.int8).shape == (3, 256)
    assert main[1] is act[2]
    if case < 3:
        assert kinds == ["act", "gemv" if words else "mma"] and main[-1] is y
        return
    # split-K: the activation kernel also zeroes the int32 workspace (no memset launch)
    acc, epi = main[-1], calls[2][1]
    assert kinds == ["act", "mma", "epi"] and acc.dtype == torch.int32 and acc.shape == (3, 24)
    assert act[3] is acc and len(act) == 4 and compiles[0] == ("act", "sm_90a", 256, "float16", True)
    assert epi[0] is acc and epi[1] is act[2] and epi[2:6] == (rows4[3], rows4[4], rows8[1], rows8[2])
    assert epi[-1] is y


@pytest.mark.parametrize("fmt", ["progressive", "mixllm"])
@pytest.mark.parametrize("eight", [None, [0, 3, 17], "all"])
def test_predecoded_launch_passes_each_kernel_its_arguments(recorded_launches, fmt, eight):
    """The long-prompt path, checked on CPU: activation quantization, the whole-layer decode
    (each format's row tensors in the tensor-core kernels' order, into an N x K int8 workspace
    and its scales: fp32 (N,) for progressive, fp32 K-major (K / group, N) for mixllm), then the
    int8 GEMM on that workspace (mixllm's activation scales K-major) writing y."""
    from mixkern.schedules import Schedule
    launch, calls, compiles = recorded_launches
    schedule = Schedule(64, 128, 128, 4, 128, predecode=True)
    pw = quantize_weight(torch.randn(24, 512), eight, 128, fmt)
    x = torch.randn(5, 512, dtype=torch.float16)
    y = launch.gemm_cuda(x, pw, schedule, "sm_90a")
    mixllm = fmt == "mixllm"
    assert [kind for kind, _ in calls] == ["act_group" if mixllm else "act", "predecode", "int8_gemm"]
    act, dec, gemm = (args for _, args in calls)
    rows = ((pw.qweight4, pw.zeros4, pw.scales4, pw.idx4) if mixllm else
            (pw.qweight4, pw.scales4, pw.zeros4, pw.chan_scale4, pw.idx4)) + (pw.qweight8, pw.scale8, pw.idx8)
    for got, want in zip(dec, rows):
        assert got is want or not want.numel()  # else a one-row stand-in of the absent precision
    wd, sd = dec[-2], dec[-1]
    assert wd.dtype == torch.int8 and wd.shape == (24, 512) and sd.dtype == torch.float32
    assert sd.shape == ((512 // 128, 24) if mixllm else (24,))
    assert gemm[0] is act[1] and gemm[2] is wd and gemm[3] is sd and gemm[4] is y and y.shape == (5, 24)
    if mixllm:  # activation scales (M, K / A) handed over K-major, rows padded to 16 bytes for TMA
        assert gemm[1].shape == (512 // 128, 8) and torch.equal(gemm[1][:, :5].nan_to_num(), act[2].t().nan_to_num())
    else:
        assert gemm[1] is act[2]
    job = next(c for c in compiles if c[0] == "int8_gemm")
    assert job[3].block_k == 128 and (len(job) > 5) == mixllm
    with pytest.raises(ValueError, match="multiple of 8"):
        launch.gemm_cuda(x, quantize_weight(torch.randn(20, 512), eight, 128, fmt), schedule, "sm_90a")


def test_launch_picks_once_per_shape(recorded_launches, monkeypatch):
    launch, calls, compiles = recorded_launches
    picks = []
    pick = launch.pick
    monkeypatch.setattr(launch, "pick", lambda *a, **kw: picks.append((*a, kw)) or pick(*a, **kw))
    pw = quantize_weight(torch.randn(24, 256), [5], 128)
    for m in (1, 1, 1, 7, 7):
        launch.gemm_cuda(torch.randn(m, 256, dtype=torch.float16), pw, arch="sm_90a")
    assert [a[1] for a in picks] == [1, 7]
    assert picks[0] == ("sm_90a", 1, 24, 256, 128, 1, 132, {"overlap_rows": 256, "register_a": True})


@pytest.mark.parametrize("fmt", ["progressive", "mixllm"])
@pytest.mark.parametrize("eight", [None, [0, 3, 17], "all"])
@pytest.mark.parametrize("m", [1, 5, 300])
def test_a_prepared_launch_makes_the_ops_launches(recorded_launches, monkeypatch, fmt, eight, m):
    """MixLinear's eager CUDA path (launch.prepare): the same kernels with the same arguments as
    the op's path, the schedule picked and the weight arguments built once, not per call."""
    from mixkern.ops import prepare_launch, weight_args
    launch, calls, compiles = recorded_launches
    pw = quantize_weight(torch.randn(24, 512), eight, 128, fmt)
    x = torch.randn(m, 512, dtype=torch.float16)
    monkeypatch.setattr(launch, "arch_of", lambda device: "sm_90a")
    launch.gemm_flat(x, *weight_args(pw)[:-1], pw.format)
    want = list(calls)
    calls.clear()
    prepared = prepare_launch(m, 512, torch.float16, x.device, weight_args(pw))
    monkeypatch.setattr(launch, "_plan_for", lambda *a: pytest.fail("a prepared launch picked again"))
    words = launch._words
    monkeypatch.setattr(launch, "_words", lambda t: pytest.fail("a prepared launch rebuilt its weight arguments")
                        if t is pw.qweight4 or t is pw.qweight8 else words(t))
    y = prepared(x)
    assert [kind for kind, _ in calls] == [kind for kind, _ in want]
    for (_, got), (_, ref) in zip(calls, want):  # weights: the very tensors; per-call buffers: same shapes
        assert len(got) == len(ref)
        for a, b in zip(got, ref):
            assert (a is b) or (a.shape == b.shape and a.dtype == b.dtype and (a is x) == (b is x))
    assert calls[-1][1][-1] is y and y.shape == (m, 24)


def test_mixllm_few_tokens_at_long_k_take_the_split_tile_with_byte_weights(recorded_launches):
    """A multi-token GEMV pick at K >= 4096 runs mixllm's 32 x 64 tensor-core tile split over K
    (for_mixllm): the packed weights go in as the very uint8 tensors (the GEMV's int32 words
    would be refused by the tile's dtype check), then the slices' sum into y."""
    from mixkern.schedules import GemvSchedule
    launch, calls, compiles = recorded_launches
    pw = quantize_weight(torch.randn(40, 4096), [2, 9], 128, "mixllm")
    x = torch.randn(16, 4096, dtype=torch.float16)
    y = launch.gemm_cuda(x, pw, GemvSchedule(4, 2, 16), "sm_90a")
    assert [kind for kind, _ in calls] == ["act_group", "mixllm_mma", "mixllm_sum"]
    tile = next(c for c in compiles if c[0] == "mixllm_mma")[4]
    assert (tile.block_m, tile.block_n, tile.split_k) == (32, 64, 4)
    main = calls[1][1]
    assert main[2] is pw.qweight4 and main[6] is pw.qweight8 and main[-1].shape == (4 * 16, 40)
    assert calls[-1][1] == (main[-1], y)


@pytest.mark.parametrize("case", range(4))
@pytest.mark.parametrize("eight", [None, [0, 3, 17], "all"])
@pytest.mark.parametrize("group_size", [64, 128, 256])
def test_mixllm_launch_passes_each_kernel_its_arguments(recorded_launches, case, eight, group_size):
    """mixllm on CUDA, checked on CPU: grouped activation quantization (a: (M, K / A)), then
    the mixllm decode kernel (a fused decode pick runs plain: for_mixllm) or tensor-core kernel (one K tile per
    activation group) with 4-bit rows (qweight, zeros, fp16 scales, idx) and 8-bit rows
    (qweight, fp16 group scales, idx); split over K, the tensor-core kernel writes each slice's
    float32 accumulators into a (slices * M, N) workspace and the sum kernel adds them into y."""
    from mixkern.schedules import GemvSchedule
    launch, calls, compiles = recorded_launches
    schedule = _launch_cases()[case]
    pw = quantize_weight(torch.randn(24, 512), eight, group_size, "mixllm")
    x = torch.randn(3, 512, dtype=torch.bfloat16)
    span = min(group_size, 128)
    y = launch.gemm_cuda(x, pw, schedule, "sm_90a")
    kinds = [kind for kind, _ in calls]
    assert kinds == ["act_group", "mixllm_gemv" if case < 2 else "mixllm_mma"] + ["mixllm_sum"] * (case == 3)
    main_job = next(c for c in compiles if c[0] == ("mixllm_gemv" if case < 2 else "mixllm_mma"))
    if case >= 2:
        assert main_job[4].block_k == span and main_job[4].split_k == (2 if case == 3 else 1)
    else:
        assert main_job[4] == GemvSchedule()  # the fused pick's plain form
    main = calls[1][1]
    for got, want in zip(main[2:9], (pw.qweight4, pw.zeros4, pw.scales4, pw.idx4, pw.qweight8, pw.scale8, pw.idx8)):
        if want.numel():
            assert got is want or (got.data_ptr() == want.data_ptr() and got.view(want.dtype).shape == want.shape)
    if case == 3:
        ws = main[-1]
        assert ws.shape == (2 * 3, 24) and ws.dtype == torch.float32
        assert compiles[-1] == ("mixllm_sum", "sm_90a", 2, "bfloat16") and calls[-1][1] == (ws, y)
    else:
        assert main[-1] is y
    assert y.shape == (3, 24)
    act = calls[0][1]
    assert act[0] is x and act[2].shape == (3, 512 // span) and main[1] is act[2]
    assert compiles[0] == ("act_group", "sm_90a", 512, span, "bfloat16")
