"""The model file pair: ``model.safetensors`` (weights) + ``model.json`` (everything else).

``model.json`` holds the model and preprocessing configs, the contrasts, a
description of the training data, calibration values (e.g. the detection
threshold) and the sha256 of the weights file, which is checked on load.
Weights are only ever read with safetensors; pickle files are refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from medhdiff.diffusion.config import ModelConfig
from medhdiff.diffusion.networks import GlobalDenoiser, PatchDenoiser
from medhdiff.errors import InputError
from medhdiff.io.atomic import atomic_path

FORMAT = "medhdiff-model"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ModelBundle:
    config: ModelConfig
    preprocess: dict[str, Any]
    global_model: GlobalDenoiser
    patch_model: PatchDenoiser
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def sha256(self) -> str:
        return str(self.meta.get("sha256", ""))

    @property
    def contrasts(self) -> tuple[str, ...]:
        return tuple(self.config.contrasts)

    def to(self, device: torch.device | str) -> "ModelBundle":
        self.global_model.to(device)
        self.patch_model.to(device)
        return self


def build_models(cfg: ModelConfig) -> tuple[GlobalDenoiser, PatchDenoiser]:
    return GlobalDenoiser(cfg.global_net), PatchDenoiser(cfg.patch_net)


def save_bundle(folder: str | Path, cfg: ModelConfig, preprocess: dict[str, Any], global_model: torch.nn.Module,
                patch_model: torch.nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``folder`` (each atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"global.{k}": v.detach().cpu().contiguous() for k, v in global_model.state_dict().items()}
    tensors.update({f"patch.{k}": v.detach().cpu().contiguous() for k, v in patch_model.state_dict().items()})
    weights = folder / "model.safetensors"
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    from medhdiff import __version__

    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medhdiff_version": __version__,
        "model": cfg.to_dict(),
        "preprocess": dict(preprocess),
        "contrasts": list(cfg.contrasts),
        **(meta or {}),
        "sha256": sha256_of(weights),
    }
    with atomic_path(folder / "model.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=2))
    return folder


def update_bundle_meta(folder: str | Path, **fields: Any) -> None:
    """Add or replace top-level fields of ``model.json`` (e.g. calibration), keeping the sha256."""
    path = Path(folder) / "model.json"
    doc = json.loads(path.read_text())
    doc.update(fields)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2))


def _resolve(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise InputError(
            f"{p} looks like a pickle-based PyTorch file; medhdiff never unpickles weights. "
            "Convert it once, on a machine where you trust the file, with "
            "`torch.load(path, weights_only=True)` and safetensors' save_file, then pass the .safetensors file"
        )
    if p.is_dir():
        weights, doc = p / "model.safetensors", p / "model.json"
    elif p.suffix == ".json":
        weights, doc = p.with_suffix(".safetensors"), p
    else:
        weights, doc = p, p.with_suffix(".json")
    if not weights.is_file():
        raise InputError(f"weights file {weights} does not exist")
    if not doc.is_file():
        raise InputError(f"model description {doc} does not exist (it must sit next to the weights)")
    return weights, doc


def load_bundle(path: str | Path, device: torch.device | str = "cpu", verify: bool = True) -> ModelBundle:
    """Load a model pair, checking the sha256 and that the weights fit the config."""
    weights, doc_path = _resolve(path)
    try:
        doc = json.loads(doc_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {doc_path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{doc_path} is not a medhdiff model description")
    if verify:
        actual = sha256_of(weights)
        if doc.get("sha256") != actual:
            raise InputError(f"sha256 mismatch for {weights}: model.json says {doc.get('sha256')}, file is {actual}")
    try:
        cfg = ModelConfig.from_dict(doc["model"])
    except (KeyError, ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise InputError(f"{doc_path}: invalid model config: {exc}") from None
    try:
        tensors = load_file(str(weights), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own types
        raise InputError(f"cannot read weights {weights}: {exc}") from None
    g, p = build_models(cfg)
    for name, module in (("global", g), ("patch", p)):
        sd = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise InputError(f"weights in {weights} do not match the {name} network in {doc_path.name}: "
                             f"{first[1].strip() if len(first) > 1 else first[0]}") from None
    g.eval()
    p.eval()
    bundle = ModelBundle(cfg, doc.get("preprocess", {}), g, p, doc, weights.parent)
    return bundle.to(device)
