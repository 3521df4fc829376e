"""Every kernel variant lowers and compiles with nvcc for sm_80 and sm_90a (no GPU needed),
and the generated CUDA uses the instructions the design relies on.

Kernels build in background processes (one per core) in the order the tests need them
(``kernel_source`` in conftest.py), so results print as each finishes.  What is built and
why: tests/kernel_jobs.py.  ``-m sweep`` adds every schedule of the tables and the heuristic
in every precision mix and dtype."""

import re
import shutil

import pytest

from kernel_jobs import job_id, mixllm_jobs, shape_jobs, structural_jobs, sweep_jobs

pytestmark = [pytest.mark.compile,
              pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (CUDA toolkit)")]


def check_instructions(job, src: str) -> None:
    """The generated CUDA of one job uses the instructions its kernel is designed around."""
    kind, arch = job[0], job[1]
    assert "__global__" in src
    if kind == "act":  # 16-byte loads of x, NaN kept (as +inf) in the token maximum, IEEE rounding
        assert "*(uint4*)(xv" in src and "CUDART_INF_F" in src and "nearbyintf" in src
        assert ("] = 0;" in src) == (len(job) > 4 and job[4])  # and zeroes a split-K workspace
        # in the register-decode kernel's K order: 4-byte stores (8 values a thread go to two places)
        assert ("*(int*)(XQ" in src) == (len(job) > 5 and job[5])
        return
    if kind == "gemv":  # decode: 128-bit weight loads, int8 dot products on CUDA cores
        assert "*(int4*)(W" in src and "__dp4a(" in src
        assert ("& 252645135" in src) == job[6]  # 0x0F0F0F0F: the word-wise nibble decode, 4-bit rows only
        # fused: the block quantizes x itself (block-wide max, IEEE division, round half to even)
        assert ("warp_reduce_max" in src and "nearbyintf" in src and "CUDART_INF_F" in src) == job[4].fused
        return
    if kind.startswith("mixllm") or kind == "act_group" or (kind == "int8_gemm" and len(job) > 5):
        check_mixllm_instructions(job, src)
        return
    if kind == "predecode":  # whole rows of 32 codes: the word-wise decode, 16-byte copies of 8-bit rows
        assert (src.count("mixkern_decode16(") > 1) == job[5] and (src.count("mixkern_copy32(") > 1) == job[6]
        return
    if kind == "int8_gemm":
        check_int8_gemm_instructions(job, src)
        return
    if kind != "mma":
        return
    has4, has8 = job[6], job[7]
    int8_mma = "DataType::kInt8, tl::DataType::kInt8, tl::DataType::kInt32"  # int8 x int8 -> int32
    assert ("AtomicAdd(" in src) == (job[4].split_k > 1)  # split over K: int32 partials added exactly
    assert ("((int*)idx_s" in src) == (job[4].split_k == 1)  # the store's column indices staged in shared memory
    if arch == "sm_90a" and job[4].register_a:
        check_register_decode(src, has4, has8, job[4])
        return
    if arch == "sm_90a" and job[4].overlap:
        check_overlapped_decode(src, has4, job[4].split_k > 1)
    elif arch == "sm_90a":
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


def check_overlapped_decode(src: str, has4: bool, split: bool) -> None:
    """The overlapped decode: TMA loads by a producer warpgroup, asynchronous wgmma waited one
    behind (the next tile decodes while this one multiplies), no cp.async; 4-bit tiles decode
    into one of two buffers, fenced for the tensor core's async proxy, from scales the producer
    staged in shared memory (no global load in the decode); split over K, int32 atomics."""
    assert "tma_load" in src and "cp_async_gs" not in src and "tl::wait_wgmma<1>();" in src
    assert ("AtomicAdd(" in src) == split
    if has4:
        decode = src.index("mixkern_decode16((")
        assert src.index("mixkern_fence_decoded();", decode) < src.index("tl::wgmma_ss<", decode) < \
            src.index("tl::wait_wgmma<1>();", decode)
        call = src[decode:src.index(";", decode)]
        assert "Z_s" in call and "Z[" not in call


def check_register_decode(src: str, has4: bool, has8: bool, schedule) -> None:
    """The register-decode kernel: TMA loads by a producer warpgroup, the weights decoded (or
    copied) straight into the wgmma's register A operand and multiplied asynchronously, one
    behind; no decoded tile in shared memory, so no proxy fence of the decode's own."""
    int8_rs = "tl::wgmma_rs<tl::DataType::kInt8, tl::DataType::kInt8, tl::DataType::kInt32"
    assert "tma_load" in src and int8_rs in src and "tl::wgmma_ss<" not in src and "tl::wait_wgmma<1>();" in src
    assert (src.count("mixkern_decode_regs(") > 1) == has4 and (src.count("mixkern_copy_regs(") > 1) == has8
    assert "mixkern_fence_decoded();" not in src and src.count("mixkern_decode16(") == 1  # its definition only
    assert src.count("mixkern_hold_regs(") >= 3  # defined, and each fragment held past its wgmma's wait
    rebalanced = schedule.block_m >= 256 and schedule.threads == 256  # 256 token rows on two consumer warpgroups
    assert ("warpgroup_reg_alloc<232>" in src) == rebalanced == ("warpgroup_reg_dealloc<40>" in src)


def check_int8_gemm_instructions(job, src: str) -> None:
    """The predecoded GEMM: int8 tensor cores fed by TMA (warp-specialized) on sm_90a, by
    cp.async on sm_80; output tiles leave through shared memory (TMA store / 16-byte runs)."""
    int8_mma = "DataType::kInt8, tl::DataType::kInt8, tl::DataType::kInt32"
    if job[1] == "sm_90a":
        assert f"tl::wgmma_ss<tl::{int8_mma}" in src and "tma_load" in src and "tma_store" in src
    else:
        assert f"tl::mma_sync<tl::{int8_mma}" in src and "cp_async_gs" in src
    assert "mixkern_decode16" not in src


def check_mixllm_instructions(job, src: str) -> None:
    """mixllm: group maxima and partials by warp shuffles, the fp32 chain as __fmul_rn /
    __fmaf_rn (never contracted or reordered by the compiler), int8 MMAs on tensor cores."""
    kind, arch = job[0], job[1]
    if kind == "act_group":
        assert "__shfl_xor_sync" in src and "nearbyintf" in src and "CUDART_INF_F" in src
        return
    if kind == "mixllm_sum":  # split-K slices added in order, each add one rounding, never reassociated
        assert src.count("__fadd_rn(") == job[2] - 1 and "atomic" not in src.lower()
        return
    assert "__fmaf_rn(" in src and "__fmul_rn(" in src
    if kind == "mixllm_gemv":
        assert "__dp4a(" in src and "__shfl_xor_sync" in src
        assert "nearbyintf" not in src and not job[4].streamed  # plain: x comes quantized (for_mixllm)
        return
    int8_mma = "DataType::kInt8, tl::DataType::kInt8, tl::DataType::kInt32"
    block_m = job[3].block_m if kind == "int8_gemm" else job[4].block_m
    assert (f"tl::wgmma_ss<tl::{int8_mma}" in src) if arch == "sm_90a" and block_m >= 64 else \
        (f"tl::mma_sync<tl::{int8_mma}" in src or f"tl::wgmma_ss<tl::{int8_mma}" in src)
    if arch == "sm_90a" and ((kind == "int8_gemm" and block_m == 128) or (kind == "mixllm_mma" and job[4].overlap)):
        check_overlapped_promotion(src)
    else:
        assert "tma_load" not in src  # no warp specialization (launch._pass_configs)
    assert (src.count("mixkern_decode16(") > 1) == (kind == "mixllm_mma" and job[6])
    if kind == "mixllm_mma":  # column indices staged in shared memory; split over K, plain stores per slice
        assert "((int*)idx_s" in src and "atomic" not in src.lower()
        assert ("blockIdx.z" in src) == (job[4].split_k > 1)


def check_overlapped_promotion(src: str) -> None:
    """The mixllm GEMMs on Hopper (predecoded, and in-loop overlapped): a TMA producer warpgroup
    with fewer registers, and each group's promotion placed between the next group's wgmma
    issue and the wait for it."""
    assert "tma_load" in src and "warpgroup_reg_alloc" in src and "warpgroup_reg_dealloc" in src
    issue = re.search(r"tl::wgmma_ss<[^\n]*\(acc1 \+ ", src).start()  # the first wgmma into the second int32 fragment
    wait = src.index("tl::wait_wgmma<0>();", issue)
    assert "((float)acc0[" in src[issue:wait]  # the first fragment promoted while that MMA runs
    assert "tl::wait_wgmma<1>" not in src  # ptxas serializes wgmma when the pipeline never drains


@pytest.mark.parametrize("job", mixllm_jobs(), ids=job_id)
def test_every_mixllm_code_path_compiles(job, kernel_source):
    check_instructions(job, kernel_source(job))


@pytest.mark.parametrize("job", shape_jobs(), ids=job_id)
def test_every_model_k_compiles(job, kernel_source):
    """Each K of Llama-2/3, Mistral, Mixtral, Qwen2.5, Phi-3 and Gemma-2 layers and their TP
    shards (3584 = 7 * 512, 8960 = 35 * 256, 18944 = 37 * 512, ...) and odd K up to the limit."""
    check_instructions(job, kernel_source(job))


@pytest.mark.parametrize("job", structural_jobs(), ids=job_id)
def test_every_code_path_compiles_in_every_precision_mix(job, kernel_source):
    check_instructions(job, kernel_source(job))


@pytest.mark.sweep
@pytest.mark.parametrize("job", sweep_jobs(), ids=job_id)
def test_every_schedule_compiles(job, kernel_source):
    check_instructions(job, kernel_source(job))
