"""Execution provider and thread-count choice for onnxruntime, quietly.

``onnxruntime-gpu`` lists ``CUDAExecutionProvider`` as available even on machines without a GPU,
and asking for it there prints errors while it falls back. So CUDA is chosen only when a CUDA
device really exists (the driver library loads and reports at least one device).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICE_ENV = "RECSTREAM_ENCODER_DEVICE"  # "auto" (default), "cpu" or "cuda"

log = logging.getLogger(__name__)


@functools.cache
def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports; 0 when there is no driver or no device."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        try:
            if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
        except AttributeError:
            return 0
        return int(count.value)
    return 0


def quiet_onnxruntime() -> None:
    """Only errors from onnxruntime's own logger (its warnings are noise for a service)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)


def choose_providers(device: str | None = None) -> list[str]:
    """Providers for an ``InferenceSession``: CUDA then CPU when a GPU is really usable, else CPU.

    ``device`` ("auto", "cpu" or "cuda") defaults to ``$RECSTREAM_ENCODER_DEVICE`` or "auto";
    "cuda" on a machine without a usable GPU raises instead of silently running on CPU.
    """
    import onnxruntime as ort

    device = (device or os.environ.get(DEVICE_ENV) or "auto").lower()
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
    if device == "cpu":
        return [CPU]
    usable = CUDA in ort.get_available_providers() and cuda_device_count() > 0
    if usable:
        return [CUDA, CPU]
    if device == "cuda":
        raise RuntimeError(
            "device 'cuda' was asked for but no CUDA device is usable "
            f"(onnxruntime providers: {ort.get_available_providers()}, "
            f"CUDA devices: {cuda_device_count()})"
        )
    return [CPU]


def physical_cores() -> int:
    """Physical cores this process may run on: the default intra-op thread count."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or allowed
    except ImportError:
        physical = allowed
    return max(1, min(allowed, physical))
