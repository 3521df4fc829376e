"""Tensor parallelism (mixkern.parallel) on CPU.

In one process (hypothesis): shards reassemble the weight exactly, column shards give the op bit
for bit, row-parallel partials summed in any order stay within the derived bound.  Over gloo
(torch.multiprocessing, 2 and 4 ranks, and 1- and 2-rank subgroups of 4): the layers and their
collectives, a whole tiny Qwen2 at TP 1/2/4, and checkpoints loaded sharded.
"""

import copy
import datetime
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

import mixkern
from mixkern import MixLinear, quantize_weight
from mixkern.parallel import (ColumnParallelMixLinear, RowParallelMixLinear, load_sharded, partial_gemm,
                              plan_layers, quantize_slice, row_parallel_tolerance, shard, shard_model, token_amax)
from mixkern.quantize.activations import quantize_activation
from mixkern.reference import float64_gemm_quantized, quantize_for
from strategies import activations, dtypes, eight_bit_choice, formats, weights, within

WORLDS = st.sampled_from([1, 2, 3, 4])
EXAMPLES = settings(max_examples=max(10, settings().max_examples // 4))  # the file runs in ~2 min on 2 cores
PAYLOAD_ROWS = ("qweight4", "zeros4", "scales4", "chan_scale4", "qweight8", "scale8")


def _packed(data, w, group_size, fmt):
    return quantize_weight(w, data.draw(eight_bit_choice(w.shape[0])), group_size, fmt)


def _fields(pw):
    return {name: t for name, t in pw.tensors().items() if name not in ("idx4", "idx8")}


# -- one process: shards and the numerics ---------------------------------------------------------
@EXAMPLES
@given(st.data(), weights(max_n=40, max_groups=8), formats, WORLDS)
def test_column_shards_reassemble_the_weight_or_refuse(data, wg, fmt, world):
    (w, group_size), n = wg, wg[0].shape[0]
    pw = _packed(data, w, group_size, fmt)
    if n % world:
        with pytest.raises(ValueError, match=rf"N \(output features\)={n} over {world} ranks: {n}/{world} = .* not whole"):
            shard(pw, 0, world, 0)
        return
    shards = [shard(pw, r, world, 0) for r in range(world)]
    step = n // world
    assert all(s.shape == (step, pw.in_features) for s in shards)  # validate() ran: indices ascending, local
    assert torch.equal(torch.cat([s.idx4 + r * step for r, s in enumerate(shards)]), pw.idx4)
    assert torch.equal(torch.cat([s.idx8 + r * step for r, s in enumerate(shards)]), pw.idx8)
    for name, t in _fields(pw).items():
        assert torch.equal(torch.cat([getattr(s, name) for s in shards]), t), name
    assert torch.equal(torch.cat([s.dequantize(torch.float64) for s in shards]), pw.dequantize(torch.float64))
    assert all(t.untyped_storage().nbytes() == t.nbytes for s in shards for t in s.tensors().values())  # owns memory


@EXAMPLES
@given(st.data(), weights(max_n=40, max_groups=8), formats, WORLDS)
def test_row_shards_split_k_at_group_boundaries_or_refuse(data, wg, fmt, world):
    (w, group_size), k = wg, wg[0].shape[1]
    pw = _packed(data, w, group_size, fmt)
    if (k // group_size) % world:
        with pytest.raises(ValueError, match=rf"K \(input features\)={k} over {world} ranks: .* not a multiple of "
                                             rf"{group_size} \(group_size={group_size}\)"):
            shard(pw, world - 1, world, 1)
        return
    shards = [shard(pw, r, world, 1) for r in range(world)]
    assert all(s.shape == (pw.out_features, k // world) for s in shards)
    for s in shards:
        assert torch.equal(s.idx4, pw.idx4) and torch.equal(s.idx8, pw.idx8)
        per_row = ("chan_scale4", "scale8") if pw.scale8.dim() == 1 else ("chan_scale4",)  # mixllm: scale8 per group
        for name in per_row:
            assert (getattr(s, name) is None) == (getattr(pw, name) is None)
            assert getattr(s, name) is None or torch.equal(getattr(s, name), getattr(pw, name))
    for name in ("qweight4", "zeros4", "scales4", "qweight8") + (("scale8",) if pw.scale8.dim() == 2 else ()):
        assert torch.equal(torch.cat([getattr(s, name) for s in shards], dim=1), getattr(pw, name)), name
    assert torch.equal(torch.cat([s.dequantize(torch.float64) for s in shards], dim=1), pw.dequantize(torch.float64))


@EXAMPLES
@given(st.data(), weights(max_n=24, max_groups=2), formats, dtypes, WORLDS, st.integers(1, 6))
def test_column_shards_give_the_op_bit_for_bit(data, wg, fmt, dtype, world, m):
    w, group_size = wg
    w = w.repeat(world, 1)  # N a multiple of world, rows still odd in count per shard
    pw = _packed(data, w, group_size, fmt)
    x = activations(torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1))), m, w.shape[1], dtype)
    y = torch.cat([mixkern.gemm(x, shard(pw, r, world, 0)) for r in range(world)], dim=1)
    assert torch.equal(y, mixkern.gemm(x, pw))


def _row_parallel(x, pw, world, order):
    """What the row-parallel layer computes, with the all-reduce's order of summation chosen."""
    amax, kl = token_amax(x), x.shape[1] // world
    parts = [partial_gemm(*quantize_slice(x[:, r * kl:(r + 1) * kl], amax, shard(pw, r, world, 1)),
                          shard(pw, r, world, 1)) for r in range(world)]
    if order == "reversed":
        parts = parts[::-1]
    if order == "tree":
        while len(parts) > 1:
            parts = [sum(parts[i:i + 2]) for i in range(0, len(parts), 2)]
    return sum(parts[1:], parts[0])


@EXAMPLES
@given(st.data(), weights(max_n=16, max_groups=1), formats, dtypes, WORLDS, st.integers(1, 6),
       st.sampled_from(["ranks", "reversed", "tree"]))
def test_row_parallel_is_within_the_derived_bound(data, wg, fmt, dtype, world, m, order):
    w, group_size = wg
    w = w.repeat(1, world)  # K/world a whole number of groups
    pw = _packed(data, w, group_size, fmt)
    x = activations(torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1))), m, w.shape[1], dtype)
    xq, a = quantize_for(x, pw)
    amax, kl = token_amax(x), x.shape[1] // world
    for r in range(world):  # the integer operands are the unsharded op's, bit for bit
        xq_r, a_r = quantize_slice(x[:, r * kl:(r + 1) * kl], amax, shard(pw, r, world, 1))
        jl = a.shape[1] // world if a.dim() == 2 else None  # MIXLLM: this rank's activation groups
        assert torch.equal(xq_r, xq[:, r * kl:(r + 1) * kl])
        assert torch.equal(a_r, a if jl is None else a[:, r * jl:(r + 1) * jl])
    y32 = _row_parallel(x, pw, world, order)
    y64 = float64_gemm_quantized(xq, a, pw)
    assert within(y32, y64, row_parallel_tolerance(xq, a, pw, torch.float32, world))  # the float32 sum alone
    assert within(y32.to(dtype), y64, row_parallel_tolerance(xq, a, pw, dtype, world))
    if world == 1:
        assert torch.equal(y32.to(dtype), mixkern.gemm(x, pw))


