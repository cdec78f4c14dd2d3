"""Training configuration: YAML validated into dataclasses.

A YAML file has four sections, each optional: ``model`` (see
:class:`medhdiff.diffusion.config.ModelConfig`), ``preprocess`` (see
:class:`medhdiff.preprocess.PreprocessConfig`), ``data`` and ``optim``. Any
unknown key anywhere is an error that names it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from medhdiff.diffusion.config import ModelConfig, _check_keys, name_tuple
from medhdiff.errors import InputError
from medhdiff.preprocess import PreprocessConfig
from medhdiff.synth.lesions import contrast_scale_range

#: What an intensity grow percentile is a percentile of (``DetectConfig.grow_intensity_level``).
INTENSITY_LEVELS = ("scan", "robust", "outside")


def _check(cls: type, data: Mapping[str, Any], where: str) -> None:
    """Unknown keys (or a non-mapping section) as an input error that names them."""
    try:
        _check_keys(cls, data)
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from None


@dataclass
class DataConfig:
    """Where training volumes come from and how items are cut from them.

    ``source``: ``synthetic`` (label maps -> random-contrast brains) or
    ``folder`` (real NIfTI volumes in ``folder``; a file ``<stem>_mask.nii.gz``
    next to a volume marks lesion voxels to exclude from the loss).
    ``labelmaps``: ``builtin`` or a folder of label maps; ``extra_labelmaps``
    adds the built-in map to a folder.

    ``heal_fraction`` of the synthetic volumes get a synthetic lesion (tumour or
    focal, ``heal_volume_ml``) and keep their lesion-free version as the target:
    at timesteps ``t >= heal_min_t`` the networks learn to predict the healthy
    brain from the noised lesioned one (pseudo-healthy reconstruction), below
    it they denoise the lesion as it is (denoising must keep pathology).
    ``heal_context_healthy`` is the share of healing volumes whose patch windows
    see the healthy coarse brain as their context (what a healing global stage
    returns); the rest see the lesioned one and must heal from the window alone.
    ``heal_contrast_scale`` is the ``(low, high)`` range, within (0, 1], of the
    lesions' conspicuity (``LesionInjector(contrast_scale=...)``): below 1 some
    lesions are fainter than the injector's contrast rules make them.
    """

    source: str = "synthetic"
    labelmaps: str = "builtin"
    include_builtin: bool = True
    folder: str | None = None
    contrasts: tuple[str, ...] = ("t1", "t2", "flair")
    noise_range: tuple[float, float] = (0.0, 0.03)
    coarse_shape: tuple[int, int, int] = (48, 56, 48)
    patches_per_volume: int = 32
    cond_noise: float = 0.05
    cond_blur: float = 1.0
    num_workers: int = 0
    validation_volumes: int = 2
    heal_fraction: float = 0.0
    heal_min_t: int = 250
    heal_volume_ml: tuple[float, float] = (1.0, 60.0)
    heal_context_healthy: float = 0.5
    heal_contrast_scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        self.heal_fraction = float(self.heal_fraction)
        self.heal_min_t = int(self.heal_min_t)
        self.heal_volume_ml = tuple(float(v) for v in self.heal_volume_ml)  # type: ignore[assignment]
        self.heal_context_healthy = float(self.heal_context_healthy)
        for name in ("heal_fraction", "heal_context_healthy"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"data.{name} must be in [0, 1]")
        if self.heal_min_t < 1:
            raise InputError("data.heal_min_t must be >= 1")
        if len(self.heal_volume_ml) != 2 or not 0 < self.heal_volume_ml[0] <= self.heal_volume_ml[1]:
            raise InputError("data.heal_volume_ml needs [low, high] with 0 < low <= high")
        try:
            self.heal_contrast_scale = contrast_scale_range(self.heal_contrast_scale)
        except ValueError as exc:
            raise InputError(f"data.heal_contrast_scale: {exc}") from None
        if self.heal_fraction > 0 and self.source != "synthetic":
            raise InputError("data.heal_fraction needs data.source: synthetic (the healthy target is synthesised)")
        if self.source not in ("synthetic", "folder"):
            raise InputError(f"data.source must be synthetic or folder, got {self.source!r}")
        self.contrasts = name_tuple("data.contrasts", self.contrasts)
        self.noise_range = tuple(float(v) for v in self.noise_range)  # type: ignore[assignment]
        self.coarse_shape = tuple(int(v) for v in self.coarse_shape)  # type: ignore[assignment]
        if len(self.coarse_shape) != 3:
            raise InputError("data.coarse_shape needs 3 entries")
        self.patches_per_volume = int(self.patches_per_volume)
        self.num_workers = int(self.num_workers)


@dataclass
class OptimConfig:
    """Optimisation for each stage: AdamW, EMA, clipping, warm-up then cosine decay.

    ``low_t_fraction`` of each batch draws its timestep from ``[0, low_t_max)``
    instead of the whole schedule: denoising starts at low noise levels, so the
    networks see more of them. ``init_weights`` (a model folder or
    ``model.safetensors``) starts both stages from trained weights (fine-tuning);
    a resumed run continues from its own checkpoints instead.
    """

    steps_global: int = 2000
    steps_local: int = 4000
    batch_global: int = 2
    batch_local: int = 8
    lr: float = 2e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    amp: bool = True
    checkpoint_every: int = 200
    validate_every: int = 500
    log_every: int = 10
    low_t_fraction: float = 0.0
    low_t_max: int = 150
    seed: int = 0
    init_weights: str | None = None

    def __post_init__(self) -> None:
        for name in ("steps_global", "steps_local", "batch_global", "batch_local", "warmup_steps",
                     "checkpoint_every", "validate_every", "log_every", "low_t_max", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise InputError(f"optim.{name} must be a whole number, got {value!r}")
            setattr(self, name, int(value))
        if not isinstance(self.amp, bool):
            raise InputError(f"optim.amp must be true or false, got {self.amp!r}")
        if self.init_weights is not None and not isinstance(self.init_weights, str):
            raise InputError(f"optim.init_weights must be a path to a model, got {self.init_weights!r}")
        for name in ("lr", "weight_decay", "min_lr_ratio", "ema_decay", "grad_clip", "low_t_fraction"):
            setattr(self, name, float(getattr(self, name)))
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError("optim.ema_decay must be in [0, 1)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"optim.lr must be a positive number, got {self.lr}")
        for name in ("min_lr_ratio", "low_t_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"optim.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip", "steps_global", "steps_local", "warmup_steps", "validate_every",
                     "seed"):
            if not getattr(self, name) >= 0:
                raise InputError(f"optim.{name} must not be negative, got {getattr(self, name)}")
        for name in ("batch_global", "batch_local", "checkpoint_every", "log_every", "low_t_max"):
            if getattr(self, name) < 1:
                raise InputError(f"optim.{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class DetectConfig:
    """How ``medhdiff detect`` scores scans with this model; calibrated after training.

    Each reconstruction noises the scan to one of ``strengths`` (a fraction of
    the schedule) and denoises it in ``steps``; ``ensemble`` reconstructions are
    pooled. The threshold is the ``percentile`` of the in-brain scores of
    ``healthy_volumes`` held-out synthetic healthy brains per contrast
    (``healthy_volumes_by_contrast`` sets another count for the contrasts it names).

    With ``grow_percentiles`` (hysteresis), findings are seeded above one
    healthy-score percentile (``percentile`` or one of ``seed_percentiles``) and
    grow through connected voxels down to a lower one (one of
    ``grow_percentiles``): the pair whose masks give the best Dice on
    ``lesion_volumes`` held-out synthetic brains with an injected tumour, among
    pairs whose mean false-positive volume on the healthy brains is at most
    ``max_healthy_fp_ml`` (and, with ``max_healthy_fp_ml_worst``, whose
    false-positive volume on the worst of those brains is at most that). Pairs
    within ``dice_tie_margin`` of the best Dice count as tied, and the most
    conservative of them wins (the highest seed, then grow, percentile): a
    Dice difference that small on a handful of synthetic tumours is noise, and
    the looser pair costs extent on real scans. With ``grow_intensity_percentiles``
    each pair is also tried with the scan's own intensity grow region joined to
    the score's one: its median-filtered intensity above that per-scan
    percentile (``Predictor.bright_regions``), reachable only from a seed; no
    region counts as the most conservative option. Where even that pair reaches a Dice below
    ``min_useful_dice``, the model does not find tumours in that contrast, and
    loosening the seed threshold would only buy false positives on real scans:
    the contrast keeps the most conservative pair: the highest seed percentile,
    growing to the highest of ``grow_percentiles``. With ``seed_min_volumes_ml``
    the smallest volume a seed component needs is chosen with the pair, among
    those candidates (otherwise it is ``min_volume_ml``); a larger one counts
    as more conservative, before the percentiles. It is one list for every
    contrast, or a mapping from contrast to its own list (a contrast it does
    not name has no candidates). With ``grow_opening_mm > 0``
    the grow region (score and intensity alike) is first opened with a ball of
    that radius: parts thinner than about twice the radius (a ribbon of bright
    cortex, a rim along a ventricle) no longer carry a finding away from its
    seed, while a compact lesion keeps its extent; the seeds themselves are
    never opened. ``score_scale`` (per contrast) divides that contrast's score, in
    calibration and in ``detect`` alike, by a statistic of the scan's own score
    inside the brain (``"mean"``, or ``"p75"`` for a percentile; ``"none"``, the
    default, leaves it in intensity units): a scan whose whole brain the healer
    reconstructs less well (a bright-cortex draw on T2) then no longer crosses
    a level calibrated on typical scans everywhere at once, while a lesion, a
    small part of the brain, barely moves the statistic. ``score_smooth_mm`` (per
    contrast) smooths the signed residual inside the brain with a Gaussian of
    that sigma before its lesion polarity is kept (``Predictor.residual_score``):
    a reconstruction's edges placed a voxel off leave a bright and a dark rim
    side by side, which cancel, while a lesion it heals leaves a residual of
    one sign over its whole extent. ``seed_tail`` (per contrast, a probability) keeps
    that contrast's seed threshold at least at the level a new healthy brain's
    highest seed component exceeds with that probability, by an extreme-value
    (Gumbel) fit to the healthy calibration brains' own highest seed levels
    (``calibrate.seed_floors``): a percentile of their pooled scores says how much
    of a typical brain lies above a level, not how often a whole new brain seeds
    a finding. ``grow_percentiles_by_contrast`` replaces ``grow_percentiles`` for the
    contrasts it names. ``grow_intensity_level`` (per contrast) says what an intensity
    grow percentile is a percentile of: ``"scan"`` (the default), the scan's own
    intensities in the scored region, or ``"robust"``, a normal distribution fitted
    to them by their median and MAD (``Predictor.bright_regions``), or ``"outside"``,
    the scan's own intensities outside the findings, iterated
    (``Predictor.outside_findings_region``). A large lesion fills the scan's own
    upper tail with its own voxels, so the empirical level rises with its size and
    cuts the lesion's edges away; the median and MAD move little until half the
    brain is lesion, but a normal fit misses a heavy healthy tail; the level outside
    the findings is the healthy tissue's own, but it runs away where bright healthy
    tissue connects to a finding (measured; neither is shipped). ``medhdiff
    calibrate`` refuses ``"outside"``: it was measured at a fixed pick, and taking
    it for every candidate pick would cost several labellings each.
    ``calibration_synthesis`` (per contrast:
    ``texture_amplitude`` and ``tissue_ratios``, ``HealthyBrainGenerator`` settings)
    draws that contrast's calibration brains otherwise than training draws its
    brains, e.g. with a real scan's tissue spread (``bench_detect.py --sections
    tissue``); the record keeps it. Without ``grow_percentiles``, and with
    ``lesion_volumes > 0``, the single threshold is raised, where that helps,
    to the threshold of best Dice on those tumours.
    """

    strengths: tuple[float, ...] = (0.3, 0.4, 0.5)
    steps: int = 2
    ensemble: int = 2
    percentile: float = 99.95
    healthy_volumes: int = 2
    healthy_volumes_by_contrast: dict[str, int] = field(default_factory=dict)
    lesion_volumes: int = 0
    min_volume_ml: float = 0.2
    grow_percentiles: tuple[float, ...] = ()
    grow_percentiles_by_contrast: dict[str, tuple[float, ...]] = field(default_factory=dict)
    seed_percentiles: tuple[float, ...] = ()
    max_healthy_fp_ml: float = 1.0
    max_healthy_fp_ml_worst: float | None = None
    grow_intensity_percentiles: tuple[float, ...] = ()
    dice_tie_margin: float = 0.0
    min_useful_dice: float = 0.2
    seed_min_volumes_ml: tuple[float, ...] | dict[str, tuple[float, ...]] = ()
    grow_opening_mm: float = 0.0
    score_scale: dict[str, str] = field(default_factory=dict)
    score_smooth_mm: dict[str, float] = field(default_factory=dict)
    seed_tail: dict[str, float] = field(default_factory=dict)
    grow_intensity_level: dict[str, str] = field(default_factory=dict)
    calibration_synthesis: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.strengths = tuple(float(v) for v in self.strengths)
        self.grow_percentiles = tuple(float(v) for v in self.grow_percentiles)
        self.grow_percentiles_by_contrast = _contrast_map(
            "grow_percentiles_by_contrast", self.grow_percentiles_by_contrast,
            lambda v: tuple(float(x) for x in v), "lists of percentiles", "{t2: [99.9, 99.8, 99.5]}")
        self.seed_percentiles = tuple(float(v) for v in self.seed_percentiles)
        self.grow_intensity_percentiles = tuple(float(v) for v in self.grow_intensity_percentiles)
        volumes = self.seed_min_volumes_ml
        self.seed_min_volumes_ml = ({str(k): _seed_volumes(v) for k, v in volumes.items()}
                                    if isinstance(volumes, Mapping) else _seed_volumes(volumes))
        self.max_healthy_fp_ml, self.min_useful_dice = float(self.max_healthy_fp_ml), float(self.min_useful_dice)
        self.dice_tie_margin = float(self.dice_tie_margin)
        self.grow_opening_mm = float(self.grow_opening_mm)
        if self.max_healthy_fp_ml_worst is not None:
            self.max_healthy_fp_ml_worst = float(self.max_healthy_fp_ml_worst)
        for name in ("steps", "ensemble", "healthy_volumes", "lesion_volumes"):
            setattr(self, name, int(getattr(self, name)))
        self.percentile, self.min_volume_ml = float(self.percentile), float(self.min_volume_ml)
        if not self.strengths or not all(0.0 < v <= 1.0 for v in self.strengths):
            raise InputError("detect.strengths needs values in (0, 1]")
        if self.steps < 1 or self.ensemble < 1 or self.healthy_volumes < 1 or self.lesion_volumes < 0:
            raise InputError("detect: steps, ensemble and healthy_volumes must be >= 1, lesion_volumes >= 0")
        if not 50.0 <= self.percentile < 100.0:
            raise InputError("detect.percentile must be in [50, 100)")
        if not all(50.0 <= v < 100.0 for v in (*self.grow_percentiles, *self.seed_percentiles,
                                               *self.grow_intensity_percentiles)):
            raise InputError("detect.grow_percentiles, seed_percentiles and grow_intensity_percentiles must lie "
                             "in [50, 100)")
        volume_lists = (list(self.seed_min_volumes_ml.values()) if isinstance(self.seed_min_volumes_ml, dict)
                        else [self.seed_min_volumes_ml])
        if any(vs and (not self.grow_percentiles or min(vs) < self.min_volume_ml) for vs in volume_lists):
            raise InputError("detect.seed_min_volumes_ml need grow_percentiles (hysteresis) and values of at least "
                             "min_volume_ml")
        if self.grow_intensity_percentiles and not self.grow_percentiles:
            raise InputError("detect.grow_intensity_percentiles need grow_percentiles (hysteresis)")
        if self.grow_percentiles and min(self.grow_percentiles) >= min((self.percentile, *self.seed_percentiles)):
            raise InputError("detect.grow_percentiles need a value below the lowest seed percentile")
        if self.grow_percentiles_by_contrast and not self.grow_percentiles:
            raise InputError("detect.grow_percentiles_by_contrast needs grow_percentiles (hysteresis)")
        lowest_seed = min((self.percentile, *self.seed_percentiles))
        if not all(grid and all(50.0 <= v < 100.0 for v in grid) and min(grid) < lowest_seed
                   for grid in self.grow_percentiles_by_contrast.values()):
            raise InputError("detect.grow_percentiles_by_contrast lists need percentiles in [50, 100), one "
                             "below the lowest seed percentile")
        if not self.max_healthy_fp_ml >= 0 or not (self.max_healthy_fp_ml_worst is None
                                                   or self.max_healthy_fp_ml_worst >= self.max_healthy_fp_ml):
            raise InputError("detect.max_healthy_fp_ml must be >= 0, and max_healthy_fp_ml_worst (when set) at least "
                             "as large")
        if not 0.0 <= self.dice_tie_margin < 1.0:
            raise InputError("detect.dice_tie_margin must be in [0, 1)")
        if not 0.0 <= self.min_useful_dice <= 1.0:
            raise InputError("detect.min_useful_dice must be in [0, 1]")
        if not 0.0 <= self.grow_opening_mm <= 10.0 or (self.grow_opening_mm and not self.grow_percentiles):
            raise InputError("detect.grow_opening_mm must be in [0, 10] mm, and above 0 it needs grow_percentiles "
                             "(hysteresis)")
        self.healthy_volumes_by_contrast = _contrast_map("healthy_volumes_by_contrast",
                                                         self.healthy_volumes_by_contrast, int,
                                                         "whole numbers of brains", "{t2: 16}")
        if not all(v >= 1 for v in self.healthy_volumes_by_contrast.values()):
            raise InputError("detect.healthy_volumes_by_contrast values must be >= 1")
        self.score_scale = _contrast_map("score_scale", self.score_scale, str, "none, mean or pNN", "{t2: mean}")
        for how in self.score_scale.values():
            score_scale_statistic(how)
        self.score_smooth_mm = _contrast_map("score_smooth_mm", self.score_smooth_mm, float,
                                             "Gaussian sigmas in mm", "{t2: 4}")
        if not all(0.0 <= v <= 20.0 for v in self.score_smooth_mm.values()):
            raise InputError("detect.score_smooth_mm values must be in [0, 20] mm")
        self.seed_tail = _contrast_map("seed_tail", self.seed_tail, float, "probabilities", "{t2: 0.01}")
        if not all(0.0 < v < 0.5 for v in self.seed_tail.values()):
            raise InputError("detect.seed_tail values must be probabilities in (0, 0.5)")
        if self.seed_tail and not self.grow_percentiles:
            raise InputError("detect.seed_tail needs grow_percentiles (hysteresis)")
        if any(self.healthy_count(c) < 3 for c in self.seed_tail):
            raise InputError("detect.seed_tail needs at least 3 healthy calibration brains for each contrast it names")
        self.grow_intensity_level = _contrast_map("grow_intensity_level", self.grow_intensity_level, str,
                                                  "scan, robust or outside", "{flair: outside}")
        if not all(v in INTENSITY_LEVELS for v in self.grow_intensity_level.values()):
            raise InputError(f"detect.grow_intensity_level values must be one of {', '.join(INTENSITY_LEVELS)}")
        if self.grow_intensity_level and not self.grow_intensity_percentiles:
            raise InputError("detect.grow_intensity_level needs grow_intensity_percentiles")
        self.calibration_synthesis = _contrast_map("calibration_synthesis", self.calibration_synthesis, _synthesis,
                                                   "generator settings", "{flair: {texture_amplitude: [0.06, 0.12], "
                                                   "tissue_ratios: {wm: [0.8, 0.9]}}}")

    def healthy_count(self, contrast: str) -> int:
        """How many healthy calibration brains ``contrast`` draws."""
        return self.healthy_volumes_by_contrast.get(contrast, self.healthy_volumes)

    def seed_volumes(self, contrast: str) -> tuple[float, ...]:
        """The seed-volume candidates (``seed_min_volumes_ml``) of one contrast."""
        if isinstance(self.seed_min_volumes_ml, dict):
            return self.seed_min_volumes_ml.get(contrast, ())
        return self.seed_min_volumes_ml

    def grow_grid(self, contrast: str) -> tuple[float, ...]:
        """The grow-percentile candidates of one contrast: its own list, else ``grow_percentiles``."""
        return self.grow_percentiles_by_contrast.get(contrast, self.grow_percentiles)

    def intensity_level(self, contrast: str) -> str:
        """What ``contrast``'s intensity grow percentiles are percentiles of: ``"scan"``, ``"robust"`` or ``"outside"``."""
        return self.grow_intensity_level.get(contrast, "scan")

    def synthesis(self, contrast: str) -> dict:
        """The ``HealthyBrainGenerator`` settings that ``contrast``'s calibration brains are drawn with
        (``calibration_synthesis``; empty: the generator's defaults, as training draws them)."""
        return dict(self.calibration_synthesis.get(contrast, {}))

    def for_contrast(self, contrast: str) -> "DetectConfig":
        """These settings with ``seed_min_volumes_ml`` and ``grow_percentiles`` narrowed to ``contrast``'s lists."""
        return dataclasses.replace(self, seed_min_volumes_ml=self.seed_volumes(contrast),
                                   grow_percentiles=self.grow_grid(contrast), grow_percentiles_by_contrast={})


