import os
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=int(os.environ.get("MIXKERN_EXAMPLES", "100")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("default")


def pytest_configure(config):
    config.addinivalue_line("markers", "sweep: full compile sweep (hundreds of kernels); runs only with -m sweep")


def pytest_collection_modifyitems(config, items):
    if "sweep" not in (config.option.markexpr or ""):
        config.hook.pytest_deselected(items=[item for item in items if "sweep" in item.keywords])
        items[:] = [item for item in items if "sweep" not in item.keywords]
    # kernels the compile tests need, in test order: built ahead in the background
    config.stash[COMPILE_JOBS] = list(dict.fromkeys(
        item.callspec.params["job"] for item in items
        if "compile" in item.keywords and hasattr(item, "callspec") and "job" in item.callspec.params))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


COMPILE_JOBS = pytest.StashKey[list]()


def _source(job):
    from mixkern.kernels.launch import compiled
    return compiled(*job).get_kernel_source()


@pytest.fixture(scope="session")
def kernel_source(pytestconfig):
    """kernel_source(job) -> generated CUDA.  On first use every compile test's kernel is queued
    on one process per core, in test order, so each test waits only for its own kernel and
    pytest reports as kernels finish (a cold cache costs 3-10 s a kernel)."""
    pool = ProcessPoolExecutor(os.cpu_count() or 2)
    futures = {job: pool.submit(_source, job) for job in pytestconfig.stash[COMPILE_JOBS]}
    yield lambda job: (futures.get(job) or pool.submit(_source, job)).result()
    pool.shutdown(cancel_futures=True)
