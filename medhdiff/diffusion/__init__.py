"""Hierarchical 3D diffusion: schedule, networks and the two-stage sampler."""

from .config import ModelConfig, NetworkConfig, ScheduleConfig
from .networks import (
    GlobalDenoiser,
    PatchDenoiser,
    build_unet,
    coordinate_grid,
    patch_coordinates,
    required_multiple,
)
from .sampler import HierarchicalSampler, SampleResult, WindowPlan, downsample, upsample
from .schedule import NoiseSchedule, make_betas

__all__ = [
    "ScheduleConfig",
    "NetworkConfig",
    "ModelConfig",
    "NoiseSchedule",
    "make_betas",
    "build_unet",
    "required_multiple",
    "coordinate_grid",
    "patch_coordinates",
    "GlobalDenoiser",
    "PatchDenoiser",
    "HierarchicalSampler",
    "SampleResult",
    "WindowPlan",
    "downsample",
    "upsample",
]
