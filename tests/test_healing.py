"""Lesion-healing fine-tuning: synthetic lesions with healthy targets, the healing regression target,
and starting a run from trained weights (``optim.init_weights``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from medhdiff.diffusion.bundle import load_bundle
from medhdiff.errors import InputError
from medhdiff.training import TrainConfig, load_config
from medhdiff.training.trainer import StageTrainer, export_model

pytestmark = pytest.mark.usefixtures("torch_one_thread")

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def healing_config(fraction: float = 1.0, **optim) -> TrainConfig:
    cfg = load_config(TINY)
    data = dataclasses.replace(cfg.data, heal_fraction=fraction, heal_volume_ml=(20.0, 40.0))
    return dataclasses.replace(cfg, data=data, optim=dataclasses.replace(cfg.optim, **optim))


@pytest.mark.parametrize("key, value", [("heal_fraction", 1.5), ("heal_fraction", -0.1), ("heal_min_t", 0),
                                        ("heal_volume_ml", [5, 1]), ("heal_context_healthy", 1.5),
                                        ("heal_contrast_scale", [0.8, 0.3]), ("heal_contrast_scale", [0, 1]),
                                        ("heal_contrast_scale", [0.5, 1.5]), ("heal_contrast_scale", [0.5, float("inf")])])
def test_healing_settings_are_validated(tmp_path, key, value):
    doc = yaml.safe_load(TINY.read_text())
    doc["data"][key] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match=key):
        load_config(path)


def test_healing_needs_the_synthetic_source(tmp_path):
    doc = yaml.safe_load(TINY.read_text())
    doc["data"].update(heal_fraction=0.5, source="folder", folder=str(tmp_path))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match="synthetic"):
        load_config(path)


def test_a_healing_volume_differs_from_its_target_only_around_the_lesion():
    from medhdiff.preprocess import Preprocessor
    from medhdiff.training.datasets import SyntheticSource, to_model_space

    cfg = healing_config(1.0)
    raw = SyntheticSource(cfg).draw(np.random.default_rng(4))
    assert raw.healthy is not None and raw.healthy.shape == raw.image.shape
    changed = np.abs(raw.image - raw.healthy) > 1e-6
    brain_ml = raw.brain_mask.sum() * 64 / 1000  # the tiny config's 4 mm voxels
    assert 0 < changed.sum() * 64 / 1000 < 0.6 * brain_ml
    vol = to_model_space(raw, cfg, Preprocessor(cfg.preprocess))
    assert vol.target is not None and vol.target.shape == vol.image.shape
    diff = (vol.target - vol.image).abs()
    # same grid and intensity scale: equal away from the lesion, different on it
    assert float(diff.max()) > 0.05
    assert float((diff < 1e-4).float().mean()) > 0.5


def test_heal_contrast_scale_reaches_the_injected_lesions():
    from medhdiff.training.datasets import SyntheticSource

    def excess(scale):
        cfg = healing_config(1.0)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, heal_contrast_scale=scale))
        raw = SyntheticSource(cfg).draw(np.random.default_rng(4))
        return float(np.abs(raw.image - raw.healthy).sum())

    assert 0.2 * excess((1.0, 1.0)) < excess((0.4, 0.4)) < 0.6 * excess((1.0, 1.0))


def test_patch_items_of_a_healing_volume_carry_the_healthy_target():
    from medhdiff.training.datasets import GlobalDataset, PatchDataset

    cfg = healing_config(1.0)
    g = next(iter(GlobalDataset(cfg, seed=2)))
    assert g["target"].shape == g["x0"].shape and not torch.equal(g["target"], g["x0"])
    items = [item for item, _ in zip(iter(PatchDataset(cfg, seed=2)), range(8))]
    assert all(i["target"].shape == i["x0"].shape for i in items)
    assert any(not torch.equal(i["target"], i["x0"]) for i in items)


def _trainer(tmp_path: Path, cfg: TrainConfig, stage: str = "local") -> StageTrainer:
    return StageTrainer(cfg, stage, tmp_path / "run", torch.device("cpu"))


def test_the_healing_target_implies_the_healthy_image_above_heal_min_t(tmp_path):
    cfg = healing_config(1.0)
    tr = _trainer(tmp_path, cfg)
    sch = tr.schedule
    gen = torch.Generator().manual_seed(0)
    healthy = torch.rand((4, 1, 6, 6, 6), generator=gen)
    lesioned = healthy.clone()
    lesioned[:, :, 2:4, 2:4, 2:4] += 0.5
    lesioned[3] = healthy[3]  # an item without a lesion
    noise = torch.randn(healthy.shape, generator=gen)
    t = torch.tensor([cfg.data.heal_min_t - 1, cfg.data.heal_min_t, 700, 700])
    x_t = sch.add_noise(lesioned, noise, t)
    plain = sch.target(lesioned, noise, t)
    out = tr._healing_target(x_t, lesioned, healthy, t, plain)
    x0_implied = sch.predict_x0(x_t, out, t)
    # below heal_min_t (and for the lesion-free item) the target is the ordinary one: the lesion is denoised
    assert torch.equal(out[0], plain[0]) and torch.equal(out[3], plain[3])
    torch.testing.assert_close(x0_implied[0], lesioned[0], atol=1e-4, rtol=0)
    # from heal_min_t on, a perfect prediction of the target returns the healthy image
    torch.testing.assert_close(x0_implied[1:3], healthy[1:3], atol=1e-4, rtol=0)


def test_init_weights_starts_both_stages_from_the_bundle_and_export_keeps_an_untrained_stage(tmp_path, model_dir):
    bundle = load_bundle(model_dir)
    cfg = load_config(TINY)
    cfg = dataclasses.replace(cfg, model=bundle.config, optim=dataclasses.replace(cfg.optim, init_weights=str(model_dir)))
    for stage, module in (("global", bundle.global_model), ("local", bundle.patch_model)):
        tr = _trainer(tmp_path, cfg, stage)
        for (k, v), (_, e) in zip(module.state_dict().items(), tr.ema.state_dict().items()):
            assert torch.equal(v, e), k
        assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), tr.model.state_dict().values()))
    # only the global stage is trained (one checkpoint written); the export keeps the bundle's patch stage
    tr = _trainer(tmp_path, cfg, "global")
    tr.save()
    out = export_model(cfg, tmp_path / "run")
    tensors = load_file(str(out / "model.safetensors"))
    for k, v in bundle.patch_model.state_dict().items():
        assert torch.equal(tensors[f"patch.{k}"], v), k
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["init_weights_sha256"] == bundle.sha256


def test_init_weights_of_another_architecture_is_refused(tmp_path, model_dir):
    cfg = load_config(TINY)
    bundle = load_bundle(model_dir)
    other = dataclasses.replace(bundle.config, coarse_factor=bundle.config.coarse_factor * 2)
    cfg = dataclasses.replace(cfg, model=other, optim=dataclasses.replace(cfg.optim, init_weights=str(model_dir)))
    with pytest.raises(InputError, match="init_weights"):
        _trainer(tmp_path, cfg)


def test_train_refuses_missing_init_weights(tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "medhdiff_cli.main", "train", "-c", str(TINY), "--out",
                          str(tmp_path / "run"), "--init-weights", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: --init-weights")
    assert not (tmp_path / "run").exists()
