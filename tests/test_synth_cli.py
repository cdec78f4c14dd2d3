"""``medhdiff synth`` writes valid, reproducible NIfTI files on a correct grid."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from medhdiff_cli.main import app

runner = CliRunner()


def test_synth_t2_lesions_reproducible_and_bright(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        res = runner.invoke(app, ["synth", "--n", "2", "--contrast", "t2", "--lesions", "--seed", "7",
                                  "--spacing", "3", "--out", str(out), "--png"])
        assert res.exit_code == 0, res.output
    for i in range(2):
        img = nib.load(str(a / f"synth_{i:04d}.nii.gz"))
        mask = nib.load(str(a / f"synth_{i:04d}_mask.nii.gz"))
        brain = nib.load(str(a / f"synth_{i:04d}_brainmask.nii.gz"))
        assert img.get_data_dtype() == np.float32 and mask.get_data_dtype() == np.uint8
        np.testing.assert_allclose(img.affine, mask.affine)
        np.testing.assert_allclose(img.affine, brain.affine)
        np.testing.assert_allclose(img.header.get_zooms(), (3.0, 3.0, 3.0), atol=1e-5)
        assert "".join(nib.aff2axcodes(img.affine)) == "RAS"
        assert int(img.header["sform_code"]) > 0
        x = img.get_fdata()
        les = mask.get_fdata() > 0
        br = brain.get_fdata() > 0
        assert les.any() and not (les & ~br).any()
        # the lesion is brighter on T2 than the brain around it
        from scipy.ndimage import binary_dilation

        ring = binary_dilation(les, iterations=2) & ~les & br
        assert x[les].mean() > x[ring].mean()
        # same seed, same volume
        np.testing.assert_array_equal(x, nib.load(str(b / f"synth_{i:04d}.nii.gz")).get_fdata())
    meta = json.loads((a / "synth.json").read_text())
    assert len(meta["cases"]) == 2 and meta["seed"] == 7
    assert (a / "synth_grid.png").stat().st_size > 1000


def test_synth_refuses_existing_outputs(tmp_path):
    args = ["synth", "--n", "1", "--spacing", "4", "--out", str(tmp_path)]
    assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "exists" in res.stderr
    assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0


def test_synth_lesion_contrast_makes_fainter_lesions_and_is_validated(tmp_path):
    def lesion_excess(out, scale):
        res = runner.invoke(app, ["synth", "--n", "1", "--contrast", "flair", "--lesions", "--seed", "3",
                                  "--spacing", "3", "--out", str(out), "--lesion-contrast", scale])
        assert res.exit_code == 0, res.output
        x = nib.load(str(out / "synth_0000.nii.gz")).get_fdata()
        les = nib.load(str(out / "synth_0000_mask.nii.gz")).get_fdata() > 0
        return x, les, json.loads((out / "synth.json").read_text())["cases"][0]["lesion_contrast"]

    x1, les1, c1 = lesion_excess(tmp_path / "full", "1")
    x2, les2, c2 = lesion_excess(tmp_path / "faint", "0.4")
    np.testing.assert_array_equal(les1, les2)
    assert c1 == 1.0 and c2 == 0.4
    outside = ~les1
    np.testing.assert_allclose(x1[outside], x2[outside])  # only the lesion changes
    assert x2[les1].mean() < x1[les1].mean()
    _, _, c3 = lesion_excess(tmp_path / "range", "0.3,0.6")
    assert 0.3 <= c3 <= 0.6
    for bad in ("abc", "0.6,0.3", "0", "1,2,3", "inf", "1,inf", "nan", "1.5"):
        res = runner.invoke(app, ["synth", "--n", "1", "--lesions", "--spacing", "4", "--out", str(tmp_path / "bad"),
                                  "--lesion-contrast", bad])
        assert res.exit_code == 2 and "lesion-contrast" in res.stderr, (bad, res.output)
        assert not (tmp_path / "bad").exists()  # refused before anything is written
    res = runner.invoke(app, ["synth", "--n", "1", "--spacing", "4", "--out", str(tmp_path / "nolesion"),
                              "--lesion-contrast", "0.5"])
    assert res.exit_code == 2 and "--lesions" in res.stderr
