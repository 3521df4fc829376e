"""mixkern's IR cache: what it loads is the IR it stored, and a bad entry is a miss, never an error."""

import pytest

pytest.importorskip("tilelang")

from tilelang import tvm  # noqa: E402

from mixkern.kernels import ir_cache  # noqa: E402
from mixkern.kernels.launch import build  # noqa: E402


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TILELANG_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("job", [("act", "sm_90a", 3584, "float16"), ("act", "sm_80", 3584, "bfloat16", True)])
def test_loaded_ir_is_the_stored_ir(cache_dir, job):
    func = build(*job)
    assert ir_cache.load(job) is None
    ir_cache.store(job, func)
    assert ir_cache.entry_path(job).startswith(str(cache_dir))
    loaded = ir_cache.load(job)
    assert tvm.ir.structural_equal(loaded, func)
    assert loaded.script(show_meta=True) == func.script(show_meta=True)  # TileLang's cache key hashes this text
    other = ("act", "sm_90a", 3072, "float16")
    assert ir_cache.entry_path(other) != ir_cache.entry_path(job) and ir_cache.load(other) is None


def test_a_corrupt_entry_is_a_miss(cache_dir):
    job = ("act", "sm_90a", 4096, "float16")
    ir_cache.store(job, build(*job))
    with open(ir_cache.entry_path(job), "r+") as f:
        f.truncate(100)
    assert ir_cache.load(job) is None