def test_local_scales_would_leave_the_bound():
    """The bound is tight enough to catch the mistake the global scale prevents: ranks quantizing
    their slices with their own per-token scales."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(16, 512, generator=gen)
    pw = quantize_weight(w, [2, 9], 128)
    x = activations(gen, 4, 512, torch.float16)
    x[:, :256] *= 8  # the two halves of each token have different ranges
    xq, a = quantize_activation(x)
    local = sum(partial_gemm(*quantize_activation(x[:, r * 256:(r + 1) * 256]), shard(pw, r, 2, 1)) for r in range(2))
    assert not within(local.to(x.dtype), float64_gemm_quantized(xq, a, pw), row_parallel_tolerance(xq, a, pw, x.dtype, 2))


class _Config:
    def __init__(self, heads, kv):
        self.num_attention_heads, self.num_key_value_heads = heads, kv


def test_refusals_name_the_numbers():
    pw = quantize_weight(torch.randn(10, 256), None, 128)
    with pytest.raises(ValueError, match=r"K \(input features\)=256 over 4 ranks: 256/4 = 64 is not a multiple of 128"):
        shard(pw, 0, 4, 1)
    with pytest.raises(ValueError, match=r"N \(output features\)=10 over 4 ranks: 10/4 = 2.5 is not whole"):
        shard(pw, 0, 4, 0)
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 2\), got 2"):
        shard(pw, 2, 2, 0)
    with pytest.raises(ValueError, match="world_size must be a positive int, got 0"):
        shard(pw, 0, 0, 0)
    with pytest.raises(ValueError, match=r"dim must be 0 \(column-parallel.* or 1 \(row-parallel.*got 2"):
        shard(pw, 0, 2, 2)
    layers = {"model.layers.0.self_attn.o_proj": (256, 256, 128), "model.layers.0.mlp.up_proj": (512, 256, 128)}
    with pytest.raises(ValueError, match="size 3 must divide the 6 attention heads and divide, or be a multiple of, the 2 "):
        plan_layers(_Config(6, 2), layers, 3)
    with pytest.raises(ValueError, match=r"^model.layers.0.self_attn.o_proj: cannot split K \(input features\)=256 over 4"):
        plan_layers(_Config(4, 4), layers, 4)
    with pytest.raises(ValueError, match="need a Hugging Face Llama/Qwen2-style model"):
        plan_layers(None, layers, 2)
    assert {n: (p.dim, p.blocks) for n, p in plan_layers(_Config(4, 1), layers, 2).items()} == \
        {"model.layers.0.self_attn.o_proj": (1, 2), "model.layers.0.mlp.up_proj": (0, 2)}
    with pytest.raises(RuntimeError, match="init_process_group"):  # this process never joins a group
        ColumnParallelMixLinear.from_unsharded(MixLinear(pw))


# -- gloo: ranks as processes -----------------------------------------------------------------------
def _rank_main(rank, world, store, body, args):
    torch.set_num_threads(1)  # several ranks share two cores
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        body(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(body, world, tmp_path, *args, seconds=60):
    """Run ``body(rank, world, *args)`` on ``world`` spawned gloo ranks; fail (killing them) after ``seconds``."""
    ctx = mp.start_processes(_rank_main, args=(world, str(tmp_path / "store"), body, args), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + seconds
    while not ctx.join(timeout=1):  # raises with the rank's traceback if one fails
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{body.__name__} on {world} ranks did not finish in {seconds} s")


def _groups(rank):
    """Groups of 1 and 2 within 4 ranks (every rank creates every group, in one order) and the whole."""
    singles = [dist.new_group([r]) for r in range(4)]
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    return [(singles[rank], 1), (pairs[rank // 2], 2), (None, 4)]


def _gather(t, group):
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return parts


def _same_on_every_rank(t, group):
    return all(torch.equal(p, t) for p in _gather(t, group))


def _layer_case(group, size, fraction, fmt, dtype, seed):
    gen = torch.Generator().manual_seed(seed)  # every rank draws the same weight and input
    n, k = 28, 768  # 7 rows and 3..12 groups of 64 a shard
    w = torch.randn(n, k, generator=gen) * torch.exp(torch.randn(n, 1, generator=gen))
    layer = MixLinear(quantize_weight(w, torch.randperm(n, generator=gen)[:round(fraction * n)].tolist(), 64, fmt),
                      torch.randn(n, generator=gen))
    x = activations(gen, 6, k, dtype).reshape(2, 3, k)
    plain = MixLinear(layer.packed)  # no bias
    col = ColumnParallelMixLinear.from_unsharded(layer, group, gather_output=True)
    assert torch.equal(col(x), layer(x))
    rank = dist.get_rank(group)
    block = ColumnParallelMixLinear.from_unsharded(layer, group)(x)
    assert torch.equal(block, layer(x)[..., rank * n // size:(rank + 1) * n // size])
    row = RowParallelMixLinear.from_unsharded(plain, group, input_is_parallel=False)
    y = row(x)
    x2 = x.reshape(-1, k)
    xq, a = quantize_for(x2, plain.packed)
    tol = row_parallel_tolerance(xq, a, plain.packed, dtype, size)
    assert within(y.reshape(-1, n), float64_gemm_quantized(xq, a, plain.packed), tol)
    assert _same_on_every_rank(y, group)
    if size == 1:
        assert torch.equal(y, plain(x))
    sliced = RowParallelMixLinear.from_unsharded(layer, group)  # input_is_parallel, bias once
    assert torch.equal(sliced(x[..., rank * k // size:(rank + 1) * k // size]), y + layer.bias.to(dtype))


def _layers_body(rank, world):
    seed = 0
    for group, size in _groups(rank):
        for fraction in (0.0, 0.1, 1.0):
            for fmt in ("progressive", "mixllm"):
                seed += 1
                _layer_case(group, size, fraction, fmt, (torch.float16, torch.bfloat16)[seed % 2], seed)
    x = activations(torch.Generator().manual_seed(99), 3, 192, torch.float16)
    if rank == 0:
        x[1, 5] = float("nan")  # on one rank only: every rank must raise, none may hang
    row = RowParallelMixLinear(shard(quantize_weight(torch.randn(8, 768, generator=torch.Generator().manual_seed(1)),
                                                     None, 64), rank, world, 1))
    with pytest.raises(ValueError, match=r"NaN or Inf \(token 1, on at least one rank\)"):
        row(x)
    with pytest.raises(ValueError, match="gather_output needs one block per rank"):
        ColumnParallelMixLinear.from_unsharded(MixLinear(quantize_weight(torch.randn(8, 128), None, 64)),
                                               gather_output=True, blocks=2)


def test_layers_over_gloo_with_1_2_and_4_ranks(tmp_path):
    run_ranks(_layers_body, 4, tmp_path)


# -- whole models and checkpoints ----------------------------------------------------------------
VOCAB = 512


@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory):
    """A tiny random-init Qwen2 (4 heads, 2 K/V heads: replicated at TP 4; q/k/v biases),
    quantized at 10% 8-bit with group 64 and saved; K/4 of o and down is 64 and 128."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.Qwen2ForCausalLM(config).eval()
    report = mixkern.quantize_model(model, [], mixkern.QuantConfig(fraction=0.1, method="random", group_size=64))
    directory = tmp_path_factory.mktemp("qwen")
    mixkern.save_quantized(model, str(directory), report)
    return str(directory)


