"""Every linear layer of real LLMs runs on the GPU, bit-equal to the reference.

One test per model and tensor-parallel size (mixkern.shapes: Llama-2/3, Mistral, Mixtral,
Qwen2.5 0.5B-72B, Phi-3, Gemma-2; TP 1/2/4/8): each of its layer shapes (q, k/v, fused
q/k/v, o, gate/up, fused gate/up, down) in fp16 with 10% 8-bit rows at M = 1, 16 and 200
(fused decode GEMV, multi-token GEMV or 16-token tensor-core tiles, larger tiles and
split-K), with the op's own schedule choice; and once more in bf16 with 0% or 100% 8-bit
rows (alternating) at M = 3, 50 or 1000 (rotating).  Kernels compile first on all cores
(a compile costs ~7 core-seconds; the full cross product is ~1,100 kernels, this ~530).
"""

import pytest
import torch

from mixkern import quantize_activation, quantize_weight
from mixkern.reference import reference_gemm_quantized
from mixkern.shapes import shardings
from strategies import compile_ahead

pytestmark = pytest.mark.gpu
MS = (1, 16, 200)
MORE_MS = (3, 50, 1000)
SHARDINGS = [s for s in shardings() if s.group_size]  # tests/test_shapes.py: the others are refused


def _cases(sharding):
    """(M, N, K, dtype, fraction) of one sharding's checks."""
    cases = [(m, n, k, torch.float16, 0.1) for n, k in sharding.shapes for m in MS]
    return cases + [(MORE_MS[(i + sharding.tp) % 3], n, k, torch.bfloat16, float((i + sharding.tp) % 2))
                    for i, (n, k) in enumerate(sharding.shapes)]


@pytest.fixture(scope="module", autouse=True)
def compiled_kernels():
    from mixkern.kernels.launch import arch_of, kernel_jobs, sm_count
    from mixkern.schedules import pick
    device = torch.device("cuda")
    arch, sms = arch_of(device), sm_count(device)
    jobs = {}
    for s in SHARDINGS:
        for m, n, k, dtype, fraction in _cases(s):
            n8 = round(fraction * n)
            schedule = pick(arch, m, n, k, s.group_size, n8, sms)
            jobs.update(dict.fromkeys(kernel_jobs(arch, k, s.group_size, schedule, str(dtype).split(".")[1],
                                                  n8 < n, n8 > 0)))
    compile_ahead(sorted(jobs, key=str))


@pytest.mark.parametrize("sharding", SHARDINGS, ids=lambda s: f"{s.model}-tp{s.tp}")
def test_model_layers_match_reference(sharding):
    from mixkern.kernels.launch import poisoned_outputs
    from mixkern.ops import gemm
    gen = torch.Generator(device="cuda").manual_seed(sharding.tp)
    for m, n, k, dtype, fraction in _cases(sharding):
        w = torch.randn(n, k, device="cuda", generator=gen) * 0.05
        idx = torch.randperm(n, device="cuda", generator=gen)[: round(fraction * n)]
        pw = quantize_weight(w, idx.cpu().tolist(), sharding.group_size)
        x = (torch.randn(m, k, device="cuda", generator=gen) * 3).to(dtype)
        with poisoned_outputs():
            y = gemm(x, pw)
        xq, a = quantize_activation(x)
        assert torch.equal(y, reference_gemm_quantized(xq, a, pw, dtype)), (m, n, k, dtype, fraction)

