"""Process-wide runtime defaults: devices, dtypes, library environment knobs, versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import torch

# gptqmodel sizes its CPU worker pool from this and fails on 2-core machines without it.
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_VERSION_PACKAGES = (
    "compress", "torch", "transformers", "gptqmodel", "optimum", "bitsandbytes",
    "torchao", "accelerate", "lm_eval", "gguf", "compressed-tensors",
)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(device: str) -> torch.dtype:
    """bf16 on GPUs; fp32 on CPUs, where bf16 matmuls are emulated (and slow) without AVX512-BF16/AMX."""
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def hardware() -> dict[str, str | int]:
    info: dict[str, str | int] = {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info
