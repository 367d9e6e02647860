"""What every result records about where it came from: versions, machine, git commit."""

from __future__ import annotations

import os
import platform
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from compressor.version import __version__


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it, with the vector ISA PyTorch dispatches to.

    Machines here both call themselves "AMD EPYC" but one has AVX-512 and trains 5.8x faster
    than the other (AVX2 only): timings and cached latency tables must tell them apart.
    """
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch_pruning
    import torchvision

    return {
        "compressor": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "torch_pruning": getattr(torch_pruning, "__version__", "unknown"),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def machine() -> dict[str, object]:
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def provenance() -> dict[str, object]:
    """Versions, machine and git commit, for every result file."""
    return {"versions": library_versions(), "machine": machine(), "git_commit": git_commit()}


def seed_everything(seed: int) -> None:
    """The one seeding function: Python, NumPy and torch generators. Called once per command."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """'auto' takes the GPU when one is present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
