"""What the training will run on, and the dtype that follows from it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda" | "mps" | "cpu"
    name: str
    bf16: bool  # fast bf16 matmuls
    memory_bytes: int  # what the device offers to one process


def detect() -> DeviceInfo:
    import psutil
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return DeviceInfo("cuda", props.name, torch.cuda.is_bf16_supported(), props.total_memory)
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return DeviceInfo("mps", "Apple MPS", False, psutil.virtual_memory().total)
    # CPU bf16 is emulated on most x86 parts (no AMX): far slower than fp32, so never "fast".
    return DeviceInfo("cpu", "CPU", False, psutil.virtual_memory().available)


def of_kind(kind: str) -> DeviceInfo:
    """A stand-in device when only its kind is known (a plan for another machine). It assumes fast bf16 on CUDA,
    which decides only between bf16 and fp16: both are 2 bytes, so no size computed from it depends on the guess."""
    return DeviceInfo(kind, kind, kind == "cuda", 0)


def compute_dtype_name(precision: str, model_dtype: str, info: DeviceInfo) -> str:
    """Resolve `auto` to float32 / bfloat16 / float16 for this device: the one rule training and the memory plan
    both follow."""
    if model_dtype != "auto":
        return model_dtype
    if precision == "fp32" or info.kind != "cuda":
        return "float32"
    if precision == "fp16":
        return "float16"
    return "bfloat16" if info.bf16 else "float16"


def dtype_bytes(name: str) -> int:
    """Bytes per element of a compute dtype name."""
    return 4 if name == "float32" else 2


def configure_memory(keep_freed: bool, huge_pages: bool) -> None:
    """The CPU allocator settings a training process runs with (training.keep_freed_memory / huge_pages).

    Call before torch is first imported: PyTorch reads THP_MEM_ALLOC_ENABLE once, at its first allocation."""
    import os

    if huge_pages:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if keep_freed:
        keep_freed_memory()


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed blocks instead of unmapping/trimming them after every step.

    A training step frees and reallocates the same activation buffers; by default glibc returns
    large ones to the OS and the next step faults them back in (measured: ~700k page faults per
    step on SmolLM2-135M). Returns False where this is not glibc (macOS, musl, Windows)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]  # mallopt(int, int): a larger value must not wrap to 0
        m_trim_threshold, m_mmap_threshold, most = -1, -3, 2**31 - 1
        kept = libc.mallopt(m_trim_threshold, most)  # separately: older glibc refuses mmap thresholds over 32 MB
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and kept)
    except (OSError, AttributeError):
        return False


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's inductor would build CPU kernels with ($CXX, else g++; clang++ on
    macOS), or None. Torch-free, so `lorafit plan` can ask too."""
    import os
    import shutil
    import sys

    return shutil.which(os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++"))


PREFAULT_CHUNK = 512 << 20  # below the 1 GiB mmap threshold keep_freed_memory sets: the chunks stay in the heap
PREFAULT_MAX = 1792 << 20  # below glibc's trim threshold (2^31 - 1): freed, they are kept, not given back


def prefault(nbytes: float):
    """Fault in about `nbytes` of heap on the spare core while the main thread loads libraries and the model.

    The first training step allocates its activations fresh, and the first touch of every page is a page fault.
    The main thread mallocs the chunks (glibc's main heap, which training allocates from); a helper thread
    asks for huge pages, touches and frees them (ctypes calls release the GIL), and keep_freed_memory's
    settings keep them for the step. Returns the thread, or None where this is not Linux/glibc or too small
    to matter. Call only after keep_freed_memory()."""
    import ctypes
    import ctypes.util
    import sys
    import threading

    size = int(min(nbytes, PREFAULT_MAX))
    if not sys.platform.startswith("linux") or size < 64 << 20:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    chunks = [(libc.malloc(n), n) for n in [PREFAULT_CHUNK] * (size // PREFAULT_CHUNK) + [size % PREFAULT_CHUNK] if n]
    huge, madv_hugepage = 2 << 20, 14

    def touch() -> None:
        for address, n in chunks:
            if address:
                start = -(-address // huge) * huge  # the 2 MiB-aligned interior
                libc.madvise(start, max(0, (address + n - start) // huge * huge), madv_hugepage)
                ctypes.memset(address, 0, n)
        for address, _ in chunks:
            libc.free(address)

    thread = threading.Thread(target=touch, name="lorafit-prefault", daemon=True)
    thread.start()
    return thread
