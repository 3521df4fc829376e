"""Which kernels the CPU compile tests build, planned by distinct kernel (a compile is 3-10 s).

* :func:`shape_jobs` (CI): every distinct K (with its group size) of the model configs and
  their tensor-parallel shards, plus odd K up to the limit, once per kernel kind --
  activation quantization, the decode GEMV, the tensor-core kernel -- fp16.  The schedule
  for each K is the one the op picks at an M and N that cycle over the buckets, so across
  the K list every structural variant (fused / plain / multi-token GEMV, 16- to 256-token
  tiles, split-K) is built.
* :func:`structural_jobs` (CI): one schedule per code path with every mix of 4- and 8-bit
  rows, and in bf16.
* :func:`sweep_jobs` (``-m sweep``): every schedule the shipped tables name and every
  schedule the heuristic picks for the model shapes, at the K each serves, every precision
  mix and both dtypes.
All for sm_80 and sm_90a.  On a GPU, tests/test_shapes_gpu.py runs every shape.
"""

from mixkern.format import MAX_IN_FEATURES
from mixkern.kernels.launch import PRECISION_SPLITS, kernel_jobs, kernel_jobs_any_split
from mixkern.schedules import GemvSchedule, Schedule, fit, load_table
from mixkern.schedules.heuristic import choose
from mixkern.shapes import shardings

ARCHS = ("sm_80", "sm_90a")
BUCKET_MS = (1, 4, 16, 32, 64, 256, 1024, 4096)
ODD_K = (384, 640, 57344, 81920, 114688, MAX_IN_FEATURES)  # the model configs hold the odd factors in between
STRUCTURAL = (  # one schedule per code path: plain / fused / streamed GEMV, small and large tiles, split-K,
    # the overlapped decode, the predecoded GEMM on one and two consumer warpgroups (keep the last last: mixllm's
    # overlapped promotion)
    GemvSchedule(4, 2, 1), GemvSchedule(8, 4, 1, 4, True), GemvSchedule(8, 1, 4), Schedule(16, 64, 128, 4, 128),
    Schedule(64, 64, 128, 3, 128, 4), Schedule(256, 128, 128, 3, 256), Schedule(64, 128, 128, 4, 256, overlap=True),
    Schedule(64, 128, 128, 4, 128, predecode=True), Schedule(128, 256, 128, 3, 256, predecode=True))
TOKENS_OUTER = GemvSchedule(2, 4, 16)  # decode with more tokens than rows: the dot loops run tokens outer
BF16 = STRUCTURAL[1::2] + STRUCTURAL[6::2]  # half the code paths, and both overlapped kernels
WIDE_OVERLAPPED = (Schedule(192, 128, 128, 4, 256, overlap=True),  # Hopper, 129..384 tokens: one tile decodes once
                   Schedule(256, 128, 128, 4, 256, 2, overlap=True),  # for up to 256 token rows
                   Schedule(64, 256, 128, 4, 256, 4, overlap=True),  # 5..64 tokens, large layers: 128 weight rows a warpgroup
                   Schedule(64, 64, 128, 4, 128, 4, overlap=True),  # 17..128 tokens, narrow layers: one warpgroup, 64 rows
                   Schedule(64, 64, 64, 4, 128, 4, overlap=True))  # ... 64-wide K tiles where K / 128 splits no further
REGISTER_DECODE = (Schedule(16, 128, 128, 6, 256, register_a=True),  # Hopper, 9..64 tokens: weights in register A
                   Schedule(64, 64, 128, 6, 128, 8, register_a=True),  # narrow layers: 64 rows, K in eight slices
                   Schedule(32, 128, 128, 6, 256, 3, register_a=True),  # uneven slices (32 tiles: 11, 11, 10)
                   Schedule(128, 64, 128, 4, 128, 4, register_a=True),  # 65..1024 tokens: 128 token rows, 64 weight rows
                   Schedule(192, 128, 128, 4, 256, register_a=True),  # 192 token rows, 128 weight rows
                   Schedule(256, 128, 128, 4, 256, 2, register_a=True))  # 256 token rows: setmaxnreg for the consumers
MIXLLM_OVERLAPPED = (Schedule(128, 128, 128, 4, 256, 4, overlap=True),  # mixllm: 64 x 128, K in two slices
                     Schedule(128, 128, 128, 4, 256, overlap=True))  # mixllm: 128 x 128


def model_shapes() -> list[tuple[int, int, int]]:
    """(N, K, group size) of every model config and TP shard that can be group-quantized."""
    return sorted({(n, k, s.group_size) for s in shardings() if s.group_size for n, k in s.shapes})


