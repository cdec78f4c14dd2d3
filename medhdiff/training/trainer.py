"""Training loop for the two stages, with EMA, AMP, checkpoints, resume and DDP."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from medhdiff.diffusion.bundle import build_models, load_bundle, save_bundle
from medhdiff.diffusion.sampler import downsample, upsample
from medhdiff.diffusion.schedule import NoiseSchedule
from medhdiff.diffusion.networks import coordinate_grid
from medhdiff.errors import InputError
from medhdiff.io.atomic import atomic_path
from medhdiff.training.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from medhdiff.training.config import TrainConfig
from medhdiff.training.datasets import GlobalDataset, PatchDataset, fit_shape, make_source, to_model_space

log = logging.getLogger("medhdiff")

STAGES = ("global", "local")
VALIDATION_TIMESTEPS = (50, 200, 500)


class TrainingInterrupted(Exception):
    """Raised after a checkpoint was written because SIGTERM/SIGINT arrived."""

    def __init__(self, signum: int):
        super().__init__(f"training stopped by signal {signum}; resume with --resume")
        self.signum = signum


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


class StageTrainer:
    """Trains one stage (``global`` or ``local``) into ``run_dir/<stage>/``."""

    def __init__(self, cfg: TrainConfig, stage: str, run_dir: Path, device: torch.device,
                 max_steps: int | None = None, progress: Callable[[dict], None] | None = None,
                 deadline: float | None = None):
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}")
        self.cfg, self.stage, self.device = cfg, stage, device
        self.rank, self.world, _ = dist_info()
        self.dir = Path(run_dir) / stage
        self.dir.mkdir(parents=True, exist_ok=True)
        self.schedule = NoiseSchedule(cfg.model.schedule)
        g, p = build_models(cfg.model)
        self.model = (g if stage == "global" else p).to(device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.total = cfg.optim.steps_global if stage == "global" else cfg.optim.steps_local
        self.max_steps = max_steps
        self.batch = cfg.optim.batch_global if stage == "global" else cfg.optim.batch_local
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.step = 0
        self.progress = progress
        self.use_amp = bool(cfg.optim.amp and device.type == "cuda")
        self.ddp_model: torch.nn.Module = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp_model = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self._stop_signal: int | None = None
        self.deadline = deadline
        if cfg.optim.init_weights:
            self._init_from(cfg.optim.init_weights)

    def _init_from(self, path: str) -> None:
        """Start from a trained model's weights (fine-tuning); ``resume()`` later overrides them."""
        bundle = load_bundle(path)
        if bundle.config.to_dict() != self.cfg.model.to_dict():
            raise InputError(f"optim.init_weights {path}: its model config differs from this config's model section")
        src = bundle.global_model if self.stage == "global" else bundle.patch_model
        self.model.load_state_dict(src.state_dict())
        self.ema.load_state_dict(src.state_dict())
        log.info("%s stage: initialised from %s (sha256 %s)", self.stage, path, bundle.sha256[:12])

    # -- state --------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.dir / "checkpoint"

    def resume(self) -> bool:
        found = find_checkpoint(self.ckpt_dir)
        if found is None:
            return False
        state = load_checkpoint(found, model=self.model, ema=self.ema, optimizer=self.opt, device=self.device)
        self.step = int(state["step"])
        return True

    def save(self) -> None:
        if self.rank != 0:
            return
        save_checkpoint(self.ckpt_dir, model=self.model, ema=self.ema, optimizer=self.opt,
                        state={"step": self.step, "stage": self.stage, "total_steps": self.total,
                               "data_seed": self._data_seed(), "config": self.cfg.to_dict()})

    def _data_seed(self) -> int:
        # The data position: a resumed run continues with volumes it has not drawn yet.
        return int(self.cfg.optim.seed * 1_000_003 + self.step)

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        with open(self.dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _trim_log(self) -> None:
        """Keep the log's records up to the current step, so that the loss history stays continuous.

        A killed run may have logged steps after its last checkpoint (they are
        trained again on resume) and a last line cut in half.
        """
        path = self.dir / "metrics.jsonl"
        if self.rank != 0 or not path.is_file():
            return
        lines = path.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= self.step:
                kept.append(line)
        if kept != lines:
            with atomic_path(path) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept))

    # -- data ---------------------------------------------------------------
    def _loader(self) -> DataLoader:
        cls = GlobalDataset if self.stage == "global" else PatchDataset
        ds = cls(self.cfg, seed=self._data_seed(), rank=self.rank, world=self.world)
        nw = self.cfg.data.num_workers
        return DataLoader(ds, batch_size=self.batch, num_workers=nw, pin_memory=self.device.type == "cuda",
                          persistent_workers=nw > 0, prefetch_factor=4 if nw > 0 else None)

    # -- one step -----------------------------------------------------------
    def loss_on(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], t: torch.Tensor,
                noise: torch.Tensor) -> torch.Tensor:
        x0 = batch["x0"].to(self.device, non_blocking=True)
        weight = batch["weight"].to(self.device, non_blocking=True)
        label = batch["label"].to(self.device)
        x_t = self.schedule.add_noise(x0, noise, t)
        target = self.schedule.target(x0, noise, t)
        if "target" in batch:
            target = self._healing_target(x_t, x0, batch["target"].to(self.device, non_blocking=True), t, target)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.use_amp else nullcontext()
        with ctx:
            if self.stage == "global":
                out = model(x_t, t, class_labels=label)
            else:
                out = model(x_t, t, batch["cond"].to(self.device, non_blocking=True),
                            batch["coords"].to(self.device, non_blocking=True), class_labels=label)
        err = (out.float() - target) ** 2 * weight
        return err.sum() / weight.sum().clamp_min(1.0)

    def _healing_target(self, x_t: torch.Tensor, x0: torch.Tensor, healthy: torch.Tensor, t: torch.Tensor,
                        target: torch.Tensor) -> torch.Tensor:
        """Regression target that makes the implied clean image the *healthy* one (t >= heal_min_t).

        ``x_t`` was made from the lesioned ``x0``; the noise that maps it onto
        the healthy image is ``(x_t - sqrt(ab) healthy) / sqrt(1 - ab)``.
        Items without a lesion, and all items below ``heal_min_t``, keep the
        ordinary target.
        """
        heal = (t >= self.cfg.data.heal_min_t) & ((healthy - x0).flatten(1).abs().amax(1) > 0)
        if not bool(heal.any()):
            return target
        healed = self.schedule.output_for_x0(x_t, healthy, t)
        return torch.where(heal.view(-1, *([1] * (x_t.dim() - 1))), healed, target)

    @torch.no_grad()
    def _ema_update(self) -> None:
        decay = min(self.cfg.optim.ema_decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p.detach(), 1 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    # -- validation ---------------------------------------------------------
    def _validation_volumes(self):
        if not hasattr(self, "_val"):
            # validation measures plain denoising: no injected lesions
            src = make_source(dataclasses.replace(self.cfg, data=dataclasses.replace(self.cfg.data, heal_fraction=0.0)))
            rng = np.random.default_rng([self.cfg.optim.seed, 424242])
            from medhdiff.preprocess import Preprocessor

            pre = Preprocessor(self.cfg.preprocess)
            self._val = [to_model_space(src.draw(rng), self.cfg, pre)
                         for _ in range(max(1, self.cfg.data.validation_volumes))]
        return self._val

    @torch.no_grad()
    def validate(self) -> float:
        losses = []
        g = torch.Generator().manual_seed(1234)
        f = self.cfg.model.coarse_factor
        ps = self.cfg.model.patch_size
        for vol in self._validation_volumes():
            if self.stage == "global":
                x0 = fit_shape(downsample(vol.image[None], f)[0], self.cfg.data.coarse_shape)[None]
                batch = {"x0": x0, "weight": torch.ones_like(x0), "label": torch.tensor([vol.label])}
            else:
                image = fit_shape(vol.image, tuple(max(s, q) for s, q in zip(vol.image.shape[1:], ps)))
                shape = tuple(image.shape[1:])
                cond = upsample(downsample(image[None], f), shape)
                start = [(s - q) // 2 for s, q in zip(shape, ps)]
                sl = (slice(None), slice(None)) + tuple(slice(a, a + q) for a, q in zip(start, ps))
                coords = coordinate_grid(shape)[None][sl]
                x0 = image[None][sl]
                batch = {"x0": x0, "cond": cond[sl], "coords": coords, "weight": torch.ones_like(x0),
                         "label": torch.tensor([vol.label])}
            for tv in VALIDATION_TIMESTEPS:
                t = torch.full((1,), tv, dtype=torch.long, device=self.device)
                noise = torch.randn(batch["x0"].shape, generator=g).to(self.device)
                losses.append(float(self.loss_on(self.ema, batch, t, noise)))
        val = float(np.mean(losses))
        self._save_preview()
        return val

    @torch.no_grad()
    def _save_preview(self) -> None:
        """PNG: clean validation brain, noised at t=200, and the EMA model's one-step reconstruction."""
        if self.rank != 0:
            return
        from medhdiff.synth.preview import save_slice_grid

        vol = self._validation_volumes()[0]
        f = self.cfg.model.coarse_factor
        tv = 200
        g = torch.Generator().manual_seed(7)
        if self.stage == "global":
            x0 = downsample(vol.image[None], f)
        else:
            x0 = vol.image[None]
        x0 = x0.to(self.device)
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        t = torch.full((1,), tv, dtype=torch.long, device=self.device)
        x_t = self.schedule.add_noise(x0, noise, t)
        try:
            if self.stage == "global":
                out = self.ema(x_t, t, class_labels=torch.tensor([vol.label], device=self.device))
                rec = self.schedule.predict_x0(x_t, out, t)
            else:
                from medhdiff.diffusion.sampler import HierarchicalSampler

                sampler = HierarchicalSampler(self.schedule, self.cfg.model, device=self.device,
                                              batch_size=32 if self.device.type == "cuda" else 4)
                cond = upsample(downsample(x0, f), x0.shape[2:])
                rec = sampler.tweedie(self.ema, x_t, tv, cond, mask=vol.brain[None].to(self.device),
                                      class_label=vol.label)
        except Exception as exc:  # noqa: BLE001 - a preview must never stop training
            log.debug("preview failed: %s", exc)
            return
        scale = self.schedule.alpha_bar(tv).sqrt().item()
        save_slice_grid([x0[0, 0].cpu().numpy(), (x_t[0, 0] / scale).cpu().numpy(), rec[0, 0].cpu().numpy()],
                        self.dir / f"preview_{self.step:07d}.png",
                        titles=["clean", f"noisy t={tv}", "reconstruction"])

    def _sample_t(self, b: int, gen: torch.Generator) -> torch.Tensor:
        cfg = self.cfg.optim
        t = torch.randint(0, self.schedule.num_train_timesteps, (b,), generator=gen)
        if cfg.low_t_fraction > 0:
            low = torch.randint(0, max(1, min(cfg.low_t_max, self.schedule.num_train_timesteps)), (b,), generator=gen)
            pick = torch.rand(b, generator=gen) < cfg.low_t_fraction
            t = torch.where(pick, low, t)
        return t

    # -- loop -----------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._stop_signal = signum

    def _should_stop(self) -> tuple[int, bool]:
        """(signal number or 0, time limit reached), agreed on by all ranks.

        Under DDP every rank must leave the loop after the same step: a rank
        that stopped alone (its deadline check came later, e.g. after rank 0's
        validation, or only it got the signal) would leave the others blocked
        in the next step's gradient all-reduce.
        """
        signum = int(self._stop_signal or 0)
        out_of_time = self.deadline is not None and time.time() >= self.deadline
        if self.world > 1 and dist.is_initialized():
            flags = torch.tensor([signum, int(out_of_time)], dtype=torch.int64, device=self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            signum, out_of_time = int(flags[0]), bool(flags[1])
        return signum, out_of_time

    def train(self) -> int:
        """Run until the stage's step budget (or ``max_steps``) is reached; returns the final step."""
        cfg = self.cfg.optim
        target = self.total if self.max_steps is None else min(self.total, self.max_steps)
        self._trim_log()
        if self.step >= target:
            return self.step
        previous = signal.signal(signal.SIGTERM, self._on_signal)
        loader_iter = iter(self._loader())
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed * 7919 + self.step + 1000 * self.rank)
        t_last = time.time()
        try:
            while self.step < target:
                batch = next(loader_iter)
                for group in self.opt.param_groups:
                    group["lr"] = cfg.lr * lr_factor(self.step, self.total, cfg.warmup_steps, cfg.min_lr_ratio)
                b = batch["x0"].shape[0]
                t = self._sample_t(b, gen).to(self.device)
                noise = torch.randn(batch["x0"].shape, generator=gen).to(self.device)
                self.ddp_model.train()
                loss = self.loss_on(self.ddp_model, batch, t, noise)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.opt.step()
                self.step += 1
                self._ema_update()
                now = time.time()
                rec = {"step": self.step, "loss": float(loss.detach()), "lr": self.opt.param_groups[0]["lr"],
                       "sec": round(now - t_last, 4), "time": round(now, 3)}
                t_last = now
                if self.step % max(1, cfg.log_every) == 0 or self.step == target:
                    self._log(rec)
                if self.progress:
                    self.progress({"stage": self.stage, **rec, "target": target})
                if self.step % max(1, cfg.checkpoint_every) == 0:
                    self.save()
                if cfg.validate_every > 0 and self.step % cfg.validate_every == 0 and self.rank == 0:
                    val = self.validate()
                    self._log({"step": self.step, "val_loss": val})
                    if self.progress:
                        self.progress({"stage": self.stage, "step": self.step, "val_loss": val, "target": target})
                signum, out_of_time = self._should_stop()
                if signum:
                    raise TrainingInterrupted(signum)
                if out_of_time:
                    log.info("%s stage: time limit reached at step %d", self.stage, self.step)
                    break
        except (KeyboardInterrupt, TrainingInterrupted):
            self.save()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        self.save()
        return self.step


def init_distributed(device_name: str) -> tuple[int, int, torch.device | None]:
    rank, world, local = dist_info()
    if world > 1 and not dist.is_initialized():
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(local)
            return rank, world, torch.device("cuda", local)
        return rank, world, torch.device("cpu")
    return rank, world, None


def export_model(cfg: TrainConfig, run_dir: Path, device: torch.device | str = "cpu") -> Path:
    """Write ``run_dir/model/`` from the EMA weights of each stage's last checkpoint."""
    from safetensors.torch import load_file

    g, p = build_models(cfg.model)
    if cfg.optim.init_weights:  # a stage this run did not train keeps the weights it started from
        init = load_bundle(cfg.optim.init_weights)
        g.load_state_dict(init.global_model.state_dict())
        p.load_state_dict(init.patch_model.state_dict())
    trained = {}
    for stage, module in (("global", g), ("local", p)):
        found = find_checkpoint(Path(run_dir) / stage / "checkpoint")
        if found is not None:
            module.load_state_dict(load_file(str(found / "ema.safetensors")))
            trained[stage] = json.loads((found / "state.json").read_text())["step"]
        else:
            trained[stage] = 0
    meta = {
        "description": cfg.description,
        "training": {
            "steps": trained,
            "data": json.loads(json.dumps(cfg.to_dict()["data"])),
            "optim": cfg.to_dict()["optim"],
        },
    }
    if cfg.optim.init_weights:
        meta["training"]["init_weights_sha256"] = init.sha256
    return save_bundle(Path(run_dir) / "model", cfg.model, cfg.preprocess.to_dict(), g, p, meta)
