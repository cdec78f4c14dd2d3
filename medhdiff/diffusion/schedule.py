"""Noise schedule and DDPM/DDIM update rules (no learnable weights).

Notation: ``ab_t = alpha_bar(t) = prod_{s<=t} (1 - beta_s)`` for integer
``t`` in ``[0, T-1]``.  The forward process is
``x_t = sqrt(ab_t) * x0 + sqrt(1 - ab_t) * eps``.  The virtual timestep
``t = -1`` means "clean data" (``ab = 1``) and is only accepted where a
target time is expected (the last DDIM step, DDIM inversion's start).

All tables are float64 CPU tensors; per-timestep coefficients are looked up in
float64 and only then cast to the dtype/device of the tensor they multiply.
A timestep argument ``t`` is a Python int, a 0-d tensor, or a LongTensor of
shape ``(B,)`` (one timestep per batch item).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import torch

from .config import ScheduleConfig

__all__ = ["NoiseSchedule", "make_betas"]

Timestep = Union[int, torch.Tensor]


def make_betas(cfg: ScheduleConfig) -> torch.Tensor:
    """The float64 beta table of ``cfg`` (length ``num_train_timesteps``)."""
    n = cfg.num_train_timesteps
    if cfg.beta_schedule == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=torch.float64)
    if cfg.beta_schedule == "scaled_linear":
        return torch.linspace(math.sqrt(cfg.beta_start), math.sqrt(cfg.beta_end), n, dtype=torch.float64) ** 2
    if cfg.beta_schedule == "cosine":
        # Nichol & Dhariwal (2021): ab(t) = f(t)/f(0), f(t) = cos^2(((t/T) + s)/(1 + s) * pi/2)
        s = 0.008
        steps = torch.arange(n + 1, dtype=torch.float64) / n
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        ab = f / f[0]
        return (1 - ab[1:] / ab[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown beta_schedule {cfg.beta_schedule!r}")


class NoiseSchedule:
    """Diffusion schedule maths for epsilon- or v-parametrised models."""

    def __init__(self, cfg: ScheduleConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else ScheduleConfig()
        self.betas = make_betas(self.cfg)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        # sigma_ratio(t) = sqrt((1 - ab)/ab), strictly increasing in t
        self.sigmas = torch.sqrt((1.0 - self.alphas_cumprod) / self.alphas_cumprod)
        self._log_sigmas = torch.log(self.sigmas)

    # ------------------------------------------------------------------ basics
    @property
    def num_train_timesteps(self) -> int:
        return self.cfg.num_train_timesteps

    @property
    def prediction(self) -> str:
        return self.cfg.prediction

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"NoiseSchedule(T={c.num_train_timesteps}, {c.beta_schedule}, "
            f"beta=[{c.beta_start:g}, {c.beta_end:g}], prediction={c.prediction!r})"
        )

    def _idx(self, t: Timestep, allow_minus_one: bool = False) -> torch.Tensor:
        """Timesteps as a CPU int64 tensor, range-checked."""
        if isinstance(t, torch.Tensor):
            if t.is_floating_point() or t.is_complex():
                raise TypeError(f"timesteps must be integers, got dtype {t.dtype}")
            idx = t.detach().to("cpu", torch.int64)
            if idx.dim() > 1:
                raise ValueError(f"timesteps must be a scalar or of shape (B,), got {tuple(idx.shape)}")
        else:
            if isinstance(t, bool) or int(t) != t:
                raise TypeError(f"timesteps must be integers, got {t!r}")
            idx = torch.tensor(int(t), dtype=torch.int64)
        lo = -1 if allow_minus_one else 0
        if idx.numel() and (int(idx.min()) < lo or int(idx.max()) >= self.num_train_timesteps):
            raise ValueError(f"timestep out of range [{lo}, {self.num_train_timesteps - 1}]: {t}")
        return idx

    def _ab64(self, t: Timestep, allow_minus_one: bool = False) -> torch.Tensor:
        idx = self._idx(t, allow_minus_one)
        ab = self.alphas_cumprod[idx.clamp(min=0)]
        return torch.where(idx < 0, torch.ones_like(ab), ab)

    @staticmethod
    def _bcast(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """float64 coefficient(s) -> like's dtype/device, shaped to broadcast over (B, ...)."""
        if coef.dim() == 1 and like.dim() >= 1:
            if coef.shape[0] not in (1, like.shape[0]):
                raise ValueError(f"{coef.shape[0]} timesteps for a batch of {like.shape[0]}")
            coef = coef.reshape(-1, *([1] * (like.dim() - 1)))
        dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
        return coef.to(device=like.device, dtype=dtype)

    def alpha_bar(self, t: Timestep) -> torch.Tensor:
        """``ab_t`` as float64 (0-d for an int, (B,) for a tensor); ``t = -1`` gives 1."""
        return self._ab64(t, allow_minus_one=True).clone()

    def sigma_ratio(self, t: Timestep) -> torch.Tensor:
        """``sqrt((1 - ab_t)/ab_t)``: noise std of ``x_t / sqrt(ab_t) = x0 + sigma * eps`` (float64)."""
        ab = self._ab64(t, allow_minus_one=True)
        return torch.sqrt((1 - ab) / ab)

    # ------------------------------------------------------------ conversions
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: Timestep) -> torch.Tensor:
        """Sample of ``q(x_t | x0)``: ``sqrt(ab) x0 + sqrt(1-ab) noise``."""
        ab = self._ab64(t)
        return self._bcast(ab.sqrt(), x0) * x0 + self._bcast((1 - ab).sqrt(), x0) * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: Timestep) -> torch.Tensor:
        """v-target: ``sqrt(ab) noise - sqrt(1-ab) x0``."""
        ab = self._ab64(t)
        return self._bcast(ab.sqrt(), x0) * noise - self._bcast((1 - ab).sqrt(), x0) * x0

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: Timestep) -> torch.Tensor:
        """The regression target of the model: ``noise`` (epsilon) or ``velocity`` (v)."""
        return noise if self.prediction == "epsilon" else self.velocity(x0, noise, t)

    def predict_x0(self, x_t: torch.Tensor, model_out: torch.Tensor, t: Timestep) -> torch.Tensor:
        """Clean-data estimate implied by a model output at ``t``."""
        ab = self._ab64(t)
        if self.prediction == "epsilon":
            c_x, c_o = 1 / ab.sqrt(), -((1 - ab) / ab).sqrt()
        else:
            c_x, c_o = ab.sqrt(), -(1 - ab).sqrt()
        return self._bcast(c_x, x_t) * x_t + self._bcast(c_o, x_t) * model_out

    def predict_eps(self, x_t: torch.Tensor, model_out: torch.Tensor, t: Timestep) -> torch.Tensor:
        """Noise estimate implied by a model output at ``t``."""
        if self.prediction == "epsilon":
            return model_out
        ab = self._ab64(t)
        return self._bcast(ab.sqrt(), x_t) * model_out + self._bcast((1 - ab).sqrt(), x_t) * x_t

    def output_for_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t: Timestep) -> torch.Tensor:
        """The model output that ``predict_x0`` maps back to ``x0`` (given ``x_t``)."""
        ab = self._ab64(t)
        inv = 1 / (1 - ab).sqrt()
        if self.prediction == "epsilon":  # eps = (x_t - sqrt(ab) x0) / sqrt(1-ab)
            c_x, c_0 = inv, -ab.sqrt() * inv
        else:  # v = (sqrt(ab) x_t - x0) / sqrt(1-ab)
            c_x, c_0 = ab.sqrt() * inv, -inv
        return self._bcast(c_x, x_t) * x_t + self._bcast(c_0, x_t) * x0

    def xt_from_noisy(self, y: torch.Tensor, t: Timestep) -> torch.Tensor:
        """Scale a noisy image ``y = x0 + sigma_ratio(t) * n`` to a sample ``x_t``."""
        return self._bcast(self._ab64(t).sqrt(), y) * y

    # --------------------------------------------------------------- stepping
    def _split(
        self, x_t: torch.Tensor, model_out: torch.Tensor, t: Timestep, clip: Sequence[float] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = self.predict_x0(x_t, model_out, t)
        if clip is not None:
            x0 = x0.clamp(float(clip[0]), float(clip[1]))
            ab = self._ab64(t)  # eps consistent with the clipped x0
            eps = (x_t - self._bcast(ab.sqrt(), x_t) * x0) * self._bcast(1 / (1 - ab).sqrt(), x_t)
        else:
            eps = self.predict_eps(x_t, model_out, t)
        return x0, eps

    def ddim_step(
        self,
        model_out: torch.Tensor,
        t: Timestep,
        t_prev: Timestep,
        x_t: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        clip: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """DDIM update from ``t`` to ``t_prev`` (``-1`` = to clean data).

        ``model_out`` is the network output at ``(x_t, t)``.  With ``eta = 0``
        the update is deterministic and also valid for ``t_prev > t``
        (DDIM inversion, see :meth:`ddim_invert`).  ``clip`` optionally clamps
        the x0 estimate to ``(lo, hi)`` (eps is then recomputed to match).
        """
        x0, eps = self._split(x_t, model_out, t, clip)
        ab = self._ab64(t)
        ab_prev = self._ab64(t_prev, allow_minus_one=True)
        if eta > 0:
            if bool((self._idx(t_prev, True).reshape(-1) > self._idx(t).reshape(-1)).any()):
                raise ValueError("eta > 0 is only defined for t_prev < t")
            var = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
            sigma = eta * var.clamp(min=0).sqrt()
        else:
            sigma = torch.zeros_like(ab_prev)
        dir_coef = (1 - ab_prev - sigma**2).clamp(min=0).sqrt()
        out = self._bcast(ab_prev.sqrt(), x_t) * x0 + self._bcast(dir_coef, x_t) * eps
        if eta > 0:
            noise = _randn_like(x_t, generator)
            out = out + self._bcast(sigma, x_t) * noise
        return out

    def ddpm_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: Timestep
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``q(x_{t-1} | x_t, x0)`` (variance as a float64 tensor)."""
        idx = self._idx(t)
        ab = self._ab64(t)
        ab_prev = self._ab64(idx - 1, allow_minus_one=True)
        beta = self.betas[idx]
        c0 = ab_prev.sqrt() * beta / (1 - ab)
        ct = self.alphas[idx].sqrt() * (1 - ab_prev) / (1 - ab)
        var = beta * (1 - ab_prev) / (1 - ab)
        mean = self._bcast(c0, x_t) * x0 + self._bcast(ct, x_t) * x_t
        return mean, var

    def ddpm_step(
        self,
        model_out: torch.Tensor,
        t: Timestep,
        x_t: torch.Tensor,
        generator: torch.Generator | None = None,
        clip: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """Ancestral DDPM step ``t -> t-1``: posterior mean plus posterior-variance noise (none at t=0)."""
        x0 = self.predict_x0(x_t, model_out, t)
        if clip is not None:
            x0 = x0.clamp(float(clip[0]), float(clip[1]))
        mean, var = self.ddpm_posterior(x0, x_t, t)
        if bool((var > 0).any()):
            mean = mean + self._bcast(var.sqrt(), x_t) * _randn_like(x_t, generator)
        return mean

    def ddim_invert(
        self,
        model_fn: Callable[[torch.Tensor, int], torch.Tensor],
        x0: torch.Tensor,
        t_end: int,
        steps: int,
    ) -> torch.Tensor:
        """Deterministic DDIM inversion: encode ``x0`` to an ``x_{t_end}``.

        Walks the reverse of ``timesteps(t_end, steps)`` upwards; ``model_fn(x, t)``
        returns the model output at integer ``t``.  The first step starts at
        clean data (``ab = 1``) and evaluates the model at ``t = 0``.  Sampling
        with ``ddim_step`` along ``timesteps(t_end, steps)`` undoes it (exactly
        for a model that is exact).
        """
        seq = self.timesteps(t_end, steps)[::-1]
        x = x0
        prev = -1
        for t_next in seq:
            t_eval = max(prev, 0)
            out = model_fn(x, t_eval)
            if prev < 0:
                x0_hat, eps = x, self.predict_eps(x, out, 0)
                ab_next = self._ab64(t_next)
                x = self._bcast(ab_next.sqrt(), x) * x0_hat + self._bcast((1 - ab_next).sqrt(), x) * eps
            else:
                x = self.ddim_step(out, prev, t_next, x)
            prev = t_next
        return x

    # ------------------------------------------------------------- timesteps
    def timesteps(self, t_start: int, n_steps: int) -> list[int]:
        """Descending, evenly spaced ("trailing") timesteps starting exactly at ``t_start``.

        ``t_i = round((t_start + 1) * (1 - i/n)) - 1`` for ``i = 0..n-1``; the
        sampler steps from the last one to clean data (``t = -1``), so ``n = 1``
        is the single Tweedie estimate at ``t_start``.  Duplicates (``n >
        t_start + 1``) are removed.
        """
        t_start = int(self._idx(int(t_start)))
        n_steps = int(n_steps)
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        span = t_start + 1
        out: list[int] = []
        for i in range(n_steps):
            t = int(round(span * (1 - i / n_steps))) - 1
            t = min(max(t, 0), t_start)
            if not out or t < out[-1]:
                out.append(t)
        return out

    def timestep_for_sigma(self, sigma: float | torch.Tensor) -> int | torch.Tensor:
        """Integer ``t`` whose ``sigma_ratio`` is closest to ``sigma`` (in log space).

        A noisy image ``y = x0 + sigma * n`` equals ``x_t / sqrt(ab_t)`` at this t.
        ``sigma <= sigma_ratio(0)`` gives 0, beyond ``sigma_ratio(T-1)`` gives T-1.
        """
        is_tensor = isinstance(sigma, torch.Tensor)
        s = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu()
        if bool(torch.isnan(s).any()) or bool((s < 0).any()):
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        log_s = torch.log(s.clamp(min=1e-300)).reshape(-1, 1)
        t = torch.argmin((log_s - self._log_sigmas.reshape(1, -1)).abs(), dim=1)
        t = t.reshape(s.shape)
        return t if is_tensor else int(t)

    def matched_timestep(self, t: Timestep, factor_voxels: float) -> int | torch.Tensor:
        """The ``t'`` with ``sigma_ratio(t') ~= sigma_ratio(t) / sqrt(factor_voxels)``.

        Average-pooling ``f^3`` voxels of i.i.d. noise shrinks its std by
        ``sqrt(f^3)``; pass ``factor_voxels = f**3`` to map a full-resolution
        noise level to the coarse grid.
        """
        if factor_voxels <= 0:
            raise ValueError("factor_voxels must be > 0")
        sig = self.sigma_ratio(t) / math.sqrt(float(factor_voxels))
        out = self.timestep_for_sigma(sig)
        if isinstance(t, torch.Tensor):
            return torch.as_tensor(out, dtype=torch.int64).to(t.device)
        return int(out)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.randn_like(x)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return noise.to(x.device)
