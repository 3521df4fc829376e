"""The autotuner's CPU side: shipped table format, pruning, bucket lookup, CLI refusals, and
``--compile-only`` building a small space for sm_80 and sm_90a (needs nvcc, no GPU)."""

import json
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mixkern.autotune.__main__ import main, model_shapes
from mixkern.autotune.space import candidates, prune_reason
from mixkern.schedules import (M_BUCKETS, SHARED_BYTES, TABLE_VERSION, GemvSchedule, Schedule, bucket, fit,
                               load_table, pick, schedule_from_dict, schedule_from_key, table_path)
from mixkern.schedules.heuristic import choose, every_schedule, overlapped, predecoded, registered

ARCHS = ("sm_80", "sm_90a")


@pytest.mark.parametrize("arch", ["sm_90a", "sm_80"])
def test_shipped_table_is_versioned_complete_and_valid(arch):
    with open(table_path(arch)) as f:
        raw = json.load(f)
    timed = arch == "sm_90a"  # the A100 table is verified on the H100 through compute_80, not timed
    assert raw["version"] == TABLE_VERSION and raw["arch"] == arch and raw["timed"] is timed
    assert timed or "NOT timed" in raw["note"]
    assert raw["runs"] and all(r["seconds"] > 0 and r["candidates"] > 0 for r in raw["runs"])
    for shape in ("4096x4096", "1024x4096", "14336x4096", "4096x14336", "8192x8192", "28672x8192", "8192x28672"):
        for b in M_BUCKETS:
            assert f"{b}:{shape}" in raw["schedules"], f"{arch} table misses bucket {b} of {shape}"
    for key, d in raw["schedules"].items():
        b, shape = key.split(":")
        n, k = map(int, shape.split("x"))
        s = schedule_from_dict(d)
        s.check(k, 128)
        ev = raw["evidence"][key]
        reason = prune_reason(s, arch, n, k, 128)  # the tuner prunes its sample, never the heuristic's own choice
        assert reason is None or (reason == "idle lanes" and ev.get("heuristic") == s.key), (key, reason)
        assert ev["wrong"] == 0 and ev["compile_errors"] == 0 and ev["verified_exact"] == ev["candidates"]
        untuned = ev.get("heuristic_us", ev.get("default_us"))  # what ran untuned when it was tuned
        if timed:
            assert 0 < ev["best_us"] <= untuned * 1.0001  # never slower than the schedule it beat
        else:
            assert ev["best_us"] is None
        assert load_table(arch)[key] == s


@given(m=st.integers(1, 10**6))
def test_bucket_is_the_first_bound_at_or_above_m(m):
    b = bucket(m)
    assert m <= b and all(m > smaller for smaller in M_BUCKETS if smaller < b)


def test_pick_uses_the_timed_table_then_the_heuristic():
    table = load_table("sm_90a")
    for key, s in table.items():
        b, shape = int(key.split(":")[0]), key.split(":")[1]
        n, k = map(int, shape.split("x"))
        lowest = 1 if b == M_BUCKETS[0] else M_BUCKETS[M_BUCKETS.index(b) - 1] + 1
        for m in (lowest, min(b, 5000)):  # both ends of the bucket
            # a tuned in-loop entry yields to the register decode, the predecoded GEMM and the overlapped decode
            if registered("sm_90a", m, n, k, 128, 132) is not None:
                assert pick("sm_90a", m, n, k) == fit(registered("sm_90a", m, n, k, 128, 132), k, 128), (m, key)
            elif (predecoded("sm_90a", m, n, 132) and not s.predecode) or overlapped("sm_90a", m, n, k, 0, 132) is not None:
                assert pick("sm_90a", m, n, k) == fit(choose("sm_90a", m, n, k), k, 128), (m, key)
            else:
                assert pick("sm_90a", m, n, k) == s, (m, key)
    assert pick("sm_90a", 3, 4096, 768) == choose("sm_90a", 3, 4096, 768)  # a shape the table lacks
    assert pick("sm_80", 2000, 512, 512) == choose("sm_80", 2000, 512, 512)
    # the A100 table was verified, not timed: the heuristic (which knows the A100's 108 SMs) decides
    assert pick("sm_80", 1, 14336, 4096) == fit(choose("sm_80", 1, 14336, 4096), 4096, 128)
    assert table_path("sm_80+sm_90") == table_path("sm_80")  # Ampere code run on Hopper reads the sm_80 table


def test_split_k_shrinks_until_k_divides():
    s = pick("sm_90a", 64, 100, 256)
    assert isinstance(s, Schedule) and 256 % (s.block_k * s.split_k) == 0


