"""training.keep_freed_memory / huge_pages: the CPU allocator settings a training process runs with.

Checked in fresh processes, since both must be in place before torch allocates anything."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROBE = textwrap.dedent("""
    import resource, sys
    from lorafit.core import device
    device.configure_memory(keep_freed=sys.argv[1] == "1", huge_pages=sys.argv[2] == "1")
    import torch

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def huge_kb():
        for line in open("/proc/self/smaps_rollup"):
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
        return 0

    def step():  # a training step's large buffers, allocated and freed again every step
        buffers = [torch.ones(mb * 2**18) for mb in (48, 9, 64, 3, 48)]
        return huge_kb()

    huge = step()
    refaults = []
    for _ in range(3):
        before = faults()
        step()
        refaults.append(faults() - before)
    print(min(refaults), huge)
""")


def _probe(keep: bool, huge: bool) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(int(keep)), str(int(huge))],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr[-2000:]
    faults, huge_kb = out.stdout.split()
    return int(faults), int(huge_kb)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt and THP are Linux features")
def test_kept_memory_is_reused_without_page_faults():
    refault, _ = _probe(keep=False, huge=False)
    reused, _ = _probe(keep=True, huge=False)
    assert refault > 30_000  # 172 MB handed back to the OS every step comes back as ~44k fresh 4 KB pages
    assert reused < refault / 2  # kept in the heap, most of it is reused in place


def _thp_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "never"
    return text[text.index("[") + 1 : text.index("]")]


@pytest.mark.skipif(_thp_mode() == "never", reason="transparent huge pages are disabled on this kernel")
def test_huge_pages_back_large_tensors():
    _, without = _probe(keep=True, huge=False)
    _, with_thp = _probe(keep=True, huge=True)
    assert with_thp >= 64 * 1024  # most of the 172 MB of buffers sits in 2 MB pages
    if _thp_mode() == "madvise":  # with `always` the kernel uses huge pages whatever torch asks
        assert without < with_thp


PREFAULT_PROBE = textwrap.dedent("""
    import resource, sys
    from lorafit.core import device
    device.configure_memory(keep_freed=True, huge_pages=True)
    thread = device.prefault(int(sys.argv[1]) << 20)
    import torch
    if thread is not None:
        thread.join()

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    before = faults()
    buffers = [torch.ones(mb * 2**18) for mb in (48, 9, 64, 3, 48, 1, 1, 1)]  # a first step's fresh buffers
    print(faults() - before, thread is not None)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc heap and THP are Linux features")
def test_prefaulted_memory_serves_the_first_step_without_page_faults():
    def run(mb: int) -> tuple[int, bool]:
        env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
        out = subprocess.run(
            [sys.executable, "-c", PREFAULT_PROBE, str(mb)],
            capture_output=True,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert out.returncode == 0, out.stderr[-2000:]
        faults, started = out.stdout.split()
        return int(faults), started == "True"

    cold, started = run(0)
    assert not started  # too small to be worth a thread
    warm, started = run(512)
    assert started
    assert cold > 2_000  # 175 MB of fresh buffers: thousands of faults even with huge pages
    assert warm < cold / 4  # already faulted in by the helper thread, reused from the heap
