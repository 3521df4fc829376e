"""Salience (Taylor loss-increase estimates) and the global / local / random allocation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mixkern import PackedWeight, quantize_weight
from mixkern.quantize.allocation import allocate, average_bits
from mixkern.quantize.salience import feature_salience, quantization_errors, quantizable_linears, streamed_salience


def _mlp(seed, k=128, hidden=256, out=64, zero_rows=()):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(k, hidden, bias=False), nn.GELU(), nn.Linear(hidden, out, bias=False))
    with torch.no_grad():
        for r in zero_rows:
            model[0].weight[r] = 0  # quantizes exactly at 4 and 8 bits: zero error
    return model


def _batches(seed, k=128, out=64, n=3):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, k, generator=gen), torch.randn(16, out, generator=gen)) for _ in range(n)]


def mse(model, batch):
    x, t = batch
    return (model(x) - t).square().mean()


@pytest.mark.parametrize("second_order", ["hessian", "fisher", "mixllm"])
@settings(max_examples=25)
@given(seed=st.integers(0, 2**31 - 1))
def test_a_feature_with_no_quantization_error_has_zero_salience(second_order, seed):
    zero = [0, 5, 77]
    model = _mlp(seed % 1000, zero_rows=zero)
    s = feature_salience(model, _batches(seed), mse, second_order=second_order)
    assert set(s) == {"0", "2"}
    assert torch.all(s["0"][zero] == 0)
    assert (s["0"] != 0).sum() > 200  # and the others are not


@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 100))
def test_salience_scales_with_the_loss(seed, scale):
    model, batches = _mlp(seed % 1000), _batches(seed)
    s1 = feature_salience(model, batches, mse)
    s2 = feature_salience(model, batches, lambda m, b: scale * mse(m, b))
    for name in s1:  # float32 autograd: equal up to rounding, measured against the layer's largest score
        want = scale * s1[name]
        assert (s2[name] - want).abs().max() <= 1e-4 * want.abs().max()


def test_hessian_salience_sums_to_the_exact_loss_change_of_a_quadratic_loss():
    """For a linear layer and MSE the loss is quadratic in W: second-order Taylor is exact."""
    torch.manual_seed(0)
    lin = nn.Linear(256, 96, bias=False).double()
    x, t = torch.randn(64, 256, dtype=torch.float64), torch.randn(64, 96, dtype=torch.float64)
    batch = [(x, t)]
    s = feature_salience(lin, batch, mse, {"w": lin})["w"]
    d4, d8 = quantization_errors(lin.weight, 128)
    with torch.no_grad():
        w0 = lin.weight.clone()
        loss = lambda d: ((x @ (w0 + d.double()).T - t).square().mean()).item()  # noqa: E731
        exact = loss(d4) - loss(d8)
    assert s.sum().item() == pytest.approx(exact, rel=1e-6, abs=1e-12)


def _autograd_estimates(model, batches):
    """The estimators written out with full weight gradients (autograd), per batch (= one sequence)."""
    layers = quantizable_linears(model)
    params = [m.weight for m in layers.values()]
    errors = [quantization_errors(p, 128) for p in params]
    fisher = [torch.zeros(p.shape[0], dtype=torch.float64) for p in params]
    sq = [torch.zeros_like(p) for p in params]
    mixllm = [torch.zeros_like(f) for f in fisher]
    for b in batches:
        for i, (g, (d4, d8)) in enumerate(zip(torch.autograd.grad(mse(model, b), params), errors)):
            fisher[i] += ((g * d4).sum(1) - (g * d8).sum(1)).double()
            sq[i] += g.square()  # tokens_of counts a (B, K) float batch as 1
            a = (g * d4).sum(1).double()
            mixllm[i] += (a + 0.5 * a.square()).abs()
    fisher = [(f + 0.5 * (q * (d4.square() - d8.square())).sum(1).double()) / len(batches)
              for f, q, (d4, d8) in zip(fisher, sq, errors)]
    return {"fisher": dict(zip(layers, fisher)), "mixllm": dict(zip(layers, mixllm))}


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31 - 1))
def test_streamed_estimators_equal_their_autograd_definitions(seed):
    """Streamed (x, dy reduced inside the backward pass, no weight gradient) = the formulas with
    autograd's weight gradients; float32 errors: to float32 rounding, float16 storage: to 1e-3."""
    model, batches = _mlp(seed % 1000), _batches(seed)
    want = _autograd_estimates(model, batches)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 1e-3)):
        got = streamed_salience(model, batches, mse, quantizable_linears(model), error_dtype=dtype)
        for est, layers in want.items():
            for name, w in layers.items():
                assert (got[est][name] - w).abs().max() <= tol * w.abs().max()


def test_quantizable_linears_skips_heads_and_embeddings():
    from mixkern.lm import LMConfig, TinyLM
    model = TinyLM(LMConfig(d_model=128, n_layers=2, n_heads=2, d_ff=256, seq_len=32))
    names = quantizable_linears(model)
    assert len(names) == 14 and not any("lm_head" in n for n in names)


# -- allocation -----------------------------------------------------------------------

@st.composite
def layer_scores(draw):
    count = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    scores, ks = {}, {}
    for i in range(count):
        n = draw(st.integers(1, 300))
        scores[f"l{i}"] = torch.randn(n, generator=gen).double() * draw(st.floats(0.1, 10))
        ks[f"l{i}"] = 128 * draw(st.integers(1, 12))
    return scores, ks


