"""The register-decode kernel's machine code (CPU: nvcc and nvdisasm, no GPU).

wgmma reads its register A operand asynchronously, until a ``wgmma.wait_group`` retires it, but
ptxas allocates registers as if the read happened at issue.  Before stop 34 it gave the kernel's
two fragments the same registers, so tile j + 1's decode overwrote tile j's operand while its
wgmma still read it: wrong results with 128-token tiles on the H100, luck at 16-64.  This test
reads the SASS: after each IGMMA group no instruction may write one of its A registers until a
``WARPGROUP.DEPBAR`` has retired it, following the loop's back edge; the two fragments' registers
are disjoint.  Needs the ``test`` extra's ``nvidia-cuda-nvdisasm`` (or a CUDA toolkit's nvdisasm).
"""
import os
import re
import shutil

import pytest

from mixkern.schedules import schedule_from_key

pytestmark = pytest.mark.compile

INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
LABEL = re.compile(r"^\s*(\.L_x_\d+):")
SCAN_LIMIT = 4000  # instructions followed from one IGMMA group before giving up (the loop is ~300)


def _nvdisasm() -> str | None:
    """nvdisasm on PATH, or the one the nvidia-cuda-nvdisasm wheel installs."""
    try:
        import nvidia
    except ImportError:
        return shutil.which("nvdisasm")
    wheel = [os.path.join(p, "cu13", "bin", "nvdisasm") for p in nvidia.__path__]
    return shutil.which("nvdisasm") or next((w for w in wheel if os.path.exists(w)), None)


def _sass(key: str, has4: bool, has8: bool) -> str:
    """SASS of the register-decode kernel for ``key`` at K = 1024 (fp16)."""
    from tilelang.contrib import nvcc
    from mixkern.kernels import launch as L
    job = ("mma", "sm_90a", 1024, 128, schedule_from_key(key).fitted("sm_90a", has4, has8), "float16", has4, has8)
    source = L.compiled(*job).get_kernel_source()
    with L.target("sm_90a"):
        return nvcc.get_sass_from_source(source)


def _parse(sass: str) -> tuple[list, dict]:
    """[(address, opcode, operands)] in order, and {label: index of the instruction it marks}."""
    code, labels, pending = [], {}, []
    for line in sass.splitlines():
        if (label := LABEL.match(line)) is not None:
            pending.append(label.group(1))
        elif (ins := INSTRUCTION.search(line)) is not None:
            labels.update({name: len(code) for name in pending})
            pending = []
            code.append((int(ins.group(1), 16), ins.group(3), ins.group(4)))
    return code, labels


def _written(opcode: str, operands: str) -> set[int]:
    """Registers an instruction writes: its first operand, widened for 64- and 128-bit results."""
    if opcode.split(".")[0] in {"IGMMA", "STS", "STG", "ST", "SYNCS", "BAR", "BRA", "WARPGROUP", "RED", "ATOM"}:
        return set()
    first = re.match(r"R(\d+)\b", operands.strip())
    if first is None:
        return set()
    width = 4 if ".128" in opcode else 2 if (".64" in opcode or ".WIDE" in opcode) else 1
    return set(range(int(first.group(1)), int(first.group(1)) + width))


def _groups(code: list) -> list[tuple[int, set[int]]]:
    """(index of the group's last IGMMA, the A registers its IGMMAs read) per committed group."""
    groups, regs = [], set()
    for i, (_, opcode, operands) in enumerate(code):
        if opcode.startswith("IGMMA"):
            base = int(re.search(r",\s*R(\d+)\s*,", operands).group(1))
            regs |= set(range(base, base + 4))
            if "gsb0" in operands:
                groups.append((i, regs))
                regs = set()
    return groups


def _hazard(code: list, labels: dict, end: int, regs: set[int]) -> str | None:
    """The first write to ``regs`` on the path after the IGMMA group ending at ``end`` before a
    DEPBAR retires it (``LE gsb0, 0x0``, or the second ``LE gsb0, 0x1``); backward branches are
    followed (the next loop iteration), forward ones fall through (more code, conservative)."""
    i, waits = end + 1, 0
    for _ in range(SCAN_LIMIT):
        if i >= len(code):
            return None
        address, opcode, operands = code[i]
        if opcode.startswith("WARPGROUP.DEPBAR"):
            waits += 1
            if "0x0" in operands or waits == 2:
                return None
        if _written(opcode, operands) & regs:
            return f"{address:#06x} {opcode} {operands}"
        target = re.search(r"`\((\.L_x_\d+)\)", operands) if opcode == "BRA" else None
        i = labels[target.group(1)] if target and labels.get(target.group(1), i) <= i else i + 1
    raise AssertionError("the scan did not reach a WARPGROUP.DEPBAR")


@pytest.mark.parametrize("key, has4, has8", [
    ("bm128_bn128_bk128_s4_t256_sk2_ra", True, False),  # the tile that went wrong on the H100 (4-bit rows)
    ("bm16_bn64_bk128_s6_t128_sk4_ra", False, True),  # a few-token tile, 8-bit rows copied into the fragments
    ("bm256_bn128_bk128_s4_t256_sk1_ra", True, True),  # 256 token rows: setmaxnreg, 128 accumulators a thread
])
def test_no_register_of_a_wgmma_in_flight_is_written(key, has4, has8, monkeypatch):
    tool = _nvdisasm()
    if tool is None:
        pytest.skip("nvdisasm not found: pip install nvidia-cuda-nvdisasm (the test extra has it)")
    monkeypatch.setenv("PATH", os.path.dirname(tool) + os.pathsep + os.environ.get("PATH", ""))
    code, labels = _parse(_sass(key, has4, has8))
    assert "STL" not in {opcode.split(".")[0] for _, opcode, _ in code}, "spilled registers (ptxas then serializes wgmma)"
    groups = _groups(code)
    assert len(groups) >= 2, "the main loop should issue the two fragments' wgmma groups"
    fragments = {frozenset(regs) for _, regs in groups}
    assert len(fragments) == 2 and not set.intersection(*map(set, fragments)), \
        f"the two fragments should own disjoint registers: {sorted(map(sorted, fragments))}"
    for end, regs in groups:
        hazard = _hazard(code, labels, end, regs)
        assert hazard is None, f"{hazard} writes an A register of the IGMMA group ending at {code[end][0]:#06x} in flight"
