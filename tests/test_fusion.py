"""fuse_projections on a tiny random-init Qwen2 (q/k/v with biases, gate/up): bit-equal logits
and generate, one GEMM per group, the sibling cache's rules, torch.compile, checkpoints, errors."""

import copy

import pytest
import torch
from torch import nn

import mixkern
from mixkern import MixLinear, fuse_projections, load_quantized, quantize_weight, save_quantized, unfuse_projections
from mixkern import ops
from mixkern.format import PackedWeight
from mixkern.fusion import FusedMixLinear, ProjectionSlice, fused_name

transformers = pytest.importorskip("transformers")
from test_hf_qwen import token_batches, tiny_qwen  # noqa: E402


@pytest.fixture(scope="module")
def quantized():
    model = tiny_qwen()
    report = mixkern.quantize_model(model, token_batches(), mixkern.QuantConfig(fraction=0.2, method="random"))
    return model, report


@pytest.fixture
def gemm_rows(monkeypatch):
    """The N of every mixkern.gemm the CPU op runs, in order."""
    calls, real = [], ops.reference_gemm_quantized

    def counting(xq, a, pw, dtype):
        calls.append(pw.shape[0])
        return real(xq, a, pw, dtype)

    monkeypatch.setattr(ops, "reference_gemm_quantized", counting)
    return calls


def _fused(model):
    fused = copy.deepcopy(model)
    assert fuse_projections(fused) == 4  # 2 layers x (q/k/v, gate/up)
    return fused


def test_fused_logits_and_generate_equal_the_unfused_model_bit_for_bit(quantized, gemm_rows):
    model, _ = quantized
    fused = _fused(model)
    attn = fused.model.layers[0].self_attn
    assert isinstance(attn.q_k_v_proj, FusedMixLinear) and isinstance(attn.q_proj, ProjectionSlice)
    assert isinstance(fused.model.layers[0].mlp.gate_up_proj, FusedMixLinear)
    assert attn.q_proj.bias is not None  # Qwen's q/k/v biases, kept under their own names
    ids = token_batches(9)[0]
    with torch.no_grad():
        want = model(input_ids=ids).logits
        del gemm_rows[:]
        assert torch.equal(fused(input_ids=ids).logits, want)
    assert gemm_rows == [256, 128, 512, 128] * 2  # q|k|v, o, gate|up, down: one quantization and GEMM each
    assert all(m._round is None for m in fused.modules() if isinstance(m, FusedMixLinear))  # nothing held
    with torch.inference_mode():  # no version counters: every sibling runs its own rows, same bits
        assert torch.equal(fused(input_ids=ids).logits, want)
    prompt = ids[:1, :8]
    assert torch.equal(fused.generate(prompt, max_new_tokens=6, do_sample=False),
                       model.generate(prompt, max_new_tokens=6, do_sample=False))


def test_siblings_without_bias_are_views_of_one_fused_output(quantized):
    """No copy per sibling: gate and up are column views of one GEMM's output, equal to the
    unfused layers' outputs; a Llama-style ``.view(..., heads, head_dim)`` works on them."""
    model, _ = quantized
    fused = _fused(model)
    plain, mlp = model.model.layers[0].mlp, fused.model.layers[0].mlp
    x = torch.randn(2, 5, plain.gate_proj.in_features, dtype=torch.float16)
    with torch.no_grad():
        gate, up = mlp.gate_proj(x), mlp.up_proj(x)
        assert gate.untyped_storage().data_ptr() == up.untyped_storage().data_ptr()
        assert not gate.is_contiguous() and gate.stride() == (5 * 2 * mlp.gate_proj.out_features, 2 * mlp.gate_proj.out_features, 1)
        assert torch.equal(gate, plain.gate_proj(x)) and torch.equal(up, plain.up_proj(x))
        assert torch.equal(gate.view(2, 5, -1, 16), plain.gate_proj(x).view(2, 5, -1, 16))


class _Siblings(nn.Module):
    """q, k, v over one input, with a hook between the calls."""

    def __init__(self, between=lambda x: x):
        super().__init__()
        torch.manual_seed(0)
        self.q_proj, self.k_proj, self.v_proj = (
            MixLinear(quantize_weight(torch.randn(n, 128), [0, 2], 128), torch.randn(n)) for n in (40, 24, 24))
        self.between = between

    def forward(self, x):
        q = self.q_proj(x)
        x2 = self.between(x)
        return q, self.k_proj(x2), self.v_proj(x2)


def _equal(a, b):
    return all(torch.equal(u, v) for u, v in zip(a, b))


