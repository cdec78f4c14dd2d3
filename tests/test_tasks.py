"""The three jobs (denoise, reconstruct, detect) at library level, with a tiny model trained here.

The model is trained once per test session (``tiny_model``): the tiny config
with a few more steps (30 global, 60 local, half of them at low noise levels),
on T2 only, calibrated for detection at the end. It works at 4 mm and is far
from a useful model; it is good for plumbing checks and for the honest,
coarse quality checks below (denoising does lower the error; detection
scores are assessed against what a 90-step model can reach).
"""

from __future__ import annotations

import json
import logging
import shutil
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import make_affine, smooth_brain, write_nifti
from medhdiff.errors import InputError
from medhdiff.io import Volume, load_volume, save_volume
from medhdiff.metrics import auroc
from medhdiff.tasks import Predictor
from medhdiff.tasks.noise import estimate_sigma

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"
#: Training steps of the session's model (the plain tiny config has 4 + 4, which learns nothing).
TINY_STEPS = {"steps_global": 30, "steps_local": 60, "low_t_fraction": 0.5}


# ---------------------------------------------------------------------------- shared helpers
@contextmanager
def one_thread():
    """Torch on one thread: on a busy 2-core machine two spinning threads per process are many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_tiny_model(base: Path) -> Path:
    """Train (once per session; both test files share ``base``) and return the model folder."""
    from medhdiff.training import load_config, run_training

    model = base / "model"
    doc = model / "model.json"
    if doc.is_file() and "calibration" in json.loads(doc.read_text()):
        return model
    cfg = load_config(TINY_CONFIG)
    for name, value in TINY_STEPS.items():
        setattr(cfg.optim, name, value)
    cfg.optim.validate_every = 0  # validation previews cost time and change nothing here
    cfg.optim.checkpoint_every = max(TINY_STEPS["steps_global"], TINY_STEPS["steps_local"])
    cfg.data.contrasts = ("t2",)  # train (and calibrate) on T2 only; the model still knows t1/t2/flair
    with one_thread():
        return Path(run_training(cfg, base, device="cpu", calibrate=True))


def rician(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    re = clean + rng.normal(0.0, sigma, clean.shape)
    im = rng.normal(0.0, sigma, clean.shape)
    return np.sqrt(re**2 + im**2).astype(np.float32)


def small_scan(seed: int = 0, noise: float = 25.0) -> tuple[np.ndarray, np.ndarray]:
    """A small, oblique LPS brain with Rician noise inside (skull-stripped: zero outside)."""
    clean = smooth_brain((30, 28, 24), seed=seed)
    data = np.where(clean > 0, rician(clean, noise, seed + 100), 0.0).astype(np.float32) if noise else clean
    return data, make_affine("LPS", spacing=(3.0, 3.5, 4.0), oblique=True)


def t2_lesion_case(seed: int = 3, volume_ml: float = 15.0):
    """A synthetic 4 mm T2 brain, its healthy original, the tumour mask and the brain mask."""
    from medhdiff.synth.builtin import load_builtin_labelmap
    from medhdiff.synth.generator import HealthyBrainGenerator
    from medhdiff.synth.labels import CEREBRAL_WM
    from medhdiff.synth.lesions import LesionInjector

    labels, affine = load_builtin_labelmap()
    res = HealthyBrainGenerator(contrast="t2", spacing=4.0).generate(labels, affine, seed=seed)
    image, lesion, _ = LesionInjector(kind="tumor", volume_ml=volume_ml).inject(
        res.image, res.brain_mask, res.affine, "t2", seed=seed, wm_mask=res.labels == CEREBRAL_WM)
    return image.astype(np.float32), res.image.astype(np.float32), lesion > 0, res.brain_mask > 0, res.affine


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="session")
def tiny_model(model_dir) -> Path:
    return model_dir


@pytest.fixture(scope="session")
def predictor(tiny_model) -> Predictor:
    return Predictor(weights=tiny_model, device="cpu")


@pytest.fixture
def int16_scan(tmp_path) -> Path:
    """LPS, oblique, int16 on disk with scl_slope 0.5, qform code 1 and sform code 2."""
    data, aff = small_scan()
    stored = np.round(data / 0.5).astype(np.int16)
    return write_nifti(tmp_path / "scan_t2.nii.gz", stored, aff, dtype=np.int16, slope=0.5)


# ---------------------------------------------------------------------------- geometry and types
def test_outputs_on_input_grid_and_saved_with_its_geometry(predictor, int16_scan, tmp_path):
    vol = load_volume(int16_scan)
    assert vol.orientation[:2] == "LP" and vol.is_oblique and vol.source_dtype == "int16"
    raw = nib.load(str(int16_scan)).dataobj
    assert raw.slope == 0.5
    np.testing.assert_array_equal(vol.data, np.asarray(raw.get_unscaled(), np.float32) * 0.5)  # slope applied
    den = predictor.denoise(vol, contrast="t2")
    assert den.timestep > 0, "the noisy input must go through the sampler"
    rec = predictor.reconstruct(vol, contrast="t2", strength=0.3, steps=2)
    det = predictor.detect(vol, contrast="t2", ensemble=1, steps=1)
    arrays = {"denoised": den.image, "residual": den.residual, "reconstructed": rec.image,
              "anomaly": det.score_map, "mask": det.mask}
    for name, arr in arrays.items():
        assert arr.shape == vol.shape, name
        assert np.isfinite(arr).all(), name
    assert det.mask.dtype == np.uint8 and set(np.unique(det.mask)) <= {0, 1}
    np.testing.assert_allclose(den.image + den.residual, vol.data, rtol=1e-5, atol=1e-3)

    ref = nib.load(str(int16_scan))
    for name, arr in arrays.items():
        kind = "mask" if name == "mask" else "image"
        path = save_volume(arr, tmp_path / f"out_{name}.nii.gz", vol, kind=kind)
        img = nib.load(str(path))
        assert img.shape == vol.shape
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
        np.testing.assert_allclose(img.get_qform(), ref.get_qform(), atol=1e-5)
        np.testing.assert_allclose(img.get_sform(), ref.get_sform(), atol=1e-5)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 2
        assert img.get_data_dtype() == (np.uint8 if kind == "mask" else np.float32)
        slope, inter = img.header.get_slope_inter()
        assert slope in (None, 1.0) and inter in (None, 0.0)
        np.testing.assert_array_equal(np.asanyarray(img.dataobj), arr.astype(img.get_data_dtype()))


# ---------------------------------------------------------------------------- denoise
def test_denoise_lowers_the_error_against_the_clean_volume(predictor):
    from medhdiff.synth.cohort import synthesize

    case = next(synthesize(1, "t2", spacing=4.0, seed=0, noise_range=(0.0, 0.0)))
    brain = case.brain_mask > 0
    sigma = 0.08 * float(np.percentile(case.image[brain], 99))
    noisy = rician(case.image, sigma, seed=1)
    res = predictor.denoise(Volume(noisy, case.affine), contrast="t2", mask=brain)
    mse_in = float(np.mean((noisy[brain] - case.image[brain]) ** 2))
    mse_out = float(np.mean((res.image[brain] - case.image[brain]) ** 2))
    assert res.sigma == pytest.approx(sigma, rel=0.15)
    assert res.timestep > 0
    # the session's model gets ~0.6 here (a 4+4-step model: ~1.0, i.e. no gain)
    assert mse_out < 0.8 * mse_in, (mse_in, mse_out)
    assert np.isfinite(res.image).all()


@pytest.mark.parametrize("noise", ["gaussian-skullstripped", "rician-everywhere", "rician-skullstripped"])
def test_estimate_sigma_recovers_known_sigma(noise):
    clean = smooth_brain((64, 64, 48), seed=3)
    brain = clean > 0
    sigma = 25.0
    rng = np.random.default_rng(7)
    if noise == "gaussian-skullstripped":
        data = np.where(brain, clean + rng.normal(0.0, sigma, clean.shape), 0.0)
        expected = "wavelet"
    else:
        data = rician(clean, sigma, seed=7)
        if noise == "rician-skullstripped":
            data = np.where(brain, data, 0.0)
            expected = "wavelet"
        else:
            expected = "background"
    est, method = estimate_sigma(data, brain)
    assert method == expected
    assert est == pytest.approx(sigma, rel=0.15)


# ---------------------------------------------------------------------------- reconstruct
def test_reconstruct_region_leaves_everything_outside_bitwise_unchanged(predictor, int16_scan):
    vol = load_volume(int16_scan)
    region = np.zeros(vol.shape, dtype=bool)
    region[10:20, 9:19, 8:16] = True
    res = predictor.reconstruct(vol, region=region, strength=0.4, steps=3, contrast="t2", seed=1)
    assert res.image.dtype == np.float32 and res.image.shape == vol.shape
    expected = vol.data.astype(np.float32)
    assert np.array_equal(res.image[~region], expected[~region])
    assert np.isfinite(res.image[region]).all()
    assert not np.array_equal(res.image[region], expected[region]), "the region was not re-synthesised"
    # reproducible for a seed
    again = predictor.reconstruct(vol, region=region, strength=0.4, steps=3, contrast="t2", seed=1)
    assert np.array_equal(again.image, res.image)
    with pytest.raises(InputError):
        predictor.reconstruct(vol, region=region[:-1], contrast="t2")
    with pytest.raises(InputError):
        predictor.reconstruct(vol, region=np.zeros(vol.shape, bool), contrast="t2")


# ---------------------------------------------------------------------------- detect
REPORT_KEYS = {"components", "total_lesion_ml", "threshold", "threshold_source", "model_sha256", "n_components",
               "contrast", "polarity"}
COMPONENT_KEYS = {"volume_ml", "centroid_mm", "max_score", "mean_score", "id"}


def _check_report(report: dict, predictor: Predictor, model_dir: Path) -> None:
    assert REPORT_KEYS <= set(report)
    assert report["model_sha256"] == predictor.sha256 == json.loads((model_dir / "model.json").read_text())["sha256"]
    assert len(report["model_sha256"]) == 64
    assert np.isfinite(report["threshold"])
    assert report["n_components"] == len(report["components"])
    for c in report["components"]:
        assert COMPONENT_KEYS <= set(c)
        assert c["volume_ml"] > 0 and len(c["centroid_mm"]) == 3 and c["max_score"] >= c["mean_score"] > 0
    assert report["total_lesion_ml"] == pytest.approx(sum(c["volume_ml"] for c in report["components"]), abs=1e-2)
    json.dumps(report)  # serialisable as it is


def test_detect_real_tiny_model_scores_injected_lesion_higher(predictor, tiny_model):
    image, _, lesion, brain, affine = t2_lesion_case()
    res = predictor.detect(Volume(image, affine), contrast="t2", mask=brain)
    _check_report(res.report, predictor, tiny_model)
    assert res.report["threshold_source"].startswith("calibrated")
    assert res.report["polarity"] == "bright"
    score = res.score_map
    assert np.isfinite(score).all() and score.min() >= 0
    a = auroc(score[brain], lesion[brain])
    ratio = float(score[lesion].mean() / score[brain & ~lesion].mean())
    # Honest bar for a 90-step, 4 mm model: its reconstructions are still noisy, so it does NOT
    # reach AUROC 0.8 (it gets ~0.7 on this case); it must clearly beat chance.
    assert a > 0.6, a
    assert ratio > 1.3, ratio


def test_detect_pipeline_with_oracle_reconstruction_finds_the_lesion(predictor, tiny_model, monkeypatch):
    """Scoring, mapping back, thresholding and the report, with the model's reconstruction replaced
    by the known healthy image (an 'oracle'): isolates the pipeline from the tiny model's quality."""
    from medhdiff.preprocess.normalize import normalize

    image, healthy, lesion, brain, affine = t2_lesion_case()

    def oracle(prep, *args, **kwargs):
        h = normalize(predictor.preprocessor.to_model(healthy, prep.record, kind="map"), prep.record.norm)
        return np.where(prep.mask, h, 0.0).astype(np.float32)

    monkeypatch.setattr(predictor, "_reconstruct_model_space", oracle)
    res = predictor.detect(Volume(image, affine), contrast="t2", mask=brain, threshold=0.1)
    _check_report(res.report, predictor, tiny_model)
    assert res.report["threshold_source"] == "user"
    a = auroc(res.score_map[brain], lesion[brain])
    assert a > 0.8, a
    assert res.report["n_components"] >= 1
    top = res.report["components"][0]
    true_centre = (affine @ np.array([*np.argwhere(lesion).mean(axis=0), 1.0]))[:3]
    assert np.linalg.norm(np.asarray(top["centroid_mm"]) - true_centre) < 8.0
    true_ml = lesion.sum() * abs(np.linalg.det(affine[:3, :3])) / 1000
    assert 0.3 * true_ml < res.report["total_lesion_ml"] < 1.5 * true_ml
    found = res.mask.astype(bool)
    assert (found & lesion).sum() > 0.5 * found.sum()  # most of what is found is lesion