def test_schedule_round_trips_through_the_table_format():
    for s in every_schedule():
        from dataclasses import asdict
        assert schedule_from_dict(json.loads(json.dumps(asdict(s)))) == s


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("b", M_BUCKETS)
def test_candidates_survive_pruning_and_pruning_has_reasons(arch, b):
    kept, pruned = candidates(arch, b, 4096, 4096)
    assert kept and len(set(kept)) == len(kept)
    assert all(prune_reason(s, arch, 4096, 4096, 128) is None for s in kept)
    assert (b <= 16) == any(isinstance(s, GemvSchedule) for s in kept)
    limited, why = candidates(arch, b, 4096, 4096, limit=5)
    assert len(limited) == min(5, len(kept)) and limited[0] == kept[0]
    assert why["over limit"] == len(kept) - len(limited)
    register = [s for s in kept if getattr(s, "register_a", False)]
    assert bool(register) == (arch == "sm_90a" and b >= 16)  # the register-decode tiles, Hopper only
    assert all(s.threads == 2 * s.block_n and (s.block_m <= 64) == (b <= 64) for s in register)
    if arch == "sm_90a" and 16 <= b <= 1024:  # what runs untuned comes first: the register rule (b = M)
        assert kept[0] == pick.__wrapped__("sm_90a", b, 4096, 4096, 128, 410, 132)


def test_a_tuned_register_entry_overrides_the_rule_for_progressive_only(monkeypatch):
    """A table tuned with the register-decode kernel in its space is taken as is (progressive); the
    tables' older entries yield to the rule; mixllm, which has no such kernel, ignores the entry."""
    import mixkern.schedules as schedules
    entry = Schedule(64, 64, 128, 6, 128, 2, register_a=True)
    monkeypatch.setattr(schedules, "load_table", lambda arch, timed_only=False: {"64:4096x4096": entry})
    assert pick.__wrapped__("sm_90a", 40, 4096, 4096) == entry  # the rule alone: a 64 x 64 tile split 4 ways
    assert registered("sm_90a", 40, 4096, 4096, 128, 132) != entry
    mixllm = pick.__wrapped__("sm_90a", 40, 4096, 4096, 128, 0, None, 128, False)
    assert not getattr(mixllm, "register_a", False)


def test_pruning_rules():
    big = Schedule(block_m=256, block_n=256, block_k=128, stages=4, threads=256)
    assert prune_reason(big, "sm_86", 4096, 4096, 128) == "shared memory"  # even at block_k 64, 2 stages
    assert big.fitted("sm_86").shared_bytes() > SHARED_BYTES["sm_86"]
    assert prune_reason(Schedule(256, 256, 64, 2, 128), "sm_90a", 4096, 4096, 128) == "registers"
    assert prune_reason(Schedule(64, 64, 128, 3, 256), "sm_90a", 4096, 4096, 128) == "wgmma rows"
    assert prune_reason(Schedule(64, 64, 128, 3, 256), "sm_80", 4096, 4096, 128) is None
    assert prune_reason(Schedule(16, 128, 128, 3, 128, 8), "sm_90a", 4096, 1536, 128) == "divisibility"
    assert prune_reason(GemvSchedule(8, 8, 16), "sm_90a", 4096, 4096, 128) == "registers"
    assert prune_reason(GemvSchedule(1, 8, 1), "sm_90a", 4096, 2048, 128) == "idle lanes"
    assert prune_reason(GemvSchedule(4, 1, 1), "sm_90a", 2, 2048, 128) == "rows > N"
    # a fused block keeps tokens * ceil(K / (1024 * warps)) steps of 8 x words in registers
    # a fused block keeps tokens * ceil(K / (1024 * warps)) steps of 8 x words in registers, a
    # streamed one rows * steps of 8 weight words; at most 8 of each
    assert prune_reason(GemvSchedule(1, 4, 1, fused=True), "sm_90a", 8192, 28672, 128) is None  # 7 steps
    assert prune_reason(GemvSchedule(2, 4, 1, fused=True), "sm_90a", 8192, 28672, 128) == "registers"  # 2 x 7
    assert prune_reason(GemvSchedule(1, 2, 1, fused=True), "sm_90a", 8192, 28672, 128) == "registers"  # 14
    assert prune_reason(GemvSchedule(2, 4, 2, fused=True), "sm_90a", 4096, 14336, 128) is None  # 2 x 4
    assert prune_reason(GemvSchedule(2, 4, 4, fused=True), "sm_90a", 4096, 14336, 128) == "registers"  # 4 x 4
    assert prune_reason(GemvSchedule(8, 4, 1, chunk=4), "sm_90a", 4096, 14336, 128) == "registers"  # 8 x 4