@given(layer_scores(), st.floats(0, 1.2), st.sampled_from(["progressive", "mixllm"]))
def test_global_bit_budget_is_met_exactly_and_greedily(sk, over, fmt):
    scores, ks = sk
    shapes = {n: (s.numel(), ks[n]) for n, s in scores.items()}
    lo, hi = average_bits(shapes, {}, 128, fmt), average_bits(shapes, {n: s[0] for n, s in shapes.items()}, 128, fmt)
    bits = lo + over * (hi - lo)
    chosen = allocate(scores, bits=bits, in_features=ks, format=fmt)
    counts = {n: len(v) for n, v in chosen.items()}
    got = average_bits(shapes, counts, 128, fmt)
    assert got <= bits + 1e-12
    # greedy: no unchosen feature would still fit
    spare = bits / 8 * sum(n * k for n, k in shapes.values()) - got / 8 * sum(n * k for n, k in shapes.values())
    for n, (rows, k) in shapes.items():
        if counts[n] < rows:
            extra = PackedWeight.feature_bytes(k, 128, fmt, 8) - PackedWeight.feature_bytes(k, 128, fmt, 4)
            assert extra > spare - 1e-6
    # the arithmetic is the packed format's own byte count
    some = next(iter(scores))
    w = torch.randn(shapes[some][0], shapes[some][1])
    pw = quantize_weight(w, chosen[some].tolist(), 128, fmt)
    assert pw.bits_per_weight == pytest.approx(average_bits({some: shapes[some]}, {some: counts[some]}, 128, fmt), rel=1e-12)


@given(layer_scores(), st.floats(0, 1))
def test_fraction_budgets_and_methods(sk, fraction):
    scores, _ = sk
    total = sum(s.numel() for s in scores.values())
    g = allocate(scores, fraction=fraction)
    loc = allocate(scores, fraction=fraction, method="local")
    rnd = allocate(scores, fraction=fraction, method="random", seed=3)
    assert sum(len(v) for v in g.values()) == round(fraction * total)
    for name, s in scores.items():
        assert len(loc[name]) == len(rnd[name]) == round(fraction * s.numel())
        assert torch.equal(loc[name], torch.topk(s, len(loc[name])).indices.sort().values)
        for idx in (g[name], loc[name], rnd[name]):
            assert idx.unique().numel() == idx.numel() and (idx.numel() == 0 or idx.max() < s.numel())
    # global: every chosen feature scores at least as high as every unchosen one
    chosen = torch.cat([scores[n][g[n]] for n in scores])
    mask = {n: torch.ones(s.numel(), dtype=torch.bool) for n, s in scores.items()}
    for n in scores:
        mask[n][g[n]] = False
    rest = torch.cat([scores[n][mask[n]] for n in scores])
    if chosen.numel() and rest.numel():
        assert chosen.min() >= rest.max()


def test_global_and_local_differ_as_designed():
    scores = {"hot": torch.linspace(10, 11, 100).double(), "cold": torch.linspace(0, 1, 100).double()}
    g = allocate(scores, fraction=0.25)
    loc = allocate(scores, fraction=0.25, method="local")
    assert len(g["hot"]) == 50 and len(g["cold"]) == 0  # global follows the scores across layers
    assert len(loc["hot"]) == len(loc["cold"]) == 25  # local gives every layer the same share
    capped = allocate(scores, fraction=0.25, cap=0.3, floor=0.1)
    assert len(capped["hot"]) == 30 and len(capped["cold"]) == 20
    assert capped["cold"].tolist() == list(range(80, 100))  # the cold layer's best


def test_allocation_rejects_bad_budgets():
    s = {"a": torch.rand(10).double()}
    for kw in (dict(), dict(fraction=0.1, bits=4.5), dict(fraction=1.5), dict(bits=4.5),
               dict(bits=2.0, in_features={"a": 128}), dict(fraction=0.1, floor=0.5, cap=0.2),
               dict(fraction=0.1, method="best")):
        with pytest.raises(ValueError):
            allocate(s, **kw)
    with pytest.raises(ValueError, match="NaN"):
        allocate({"a": torch.tensor([1.0, float("nan")])}, fraction=0.5)


@given(layer_scores(), st.floats(0, 1))
def test_global_per_byte_ranks_by_score_per_byte(sk, over):
    scores, ks = sk
    shapes = {n: (s.numel(), ks[n]) for n, s in scores.items()}
    lo, hi = average_bits(shapes, {}), average_bits(shapes, {n: s[0] for n, s in shapes.items()})
    bits = lo + over * (hi - lo)
    got = allocate(scores, bits=bits, in_features=ks, method="global-per-byte")
    assert average_bits(shapes, {n: len(v) for n, v in got.items()}) <= bits + 1e-12
    same_k = {n: 256 for n in scores}  # equal row lengths: per byte is the same ranking as global
    bits = average_bits({n: (s.numel(), 256) for n, s in scores.items()}, {}) + over
    assert all(torch.equal(a, b) for a, b in zip(allocate(scores, bits=bits, in_features=same_k).values(),
                                                  allocate(scores, bits=bits, in_features=same_k,
                                                           method="global-per-byte").values()))


def test_global_per_byte_prefers_cheap_rows_of_equal_score():
    scores = {"long": torch.ones(10, dtype=torch.float64), "short": torch.ones(10, dtype=torch.float64) * 0.5}
    ks = {"long": 1024, "short": 128}
    assert len(allocate(scores, fraction=0.5, in_features=ks)["long"]) == 10
    per_byte = allocate(scores, fraction=0.5, in_features=ks, method="global-per-byte")
    assert len(per_byte["short"]) == 10 and len(per_byte["long"]) == 0
    with pytest.raises(ValueError, match="in_features"):
        allocate(scores, fraction=0.5, method="global-per-byte")