def _check_row_layers_in_place(full, model, group, size):
    """Forward hooks: every row-parallel output inside the model is within the derived bound of
    the unsharded layer (float64) on the same, gathered, input."""
    def check(name):
        def hook(module, inputs, output):
            x = torch.cat(_gather(inputs[0], group), dim=-1).reshape(-1, size * module.in_features).half()
            pw = full.get_submodule(name).packed
            xq, a = quantize_for(x, pw)
            y64, tol = float64_gemm_quantized(xq, a, pw), row_parallel_tolerance(xq, a, pw, torch.float16, size)
            assert within(output.reshape(-1, module.out_features).half(), y64, tol), name
        return hook
    return [m.register_forward_hook(check(n)) for n, m in model.named_modules() if isinstance(m, RowParallelMixLinear)]


def _model_body(rank, world, directory, ids):
    full = mixkern.load_quantized(directory)
    with torch.no_grad():
        want = full(input_ids=ids).logits
        tokens = full.generate(ids[:1, :6], max_new_tokens=4, do_sample=False)
        for group, size in _groups(rank):
            model = shard_model(copy.deepcopy(full), group)
            hooks = _check_row_layers_in_place(full, model, group, size)
            logits = model(input_ids=ids).logits
            for h in hooks:
                h.remove()
            assert _same_on_every_rank(logits, group)
            if size == 1:
                assert torch.equal(logits, want)
            err = (logits - want).abs().max() / want.abs().max()
            # each row-parallel output is within its bound (the hooks); their fp16 ulp flips, carried
            # through the model, moved the logits by 2.4e-6 (TP 2) and 1.4e-5 (TP 4) of the largest
            assert err < 1e-4, f"TP {size}: logits differ by {err:.2e} of their largest"
            loaded = load_sharded(directory, group)
            assert loaded.state_dict().keys() == model.state_dict().keys()
            assert all(torch.equal(t, model.state_dict()[k]) for k, t in loaded.state_dict().items())
            assert torch.equal(loaded(input_ids=ids).logits, logits)
            out = model.generate(ids[:1, :6], max_new_tokens=4, do_sample=False)
            assert torch.equal(out, tokens)


