"""Training data: synthetic or real volumes, through the inference preprocessing path.

A *source* yields whole volumes (image, brain mask, optional lesion mask,
affine, contrast). Every volume goes through :class:`~medhdiff.preprocess.Preprocessor`
exactly as a scan does at inference time, and is then cut into items:

* global stage: the whole brain at coarse spacing (average pooling by
  ``coarse_factor``), padded to a fixed ``coarse_shape`` for batching;
* patch stage: full-resolution windows with their normalised coordinates and
  the aligned coarse context (augmented with noise and blur, as in cascaded
  diffusion), plus a loss weight that is 0 on lesion voxels.

With ``data.heal_fraction > 0`` every item also carries ``target``: the image
itself, or for a *healing* item (a synthetic brain with an injected lesion) the
same brain without the lesion.

The datasets are infinite iterable streams. Each DataLoader worker and each
distributed rank draws from its own seed, so no two workers repeat a volume.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset, get_worker_info

from medhdiff.diffusion.networks import patch_coordinates
from medhdiff.diffusion.sampler import downsample, upsample
from medhdiff.errors import InputError
from medhdiff.io import Volume, guess_contrast, load_volume
from medhdiff.io.atomic import stem
from medhdiff.io.paths import is_image_file
from medhdiff.preprocess import Preprocessor
from medhdiff.preprocess.normalize import normalize
from medhdiff.training.config import TrainConfig


@dataclass
class RawVolume:
    image: np.ndarray
    affine: np.ndarray
    brain_mask: np.ndarray | None
    lesion_mask: np.ndarray | None
    contrast: str
    name: str
    healthy: np.ndarray | None = None  # lesion-free version of ``image`` (healing target)


@dataclass
class ModelSpaceVolume:
    """A preprocessed volume as float tensors (1, X, Y, Z) in model space."""

    image: torch.Tensor
    weight: torch.Tensor  # 1 where the loss counts, 0 on lesions
    brain: torch.Tensor
    label: int
    name: str
    target: torch.Tensor | None = None  # the healthy image the network should restore (healing items)


class SyntheticSource:
    """Healthy brains synthesised from label maps (SynthSeg-style), one per draw."""

    def __init__(self, cfg: TrainConfig, spacing: float | None = None):
        from medhdiff.synth import HealthyBrainGenerator, list_labelmaps, load_builtin_labelmap

        self.cfg = cfg
        self.maps: list[tuple[str, np.ndarray, np.ndarray]] = []
        self._paths: list[Path] = []
        spec = cfg.data.labelmaps
        if spec and spec != "builtin":
            self._paths = list_labelmaps(spec)
            if not self._paths:
                raise InputError(f"no label maps (*.nii, *.nii.gz) in {spec}")
        if spec == "builtin" or cfg.data.include_builtin or not self._paths:
            labels, affine = load_builtin_labelmap()
            self.maps.append(("mni152", labels, affine))
        if spacing is None:
            spacing = cfg.preprocess.spacing[0] if cfg.preprocess.spacing else 1.0
        self.generators = {
            c: HealthyBrainGenerator(contrast=c, spacing=spacing, noise_range=cfg.data.noise_range)
            for c in cfg.data.contrasts
        }
        self._cache: dict[int, tuple[str, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.maps) + len(self._paths)

    def _labelmap(self, index: int) -> tuple[str, np.ndarray, np.ndarray]:
        if index < len(self.maps):
            return self.maps[index]
        if index not in self._cache:
            import nibabel as nib

            path = self._paths[index - len(self.maps)]
            img = nib.load(str(path))
            self._cache[index] = (stem(path), np.asarray(img.dataobj).astype(np.int16), img.affine)
        return self._cache[index]

    def draw(self, rng: np.random.Generator) -> RawVolume:
        name, labels, affine = self._labelmap(int(rng.integers(len(self))))
        contrast = self.cfg.data.contrasts[int(rng.integers(len(self.cfg.data.contrasts)))]
        res = self.generators[contrast].generate(labels, affine, seed=int(rng.integers(2**31 - 1)))
        brain = res.brain_mask.astype(bool)
        if self.cfg.data.heal_fraction > 0 and rng.random() < self.cfg.data.heal_fraction:
            from medhdiff.synth import LesionInjector, labels as synth_labels

            kind = "tumor" if rng.random() < 0.7 else "focal"
            lo, hi = self.cfg.data.heal_volume_ml
            vol_ml = (lo, hi) if kind == "tumor" else (min(lo, 0.1), min(hi, 3.0))
            injector = LesionInjector(kind=kind, volume_ml=vol_ml, contrast_scale=self.cfg.data.heal_contrast_scale)
            try:
                lesioned, _, _ = injector.inject(res.image, brain, res.affine, contrast,
                                                 seed=int(rng.integers(2**31 - 1)),
                                                 wm_mask=synth_labels.class_mask(res.labels, "wm"))
            except ValueError:  # no room for a lesion in this draw: train on it as a healthy brain
                lesioned = None
            if lesioned is not None:
                return RawVolume(lesioned, res.affine, brain, None, contrast, f"{name}-{contrast}-{kind}",
                                 healthy=res.image)
        return RawVolume(res.image, res.affine, brain, None, contrast, f"{name}-{contrast}")


class FolderSource:
    """Real volumes from a folder; ``<stem>_mask.nii.gz`` beside a volume marks lesions."""

    def __init__(self, cfg: TrainConfig, folder: str | Path | None = None):
        self.cfg = cfg
        root = Path(folder or cfg.data.folder or "")
        if not root.is_dir():
            raise InputError(f"training folder {root} does not exist")
        files = sorted(p for p in root.rglob("*") if is_image_file(p) and not stem(p).endswith(("_mask", "_brainmask")))
        self.items = []
        for f in files:
            contrast = guess_contrast(f, cfg.data.contrasts) or cfg.data.contrasts[0]
            mask = f.with_name(f"{stem(f)}_mask.nii.gz")
            self.items.append((f, mask if mask.exists() else None, contrast))
        if not self.items:
            raise InputError(f"no training volumes in {root}")

    def __len__(self) -> int:
        return len(self.items)

    def shard(self, rank: int, world: int) -> None:
        """Keep this rank's share of the files (the role of a DistributedSampler)."""
        if world > 1:
            self.items = self.items[rank::world] or self.items[:1]

    def draw(self, rng: np.random.Generator) -> RawVolume:
        path, mask, contrast = self.items[int(rng.integers(len(self.items)))]
        vol = load_volume(path)
        lesion = load_volume(mask).data > 0 if mask is not None else None
        return RawVolume(vol.data, vol.affine, None, lesion, contrast, stem(path))


