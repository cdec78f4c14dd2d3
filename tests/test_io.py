"""Volume I/O: header-safe round trips in every orientation, dtype and format."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_affine, smooth_brain, write_dicom_series, write_nifti
from medhdiff.errors import InputError, OutputExistsError, OutputWriteError, UnsupportedFormatError
from medhdiff.io import expand_inputs, load_volume, output_path, save_volume, select_shard


@pytest.mark.parametrize("orientation", ["LPS", "LIA", "RAS"])
def test_int16_scl_slope_round_trip_keeps_affine_codes_and_values(tmp_path, orientation):
    aff = make_affine(orientation)
    raw = (smooth_brain() / 2).astype(np.int16)
    src = write_nifti(tmp_path / "in.nii.gz", raw, aff, dtype=np.int16, slope=2.0, inter=-5.0,
                      qform_code=1, sform_code=2)
    vol = load_volume(src)
    assert vol.data.dtype == np.float32
    assert vol.source_dtype == "int16"
    np.testing.assert_allclose(vol.data, raw.astype(np.float64) * 2.0 - 5.0)
    assert vol.orientation == "".join(nib.aff2axcodes(aff))
    assert vol.is_oblique

    out = save_volume(vol, tmp_path / "out.nii.gz")
    back = nib.load(str(out))
    assert back.get_data_dtype() == np.float32
    assert back.header.get_slope_inter() == (None, None)  # scaling reset (stored as NaN/identity)
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 2
    np.testing.assert_allclose(back.affine, nib.load(str(src)).affine, atol=1e-6)
    np.testing.assert_allclose(back.header.get_qform(), nib.load(str(src)).header.get_qform(), atol=1e-6)
    np.testing.assert_array_equal(back.get_fdata(dtype=np.float32), vol.data)


@pytest.mark.parametrize("dtype", [np.float64, np.uint8])
def test_other_dtypes_load_as_float32(tmp_path, dtype):
    data = (smooth_brain() / 5).astype(dtype)
    src = write_nifti(tmp_path / "in.nii", data, make_affine("LIA"), dtype=dtype)
    vol = load_volume(src)
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data, data.astype(np.float32))


def test_masks_are_uint8_and_images_float32(tmp_path):
    vol = load_volume(write_nifti(tmp_path / "in.nii.gz", smooth_brain(), make_affine()))
    m = save_volume(vol.data > 500, tmp_path / "mask.nii.gz", reference=vol)
    i = save_volume(vol.data.astype(np.float64), tmp_path / "img.nii.gz", reference=vol)
    assert nib.load(str(m)).get_data_dtype() == np.uint8
    assert nib.load(str(i)).get_data_dtype() == np.float32
    assert set(np.unique(nib.load(str(m)).get_fdata())) <= {0.0, 1.0}


def test_4d_single_volume_is_accepted(tmp_path):
    data = smooth_brain()[..., None]
    vol = load_volume(write_nifti(tmp_path / "in4d.nii.gz", data, make_affine()))
    assert vol.shape == data.shape[:3]


@pytest.mark.parametrize("shape", [(20, 20), (8, 8, 8, 2, 3), (8, 8, 1), (6, 6, 6, 3)])
def test_non_3d_images_are_refused(tmp_path, shape):
    path = tmp_path / "bad.nii.gz"
    nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)).to_filename(str(path))
    with pytest.raises(InputError, match="3D"):
        load_volume(path)


def test_missing_corrupt_truncated_and_unsupported_inputs(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_volume(tmp_path / "missing.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(InputError, match="cannot read"):
        load_volume(junk)
    good = write_nifti(tmp_path / "good.nii.gz", smooth_brain((40, 40, 40)), make_affine())
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError):
        load_volume(trunc)
    txt = tmp_path / "scan.txt"
    txt.write_text("hello")
    with pytest.raises(UnsupportedFormatError):
        load_volume(txt)


def test_huge_declared_shape_is_refused_before_allocation(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((10000, 10000, 10000))
    hdr.set_data_dtype(np.int16)
    path = tmp_path / "huge.nii"
    with open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\x00" * 4 + b"\x00" * 1000)
    with pytest.raises(InputError, match="GB"):
        load_volume(path)


def test_save_refuses_input_and_existing_without_overwrite(tmp_path):
    src = write_nifti(tmp_path / "in.nii.gz", smooth_brain(), make_affine())
    vol = load_volume(src)
    with pytest.raises(InputError, match="input"):
        save_volume(vol.data, src, reference=vol, overwrite=True)
    out = save_volume(vol.data, tmp_path / "out.nii.gz", reference=vol)
    with pytest.raises(OutputExistsError):
        save_volume(vol.data, out, reference=vol)
    save_volume(vol.data * 2, out, reference=vol, overwrite=True)
    np.testing.assert_allclose(load_volume(out).data, vol.data * 2)
    with pytest.raises(InputError, match="does not exist"):
        save_volume(vol.data, tmp_path / "nope" / "x.nii.gz", reference=vol)


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    vol = load_volume(write_nifti(tmp_path / "in.nii.gz", smooth_brain(), make_affine()))

    def boom(self, filename):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(nib.Nifti1Image, "to_filename", boom)
    with pytest.raises(OutputWriteError, match="cannot write .*out.nii.gz: No space left on device"):
        save_volume(vol.data, tmp_path / "out.nii.gz", reference=vol)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz"]


def test_short_uncompressed_nifti_and_unusable_affines_are_refused(tmp_path):
    good = write_nifti(tmp_path / "good.nii", smooth_brain(), make_affine())
    short = tmp_path / "short.nii"
    short.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(InputError, match="holds .* bytes, but its header declares"):
        load_volume(short)
    hdr = nib.load(str(good)).header.copy()
    for row in ("srow_x", "srow_y", "srow_z"):
        hdr[row][2] = 0.0  # the third axis collapsed
    hdr["qform_code"] = 0  # sform only, so nibabel uses the broken affine
    nib.Nifti1Image(smooth_brain(), None, hdr).to_filename(str(tmp_path / "flat.nii.gz"))
    with pytest.raises(InputError, match="no usable geometry"):
        load_volume(tmp_path / "flat.nii.gz")


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_sitk_formats_round_trip_geometry(tmp_path, ext):
    aff = make_affine("LPS")
    data = smooth_brain()
    ref = load_volume(write_nifti(tmp_path / "ref.nii.gz", data, aff))
    path = save_volume(ref.data, tmp_path / f"copy{ext}", reference=ref)
    vol = load_volume(path)
    assert vol.fmt == ext[1:]
    np.testing.assert_allclose(vol.affine, aff, atol=1e-5)
    np.testing.assert_allclose(vol.data, data)
    # ITK's own view: origin is the RAS origin with x and y negated (LPS).
    img = sitk.ReadImage(str(path))
    np.testing.assert_allclose(img.GetOrigin(), [-aff[0, 3], -aff[1, 3], aff[2, 3]], atol=1e-5)
    # Writing back to NIfTI from an ITK-format reference keeps the geometry too.
    again = load_volume(save_volume(vol.data, tmp_path / "again.nii.gz", reference=vol))
    np.testing.assert_allclose(again.affine, aff, atol=1e-5)


def test_dicom_series_written_by_sitk_reads_back(tmp_path):
    data = (smooth_brain((24, 20, 10))).astype(np.int16)
    series = write_dicom_series(tmp_path / "series", data, "1.2.826.0.1.3680043.2.1125.1.12345",
                                spacing=(0.8, 0.9, 2.0), origin=(10.0, -20.0, 30.0))
    vol = load_volume(series)
    assert vol.fmt == "dicom"
    assert vol.shape == data.shape
    np.testing.assert_allclose(vol.spacing, (0.8, 0.9, 2.0), atol=1e-4)
    np.testing.assert_allclose(vol.affine[:3, 3], [-10.0, 20.0, 30.0], atol=1e-4)
    np.testing.assert_allclose(vol.data, data)
    assert vol.orientation == "LPS"
    assert expand_inputs([series]) == [series]


def test_expand_inputs_and_output_naming(tmp_path):
    a = write_nifti(tmp_path / "a.nii.gz", smooth_brain(), make_affine())
    b = write_nifti(tmp_path / "b.nii", smooth_brain(), make_affine())
    (tmp_path / "notes.txt").write_text("x")
    assert expand_inputs([tmp_path]) == [a, b]
    assert expand_inputs([a, a]) == [a]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images"):
        expand_inputs([empty])
    assert output_path(a, "denoised") == tmp_path / "a_denoised.nii.gz"
    assert output_path(b, "mask", tmp_path / "o") == tmp_path / "o" / "b_mask.nii.gz"
    cases = [tmp_path / f"{i}.nii" for i in range(5)]
    assert select_shard(cases, "1/2") == cases[1::2]
    with pytest.raises(InputError):
        select_shard(cases, "2/2")


def test_outputs_get_ordinary_permissions_and_detached_headers_are_refused(tmp_path):
    import os
    import stat

    vol = load_volume(write_nifti(tmp_path / "in.nii.gz", smooth_brain(), make_affine()))
    out = save_volume(vol.data, tmp_path / "out.nii.gz", reference=vol)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    for ext in (".mhd", ".nhdr"):
        with pytest.raises(UnsupportedFormatError, match="one file"):
            save_volume(vol.data, tmp_path / f"out{ext}", reference=vol)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz", "out.nii.gz"]