def test_the_sibling_cache_recomputes_for_another_input_or_an_in_place_write(gemm_rows):
    x = torch.randn(3, 128, dtype=torch.float16)
    cases = {"same input": (lambda t: t, [88]), "in-place write": (lambda t: t.mul_(2), [88, 88]),
             "another input": (lambda t: t + 1, [88, 88]), "a view": (lambda t: t[:], [88, 88])}
    for name, (between, calls) in cases.items():
        plain = _Siblings(between)
        fused = copy.deepcopy(plain)
        assert fuse_projections(fused) == 1
        with torch.no_grad():
            want = plain(x.clone())
            del gemm_rows[:]
            assert _equal(fused(x.clone()), want), name
        assert gemm_rows == calls, name
        assert (fused.q_k_v_proj._round is None) == (len(calls) == 1), name  # k and v wait for a q of x2
    with torch.no_grad():  # a sibling called twice starts a new round; the round waits for its siblings
        del gemm_rows[:]
        first, again = fused.q_proj(x), fused.q_proj(x)
        assert torch.equal(first, again) and gemm_rows == [88, 88] and fused.q_k_v_proj._round.taken == {0}


def test_unfuse_restores_the_layers_and_save_refuses_a_fused_model(quantized, tmp_path):
    model, report = quantized
    fused = _fused(model)
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.q_k_v_proj is fused.*unfuse_projections"):
        save_quantized(fused, tmp_path, report)
    assert unfuse_projections(fused) == 4
    a, b = model.state_dict(), fused.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    save_quantized(fused, tmp_path, report)
    loaded = load_quantized(str(tmp_path), fuse=True)
    assert sum(isinstance(m, FusedMixLinear) for m in loaded.modules()) == 4
    ids = token_batches(4)[0]
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_fuse_projections_says_what_it_cannot_fuse():
    plain = _Siblings()
    plain.v_proj = MixLinear(quantize_weight(torch.randn(24, 256), [1], 128))
    with pytest.raises(ValueError, match=r"cannot fuse \('q_proj', 'k_proj', 'v_proj'\).*part 2 has in_features 256"):
        fuse_projections(copy.deepcopy(plain))
    assert fuse_projections(plain, [("q_proj", "k_proj")]) == 1 and isinstance(plain.v_proj, MixLinear)
    assert fuse_projections(plain) == 0  # nothing left to fuse: the default groups are optional
    for groups, err, match in [("q_proj", TypeError, "list of name tuples"), ([("q_proj",)], ValueError, "two or more"),
                               ([("a", "b"), ("b", "c")], ValueError, "twice"), ([("x.q", "k")], ValueError, "no dots"),
                               ([("wq", "wk")], ValueError, "no module of _Siblings has plain MixLinear children")]:
        with pytest.raises(err, match=match):
            fuse_projections(_Siblings(), groups)
    clash = _Siblings()
    clash.q_k_v_proj = nn.Identity()
    with pytest.raises(ValueError, match="already has an attribute 'q_k_v_proj'"):
        fuse_projections(clash)
    assert [fused_name(g) for g in [("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("wq", "wk")]] == \
        ["q_k_v_proj", "gate_up_proj", "wq_wk"]


def _traceable_packed(self):
    """MixLinear.packed without dataclasses.fields (which Dynamo cannot trace)."""
    names = ("idx4", "idx8", "qweight4", "zeros4", "scales4", "qweight8", "scale8")
    return PackedWeight.unchecked(shape=(self.out_features, self.in_features), group_size=self.group_size,
                                  format=self.format, chan_scale4=self._buffers.get("chan_scale4"),
                                  **{n: self._buffers[n] for n in names})


@pytest.mark.parametrize("fullgraph", [False, True])
def test_fused_model_compiles_to_one_gemm_a_group(quantized, fullgraph, monkeypatch):
    """fullgraph: the sibling round is a traced side effect; MixLinear.packed is patched to a
    traceable form (linear.py's own uses dataclasses.fields, which Dynamo cannot trace)."""
    if fullgraph:
        monkeypatch.setattr(MixLinear, "packed", property(_traceable_packed))
    model, _ = quantized
    fused, ids, outs = _fused(model), token_batches(5)[0], []
    for m in (model, fused):
        graphs = []
        torch._dynamo.reset()
        compiled = torch.compile(m, fullgraph=fullgraph, backend=lambda gm, _: graphs.append(gm) or gm.forward)
        with torch.no_grad():
            outs.append(compiled(input_ids=ids).logits)
            assert torch.equal(outs[-1], m(input_ids=ids).logits)
        gemms = sum(str(n.target).startswith("mixkern.gemm") for g in graphs for n in g.graph.nodes)
        assert not fullgraph or (len(graphs), gemms) == (1, 14 if m is model else 8)
    assert torch.equal(outs[0], outs[1])
    assert all(m._round is None for m in fused.modules() if isinstance(m, FusedMixLinear))
    torch._dynamo.reset()