def make_source(cfg: TrainConfig, spacing: float | None = None):
    return SyntheticSource(cfg, spacing) if cfg.data.source == "synthetic" else FolderSource(cfg)


def coarse_preprocess_config(cfg: TrainConfig):
    """The model's preprocessing at the global stage's spacing (for synthesising coarse brains directly)."""
    import dataclasses

    f = cfg.model.coarse_factor
    spacing = tuple(s * f for s in (cfg.preprocess.spacing or (1.0, 1.0, 1.0)))
    mult = 2 ** (len(cfg.model.global_net.channels) - 1)
    return dataclasses.replace(cfg.preprocess, spacing=spacing, pad_multiple=max(mult, cfg.preprocess.pad_multiple // f))


def to_model_space(raw: RawVolume, cfg: TrainConfig, preprocessor: Preprocessor) -> ModelSpaceVolume:
    vol = Volume(raw.image.astype(np.float32), raw.affine)
    pre = preprocessor.forward(vol, mask=raw.brain_mask, warn_geometry=False)  # not once per drawn item
    weight = np.ones_like(pre.image, dtype=np.float32)
    if raw.lesion_mask is not None and raw.lesion_mask.any():
        from scipy.ndimage import binary_dilation

        lesion = preprocessor.to_model(raw.lesion_mask.astype(np.float32), pre.record, kind="mask")
        weight[binary_dilation(lesion, iterations=2)] = 0.0
    label = cfg.model.contrasts.index(raw.contrast) if raw.contrast in cfg.model.contrasts else 0
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]  # noqa: E731
    target = None
    if raw.healthy is not None:
        # the same grid and the same intensity scale as the lesioned input (fitted on it, as at inference)
        healthy = normalize(preprocessor.to_model(raw.healthy.astype(np.float32), pre.record, kind="field"),
                            pre.record.norm)
        if pre.record.config.get("zero_outside_mask", True):
            healthy = np.where(pre.mask, healthy, 0.0)
        target = as_t(healthy)
    return ModelSpaceVolume(as_t(pre.image), as_t(weight), as_t(pre.mask), label, raw.name, target)


def fit_shape(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Centre-pad with zeros or centre-crop the last three axes to ``shape``."""
    out = x
    for axis, target in enumerate(shape):
        dim = out.dim() - 3 + axis
        size = out.shape[dim]
        if size < target:
            before = (target - size) // 2
            pad = [0, 0] * (out.dim() - dim - 1) + [before, target - size - before]
            out = F.pad(out, pad)
        elif size > target:
            start = (size - target) // 2
            out = out.narrow(dim, start, target)
    return out


def augment_condition(coarse: torch.Tensor, rng: np.random.Generator, noise: float, blur: float) -> torch.Tensor:
    """Noise and blur on the coarse context, so stage 2 tolerates stage-1 errors."""
    out = coarse
    sigma = float(rng.uniform(0.0, blur)) if blur > 0 else 0.0
    if sigma > 0.1:
        from monai.networks.layers import GaussianFilter

        out = GaussianFilter(3, sigma)(out[None])[0]
    level = float(rng.uniform(0.0, noise)) if noise > 0 else 0.0
    if level > 0:
        g = torch.Generator().manual_seed(int(rng.integers(2**31 - 1)))
        out = out + level * torch.randn(out.shape, generator=g)
    return out


class _StreamBase(IterableDataset):
    #: synthesise directly at the coarse spacing (global stage, synthetic source only)
    coarse_direct = False

    def __init__(self, cfg: TrainConfig, seed: int = 0, rank: int = 0, world: int = 1, source=None):
        super().__init__()
        self.cfg = cfg
        self.seed = int(seed)
        self.rank, self.world = int(rank), int(world)
        self._source = source
        self.direct = self.coarse_direct and cfg.data.source == "synthetic"
        self.preprocessor = Preprocessor(coarse_preprocess_config(cfg) if self.direct else cfg.preprocess)
        # items carry "target" only in healing runs: ordinary training moves and compares no second image
        self.healing = cfg.data.source == "synthetic" and cfg.data.heal_fraction > 0

    def _rng(self) -> np.random.Generator:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        return np.random.default_rng([self.seed, self.rank, worker])

    def source(self):
        if self._source is None:
            spacing = self.preprocessor.config.spacing[0] if self.direct else None
            self._source = make_source(self.cfg, spacing)
            if isinstance(self._source, FolderSource):
                self._source.shard(self.rank, self.world)
        return self._source

    def volumes(self, rng: np.random.Generator) -> Iterator[ModelSpaceVolume]:
        src = self.source()
        while True:
            yield to_model_space(src.draw(rng), self.cfg, self.preprocessor)


class GlobalDataset(_StreamBase):
    """Items ``{"x0", "weight", "label"}``: whole brains at coarse spacing, fixed shape.

    Synthetic brains are generated directly at the coarse spacing (much
    cheaper than synthesising at full resolution and pooling); real volumes
    are preprocessed at full resolution and average-pooled, as at inference.
    """

    coarse_direct = True

    def __iter__(self):
        rng = self._rng()
        f = 1 if self.direct else self.cfg.model.coarse_factor
        shape = self.cfg.data.coarse_shape
        for vol in self.volumes(rng):
            x0 = fit_shape(downsample(vol.image[None], f)[0], shape)
            weight = fit_shape((downsample(vol.weight[None], f)[0] > 0.5).float(), shape)
            item = {"x0": x0, "weight": weight, "label": torch.tensor(vol.label)}
            if self.healing:
                item["target"] = x0 if vol.target is None else fit_shape(downsample(vol.target[None], f)[0], shape)
            yield item


class PatchDataset(_StreamBase):
    """Items ``{"x0", "cond", "coords", "weight", "label"}``: full-resolution windows."""

    def __iter__(self):
        rng = self._rng()
        cfg = self.cfg
        f = cfg.model.coarse_factor
        p = cfg.model.patch_size
        for vol in self.volumes(rng):
            image = fit_shape(vol.image, tuple(max(s, q) for s, q in zip(vol.image.shape[1:], p)))
            weight = fit_shape(vol.weight, image.shape[1:])
            brain = fit_shape(vol.brain, image.shape[1:])
            target = image if vol.target is None else fit_shape(vol.target, image.shape[1:])
            full_shape = tuple(image.shape[1:])
            # A healing item's context is the healthy coarse brain (what a healing global stage returns) or
            # the lesioned one, so that the patch stage also heals where the context did not.
            healthy_context = vol.target is not None and rng.random() < cfg.data.heal_context_healthy
            coarse = downsample((target if healthy_context else image)[None], f)[0]
            cond_full = upsample(augment_condition(coarse, rng, cfg.data.cond_noise, cfg.data.cond_blur)[None],
                                 full_shape)[0]
            centres = torch.nonzero(brain[0] > 0)
            # half the windows of a healing volume are centred on its lesion, or few would show one
            lesion_centres = (torch.nonzero((target[0] - image[0]).abs() > 0.02) if vol.target is not None
                              else centres[:0])
            for _ in range(cfg.data.patches_per_volume):
                pool = lesion_centres if len(lesion_centres) and rng.random() < 0.5 else centres
                c = pool[int(rng.integers(len(pool)))].tolist() if len(pool) else [s // 2 for s in full_shape]
                start = [int(min(max(ci - q // 2, 0), s - q)) for ci, q, s in zip(c, p, full_shape)]
                sl = (slice(None),) + tuple(slice(a, a + q) for a, q in zip(start, p))
                item = {
                    "x0": image[sl].clone(),
                    "cond": cond_full[sl].clone(),
                    "coords": patch_coordinates(full_shape, start, p),
                    "weight": weight[sl].clone(),
                    "label": torch.tensor(vol.label),
                }
                if self.healing:
                    item["target"] = target[sl].clone()
                yield item
