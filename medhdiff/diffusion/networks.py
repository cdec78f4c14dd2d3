"""The two denoising networks of the hierarchical model (MONAI 3D U-Nets).

* :class:`GlobalDenoiser` sees the whole coarse volume ``(B, 1, X, Y, Z)``.
* :class:`PatchDenoiser` sees a full-resolution window and, as extra input
  channels, the stage-1 result upsampled to that window (``cond``) and the
  normalised model-space coordinates of every voxel (``coords``): 5 channels.

``DiffusionModelUNet`` halves the resolution ``levels - 1`` times, so spatial
sizes must be multiples of :func:`required_multiple`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .config import NetworkConfig

__all__ = [
    "build_unet",
    "required_multiple",
    "coordinate_grid",
    "patch_coordinates",
    "GlobalDenoiser",
    "PatchDenoiser",
    "PATCH_IN_CHANNELS",
]

PATCH_IN_CHANNELS = 5  # x_t, cond, 3 coordinates


def required_multiple(net_cfg: NetworkConfig) -> int:
    """Spatial sizes fed to a network built from ``net_cfg`` must be multiples of this."""
    return 2 ** (len(net_cfg.channels) - 1)


def _head_channels(channels: Sequence[int]) -> list[int]:
    # MONAI needs channels % num_head_channels == 0 at attention levels; 32-channel heads where possible.
    return [32 if c % 32 == 0 else c for c in channels]


def build_unet(net: NetworkConfig, in_channels: int, out_channels: int = 1) -> nn.Module:
    """A 3D ``monai.networks.nets.DiffusionModelUNet`` for ``net``."""
    try:
        from monai.networks.nets import DiffusionModelUNet
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("medhdiff's diffusion networks need monai>=1.4 and einops") from exc
    return DiffusionModelUNet(
        spatial_dims=3,
        in_channels=int(in_channels),
        out_channels=int(out_channels),
        num_res_blocks=net.num_res_blocks,
        channels=tuple(net.channels),
        attention_levels=tuple(net.attention_levels),
        norm_num_groups=net.norm_num_groups,
        num_head_channels=_head_channels(net.channels),
        num_class_embeds=net.num_class_embeds,
        # weights are identical either way; SDPA only changes how attention is computed
        use_flash_attention=any(net.attention_levels),
    )


def _axis_coords(n: int, start: int, size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    # voxel centres of an n-voxel axis in [-1, 1] (align_corners=False): (2 i + 1) / n - 1
    i = torch.arange(start, start + size, device=device, dtype=torch.float64)
    return ((2 * i + 1) / n - 1).to(dtype)


def patch_coordinates(
    full_shape: Sequence[int],
    start: Sequence[int],
    size: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Coordinates ``(3, *size)`` of the window at ``start`` inside a volume of ``full_shape``.

    Identical to ``coordinate_grid(full_shape)[:, sx, sy, sz]`` but built
    without the full grid.
    """
    if not (len(full_shape) == len(start) == len(size) == 3):
        raise ValueError("full_shape, start and size must have 3 entries each")
    axes = [_axis_coords(int(n), int(s), int(k), device, dtype) for n, s, k in zip(full_shape, start, size)]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grids, dim=0)


def coordinate_grid(
    shape: Sequence[int], device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Normalised voxel-centre coordinates ``(3, X, Y, Z)`` in ``(-1, 1)``.

    Channel ``k`` holds the coordinate along axis ``k``: ``(2 i + 1) / n - 1``,
    the ``align_corners=False`` convention of ``F.grid_sample``/``F.interpolate``.
    """
    if len(shape) != 3:
        raise ValueError(f"shape must have 3 entries, got {tuple(shape)}")
    return patch_coordinates(shape, (0, 0, 0), shape, device, dtype)


def _check_spatial(x: torch.Tensor, multiple: int, what: str) -> None:
    if x.dim() != 5:
        raise ValueError(f"{what}: expected a (B, C, X, Y, Z) tensor, got shape {tuple(x.shape)}")
    bad = [s for s in x.shape[2:] if s % multiple]
    if bad:
        raise ValueError(
            f"{what}: spatial size {tuple(x.shape[2:])} must be a multiple of {multiple} "
            f"(the network downsamples by 2 per level)"
        )


def _as_timesteps(timesteps: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(timesteps, device=device)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"timesteps must be a scalar or of shape ({batch},), got {tuple(t.shape)}")
    return t.long()


class _Denoiser(nn.Module):
    in_channels: int = 1

    def __init__(self, net_cfg: NetworkConfig) -> None:
        super().__init__()
        self.net_cfg = net_cfg
        self.unet = build_unet(net_cfg, self.in_channels, 1)

    @property
    def multiple(self) -> int:
        return required_multiple(self.net_cfg)

    @property
    def conditional(self) -> bool:
        return self.net_cfg.num_class_embeds is not None

    def _labels(self, class_labels, batch: int, device: torch.device) -> torch.Tensor | None:
        if not self.conditional:
            return None  # an unconditional network ignores labels
        if class_labels is None:
            raise ValueError("this network is class-conditional: class_labels (contrast index) is required")
        lab = torch.as_tensor(class_labels, device=device)
        if lab.dim() == 0:
            lab = lab.expand(batch)
        return lab.long()

    def _run(self, x: torch.Tensor, timesteps, class_labels) -> torch.Tensor:
        t = _as_timesteps(timesteps, x.shape[0], x.device)
        return self.unet(x, t, class_labels=self._labels(class_labels, x.shape[0], x.device))


class GlobalDenoiser(_Denoiser):
    """Stage 1: denoiser on the whole coarse volume (1 input channel)."""

    in_channels = 1

    def forward(
        self, x_t: torch.Tensor, timesteps: torch.Tensor | int, class_labels: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        _check_spatial(x_t, self.multiple, "GlobalDenoiser")
        if x_t.shape[1] != 1:
            raise ValueError(f"GlobalDenoiser: expected 1 channel, got {x_t.shape[1]}")
        return self._run(x_t, timesteps, class_labels)


class PatchDenoiser(_Denoiser):
    """Stage 2: denoiser on full-resolution windows, conditioned on the stage-1 result and position."""

    in_channels = PATCH_IN_CHANNELS

    def forward(
        self,
        x_t: torch.Tensor,
        timesteps: torch.Tensor | int,
        cond: torch.Tensor,
        coords: torch.Tensor,
        class_labels: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        _check_spatial(x_t, self.multiple, "PatchDenoiser")
        if x_t.shape[1] != 1 or cond.shape[1] != 1 or coords.shape[1] != 3:
            raise ValueError(
                "PatchDenoiser: expected x_t (B,1,...), cond (B,1,...) and coords (B,3,...), got "
                f"{tuple(x_t.shape)}, {tuple(cond.shape)}, {tuple(coords.shape)}"
            )
        if coords.shape[0] == 1 and x_t.shape[0] > 1:
            coords = coords.expand(x_t.shape[0], *coords.shape[1:])
        if cond.shape[2:] != x_t.shape[2:] or coords.shape[2:] != x_t.shape[2:] or cond.shape[0] != x_t.shape[0]:
            raise ValueError(
                "PatchDenoiser: x_t, cond and coords must share batch and spatial size, got "
                f"{tuple(x_t.shape)}, {tuple(cond.shape)}, {tuple(coords.shape)}"
            )
        h = torch.cat([x_t, cond.to(x_t.dtype), coords.to(x_t.dtype)], dim=1)
        return self._run(h, timesteps, class_labels)
