"""Two-stage (coarse global + full-resolution patch) DDIM sampler.

Stage 1 runs the global network on the whole coarse volume
(``downsample(full, coarse_factor)``).  Stage 2 runs on the full-resolution
volume: at every timestep all sliding windows go through the patch network
(in batches), their outputs are blended with Gaussian weights into ONE
full-volume model output, and one DDIM step is taken on the whole volume.
Windows never run chains of their own, so there are no seams between them.

Windows that contain no brain (mask all zero) are not sent to the network;
their output is the one that drives ``x0`` to 0 there
(``schedule.output_for_x0(x_t, 0, t)``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .config import ModelConfig
from .networks import coordinate_grid, patch_coordinates, required_multiple
from .schedule import NoiseSchedule

__all__ = ["HierarchicalSampler", "SampleResult", "WindowPlan", "downsample", "upsample", "ProgressFn"]

ProgressFn = Callable[[str, int, int], None]


def downsample(x: torch.Tensor, f: int) -> torch.Tensor:
    """Model space -> coarse grid: average pooling by ``f`` (the op training uses too)."""
    f = int(f)
    if f == 1:
        return x
    if any(s % f for s in x.shape[2:]):
        raise ValueError(f"spatial size {tuple(x.shape[2:])} is not divisible by the coarse factor {f}")
    return F.avg_pool3d(x, kernel_size=f, stride=f)


def upsample(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Coarse grid -> model space: trilinear, ``align_corners=False`` (the op training uses too)."""
    shape = tuple(int(s) for s in shape)
    if tuple(x.shape[2:]) == shape:
        return x
    return F.interpolate(x, size=shape, mode="trilinear", align_corners=False)


@dataclass
class SampleResult:
    """``x0``: full-resolution result (1,1,X,Y,Z); ``coarse_x0``: the stage-1 result (1,1,X/f,Y/f,Z/f)."""

    x0: torch.Tensor
    coarse_x0: torch.Tensor


def _scan_interval(shape: Sequence[int], roi: Sequence[int], overlap: float) -> tuple[int, ...]:
    # same rule as monai.inferers.sliding_window_inference
    out = []
    for s, r in zip(shape, roi):
        out.append(r if r == s else max(int(r * (1 - overlap)), 1))
    return tuple(out)


class WindowPlan:
    """Sliding windows over one volume with precomputed Gaussian blending weights.

    Window placement and weights come from MONAI (``dense_patch_slices``,
    ``compute_importance_map(mode="gaussian")``), exactly as in
    ``sliding_window_inference``.  The per-voxel normaliser (sum of the
    weights of all windows covering it) and the share of inactive (no-brain)
    windows are computed once and reused at every timestep.
    """

    def __init__(
        self,
        shape: Sequence[int],
        roi: Sequence[int],
        overlap: float,
        mask: torch.Tensor | None = None,
        sigma_scale: float = 0.125,
        device: torch.device | str = "cpu",
        sw_device: torch.device | str = "cpu",
    ) -> None:
        from monai.data.utils import compute_importance_map, dense_patch_slices

        self.shape = tuple(int(s) for s in shape)
        self.roi = tuple(min(int(r), s) for r, s in zip(roi, self.shape))
        self.device = torch.device(device)
        self.sw_device = torch.device(sw_device)
        interval = _scan_interval(self.shape, self.roi, overlap)
        self.slices: list[tuple[slice, slice, slice]] = [
            tuple(s) for s in dense_patch_slices(self.shape, self.roi, interval)  # type: ignore[misc]
        ]
        weight = compute_importance_map(self.roi, mode="gaussian", sigma_scale=sigma_scale, device=self.sw_device)
        self.weight = weight.to(torch.float32).reshape(1, 1, *self.roi)
        w_vol = self.weight.to(self.device)[0, 0]

        if mask is not None:
            m = mask.reshape(self.shape).to(self.device) != 0
            self.active = [bool(m[s].any()) for s in self.slices]
        else:
            self.active = [True] * len(self.slices)

        norm = torch.zeros(self.shape, dtype=torch.float32, device=self.device)
        inactive = torch.zeros_like(norm) if not all(self.active) else None
        for s, a in zip(self.slices, self.active):
            norm[s] += w_vol
            if not a:
                inactive[s] += w_vol  # type: ignore[index]
        self.inv_norm = (1.0 / norm).reshape(1, 1, *self.shape)
        # fraction of each voxel's blend weight that comes from windows without brain
        self.background_share = None if inactive is None else (inactive / norm).reshape(1, 1, *self.shape)
        self._static: torch.Tensor | None = None
        self._static_src: torch.Tensor | None = None

    @property
    def active_slices(self) -> list[tuple[slice, slice, slice]]:
        return [s for s, a in zip(self.slices, self.active) if a]

    @property
    def num_windows(self) -> int:
        return len(self.slices)

    @property
    def num_active(self) -> int:
        return sum(self.active)

    def coords(self, s: tuple[slice, slice, slice]) -> torch.Tensor:
        """Coordinates ``(3, *roi)`` of window ``s`` (on ``sw_device``)."""
        return patch_coordinates(self.shape, [sl.start for sl in s], self.roi, device=self.sw_device)

    def static_inputs(self, cond: torch.Tensor) -> torch.Tensor:
        """``[cond, coords]`` as one ``(1, 4, X, Y, Z)`` volume, cached for the last ``cond`` seen.

        Windows of it are gathered together with the x_t windows and moved to
        ``sw_device`` in one transfer per batch.
        """
        if self._static is None or self._static_src is not cond:
            grid = coordinate_grid(self.shape, device=self.device)[None]
            self._static = torch.cat([cond.to(self.device, torch.float32), grid], dim=1)
            self._static_src = cond
        return self._static


