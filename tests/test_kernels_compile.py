"""Every kernel variant lowers and compiles with nvcc for sm_80 and sm_90a (no GPU needed),
and the generated CUDA uses the instructions the design relies on."""

import shutil
from concurrent.futures import ProcessPoolExecutor

import pytest

pytestmark = [pytest.mark.compile,
              pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")]

ARCHS = ("sm_80", "sm_90a")
DTYPES = ("float16", "bfloat16")
K = 4096


def _variants():
    """Every bucket default (both dtypes) and every schedule of the shipped tables (fp16), each
    with every mix of 4- and 8-bit rows, for both archs."""
    from mixkern.kernels.launch import kernel_jobs_any_split
    from mixkern.schedules import all_default_schedules, load_table
    jobs = [j for arch in ARCHS for dtype in DTYPES for s in all_default_schedules()
            for j in kernel_jobs_any_split(arch, K, 128, s, dtype)]
    jobs += [j for arch in ARCHS for s in sorted(set(load_table(arch).values()), key=lambda s: s.key)
             for j in kernel_jobs_any_split(arch, K, 128, s, "float16")]
    return list(dict.fromkeys(jobs))


def _source(job):
    from mixkern.kernels.launch import compiled
    return compiled(*job).get_kernel_source()


@pytest.fixture(scope="module")
def sources():
    jobs = _variants()
    with ProcessPoolExecutor(2) as pool:  # nvcc is the slow part: one per core
        return dict(zip(jobs, pool.map(_source, jobs)))


@pytest.mark.parametrize("job", _variants(), ids=lambda j: "-".join(getattr(p, "key", str(p)) for p in j))
def test_kernel_compiles_with_expected_instructions(job, sources):
    src = sources[job]
    kind, arch = job[0], job[1]
    assert "__global__" in src
    if kind == "gemv":  # decode: 128-bit weight loads, int8 dot products on CUDA cores
        assert "*(int4*)(W" in src and "__dp4a(" in src
        assert ("& 252645135" in src) == job[6]  # 0x0F0F0F0F: the word-wise nibble decode, 4-bit rows only
        # fused: the block quantizes x itself (block-wide max, IEEE division, round half to even)
        assert ("warp_reduce_max" in src and "nearbyintf" in src) == job[4].fused
        return
    if kind != "mma":
        return
    has4, has8 = job[6], job[7]
    int8_mma = "DataType::kInt8, tl::DataType::kInt8, tl::DataType::kInt32"  # int8 x int8 -> int32
    if arch == "sm_90a":
        # both operands from shared memory (wgmma when the tile has 64+ tokens); TMA + warp
        # specialization for one precision and two or more consumer warpgroups, else cp.async
        assert (f"tl::wgmma_ss<tl::{int8_mma}" in src) == (job[4].block_m >= 64)
        specialized = not (has4 and has8) and job[4].threads >= 256
        assert ("tma_load" in src) == specialized and ("cp_async_gs" in src) == (not specialized)
    else:
        assert "cp_async_gs" in src  # cp.async feeds shared memory
        assert f"tl::mma_sync<tl::{int8_mma}" in src
    # 4-bit tiles: the word-wise int4 -> int8 decode (mask, one multiply, carry-free byte subtract)
    assert (src.count("mixkern_decode16(") > 1) == has4  # a call besides the definition
