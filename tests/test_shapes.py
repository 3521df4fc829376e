"""Model-config shapes and the shape-aware schedule choice, on CPU: every shape of every
listed model gets a runnable schedule for every M; what cannot run is refused up front."""

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mixkern
from mixkern.format import MAX_IN_FEATURES
from mixkern.schedules import GemvSchedule, Schedule, format_pick, pick
from mixkern.schedules.heuristic import (REGISTER_SPLIT_US_PER_MILLION, REGISTER_WIDE_TILES, choose, distinct_token_counts,
                                        overlapped, predecoded)
from mixkern.shapes import CONFIGS, DecoderConfig, layer_shapes, shardings

ARCHS = ("sm_90a", "sm_80")


def test_layer_shapes_of_known_models():
    s = layer_shapes(CONFIGS["llama3-8b"])
    assert s == {"q": (4096, 4096), "kv": (1024, 4096), "qkv": (6144, 4096), "o": (4096, 4096),
                 "gate_up": (28672, 4096), "up": (14336, 4096), "down": (4096, 14336)}
    assert layer_shapes(CONFIGS["llama3-70b"], tp=8)["down"] == (8192, 3584)  # row-parallel: K split
    assert layer_shapes(CONFIGS["llama3-70b"], tp=8)["qkv"] == (1280, 8192)  # 8 q heads + 1 k + 1 v head
    assert layer_shapes(CONFIGS["qwen2.5-1.5b"])["down"] == (1536, 8960)
    assert layer_shapes(CONFIGS["gemma2-9b"])["o"] == (3584, 4096)  # heads x head_dim != hidden
    assert layer_shapes(CONFIGS["qwen2.5-1.5b"], tp=4)["kv"] == (128, 1536)  # 2 kv heads over 4 ranks: replicated


