"""Choosing the compute device and thread count."""

from __future__ import annotations

import os

import torch

from medhdiff.errors import InputError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is an input error."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda was requested but no CUDA GPU is available; use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device {name!r}; use auto, cpu or cuda")


def set_threads(threads: int | None) -> None:
    """Limit intra-op CPU threads (``--threads``); ``None`` or 0 keeps the default."""
    if threads:
        if threads < 1:
            raise InputError("--threads must be >= 1")
        torch.set_num_threads(int(threads))
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