def _synthesis(value: Any) -> dict:
    """One contrast's ``detect.calibration_synthesis``: ``texture_amplitude`` ([low, high]) and ``tissue_ratios``
    ({wm|gm|csf: [low, high]}), checked by building a generator with them."""
    from medhdiff.synth import HealthyBrainGenerator

    if not isinstance(value, Mapping) or set(value) - {"texture_amplitude", "tissue_ratios"}:
        raise ValueError("only texture_amplitude and tissue_ratios may be set")
    out = {}
    if "texture_amplitude" in value:
        out["texture_amplitude"] = tuple(float(v) for v in value["texture_amplitude"])
    if "tissue_ratios" in value:
        if not isinstance(value["tissue_ratios"], Mapping):
            raise ValueError("tissue_ratios must map wm, gm or csf to [low, high]")
        out["tissue_ratios"] = {str(k): tuple(float(v) for v in r) for k, r in value["tissue_ratios"].items()}
    HealthyBrainGenerator(contrast="flair", **out)  # the generator's own checks (a ValueError names the problem)
    return out


def _seed_volumes(values: Any) -> tuple[float, ...]:
    """One list of ``detect.seed_min_volumes_ml`` (mL) as floats."""
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InputError("detect.seed_min_volumes_ml must be a list of volumes (mL), or map contrasts to such "
                         "lists, e.g. {t2: [0.5, 1, 2]}") from None