def test_hf_config_json(tmp_path):
    cfg = {"hidden_size": 1536, "intermediate_size": 8960, "num_attention_heads": 12, "num_key_value_heads": 2}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert DecoderConfig.from_hf(str(tmp_path)) == CONFIGS["qwen2.5-1.5b"]
    (tmp_path / "bad.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match="intermediate_size"):
        DecoderConfig.from_hf(str(tmp_path / "bad.json"))


def test_unshardable_configs_are_refused_with_the_reason():
    refused = {(s.model, s.tp): s.reason for s in shardings() if s.group_size is None}
    assert "does not divide" in refused[("qwen2.5-7b", 8)]  # 28 heads over 8 ranks
    assert "no multiple" in refused[("llama2-7b", 8)]  # 11008 / 8 = 1376 = 21.5 x 64
    with pytest.raises(ValueError, match="does not divide"):
        layer_shapes(CONFIGS["qwen2.5-7b"], tp=8)
    with pytest.raises(ValueError, match="multiple of group_size=64"):
        mixkern.quantize_weight(torch.randn(4, 1376), None, 64)
    grouped = {(s.model, s.tp): s.group_size for s in shardings()}
    assert grouped[("llama2-7b", 4)] == 64 and grouped[("llama3-8b", 8)] == 128


def test_the_k_limit_is_refused_when_quantizing():
    with pytest.raises(ValueError, match=f"limit of {MAX_IN_FEATURES}"):
        mixkern.quantize_weight(torch.randn(2, MAX_IN_FEATURES + 128))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_model_shape_gets_a_runnable_schedule_at_every_m(arch):
    for s in shardings():
        for n, k in s.shapes if s.group_size else ():
            for n8 in (0, n // 10, n):
                for m in distinct_token_counts(4096):
                    sched = pick(arch, m, n, k, s.group_size, n8)
                    sched.check(k, s.group_size)  # raises if it cannot run this K


@given(m=st.integers(1, 1 << 16), n=st.integers(1, 1 << 16), k=st.integers(1, MAX_IN_FEATURES // 64).map(lambda v: 64 * v),
       fraction=st.floats(0, 1), arch=st.sampled_from(ARCHS), sms=st.sampled_from([None, 1, 16, 108, 132, 170]))
def test_heuristic_schedules_run_any_shape_and_fill_small_grids(m, n, k, fraction, arch, sms):
    group_size = 128 if k % 128 == 0 else 64
    n8 = round(fraction * n)
    s = pick(arch, m, n, k, group_size, n8, sms)
    s.check(k, group_size)
    raw = choose(arch, m, n, k, group_size, n8, sms)
    if isinstance(raw, GemvSchedule):
        assert m <= 16
    else:
        assert m > 16 or n >= 8192 or raw.overlap  # few tokens: the 16-token tile, or the overlapped decode
        assert not raw.predecode or (m >= 192 and n % 8 == 0 and raw.split_k == 1 and arch == "sm_90a")
        blocks = -(-m // raw.block_m) * (-(-(n - n8) // raw.block_n) + -(-n8 // raw.block_n))
        small_grid = blocks * 2 < (sms or 132) and k >= 16384 and k % 1024 == 0 and m > 64
        assert not small_grid or raw.split_k > 1  # a grid under half a block per SM at long K splits K


@given(m=st.integers(1, 4096), n=st.integers(1, 1 << 15), k=st.integers(1, 1024).map(lambda v: 64 * v),
       group_size=st.sampled_from([64, 128, 256]), fraction=st.floats(0, 1), arch=st.sampled_from(ARCHS))
def test_mixllm_schedules_take_one_activation_group_per_k_tile_and_split_whole_groups(m, n, k, group_size, fraction, arch):
    """for_mixllm maps any pick to a mixllm kernel that runs this K: tensor-core tiles one
    activation group deep, K slices of whole groups (the format's split-K contract), the
    multi-token GEMV replaced by the 32 x 64 tile from K = 4096 (its fp32 chain on CUDA cores),
    any other decode pick in its plain form."""
    from mixkern.format import WeightFormat
    from mixkern.schedules import MIXLLM_FEW_TOKENS_MIN_K, for_mixllm
    if k % group_size:
        k = group_size * max(1, k // group_size)
    n8 = round(fraction * n)
    s = for_mixllm(pick(arch, m, n, k, group_size, n8, None, **format_pick("mixllm")), k, group_size, arch, n8 < n, n8 > 0)
    s.check(k, group_size)
    span = WeightFormat.MIXLLM.act_group_size(group_size)
    if isinstance(s, GemvSchedule):
        assert s.tokens < 8 or k < MIXLLM_FEW_TOKENS_MIN_K
        assert not s.streamed  # mixllm's decode kernel runs plain schedules
    else:
        assert s.block_k == span and (k // span) % s.split_k == 0
        assert not s.predecode or s.split_k == 1


@given(block=st.sampled_from([(64, 64), (64, 128), (64, 256), (128, 128)]), split=st.sampled_from([1, 2, 4, 8]),
       k_groups=st.integers(1, 256))
def test_mixllm_overlapped_tiles_keep_the_picks_block_count(block, split, k_groups):
    """An overlapped pick maps to mixllm's 64 x 128 overlapped kernel with as many blocks: a 64 x 256
    or 128 x 128 pick (twice the 64 x 128 blocks per block) halves its split (a 128 x 128 unsplit
    pick keeps its tile), a 64 x 64 one doubles it, at most four slices, then splits halve until
    they divide K / 128."""
    from mixkern.schedules import for_mixllm
    k = 128 * k_groups
    s = for_mixllm(Schedule(*block, 128, 4, 128 if block[1] == 64 else 256, split, overlap=True), k, 128, "sm_90a")
    if block == (128, 128) and split == 1:
        assert (s.block_m, s.block_n, s.split_k) == (128, 128, 1)
        return
    want = min(4, max(1, split * 64 * 128 // (block[0] * block[1])))  # at most four fp32 slices
    while k_groups % want:
        want //= 2
    assert s.overlap and (s.block_m, s.block_n, s.split_k) == (64, 128, want)


@given(n=st.integers(1, 30000), k=st.integers(1, 512).map(lambda v: 128 * v), fraction=st.floats(0, 1))
def test_warmup_token_counts_reach_every_choice(n, k, fraction):
    n8 = round(fraction * n)
    every = {pick.__wrapped__("sm_90a", m, n, k, 128, n8, None) for m in range(1, 2049)}
    sampled = {pick.__wrapped__("sm_90a", m, n, k, 128, n8, None) for m in distinct_token_counts(2048)}
    assert every == sampled


def test_tensor_core_tiles_only_beyond_decode_or_for_wide_layers():
    assert isinstance(choose("sm_90a", 1, 4096, 4096), GemvSchedule)
    assert choose("sm_90a", 1, 4096, 4096).fused and not choose("sm_90a", 1, 4096, 14336).fused  # long K: plain
    assert choose("sm_80", 16, 28672, 8192).block_m == 16  # M = 16 on a wide layer: 16-token tiles
    assert choose("sm_80", 16, 8192, 28672).split_k > 1  # ... split over a long K to fill the SMs
    assert choose("sm_90a", 16, 28672, 8192).overlap  # Hopper, K >= 8192: the overlapped decode
    assert choose("sm_90a", 16, 18944, 3584).block_m == 16  # ... not at short K
    assert isinstance(choose("sm_90a", 8, 2048, 8192), GemvSchedule)  # ... nor on a narrow layer
    assert choose("sm_90a", 4096, 512, 4096).block_m < 256  # small N: smaller tiles fill the GPU
    assert choose("sm_90a", 4096, 8193, 8192).block_m == 256  # N % 8: the in-loop kernel


@given(m=st.integers(1, 400), n=st.integers(1, 1 << 16), k_tiles=st.integers(1, 160), fraction=st.floats(0, 1),
       sms=st.sampled_from([None, 16, 108, 132]), rows=st.sampled_from([128, 256]))
def test_mid_prompts_overlap_the_decode_where_its_grid_fills_the_gpu(m, n, k_tiles, fraction, sms, rows):
    """17..128 tokens on sm_90a, and 5..16 where K >= 8192 and N >= 3072: up to 64 tokens the 64 x
    256 tile where its grid, split over K as below, has slices of at least 2048 and fills a wave
    (0.8 of one unsplit), else the 64 x 128 tile if its grid of 4-bit and 8-bit tiles, split over
    K by the least power of two (<= 8, >= 1024 a slice) that reaches it, fills 0.7 of a wave;
    65..128 tokens: 128 x 128 where it fills so, unsplit or at K >= 7168 in at most 4 slices, else
    the one of 64 x 128 and 64 x 64 that fills in the fewest slices (64 x 128 on a tie); from 17
    tokens and K >= 3072 a layer neither fills runs 64 x 64 split as far as it goes (up to 64 tokens with
    64-wide K tiles at twice that split where only K / 128's lack of factors of two left it under 0.6 of
    a wave); 129..384 tokens: a 128-, 192-
    or 256-row tile (64 or 128 for a format whose overlapped kernel takes 128 rows, and then only
    up to 256 tokens), the least split that fills the wave, the lowest (waves x (rows + 128) x
    slice) of them -- unless the predecoded GEMM applies and K is split into slices under 3072;
    elsewhere, and on sm_80, never; the tables never override it."""
    k, n8 = 128 * k_tiles, round(fraction * n)
    s = choose("sm_90a", m, n, k, 128, n8, sms, rows)
    waves = sms or 132

    def blocks(bm, bn=128):
        return -(-m // bm) * (-(-(n - n8) // bn) + -(-n8 // bn))

    def least_split(bm, fill=True, bn=128):
        splits = [sp for sp in (1, 2, 4, 8) if k % (128 * sp) == 0 and (sp == 1 or k // sp >= 1024)]
        return next((sp for sp in splits if blocks(bm, bn) * sp >= 0.7 * waves), None if fill else splits[-1])

    def cost(bm):
        sp = least_split(bm, fill=False)
        return -(-blocks(bm) * sp // waves) * (bm + 128) * k / sp, sp
    want, wide, half_k = None, least_split(64, False, 256), False
    if (17 <= m <= 64 or (5 <= m <= 16 and k >= 8192 and n >= 3072)) and k // wide >= 2048 \
            and blocks(64, 256) * wide >= (1 if wide > 1 else 0.8) * waves:
        want = (64, 256, wide)
    elif 17 <= m <= 128 or (5 <= m <= 16 and k >= 8192 and n >= 3072):
        fills = [(bm, bn, least_split(bm, bn=bn)) for bm, bn in ([(64, 128)] if m <= 64 else [(128, 128), (64, 128), (64, 64)])
                 if least_split(bm, bn=bn)]
        if fills and fills[0][0] == 128 and (fills[0][2] == 1 or (k >= 7168 and fills[0][2] <= 4)):
            want = fills[0]
        elif any(bm == 64 for bm, _, _ in fills):
            want = min((t for t in fills if t[0] == 64), key=lambda t: t[2])
        elif m >= 17 and k >= 3072:
            want = (64, 64, least_split(64, False, 64))
            sp = 2 * want[2]  # up to 64 tokens: 64-wide K tiles at twice the split where K / 128 has no more factors of 2
            if m <= 64 and blocks(64, 64) * want[2] < 0.6 * waves and sp <= 8 and k % (128 * sp) and k % (64 * sp) == 0 \
                    and k // sp >= 1024:
                want, half_k = (64, 64, sp), True
    elif 129 <= m <= min(384, 2 * rows):
        want = min(((bm, 128, cost(bm)[1]) for bm in (64, 128, 192, 256) if bm <= rows), key=lambda t: cost(t[0])[0])
        if predecoded("sm_90a", m, n, waves) and want[2] > 1 and k // want[2] < 3072:
            want = None
    assert getattr(s, "overlap", False) == (want is not None)
    if want is not None:
        assert (s.block_m, s.block_n, s.split_k, s.block_k) == (*want, 64 if half_k else 128)
        assert s == pick("sm_90a", m, n, k, 128, n8, sms, rows, register_a=False)
    assert not getattr(choose("sm_80", m, n, k, 128, n8, sms, rows), "overlap", False)


@pytest.mark.parametrize("n, k, m, key", [
    (14336, 4096, 192, "bm192_bn128_bk128_s4_t256_sk1_ov"),  # H100: 49.4 us, predecoded 78.6
    (4096, 14336, 256, "bm256_bn128_bk128_s4_t256_sk4_ov"),  # 65.2 us, predecoded 89.3
    (8192, 28672, 384, "bm192_bn128_bk128_s4_t256_sk1_ov"),  # 222.6 us, predecoded 347.7
    (1024, 4096, 256, "bm128_bn128_bk128_s4_t256_sk4_ov"),  # 21.7 us, the in-loop tile 33.6
    (4096, 4096, 256, "bm64_bn128_bk128_s4_t128_sk1_pd"),  # slices of 1024: predecoded 27.2 us, overlapped 38.6
    (4096, 4096, 384, "bm64_bn128_bk128_s4_t128_sk1_pd"),  # slices of 2048: predecoded 38.1 us, overlapped 42.7
    (14336, 4096, 512, "bm128_bn256_bk128_s3_t256_sk1_pd"),  # past 384 tokens: predecoded 108.5 us, overlapped 121.1
    (28672, 8192, 16, "bm64_bn256_bk128_s4_t256_sk1_ov"),  # stop 30: 77.8 us, the 16-token tile 100.4
    (8192, 28672, 8, "bm64_bn256_bk128_s4_t256_sk4_ov"),  # 76.9 us, the 16-token tile 98.5, 64 x 128 90.9
    (4096, 14336, 16, "bm64_bn128_bk128_s4_t256_sk4_ov"),  # 30.7 us, the GEMV 43.0
    (8192, 28672, 32, "bm64_bn256_bk128_s4_t256_sk4_ov"),  # 79.6 us, 64 x 128 90.4
    (14336, 4096, 32, "bm64_bn128_bk128_s4_t256_sk1_ov"),  # 27.9 us, 64 x 256 split in two 30.4
    (1280, 8192, 32, "bm64_bn64_bk128_s4_t128_sk8_ov"),  # stop 31: 15.5 us, the in-loop tile 18.7
    (1024, 4096, 128, "bm64_bn64_bk128_s4_t128_sk4_ov"),  # 15.5 us, the in-loop tile 32.9
    (4608, 3584, 128, "bm64_bn64_bk128_s4_t128_sk1_ov"),  # 24.0 us, 64 x 128 in two slices 26.8
    (8192, 3584, 128, "bm64_bn128_bk128_s4_t256_sk1_ov"),  # 26.7 us, 128 x 128 in two slices 31.9
    (4096, 14336, 128, "bm128_bn128_bk128_s4_t256_sk4_ov"),  # 42.3 us, 64 x 64 in two slices 47.9
    (2048, 11008, 32, "bm64_bn64_bk64_s4_t128_sk4_ov"),  # stop 32: 25.4 us, 128-wide K tiles in two slices 29.3
    (896, 4864, 64, "bm64_bn64_bk64_s4_t128_sk4_ov"),  # 15.1 us, 128-wide K tiles in two slices 17.1
    (2048, 11008, 128, "bm64_bn64_bk128_s4_t128_sk2_ov"),  # 30.9 us; 64-wide in four slices 30.8: kept
    (5120, 3456, 32, "bm64_bn64_bk128_s4_t128_sk1_ov"),  # 0.67 of a wave: 18.8 us, 64-wide in two slices 20.4
    (2048, 2048, 64, "bm32_bn64_bk128_s3_t128_sk1"),  # K < 3072: 14.2 us (64 x 64 13.0, but mixllm's 16.5 against 15.7)
])
def test_wide_overlapped_tiles_where_the_h100_sweep_found_them_fastest(n, k, m, key):
    """The rule's picks on cells of the stop-29 to stop-32 sweeps (scripts/tile_sweep.py; docs/kernels.md)."""
    assert choose("sm_90a", m, n, k, 128, n // 10, 132).key == key


@given(m=st.integers(1, 1 << 15), n=st.integers(1, 1 << 16), sms=st.sampled_from([None, 16, 108, 132]))
def test_long_prompts_run_predecoded_where_the_epilogue_and_grid_allow(m, n, sms):
    """From 192 tokens, N a multiple of 8 and half a wave of 64 x 128 tiles: the predecoded GEMM,
    its widest tile that fills 0.8 of a wave, never split over K -- but up to 384 tokens only
    where the overlapped decode would split K = 4096 (slices of 2048 or less); the tables never
    override it (pick's register-decode rule comes first up to 1024 tokens)."""
    s = choose("sm_90a", m, n, 4096, 128, n // 10, sms)
    waves = sms or 132
    want = m >= 192 and n % 8 == 0 and 2 * -(-m // 64) * -(-n // 128) >= waves
    if m <= 384:
        want = want and overlapped("sm_90a", m, n, 4096, n // 10, waves).split_k > 1  # slices <= 2048
    if m > 16:
        assert isinstance(s, Schedule) and s.predecode == want
    else:
        assert not getattr(s, "predecode", False)
    if want:
        assert s.split_k == 1 and (s.block_m, s.block_n) in {(128, 256), (128, 128), (64, 128)}
        if m > 1024 or (m > 512 and n < 4096):  # else pick takes the register-decode kernel first (progressive)
            assert s == pick("sm_90a", m, n, 4096, 128, n // 10, sms)
        fills = -(-m // s.block_m) * -(-n // s.block_n) >= 0.8 * waves
        assert fills or (s.block_m, s.block_n) == (64, 128)


@given(m=st.integers(1, 128), n=st.integers(1, 1 << 16), k_tiles=st.integers(1, 300), group_size=st.sampled_from([32, 64, 128]),
       sms=st.sampled_from([None, 16, 108, 132]))
def test_few_tokens_decode_into_registers_on_hopper(m, n, k_tiles, group_size, sms):
    """5..64 tokens on sm_90a (progressive; 5-8 only on layers over 4096 x 4096 weights, above 16
    tokens only up to K = 12288): the
    register-decode kernel with the smallest of 16, 32, 64 token rows that holds M; 128 weight rows unsplit where half a wave of them fills the GPU, else
    64 rows with K split in the least power of two (at most 8, slices of at least two tiles, none
    empty) that gives 1.5 blocks per SM.  The mixllm format, sm_80 and other token counts never take it."""
    k, waves = 128 * k_tiles, sms or 132
    s = pick("sm_90a", m, n, k, group_size, n // 10, sms)
    if m > 64:
        return  # test_prompts_up_to_1024_tokens_decode_into_registers_on_hopper
    if not 5 <= m <= 64 or (m <= 8 and n * k <= 4096 * 4096) or (m > 16 and k > 12288):
        assert not getattr(s, "register_a", False)
        return
    rows, split = 128, 1
    if -(-n // 128) < 0.5 * waves:
        rows = 64
        while split < 8 and -(-n // 64) * split < 1.5 * waves and k_tiles >= 4 * split \
                and (2 * split - 1) * -(-k_tiles // (2 * split)) < k_tiles:
            split *= 2
    token_rows = 16 if m <= 16 else 32 if m <= 32 else 64
    assert (s.register_a, s.block_m, s.block_n, s.threads, s.split_k) == (True, token_rows, rows, 2 * rows, split)
    assert not getattr(pick("sm_90a", m, n, k, group_size, n // 10, sms, **format_pick("mixllm")), "register_a", False)
    assert not getattr(pick("sm_80", m, n, k, group_size, n // 10, sms), "register_a", False)


@pytest.mark.parametrize("n, k, m, key", [  # stop 33, H100: us with the register kernel / the stop-32 pick
    (14336, 4096, 16, "bm16_bn128_bk128_s6_t256_sk1_ra"),  # 22.1 / 28.0 (bm16 mma.sync tile)
    (28672, 8192, 64, "bm64_bn128_bk128_s6_t256_sk1_ra"),  # 80.7 / 82.7; split in two 97.9
    (4096, 14336, 16, "bm16_bn64_bk128_s6_t128_sk4_ra"),  # 26.7 / 30.7
    (8192, 28672, 32, "bm64_bn256_bk128_s4_t256_sk4_ov"),  # not taken above 16 tokens at this K: 79.9 / 100.7
    (2048, 11008, 16, "bm16_bn64_bk128_s6_t128_sk8_ra"),  # 17.7 / 23.2 (GEMV); 86 tiles in slices of 11 and 9
    (1536, 8960, 64, "bm64_bn64_bk128_s6_t128_sk8_ra"),  # 17.3 / 22.6
    # stop 35, H100: us with the register kernel / the stop-34 pick
    (6144, 4096, 8, "bm16_bn64_bk128_s6_t128_sk4_ra"),  # 15.8 / 21.5 (bm16 mma.sync tile)
    (2048, 11008, 5, "bm16_bn64_bk128_s6_t128_sk8_ra"),  # 17.0 / 23.1 (16-token GEMV)
    (14336, 4096, 4, "gemv_r8_w1_t4"),  # 2-4 tokens stay on the GEMV: registers 21.3 / 22.3, not a rule
    (4096, 4096, 8, "gemv_r4_w4_t8"),  # registers 13.7 / 12.7
    (1024, 4096, 6, "gemv_r4_w4_t8"),  # registers 10.2 / 7.6
])
def test_register_decode_picks_where_the_h100_sweep_found_them(n, k, m, key):
    assert pick("sm_90a", m, n, k, 128, n // 10, 132).key == key


@given(m=st.integers(65, 1200), n=st.integers(1, 1 << 16), k_tiles=st.integers(1, 300), group_size=st.sampled_from([32, 64, 128]),
       sms=st.sampled_from([None, 16, 108, 132]))
def test_prompts_up_to_1024_tokens_decode_into_registers_on_hopper(m, n, k_tiles, group_size, sms):
    """65..1024 tokens on sm_90a (progressive; from 513 only where N >= 3584 and N x K >= 4096 x 4096): the
    register-decode kernel on whichever of the 128 x 64, 128 x 128, 192 x 128 and 256 x 128 (token x weight
    rows) tiles, K split 1, 2 or 4 ways (slices of two tiles or more, none empty; 256 rows unsplit), costs least: waves of blocks x K tiles a
    slice x the tile's fitted cost, plus the split's cost per output (M rounded up to 64).  Past 1024 tokens,
    in the mixllm format and on sm_80 it never applies."""
    k, waves = 128 * k_tiles, sms or 132
    s = pick("sm_90a", m, n, k, group_size, n // 10, sms)
    assert not getattr(pick("sm_90a", m, n, k, group_size, n // 10, sms, **format_pick("mixllm")), "register_a", False)
    assert not getattr(pick("sm_80", m, n, k, group_size, n // 10, sms), "register_a", False)
    if m > 1024 or (m > 512 and (n * k < 4096 * 4096 or n < 3584)):
        assert not getattr(s, "register_a", False)
        return

    def cost(tokens, rows, split):
        per_slice = -(-k_tiles // split)
        grid = -(-n // rows) * -(-m // tokens) * split
        return -(-grid // waves) * per_slice * REGISTER_WIDE_TILES[tokens, rows, 2 * rows] \
            + (split > 1) * REGISTER_SPLIT_US_PER_MILLION * (64 * -(-m // 64) * n) / 1e6

    fits = [(t, r, sp) for t, r in ((128, 64), (128, 128), (192, 128), (256, 128)) for sp in ((1, 2, 4) if t < 256 else (1,))
            if sp == 1 or (k_tiles >= 2 * sp and (sp - 1) * -(-k_tiles // sp) < k_tiles)]
    assert s.register_a and (s.block_m, s.block_n, s.split_k) in fits and (s.threads, s.stages) == (2 * s.block_n, 4)
    assert cost(s.block_m, s.block_n, s.split_k) == min(cost(*f) for f in fits)


@pytest.mark.parametrize("n, k, m, key", [  # stop 34, H100: us with the register kernel / the stop-33 pick
    (14336, 4096, 192, "bm192_bn128_bk128_s4_t256_sk1_ra"),  # 38.9 / 50.3 (overlapped 192 x 128)
    (28672, 8192, 384, "bm192_bn128_bk128_s4_t256_sk1_ra"),  # 211.0 / 285.3
    (4096, 14336, 128, "bm128_bn128_bk128_s4_t256_sk4_ra"),  # 35.4 / 43.0
    (4096, 4096, 256, "bm128_bn64_bk128_s4_t128_sk1_ra"),  # 21.9 / 26.4 (predecoded)
    (1024, 4096, 128, "bm128_bn64_bk128_s4_t128_sk4_ra"),  # 14.6 / 15.7
    (28672, 8192, 256, "bm256_bn128_bk128_s4_t256_sk1_ra"),  # 137.9 / 195.6; 128 token rows 182.1
    (8192, 28672, 1024, "bm256_bn128_bk128_s4_t256_sk1_ra"),  # 409.1 / 506.0 (predecoded)
    (18944, 3584, 256, "bm128_bn128_bk128_s4_t256_sk1_ra"),  # 71.8; 256 token rows 86.4 (148 blocks: 1.1 waves)
    (14336, 4096, 1025, "bm128_bn256_bk128_s3_t256_sk1_pd"),  # past 1024 tokens: predecoded
    (1024, 4096, 1024, "bm64_bn128_bk128_s4_t128_sk1_pd"),  # small layers from 513: predecoded 25.5, registers 29.7
    (2048, 11008, 1024, "bm128_bn128_bk128_s4_t256_sk1_pd"),  # narrow, from 513: predecoded 75.0, registers 111.1
    (3584, 18944, 768, "bm192_bn128_bk128_s4_t256_sk1_ra"),  # 132.1 / 196.8 (predecoded)
])
def test_wide_register_decode_picks_where_the_h100_sweep_found_them(n, k, m, key):
    assert pick("sm_90a", m, n, k, 128, n // 10, 132).key == key