def test_a_tiny_qwen2_gives_the_same_logits_at_tp_1_2_and_4(qwen_checkpoint, tmp_path):
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(5))
    run_ranks(_model_body, 4, tmp_path, qwen_checkpoint, ids)


def _counting(safe_open, read):
    """A safe_open that adds up, per tensor, the elements it hands out (whole or sliced)."""
    def count(key, t):
        read[key] = read.get(key, 0) + t.numel()
        return t

    class Slice:
        def __init__(self, key, real):
            self.key, self.real = key, real

        def __getitem__(self, index):
            return count(self.key, self.real[index])

    class Handle:
        def __init__(self, path, framework):
            self.f = safe_open(path, framework=framework)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def keys(self):
            return self.f.keys()

        def get_tensor(self, key):
            return count(key, self.f.get_tensor(key))

        def get_slice(self, key):
            return Slice(key, self.f.get_slice(key))
    return Handle


def _checkpoint_body(rank, world, directory, corrupt, ids):
    import safetensors
    read, real = {}, safetensors.safe_open
    safetensors.safe_open = _counting(real, read)
    try:
        model = load_sharded(directory)
    finally:
        safetensors.safe_open = real
    with real(f"{directory}/model.safetensors", framework="pt") as f:
        sizes = {key: f.get_slice(key).get_shape() for key in f.keys()}
    numel = {key: int(torch.tensor(shape).prod()) for key, shape in sizes.items()}
    sliced = {key for key in numel if key.rsplit(".", 1)[1] in ("qweight4", "zeros4", "scales4", "qweight8")}
    everyone = [None] * world
    dist.all_gather_object(everyone, read)
    assert all(sum(r.get(key, 0) for r in everyone) == numel[key] for key in sliced)  # disjoint slices, all covered
    share = sum(read.get(key, 0) for key in sliced) / sum(numel[key] for key in sliced)
    assert share < 0.6, f"rank {rank} read {share:.0%} of the packed payload"  # ~1/2: 8-bit rows fall unevenly
    assert all(read[key] == numel[key] for key in numel if key.endswith((".idx4", ".idx8", "norm.weight")))
    full = mixkern.load_quantized(directory)
    reference = shard_model(mixkern.load_quantized(directory))
    assert all(torch.equal(t, reference.state_dict()[k]) for k, t in model.state_dict().items())
    with torch.no_grad():
        logits, want = model(input_ids=ids).logits, full(input_ids=ids).logits
        assert (logits - want).abs().max() < 1e-4 * want.abs().max()
        assert torch.equal(model.generate(ids[:1, :6], max_new_tokens=4, do_sample=False),
                           full.generate(ids[:1, :6], max_new_tokens=4, do_sample=False))
    with pytest.raises(ValueError, match="checksum mismatch for model.norm.weight"):
        load_sharded(corrupt)


def test_a_checkpoint_loads_sharded_reading_only_each_ranks_slices(qwen_checkpoint, tmp_path):
    import json
    import shutil
    corrupt = shutil.copytree(qwen_checkpoint, tmp_path / "corrupt")
    config = json.loads((corrupt / "mixkern_config.json").read_text())
    config["sha256"]["model.norm.weight"] = "0" * 64
    (corrupt / "mixkern_config.json").write_text(json.dumps(config))
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(6))
    run_ranks(_checkpoint_body, 2, tmp_path, qwen_checkpoint, str(corrupt), ids)