def heuristic_schedules() -> dict:
    """{schedule: (K, group size)} the heuristic picks for the model shapes, at the first K it serves."""
    out = {}
    for n, k, g in model_shapes():
        for m in BUCKET_MS:
            out.setdefault(fit(choose("sm_90a", m, n, k, g, n // 10), k, g), (k, g))
    return out


def shape_jobs() -> list[tuple]:
    ks = sorted({(k, g) for _, k, g in model_shapes()} | {(k, 128) for k in ODD_K})
    jobs = []
    for i, (k, g) in enumerate(ks):
        n = (512, 4096, 28672)[i % 3]
        for m in ((1, 4, 16)[i % 3], (32, 64, 256, 1024, 4096)[i % 5]):
            jobs += [j for arch in ARCHS for j in kernel_jobs(arch, k, g, fit(choose(arch, m, n, k, g, n // 10), k, g),
                                                                "float16")]
    return list(dict.fromkeys(jobs))


def structural_jobs() -> list[tuple]:
    jobs = [j for arch in ARCHS for s in STRUCTURAL for has4, has8 in PRECISION_SPLITS
            for j in kernel_jobs(arch, 4096, 128, s, "float16", has4, has8)]
    jobs += [j for arch in ARCHS for s in BF16 for j in kernel_jobs(arch, 4096, 128, s, "bfloat16")]
    jobs += [j for arch in ARCHS for j in kernel_jobs(arch, 2048, 128, TOKENS_OUTER, "float16")]
    jobs += [j for s in WIDE_OVERLAPPED + REGISTER_DECODE for has4, has8 in PRECISION_SPLITS
             for j in kernel_jobs("sm_90a", 4096, 128, s, "float16", has4, has8)]
    jobs += kernel_jobs("sm_90a", 3584, 64, fit(REGISTER_DECODE[1], 3584, 64), "bfloat16")  # groups of 64: 28 tiles, 7 slices
    return list(dict.fromkeys(jobs))


def mixllm_jobs() -> list[tuple]:
    """The mixllm format's kernels: every code path in every precision mix (fp16), half of
    them in bf16, each weight group size (activation groups 64 and 128), odd K."""
    jobs = [j for arch in ARCHS for s in STRUCTURAL for has4, has8 in PRECISION_SPLITS
            for j in kernel_jobs(arch, 4096, 128, s, "float16", has4, has8, "mixllm")]
    jobs += [j for arch in ARCHS for s in BF16 for j in kernel_jobs(arch, 4096, 128, s, "bfloat16", fmt="mixllm")]
    jobs += [j for arch in ARCHS for g in (64, 256) for s in STRUCTURAL[::2] + STRUCTURAL[-1:]
             for j in kernel_jobs(arch, 3584 if g == 64 else 4608, g, fit(s, 3584, g), "float16", fmt="mixllm")]
    jobs += [j for arch in ARCHS for has4, has8 in PRECISION_SPLITS for s in MIXLLM_OVERLAPPED
             for j in kernel_jobs(arch, 4096, 128, s, "float16", has4, has8, "mixllm")]
    jobs += [j for arch in ARCHS for j in kernel_jobs(arch, 3584, 64, MIXLLM_OVERLAPPED[1], "bfloat16", fmt="mixllm")]
    jobs += [j for arch in ARCHS for j in kernel_jobs(arch, 14336, 128, GemvSchedule(4, 2, 16), "float16", fmt="mixllm")]
    jobs += [j for arch in ARCHS for j in kernel_jobs(arch, 2048, 128, TOKENS_OUTER, "float16", fmt="mixllm")]
    jobs += [j for arch in ARCHS for i, k in enumerate(ODD_K)
             for j in kernel_jobs(arch, k, 128, fit(STRUCTURAL[i % len(STRUCTURAL)], k, 128), "float16", fmt="mixllm")]
    return list(dict.fromkeys(jobs))


def sweep_jobs() -> list[tuple]:
    served = heuristic_schedules()
    for arch in ARCHS:
        for key, s in load_table(arch).items():
            served.setdefault(s, (int(key.split("x")[-1]), 128))
    return list(dict.fromkeys(j for arch in ARCHS for s, (k, g) in sorted(served.items(), key=lambda v: v[0].key)
                              for dtype in ("float16", "bfloat16")
                              for j in kernel_jobs_any_split(arch, k, g, s, dtype)))


def job_id(job: tuple) -> str:
    return "-".join(getattr(p, "key", str(p)) for p in job)