class HierarchicalSampler:
    """DDIM sampling with a global (coarse) and a patch (full-resolution) denoiser.

    Args:
        schedule: the noise schedule both networks were trained with.
        cfg: model geometry (coarse factor, patch size/overlap, network depths).
        device: where the networks run (windows and the coarse volume are moved
            there); the full-resolution volume stays on the device of ``x_t``.
        batch_size: windows per network call.
        progress: optional callback ``progress(stage, step, total)`` with stage
            ``"global"`` or ``"patch"``, called after each step.
        clip_x0: optional ``(lo, hi)`` clamp of every x0 estimate.
        amp_dtype: optional autocast dtype (e.g. ``torch.bfloat16``) for the
            network calls; blending and stepping stay in float32.
        sigma_scale: Gaussian blending sigma as a fraction of the window size.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        cfg: ModelConfig,
        device: torch.device | str = "cpu",
        batch_size: int = 4,
        progress: ProgressFn | None = None,
        clip_x0: Sequence[float] | None = None,
        amp_dtype: torch.dtype | None = None,
        sigma_scale: float = 0.125,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.schedule = schedule
        self.cfg = cfg
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.progress = progress
        self.clip_x0 = tuple(clip_x0) if clip_x0 is not None else None
        self.amp_dtype = amp_dtype
        self.sigma_scale = float(sigma_scale)

    # ------------------------------------------------------------- helpers
    @property
    def volume_multiple(self) -> int:
        """Model-space sizes must be multiples of this (coarse factor x global-net multiple)."""
        return self.cfg.coarse_factor * required_multiple(self.cfg.global_net)

    def coarse_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(int(s) // self.cfg.coarse_factor for s in shape)

    def _check_volume(self, x: torch.Tensor, what: str = "x_t") -> None:
        if x.dim() != 5 or x.shape[0] != 1 or x.shape[1] != 1:
            raise ValueError(f"{what} must be a (1, 1, X, Y, Z) volume, got shape {tuple(x.shape)}")
        m = self.volume_multiple
        if any(s % m for s in x.shape[2:]):
            raise ValueError(
                f"{what}: spatial size {tuple(x.shape[2:])} must be a multiple of {m} "
                f"(coarse_factor {self.cfg.coarse_factor} x global network multiple "
                f"{required_multiple(self.cfg.global_net)})"
            )
        pm = required_multiple(self.cfg.patch_net)
        roi = [min(p, s) for p, s in zip(self.cfg.patch_size, x.shape[2:])]
        if any(r % pm for r in roi):
            raise ValueError(f"{what}: window size {tuple(roi)} must be a multiple of {pm}")

    def _mask(self, mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
        if mask is None:
            return None
        if mask.numel() != x.numel() or tuple(mask.shape[-3:]) != tuple(x.shape[2:]):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match the volume {tuple(x.shape)}")
        return (mask.reshape(x.shape) != 0).to(x.device)

    def _labels(self, class_label, batch: int) -> torch.Tensor | None:
        if class_label is None:
            return None
        lab = torch.as_tensor(class_label, dtype=torch.long, device=self.device).reshape(-1)
        if lab.numel() == 1:
            lab = lab.expand(batch)
        return lab

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _tvec(self, t: int, batch: int) -> torch.Tensor:
        return torch.full((batch,), int(t), dtype=torch.long, device=self.device)

    def _report(self, stage: str, step: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, step, total)

    def make_plan(self, shape: Sequence[int], mask: torch.Tensor | None, device) -> WindowPlan:
        return WindowPlan(
            shape,
            self.cfg.patch_size,
            self.cfg.patch_overlap,
            mask=mask,
            sigma_scale=self.sigma_scale,
            device=device,
            sw_device=self.device,
        )

    # ------------------------------------------------------------- stage 2 core
    @torch.no_grad()
    def model_output(
        self,
        patch_model: Callable[..., torch.Tensor],
        x_t: torch.Tensor,
        t: int,
        cond: torch.Tensor,
        plan: WindowPlan,
        class_label=None,
    ) -> torch.Tensor:
        """Blended full-volume model output of the patch network at ``(x_t, t)``."""
        vol_dev = x_t.device
        if x_t.device != plan.device:
            raise ValueError(f"x_t is on {x_t.device} but the window plan on {plan.device}")
        acc = torch.zeros(x_t.shape, dtype=torch.float32, device=vol_dev)
        static = plan.static_inputs(cond)  # (1, 4, X, Y, Z): cond + coordinates
        act = plan.active_slices
        for b in range(0, len(act), self.batch_size):
            chunk = act[b : b + self.batch_size]
            win = torch.stack(
                [torch.cat([x_t[0][(slice(None), *s)].float(), static[0][(slice(None), *s)]]) for s in chunk]
            ).to(self.device, non_blocking=True)
            xs, cs, co = win[:, :1].contiguous(), win[:, 1:2].contiguous(), win[:, 2:].contiguous()
            with self._autocast():
                out = patch_model(
                    xs, self._tvec(t, len(chunk)), cond=cs, coords=co, class_labels=self._labels(class_label, len(chunk))
                )
            if out.shape != xs.shape:
                raise ValueError(f"patch model returned shape {tuple(out.shape)} for windows {tuple(xs.shape)}")
            out = (out.float() * plan.weight).to(vol_dev)
            for o, s in zip(out, chunk):
                acc[0][(slice(None), *s)] += o
        acc.mul_(plan.inv_norm)
        if plan.background_share is not None:
            bg = self.schedule.output_for_x0(x_t.float(), torch.zeros((), device=vol_dev), t)
            acc.add_(plan.background_share * bg)
        return acc

    @torch.no_grad()
    def tweedie(
        self,
        patch_model: Callable[..., torch.Tensor],
        x_t: torch.Tensor,
        t: int,
        cond: torch.Tensor,
        mask: torch.Tensor | None = None,
        class_label=None,
    ) -> torch.Tensor:
        """One-pass x0 estimate ``predict_x0(x_t, blended model output, t)`` (zero outside ``mask``)."""
        self._check_volume(x_t)
        m = self._mask(mask, x_t)
        cond = upsample(cond.to(x_t.device, torch.float32), x_t.shape[2:])
        plan = self.make_plan(x_t.shape[2:], m, x_t.device)
        out = self.model_output(patch_model, x_t.float(), t, cond, plan, class_label)
        x0 = self.schedule.predict_x0(x_t.float(), out, t)
        if self.clip_x0 is not None:
            x0 = x0.clamp(*self.clip_x0)
        return x0 * m if m is not None else x0

    # ------------------------------------------------------------- full sampling
    @torch.no_grad()
    def sample_coarse(
        self,
        global_model: Callable[..., torch.Tensor],
        xc: torch.Tensor,
        t_start: int,
        steps: int,
        class_label=None,
    ) -> torch.Tensor:
        """DDIM (eta=0) on the coarse volume from ``t_start`` to clean data."""
        seq = self.schedule.timesteps(t_start, steps)
        x = xc.to(self.device, torch.float32)
        for i, t in enumerate(seq):
            with self._autocast():
                out = global_model(x, self._tvec(t, x.shape[0]), class_labels=self._labels(class_label, x.shape[0]))
            t_prev = seq[i + 1] if i + 1 < len(seq) else -1
            x = self.schedule.ddim_step(out.float(), t, t_prev, x, clip=self.clip_x0)
            self._report("global", i + 1, len(seq))
        return x

    def condition(self, coarse_x0: torch.Tensor, x_t: torch.Tensor,
                  mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage-1 result (zero outside the pooled ``mask``) and its upsampling to ``x_t``'s grid: stage 2's input."""
        coarse_x0 = coarse_x0.to(x_t.device, torch.float32)
        m = self._mask(mask, x_t)
        if m is not None:
            coarse_x0 = coarse_x0 * (downsample(m.float(), self.cfg.coarse_factor) > 0)
        return coarse_x0, upsample(coarse_x0, x_t.shape[2:])

    @torch.no_grad()
    def coarse_stage(
        self,
        global_model: Callable[..., torch.Tensor],
        x_t: torch.Tensor,
        t_start: int,
        steps: int,
        class_label: int | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        start_from_noise: bool = False,
        coarse_timestep: str = "matched",
    ) -> torch.Tensor:
        """Stage 1 alone: the coarse result that :meth:`sample` conditions stage 2 on (same arguments)."""
        self._check_volume(x_t)
        sch = self.schedule
        f = self.cfg.coarse_factor
        x_t = x_t.float()
        t_start = int(t_start)
        if start_from_noise:
            t_c = t_start
            shape = (1, 1, *self.coarse_shape(x_t.shape[2:]))
            dev = generator.device if generator is not None else self.device
            xc = torch.randn(shape, generator=generator, device=dev, dtype=torch.float32)
        elif coarse_timestep == "same":
            t_c = t_start
            xc = downsample(x_t, f)
            top_up = math.sqrt((1.0 - float(sch.alpha_bar(t_start))) * (1.0 - 1.0 / f**3))
            dev = generator.device if generator is not None else xc.device
            fresh = torch.randn(xc.shape, generator=generator, device=dev, dtype=torch.float32).to(xc.device)
            xc = xc + top_up * fresh
        elif coarse_timestep == "matched":
            t_c = int(sch.matched_timestep(t_start, f**3))
            scale = math.sqrt(float(sch.alpha_bar(t_c)) / float(sch.alpha_bar(t_start)))
            xc = downsample(x_t, f) * scale
        else:
            raise ValueError(f"coarse_timestep must be 'matched' or 'same', got {coarse_timestep!r}")
        return self.sample_coarse(global_model, xc, t_c, int(steps), class_label)

    @torch.no_grad()
    def sample(
        self,
        global_model: Callable[..., torch.Tensor],
        patch_model: Callable[..., torch.Tensor],
        x_t: torch.Tensor,
        t_start: int,
        steps: int,
        mask: torch.Tensor | None = None,
        class_label: int | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        start_from_noise: bool = False,
        coarse_timestep: str = "matched",
        step_hook: Callable[[torch.Tensor, int, str], torch.Tensor] | None = None,
        coarse_x0: torch.Tensor | None = None,
    ) -> SampleResult:
        """Run both stages from ``x_t`` (a model-space sample at ``t_start``) to clean data.

        ``steps`` DDIM steps per stage (``steps=1``: the single Tweedie
        estimate).  Unless ``start_from_noise``, the coarse chain starts from
        ``downsample(x_t)`` rescaled to the matched timestep
        ``t' = matched_timestep(t_start, f**3)``; otherwise from fresh noise at
        ``t_start``.  Voxels outside ``mask`` are 0 in both results.

        ``coarse_timestep="same"`` starts the coarse chain at ``t_start`` too:
        pooling averages the noise down by ``f**1.5``, and fresh noise (from
        ``generator``) tops it back up to the level of ``t_start``.  Denoising
        wants "matched" (the coarse stage sees exactly the noise that is in the
        scan); pseudo-healthy reconstruction wants "same", so that global
        structure such as a large lesion is re-synthesised rather than copied.

        ``step_hook(x, t_prev, stage)``, if given, is applied to the full-resolution
        volume after every stage-2 DDIM step (``t_prev = -1`` after the last one) and
        returns the volume to continue from; inpainting uses it to put the known
        voxels back (RePaint-style).

        ``coarse_x0``, if given, is a stage-1 result from an earlier call
        (``SampleResult.coarse_x0``): stage 1 is skipped and it conditions stage 2.
        """
        self._check_volume(x_t)
        t_start = int(t_start)
        steps = int(steps)
        sch = self.schedule
        vol_dev = x_t.device
        x_t = x_t.float()
        m = self._mask(mask, x_t)

        # ---- stage 1: coarse
        if coarse_x0 is None:
            coarse_x0 = self.coarse_stage(global_model, x_t, t_start, steps, class_label=class_label,
                                          generator=generator, start_from_noise=start_from_noise,
                                          coarse_timestep=coarse_timestep)
        else:
            expect = (1, 1, *self.coarse_shape(x_t.shape[2:]))
            if tuple(coarse_x0.shape) != expect:
                raise ValueError(f"coarse_x0 has shape {tuple(coarse_x0.shape)}, expected {expect}")
        coarse_x0, cond = self.condition(coarse_x0, x_t, m)

        # ---- stage 2: full resolution, one DDIM step on the whole volume per timestep
        plan = self.make_plan(x_t.shape[2:], m, vol_dev)
        seq = sch.timesteps(t_start, steps)
        x = x_t.clone()
        for i, t in enumerate(seq):
            out = self.model_output(patch_model, x, t, cond, plan, class_label)
            t_prev = seq[i + 1] if i + 1 < len(seq) else -1
            x = sch.ddim_step(out, t, t_prev, x, clip=self.clip_x0)
            if step_hook is not None:
                x = step_hook(x, t_prev, "patch")
            self._report("patch", i + 1, len(seq))
        if m is not None:
            x = x * m
        return SampleResult(x0=x, coarse_x0=coarse_x0)