def _contrast_map(name: str, value: Any, cast: Callable[[Any], Any], what: str, example: str) -> dict:
    """A per-contrast setting ``detect.<name>`` as ``{contrast: cast(value)}``; anything else is an
    InputError naming the setting (``what`` the values should be, ``example`` a YAML mapping)."""
    if not isinstance(value, Mapping):
        raise InputError(f"detect.{name} must map contrasts to {what}, e.g. {example}")
    try:
        return {str(k): cast(v) for k, v in value.items()}
    except (TypeError, ValueError) as exc:
        why = f" ({exc})" if isinstance(exc, ValueError) and str(exc) else ""  # the value's own complaint
        raise InputError(f"detect.{name} values must be {what}, e.g. {example}{why}") from None


def score_scale_statistic(how: str) -> float | str | None:
    """A ``detect.score_scale`` value parsed: ``None`` for ``"none"``, ``"mean"``, or the percentile of ``"pNN"``."""
    if how == "none":
        return None
    if how == "mean":
        return "mean"
    try:
        q = float(how[1:]) if how.startswith("p") else math.nan
    except ValueError:
        q = math.nan
    if not 0.0 < q < 100.0:
        raise InputError(f"detect.score_scale values must be none, mean or a percentile pNN (0 < NN < 100), "
                         f"got {how!r}")
    return q


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "config") -> "TrainConfig":
        d = dict(d or {})
        _check(cls, d, where)
        try:
            model = ModelConfig.from_dict(d.get("model", {}))
            pre = PreprocessConfig.from_dict(d.get("preprocess", {}) or {})
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:  # OverflowError: int(.inf)
            raise InputError(f"{where}: {exc}") from None
        _check(DataConfig, d.get("data", {}), f"{where}: data")
        _check(OptimConfig, d.get("optim", {}), f"{where}: optim")
        _check(DetectConfig, d.get("detect", {}), f"{where}: detect")
        try:
            data = DataConfig(**d.get("data", {}))
            optim = OptimConfig(**d.get("optim", {}))
            detect = DetectConfig(**(d.get("detect", {}) or {}))
        except (TypeError, ValueError, OverflowError) as exc:
            raise InputError(f"{where}: {exc}") from None
        if pre.pad_multiple % model.volume_multiple:
            raise InputError(f"{where}: preprocess.pad_multiple ({pre.pad_multiple}) must be a multiple of "
                             f"{model.volume_multiple} (coarse_factor x 2^(levels-1) of the global network)")
        unknown = set(data.contrasts) - set(model.contrasts)
        if unknown:
            raise InputError(f"{where}: data.contrasts {sorted(unknown)} are not in model.contrasts")
        for name in ("score_scale", "score_smooth_mm", "seed_min_volumes_ml", "healthy_volumes_by_contrast",
                     "grow_intensity_level", "calibration_synthesis"):
            value = getattr(detect, name)
            unknown = set(value if isinstance(value, dict) else ()) - set(data.contrasts)
            if unknown:
                raise InputError(f"{where}: detect.{name} names contrasts {sorted(unknown)} that are not in "
                                 "data.contrasts")
        return cls(model=model, preprocess=pre, data=data, optim=optim, detect=detect,
                   description=str(d.get("description", "")))


