"""Configuration dataclasses for the hierarchical diffusion model.

Every config is a plain dataclass, so ``dataclasses.asdict(cfg)`` gives a
JSON-serialisable dict (tuples become lists once written as JSON).  The
``from_dict`` classmethods accept such dicts back (lists or tuples) and raise
``ValueError`` naming any unknown key, so a typo in a config file is reported
instead of silently ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["ScheduleConfig", "NetworkConfig", "ModelConfig", "BETA_SCHEDULES", "PREDICTIONS"]

BETA_SCHEDULES = ("linear", "cosine", "scaled_linear")
PREDICTIONS = ("epsilon", "v")


def _check_keys(cls: type, data: Mapping[str, Any]) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"{cls.__name__}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"expected a subset of {sorted(known)}"
        )


def name_tuple(name: str, value: Any) -> tuple[str, ...]:
    """A list of names; a single string (``contrasts: t2``) is refused rather than split into letters."""
    if isinstance(value, str):
        raise ValueError(f"{name} must be a sequence of names, not a single string")
    return tuple(str(c) for c in value)


def _int_tuple(name: str, value: Any, length: int | None = None) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value)
    except TypeError as exc:
        raise ValueError(f"{name} must be a sequence of integers, got {value!r}") from exc
    if any(isinstance(v, bool) for v in value) or any(int(v) != v for v in value):
        raise ValueError(f"{name} must contain integers, got {value!r}")
    if length is not None and len(out) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(out)}")
    return out


@dataclass
class ScheduleConfig:
    """Forward-process (noise) schedule."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: str = "epsilon"

    def __post_init__(self) -> None:
        self.num_train_timesteps = int(self.num_train_timesteps)
        self.beta_start = float(self.beta_start)
        self.beta_end = float(self.beta_end)
        if self.num_train_timesteps < 2:
            raise ValueError("num_train_timesteps must be >= 2")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if not (0.0 < self.beta_start <= self.beta_end < 1.0):
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={self.beta_start}, beta_end={self.beta_end}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ScheduleConfig":
        _check_keys(cls, data)
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class NetworkConfig:
    """Architecture of one 3D ``DiffusionModelUNet``."""

    channels: tuple[int, ...] = (16, 32, 64)
    num_res_blocks: int = 1
    attention_levels: tuple[bool, ...] = (False, False, False)
    norm_num_groups: int = 8
    num_class_embeds: int | None = None

    def __post_init__(self) -> None:
        self.channels = _int_tuple("channels", self.channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        self.num_res_blocks = int(self.num_res_blocks)
        self.norm_num_groups = int(self.norm_num_groups)
        if not self.channels:
            raise ValueError("channels must not be empty")
        if len(self.attention_levels) != len(self.channels):
            raise ValueError(
                f"attention_levels ({len(self.attention_levels)}) must have one entry per level "
                f"of channels ({len(self.channels)})"
            )
        if self.num_res_blocks < 1:
            raise ValueError("num_res_blocks must be >= 1")
        if self.norm_num_groups < 1 or any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(
                f"every entry of channels {self.channels} must be divisible by norm_num_groups={self.norm_num_groups}"
            )
        if self.num_class_embeds is not None:
            self.num_class_embeds = int(self.num_class_embeds)
            if self.num_class_embeds < 1:
                raise ValueError("num_class_embeds must be None or >= 1")

    @property
    def levels(self) -> int:
        return len(self.channels)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "NetworkConfig":
        _check_keys(cls, data)
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ModelConfig:
    """The whole hierarchical model: schedule, the two networks and the geometry.

    ``coarse_factor`` is the average-pooling factor from model space to the
    coarse (stage-1) grid; ``patch_size`` the stage-2 window, ``patch_overlap``
    the fraction of a window shared with its neighbour, ``contrasts`` the
    names of the class labels (index = class label) the networks may be
    conditioned on.
    """

    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    global_net: NetworkConfig = field(default_factory=NetworkConfig)
    patch_net: NetworkConfig = field(default_factory=NetworkConfig)
    coarse_factor: int = 4
    patch_size: tuple[int, int, int] = (32, 32, 32)
    patch_overlap: float = 0.5
    contrasts: tuple[str, ...] = ("t1", "t2", "flair")

    def __post_init__(self) -> None:
        if isinstance(self.schedule, Mapping):
            self.schedule = ScheduleConfig.from_dict(self.schedule)
        if isinstance(self.global_net, Mapping):
            self.global_net = NetworkConfig.from_dict(self.global_net)
        if isinstance(self.patch_net, Mapping):
            self.patch_net = NetworkConfig.from_dict(self.patch_net)
        self.coarse_factor = int(self.coarse_factor)
        self.patch_size = _int_tuple("patch_size", self.patch_size, 3)  # type: ignore[assignment]
        self.patch_overlap = float(self.patch_overlap)
        self.contrasts = name_tuple("contrasts", self.contrasts)
        if self.coarse_factor < 1:
            raise ValueError("coarse_factor must be >= 1")
        if any(p < 1 for p in self.patch_size):
            raise ValueError(f"patch_size must be positive, got {self.patch_size}")
        if not (0.0 <= self.patch_overlap < 1.0):
            raise ValueError(f"patch_overlap must be in [0, 1), got {self.patch_overlap}")
        if len(set(self.contrasts)) != len(self.contrasts):
            raise ValueError(f"contrasts must be unique, got {self.contrasts}")
        mult = 2 ** (self.patch_net.levels - 1)
        if any(p % mult for p in self.patch_size):
            raise ValueError(
                f"patch_size {self.patch_size} must be divisible by {mult} "
                f"(the patch network downsamples {self.patch_net.levels - 1} times)"
            )
        for name, net in (("global_net", self.global_net), ("patch_net", self.patch_net)):
            if net.num_class_embeds is not None and net.num_class_embeds < len(self.contrasts):
                raise ValueError(
                    f"{name}.num_class_embeds={net.num_class_embeds} is smaller than the number "
                    f"of contrasts ({len(self.contrasts)})"
                )

    @property
    def volume_multiple(self) -> int:
        """Model-space volume dimensions must be multiples of this number."""
        return self.coarse_factor * 2 ** (self.global_net.levels - 1)

    def contrast_index(self, name: str) -> int:
        """Class label of a contrast name (``ValueError`` if unknown)."""
        try:
            return self.contrasts.index(name)
        except ValueError:
            raise ValueError(f"unknown contrast {name!r}; this model knows {list(self.contrasts)}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        _check_keys(cls, data)
        d = dict(data)
        if "schedule" in d:
            d["schedule"] = (
                d["schedule"] if isinstance(d["schedule"], ScheduleConfig) else ScheduleConfig.from_dict(d["schedule"])
            )
        for key in ("global_net", "patch_net"):
            if key in d and not isinstance(d[key], NetworkConfig):
                d[key] = NetworkConfig.from_dict(d[key])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
