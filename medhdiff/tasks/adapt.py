"""Test-time adaptation of the patch network to one noisy scan (recorrupted-to-recorrupted).

The shipped model learnt denoising on synthetic brains. A scan's own noise
is enough to teach it that scan's anatomy and texture, without a clean
reference: draw fresh Gaussian noise ``z`` and build two recorrupted copies
of the noisy (normalised) scan ``y`` with noise ``sigma``::

    y1 = y + alpha * sigma * z        (noise sigma * sqrt(1 + alpha^2))
    y2 = y - sigma / alpha * z

For Gaussian noise the noises of ``y1`` and ``y2`` are independent, so the
network's x0 estimate from ``y1`` (at the timestep of ``y1``'s noise level)
regressed on ``y2`` has the clean image as its optimum (Pang et al.,
"Recorrupted-to-Recorrupted", CVPR 2021). A few dozen steps on windows of the
scan itself are enough; the adapted copy then denoises that scan and is
dropped, so a :class:`~medhdiff.tasks.Predictor` stays unchanged between scans.

The recorruption must have the same covariance as the scan's noise. White
noise on the scan's own grid is no longer white once the scan is resampled to
the model's grid (e.g. 1 x 1 x 5 mm to 1 mm), so the noise is drawn on the
scan's grid and pushed through the very same resampling (``noise_fields``);
without them it is drawn white on the model grid, which is exact only when
no resampling happened. Magnitude (Rician) noise is close to Gaussian wherever
the signal is a few sigma above zero, which is most of the brain.

On CUDA the convolution backward pass is not bit-reproducible, so adapted
weights (and results) can differ in the last digits between runs; on the CPU
they are reproducible for a seed.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medhdiff.diffusion.networks import PatchDenoiser, patch_coordinates
from medhdiff.diffusion.schedule import NoiseSchedule

__all__ = ["AdaptConfig", "adapt_patch_model"]


@dataclass
class AdaptConfig:
    """How the patch network is adapted to a scan.

    ``iterations``: optimiser steps (0 = no adaptation); ``batch``: windows per
    step; ``lr``: Adam learning rate; ``alpha``: recorruption strength (the
    network trains at noise ``sigma * sqrt(1 + alpha^2)``, and its target
    carries noise ``sigma / alpha``).
    """

    iterations: int = 20
    batch: int = 4
    lr: float = 1e-4
    alpha: float = 0.5
    seed: int = 0


def _window_starts(mask: np.ndarray, roi: tuple[int, ...], n: int, rng: np.random.Generator) -> list[list[int]]:
    """``n`` window corners, each window centred on a random brain voxel (clipped to the volume)."""
    brain = np.argwhere(mask)
    centres = brain[rng.integers(len(brain), size=n)]
    return [[int(np.clip(c - r // 2, 0, s - r)) for c, r, s in zip(centre, roi, mask.shape)] for centre in centres]


def adapt_patch_model(
    patch_model: PatchDenoiser,
    image: torch.Tensor,
    mask: np.ndarray,
    cond: torch.Tensor,
    sigma: float,
    schedule: NoiseSchedule,
    roi: tuple[int, ...],
    config: AdaptConfig,
    noise_fields: Sequence[np.ndarray] | None = None,
    class_label: int | None = None,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[PatchDenoiser, list[float]]:
    """A copy of ``patch_model`` fitted to one scan; returns it and the loss of every step.

    ``image``: the noisy scan in model space, ``(1, 1, X, Y, Z)``; ``mask``:
    its brain mask ``(X, Y, Z)``; ``cond``: the stage-1 result upsampled to
    the same grid; ``sigma``: the noise level in model-space units.
    ``noise_fields``: unit-variance noise volumes on the model grid, drawn on
    the scan's own grid and resampled like the scan (each window takes one at
    random, with a random sign); ``None``: white noise. The recorruption is
    zero outside ``mask``, as the scan is. The loss is the squared error inside
    the brain.
    """
    if config.iterations < 0:
        raise ValueError("iterations must be >= 0")
    if config.alpha <= 0:
        raise ValueError("alpha must be > 0")
    if config.batch < 1 or not config.lr > 0:
        raise ValueError("batch must be >= 1 and lr > 0")
    device = torch.device(device)
    model = copy.deepcopy(patch_model).to(device)
    if config.iterations == 0 or sigma <= 0 or not mask.any():
        return model.eval(), []
    shape = tuple(int(s) for s in image.shape[2:])
    roi = tuple(min(int(r), s) for r, s in zip(roi, shape))
    t_in = int(schedule.timestep_for_sigma(sigma * math.sqrt(1.0 + config.alpha**2)))
    scale = float(schedule.alpha_bar(t_in).sqrt())
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(int(config.seed))
    img = image[0, 0].float().cpu()
    cnd = cond[0, 0].float().cpu()
    msk = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    fields = [torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32)) for f in (noise_fields or [])]
    if any(tuple(f.shape) != shape for f in fields):
        raise ValueError(f"noise fields must have the model shape {shape}")
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    tvec = torch.full((config.batch,), t_in, dtype=torch.long, device=device)
    labels = None if class_label is None else torch.full((config.batch,), int(class_label), dtype=torch.long, device=device)
    autocast = (lambda: torch.autocast(device_type=device.type, dtype=amp_dtype)) if amp_dtype is not None \
        else contextlib.nullcontext
    model.train()
    losses = []
    for it in range(config.iterations):
        starts = _window_starts(mask, roi, config.batch, rng)
        sl = [tuple(slice(a, a + r) for a, r in zip(st, roi)) for st in starts]
        y = torch.stack([img[s] for s in sl])[:, None]
        m = torch.stack([msk[s] for s in sl])[:, None]
        if fields:
            pick = torch.randint(len(fields), (len(sl),), generator=gen).tolist()
            sign = torch.randint(2, (len(sl),), generator=gen) * 2.0 - 1.0
            z = torch.stack([fields[k][s] for k, s in zip(pick, sl)])[:, None] * sign.reshape(-1, 1, 1, 1, 1)
        else:
            z = torch.randn(y.shape, generator=gen)
        z = z * m
        y1 = (y + config.alpha * sigma * z) * scale
        y2 = y - sigma / config.alpha * z
        c = torch.stack([cnd[s] for s in sl])[:, None]
        coords = torch.stack([patch_coordinates(shape, st, roi) for st in starts])
        y1, y2, c, m, coords = (v.to(device) for v in (y1, y2, c, m, coords))
        with autocast():
            out = model(y1, tvec, cond=c, coords=coords, class_labels=labels)
        x0 = schedule.predict_x0(y1, out.float(), t_in)
        loss = ((x0 - y2) ** 2 * m).sum() / m.sum().clamp(min=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress("adapt", it + 1, config.iterations)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, losses