def apply_override(raw: dict, item: str) -> None:
    """Set one ``SECTION.KEY=VALUE`` (any depth, e.g. ``model.patch_net.channels=[8,16]``) in a raw config.

    The value is read as YAML and checked by the config classes, exactly as a
    value in the file would be.
    """
    key, sep, text = item.partition("=")
    parts = [k.strip() for k in key.split(".")]
    if not sep or len(parts) < 2 or not all(parts):
        raise InputError(f"--set expects SECTION.KEY=VALUE (e.g. optim.lr=1e-4), got {item!r}")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise InputError(f"--set {key}: {text!r} is not a valid YAML value") from None
    node = raw
    for depth, k in enumerate(parts[:-1]):
        if k not in node or (depth == 0 and node[k] is None):  # a missing (or empty top-level) section
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise InputError(f"--set {key}: {'.'.join(parts[:depth + 1])} is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read and validate a YAML (or JSON) training config, with ``SECTION.KEY=VALUE`` overrides applied."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"no such config file: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"{p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise InputError(f"{p} is nested too deeply to be a training config") from None
    if not isinstance(raw, dict):
        raise InputError(f"{p}: expected a mapping of sections (model, preprocess, data, optim)")
    for item in overrides:
        apply_override(raw, item)
    return TrainConfig.from_dict(raw, where=str(p) + (" with --set" if overrides else ""))
