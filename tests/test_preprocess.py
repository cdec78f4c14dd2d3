"""Invertible preprocessing: load -> forward -> inverse -> save lands on the input grid."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

from conftest import make_affine, smooth_brain, write_nifti
from medhdiff.errors import InputError
from medhdiff.io import Volume, load_volume, save_volume
from medhdiff.preprocess import PreprocessConfig, Preprocessor, otsu_mask, to_ras


def _inner(mask: np.ndarray, iterations: int = 2) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask, iterations=iterations)


@pytest.mark.parametrize("orientation", ["LPS", "LIA", "RAS"])
@pytest.mark.parametrize("dtype", ["int16_slope", "float64", "uint8"])
def test_oblique_anisotropic_round_trip(tmp_path, orientation, dtype):
    aff = make_affine(orientation, spacing=(0.9, 1.3, 2.5))
    brain = smooth_brain((40, 32, 16))
    if dtype == "int16_slope":
        src = write_nifti(tmp_path / "in.nii.gz", np.round(brain / 2).astype(np.int16), aff,
                          dtype=np.int16, slope=2.0, inter=0.0)
    elif dtype == "float64":
        src = write_nifti(tmp_path / "in.nii.gz", brain.astype(np.float64), aff, dtype=np.float64)
    else:
        src = write_nifti(tmp_path / "in.nii.gz", np.round(brain / 4).astype(np.uint8), aff, dtype=np.uint8)
    vol = load_volume(src)
    pre = Preprocessor(PreprocessConfig(spacing=(1.0, 1.0, 1.0), pad_multiple=8))
    out = pre.forward(vol)
    assert all(s % 8 == 0 for s in out.image.shape)
    assert out.image.shape == out.mask.shape == out.record.model_shape
    # canonical RAS in model space
    assert "".join(nib.aff2axcodes(out.record.model_affine)) == "RAS"
    back = pre.inverse(out.image, out.record)
    assert back.shape == vol.shape and back.dtype == np.float32
    inner = _inner(vol.data > 0)
    rel = np.abs(back - vol.data)[inner].mean() / vol.data[inner].mean()
    assert rel < 0.02, rel

    saved = load_volume(save_volume(back, tmp_path / "out.nii.gz", reference=vol))
    np.testing.assert_allclose(saved.affine, vol.affine, atol=1e-6)
    hdr = nib.load(str(tmp_path / "out.nii.gz")).header
    assert int(hdr["qform_code"]) == 1 and int(hdr["sform_code"]) == 2
    assert saved.shape == vol.shape

    mask_back = pre.inverse(out.mask, out.record, kind="mask")
    assert mask_back.dtype == np.uint8
    truth = vol.data > 0
    dice = 2 * (mask_back.astype(bool) & truth).sum() / (mask_back.sum() + truth.sum())
    assert dice > 0.95


def test_native_spacing_round_trip_is_exact():
    vol = Volume(smooth_brain(), make_affine("LIA"))
    pre = Preprocessor(PreprocessConfig(spacing=None, pad_multiple=16))
    out = pre.forward(vol)
    back = pre.inverse(out.image, out.record)
    np.testing.assert_allclose(back, vol.data, rtol=1e-5, atol=1e-3)


def test_reorientation_is_exact_and_keeps_world_positions():
    aff = make_affine("LIA", oblique=False)
    data = smooth_brain()
    ras, ras_aff = to_ras(data, aff)
    assert "".join(nib.aff2axcodes(ras_aff)) == "RAS"
    # the same world point holds the same value
    ijk = np.array([3, 7, 5, 1.0])
    world = aff @ ijk
    ijk2 = np.rint(np.linalg.inv(ras_aff) @ world).astype(int)
    assert data[3, 7, 5] == ras[ijk2[0], ijk2[1], ijk2[2]]


def test_normalisation_parameters_are_kept_and_inverted():
    vol = Volume(smooth_brain() * 3 + 0, make_affine("RAS"))
    pre = Preprocessor(PreprocessConfig(spacing=None, upper_percentile=99.0))
    out = pre.forward(vol)
    brain = vol.data[vol.data > 0]
    assert out.record.norm.scale == pytest.approx(np.percentile(brain, 99.0), rel=1e-4)
    assert out.record.norm.offset == 0.0
    assert np.percentile(out.image[out.mask], 99.0) == pytest.approx(1.0, abs=1e-3)


def test_mask_from_file_on_other_grid_is_resampled(caplog):
    aff = make_affine("LPS")
    vol = Volume(smooth_brain(), aff)
    truth = vol.data > 0
    # a mask on a RAS grid of the same brain, upsampled
    pre = Preprocessor(PreprocessConfig(spacing=(0.8, 0.8, 0.8)))
    ras = pre.forward(Volume(truth.astype(np.float32), aff))
    mask_vol = Volume(ras.mask.astype(np.float32), ras.record.model_affine)
    with caplog.at_level(logging.WARNING, logger="medhdiff"):
        out = Preprocessor(PreprocessConfig(spacing=None)).forward(vol, mask=mask_vol)
    assert "different grid" in caplog.text
    assert out.record.mask_source == "file"


def test_otsu_mask_finds_head_with_background_noise():
    rng = np.random.default_rng(1)
    data = smooth_brain((40, 40, 30), background=0.0) + rng.normal(20, 5, (40, 40, 30)).astype(np.float32)
    mask = otsu_mask(data)
    truth = smooth_brain((40, 40, 30)) > 0
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.95
    pre = Preprocessor(PreprocessConfig(spacing=None))
    assert pre.forward(Volume(data, np.eye(4))).record.mask_source == "otsu"


def test_nan_inf_are_zeroed_with_warning(caplog):
    data = smooth_brain()
    data[5, 5, 5] = np.nan
    data[18, 15, 8] = np.inf
    with caplog.at_level(logging.WARNING, logger="medhdiff"):
        out = Preprocessor(PreprocessConfig(spacing=None)).forward(Volume(data, np.eye(4)))
    assert "NaN/Inf" in caplog.text
    assert out.record.nonfinite_voxels == 2
    assert np.isfinite(out.image).all()


def test_all_zero_input_is_refused():
    with pytest.raises(InputError, match="all zeros"):
        Preprocessor().forward(Volume(np.zeros((10, 10, 10), np.float32), np.eye(4)))


def test_to_model_maps_extra_arrays_like_the_image():
    vol = Volume(smooth_brain(), make_affine("LPS"))
    pre = Preprocessor(PreprocessConfig(spacing=(1.2, 1.2, 1.2), pad_multiple=8))
    out = pre.forward(vol)
    m = pre.to_model(vol.data > 0, out.record, kind="mask")
    assert m.shape == out.mask.shape
    assert (m == out.mask).mean() > 0.99


@pytest.mark.parametrize("interpolation", ["linear", "bspline"])
def test_to_model_field_resamples_noise_exactly_as_the_image(interpolation):
    """A noise field mapped with kind="field" equals the noise the image carries into model space."""
    clean = smooth_brain((36, 30, 12))
    inside = clean > 0
    noise = np.random.default_rng(4).standard_normal(clean.shape).astype(np.float32)
    aff = make_affine("LPS", spacing=(0.9, 1.1, 3.0), oblique=True)
    pre = Preprocessor(PreprocessConfig(spacing=(1.0, 1.0, 1.0), pad_multiple=8, interpolation=interpolation,
                                        zero_outside_mask=False))
    noisy = pre.forward(Volume(np.where(inside, clean + 25 * noise, 0), aff))
    plain = pre.forward(Volume(clean, aff))
    assert noisy.record.model_shape == plain.record.model_shape and noisy.record.box == plain.record.box
    carried = (noisy.image * noisy.record.norm.scale + noisy.record.norm.offset
               - plain.image * plain.record.norm.scale - plain.record.norm.offset)
    field = pre.to_model(np.where(inside, 25 * noise, 0), noisy.record, kind="field")
    np.testing.assert_allclose(field, carried, atol=2e-2 * 25)
    # resampled from 3 mm slices, the noise is no longer white along the slice axis
    unit = pre.to_model(noise, noisy.record, kind="field")
    core = unit[4:-4, 4:-4, 4:-4]
    along = [float(np.corrcoef(np.moveaxis(core, a, 0)[:-1].ravel(), np.moveaxis(core, a, 0)[1:].ravel())[0, 1])
             for a in range(3)]
    assert max(along) > 0.3, along
    with pytest.raises(ValueError, match="kind"):
        pre.to_model(noise, noisy.record, kind="image")


def test_unknown_config_key_is_rejected():
    with pytest.raises(ValueError, match="unknown"):
        PreprocessConfig.from_dict({"spacing": 1.0, "bogus": 3})
