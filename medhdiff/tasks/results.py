"""Result containers of the three jobs (arrays on the input's grid plus numbers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class DenoiseResult:
    image: np.ndarray  # float32, input grid, input units
    residual: np.ndarray  # input - denoised
    sigma: float  # estimated (or given) noise sigma, input units
    sigma_method: str
    timestep: int
    steps: int
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReconstructResult:
    image: np.ndarray
    timestep: int
    steps: int
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class DetectResult:
    score_map: np.ndarray  # float32, input grid
    mask: np.ndarray  # uint8, input grid
    report: dict[str, Any]
    reconstruction: np.ndarray | None = None
    seconds: float = 0.0