def test_long_k_falls_back_from_a_fused_decode_schedule():
    fused = GemvSchedule(4, 4, 1, chunk=16, fused=True)
    assert fit(fused, 4096, 128) == fused
    assert fit(fused, 65536, 128) == GemvSchedule(4, 4, 1)  # 16 steps: plain kernel
    with pytest.raises(ValueError, match="registers"):
        fused.check(65536, 128)
    assert fused.key == "gemv_r4_w4_t1_c16_f" and GemvSchedule(2, 4, 1).key == "gemv_r2_w4_t1"


def test_fitted_schedules_shrink_only_the_kernels_that_overflow_shared_memory():
    s = Schedule(block_m=256, block_n=128, block_k=128, stages=3, threads=256)
    staged = 4 * (2 * 128 + 256)  # the epilogue's column indices and scales, token scales
    assert s.shared_bytes(True, False) == 3 * 256 * 128 + 3 * 128 * 64 + 128 * 128 + staged
    assert s.shared_bytes(False, True) == 3 * 256 * 128 + 3 * 128 * 128 + staged
    assert s.fitted("sm_90a", True, False) == s and s.fitted("sm_90a", False, True) == s
    both = s.fitted("sm_90a", True, True)  # one launch for both precisions holds both loops' buffers
    assert both.stages == 2 and both.block_k == 128 and both.shared_bytes() <= SHARED_BYTES["sm_90a"]
    ampere = s.fitted("sm_80", True, True)
    assert ampere.stages == 2 and ampere.block_k == 64 and ampere.shared_bytes() <= SHARED_BYTES["sm_80"]
    ampere.check(4096, 128)


def test_model_presets_and_config_files(tmp_path):
    # q, k/v, fused q/k/v, o (same as q here), fused gate/up, gate/up, down
    assert model_shapes("llama3-8b") == [(4096, 4096), (1024, 4096), (6144, 4096), (28672, 4096), (14336, 4096),
                                         (4096, 14336)]
    assert (28672, 8192) in model_shapes("llama3-70b") and (512, 3584) in model_shapes("qwen2.5-7b")
    assert (8192, 3584) in model_shapes("llama3-70b", tp=8)  # the row-parallel down projection's shard
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 32,
                               "num_key_value_heads": 4}))
    expect = [(2048, 2048), (256, 2048), (2560, 2048), (11264, 2048), (5632, 2048), (2048, 5632)]
    assert model_shapes(str(cfg)) == expect and model_shapes(str(tmp_path)) == expect  # file or its directory
    with pytest.raises(SystemExit, match="neither a preset"):
        model_shapes("gpt-17")
    with pytest.raises(SystemExit, match="does not divide"):
        model_shapes(str(cfg), tp=3)


def test_refuses_to_time_a_gpu_that_is_not_here(capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["--gpu", "a100", "--shapes", "256x256"]) == 2
    err = capsys.readouterr().err
    assert "needs an A100" in err and "--compile-only" in err
    assert main(["--gpu", "auto"]) == 2
    assert "no supported GPU" in capsys.readouterr().err


def test_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        main(["--gpu", "h100", "--shapes", "4096x100", "--compile-only"])  # K not a multiple of the group
    with pytest.raises(SystemExit):
        main(["--gpu", "h100", "--buckets", "3", "--compile-only"])
    with pytest.raises(SystemExit):
        main(["--gpu", "v100"])


@pytest.mark.compile
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")
@pytest.mark.parametrize("gpu", ["a100", "h100"])
def test_compile_only_builds_a_small_space(gpu, capsys):
    assert main(["--gpu", gpu, "--compile-only", "--shapes", "512x256", "--buckets", "1", "256",
                 "--max-candidates", "2", "--workers", "2"]) == 0
    captured = capsys.readouterr()
    assert "| 1 | 512x256 | 2 |" in captured.out and "| 256 | 512x256 | 2 |" in captured.out
    assert "0 candidate compile errors" in captured.err


@given(s=st.builds(Schedule, st.sampled_from([16, 64, 192, 256]), st.sampled_from([64, 128, 256]), st.sampled_from([64, 128]),
                   st.integers(2, 5), st.sampled_from([128, 256]), st.sampled_from([1, 2, 8]), st.booleans(), st.booleans())
       | st.builds(GemvSchedule, st.integers(1, 8), st.integers(1, 8), st.integers(1, 16), st.integers(1, 64), st.booleans()))
def test_a_schedule_key_names_its_schedule(s):
    """Scripts and the command line name schedules by key (scripts/tile_sweep.py --tiles)."""
    assert schedule_from_key(s.key) == s


def test_a_malformed_schedule_key_is_refused():
    with pytest.raises(ValueError, match="not a schedule key"):
        schedule_from_key("bm128_bn128")