# ---------------------------------------------------------------------------- one model, many scans
def test_predictor_loads_once_and_serves_several_volumes(tiny_model, monkeypatch):
    import medhdiff.tasks.predictor as predictor_module

    calls = []
    real = predictor_module.load_bundle
    monkeypatch.setattr(predictor_module, "load_bundle", lambda *a, **k: calls.append(a) or real(*a, **k))
    p = Predictor(weights=tiny_model, device="cpu")
    net = p.bundle.patch_model
    outs = []
    for seed in (0, 1):
        data, aff = small_scan(seed=seed)
        vol = Volume(data[: 30 - 2 * seed], aff)  # two different grids
        res = p.denoise(vol, contrast="t2")
        assert res.image.shape == vol.shape and np.isfinite(res.image).all() and res.timestep > 0
        outs.append(res)
    assert len(calls) == 1
    assert p.bundle.patch_model is net
    assert p.sha256 == json.loads((tiny_model / "model.json").read_text())["sha256"]


# ---------------------------------------------------------------------------- contrast warnings
@pytest.fixture
def medhdiff_log(caplog, monkeypatch):
    # the CLI (run earlier in the same session) stops the "medhdiff" logger from propagating to the root
    monkeypatch.setattr(logging.getLogger("medhdiff"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="medhdiff")
    return caplog


def test_warns_on_unknown_contrast(predictor, medhdiff_log, tmp_path):
    data, aff = small_scan(noise=0.0)
    path = write_nifti(tmp_path / "scan.nii.gz", data, aff)  # nothing in the name says which contrast
    predictor.denoise(load_volume(path))
    msgs = [r.getMessage() for r in medhdiff_log.records if r.name == "medhdiff" and r.levelno == logging.WARNING]
    assert any("contrast unknown" in m for m in msgs), msgs
    medhdiff_log.clear()
    predictor.denoise(load_volume(path), contrast="pd")
    msgs = [r.getMessage() for r in medhdiff_log.records if r.levelno == logging.WARNING]
    assert any("not pd" in m for m in msgs), msgs


def test_warns_when_the_model_is_for_another_contrast(tiny_model, medhdiff_log, tmp_path):
    t1_model = tmp_path / "t1_model"
    shutil.copytree(tiny_model, t1_model)
    doc = json.loads((t1_model / "model.json").read_text())
    doc["model"]["contrasts"] = ["t1"]
    doc["contrasts"] = ["t1"]
    (t1_model / "model.json").write_text(json.dumps(doc))
    p = Predictor(weights=t1_model, device="cpu")
    data, aff = small_scan(noise=0.0)
    path = write_nifti(tmp_path / "patient_T2w.nii.gz", data, aff)  # contrast guessed from the name
    res = p.denoise(load_volume(path))
    assert np.isfinite(res.image).all()
    msgs = [r.getMessage() for r in medhdiff_log.records if r.levelno == logging.WARNING]
    assert any("trained for t1, not t2" in m for m in msgs), msgs
    medhdiff_log.clear()
    Predictor(weights=tiny_model, device="cpu").denoise(load_volume(path))  # the right model: no warning
    assert not [r for r in medhdiff_log.records if r.levelno >= logging.WARNING]
