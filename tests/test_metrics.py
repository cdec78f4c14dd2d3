"""Metrics against hand-computed cases and brute force, and the ``evaluate`` command."""

from __future__ import annotations

import itertools
import json
import math

import nibabel as nib
import numpy as np
import pytest
import typer
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

from medhdiff.metrics import auprc, auroc, best_dice, dice, evaluate_arrays, psnr, ssim
from medhdiff_cli.common import setup_logging
from medhdiff_cli.evaluate_cmd import evaluate

# --------------------------------------------------------------------------- brute-force references


def auroc_pairs(scores, labels):
    s, y = np.asarray(scores, float).ravel(), np.asarray(labels, bool).ravel()
    pos, neg = s[y], s[~y]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def ap_thresholds(scores, labels):
    s, y = np.asarray(scores, float).ravel(), np.asarray(labels, bool).ravel()
    ap, prev_r = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        tp = (pred & y).sum()
        r, p = tp / y.sum(), tp / pred.sum()
        ap += (r - prev_r) * p
        prev_r = r
    return ap


def best_dice_brute(scores, labels):
    s, y = np.asarray(scores, float).ravel(), np.asarray(labels, bool).ravel()
    best = (-1.0, None)
    for t in sorted(set(s.tolist()), reverse=True):
        d = 2 * (y & (s >= t)).sum() / ((s >= t).sum() + y.sum())
        if d > best[0]:
            best = (d, t)
    return best


# --------------------------------------------------------------------------- AUROC / AUPRC / Dice


def test_auroc_separated_reversed_random():
    labels = np.array([0, 0, 0, 1, 1])
    assert auroc([0.1, 0.2, 0.3, 0.8, 0.9], labels) == 1.0
    assert auroc([0.9, 0.8, 0.7, 0.2, 0.1], labels) == 0.0
    rng = np.random.default_rng(0)
    y = rng.random(200_000) < 0.1
    assert auroc(rng.random(y.size), y) == pytest.approx(0.5, abs=0.01)


def test_auroc_ties_by_hand():
    # pairs (pos, neg): 0.4 vs 0.1 -> 1, 0.4 vs 0.4 -> 1/2, 0.8 vs 0.1 -> 1, 0.8 vs 0.4 -> 1  => 3.5 / 4
    assert auroc([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1]) == pytest.approx(0.875)
    # everything tied -> 1/2
    assert auroc(np.ones(10), np.arange(10) % 2) == pytest.approx(0.5)
    # one class only -> undefined
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))


def test_auroc_auprc_match_brute_force_with_many_ties():
    rng = np.random.default_rng(1)
    for _ in range(5):
        y = rng.random(300) < 0.3
        s = rng.integers(0, 6, size=300) + 1.5 * y * rng.random(300).round(1)
        assert auroc(s, y) == pytest.approx(auroc_pairs(s, y), abs=1e-12)
        assert auprc(s, y) == pytest.approx(ap_thresholds(s, y), abs=1e-12)
        # independent of the order of tied voxels
        perm = rng.permutation(300)
        assert auprc(s[perm], y[perm]) == pytest.approx(auprc(s, y), abs=1e-12)


def test_auprc_by_hand():
    assert auprc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    # thresholds 0.8: R=1/2 P=1; 0.4: R=1 P=2/3; 0.1: R=1 (no step)
    assert auprc([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert math.isnan(auprc([0.1, 0.2], [0, 0]))
    # a useless constant score gives the prevalence
    assert auprc(np.zeros(8), [1, 0, 0, 0, 1, 0, 0, 0]) == pytest.approx(0.25)


def test_dice():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    assert dice(a, b) == 1.0
    a[0, :2] = True  # 8 voxels
    b[0, 1:3] = True  # 8 voxels, 4 shared
    assert dice(a, b) == pytest.approx(2 * 4 / 16)
    assert dice(a, a) == 1.0
    with pytest.raises(ValueError, match="shape mismatch"):
        dice(a, b[:2])


def test_best_dice_by_hand_and_brute_force():
    d, t = best_dice([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1])
    # t=0.8: 2/3, t=0.4: 4/5, t=0.1: 4/6
    assert d == pytest.approx(0.8) and t == 0.4
    d, t = best_dice([0.2, 0.3, 0.6, 0.7], [0, 0, 1, 1])
    assert d == 1.0 and t == 0.6
    assert best_dice([0.2, 0.3], [0, 0]) == (1.0, math.inf)
    rng = np.random.default_rng(2)
    y = rng.random(400) < 0.2
    s = np.round(rng.random(400) + 0.6 * y, 2)
    bd, bt = best_dice(s, y)
    ref_d, ref_t = best_dice_brute(s, y)
    assert bd == pytest.approx(ref_d) and bt == ref_t
    assert dice(s >= bt, y) == pytest.approx(bd)


def test_detection_metrics_fast_on_large_maps():
    import time

    rng = np.random.default_rng(3)
    n = 3_000_000
    y = rng.random(n) < 0.01
    s = (rng.random(n) + 0.5 * y).astype(np.float32)
    t0 = time.perf_counter()
    bd, bt = best_dice(s, y)
    a = auroc(s, y)
    ap = auprc(s, y)
    assert time.perf_counter() - t0 < 10
    assert 0 < bd <= 1 and 0.5 < a < 1 and 0 < ap < 1
    assert dice(s >= bt, y) == pytest.approx(bd)


# --------------------------------------------------------------------------- PSNR / SSIM


def test_psnr():
    ref = np.zeros((6, 6, 6))
    ref[2:4, 2:4, 2:4] = 2.0  # range 2
    assert psnr(ref, ref) == math.inf
    pred = ref + 0.1  # MSE 0.01
    assert psnr(pred, ref) == pytest.approx(10 * math.log10(4 / 0.01))
    assert psnr(pred, ref, data_range=1.0) == pytest.approx(10 * math.log10(1 / 0.01))
    # inside a mask: only the masked error counts, range from the masked reference
    mask = np.zeros_like(ref, bool)
    mask[1:5, 1:5, 1:5] = True
    pred2 = ref.copy()
    pred2[~mask] += 5.0
    pred2[mask] += 0.2
    assert psnr(pred2, ref, mask) == pytest.approx(10 * math.log10(4 / 0.04))
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(ref, ref[:3])


def _brain(shape=(24, 22, 14), seed=0):
    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.normal(size=shape), 2.0)
    return (img - img.min()) / np.ptp(img) * 1000.0


def test_ssim_identical_and_noise():
    img = _brain()
    assert ssim(img, img) == 1.0
    rng = np.random.default_rng(4)
    values = [ssim(img + rng.normal(scale=sd, size=img.shape), img) for sd in (5, 20, 80, 300)]
    assert all(a > b for a, b in itertools.pairwise(values)), values
    assert 0.9 < values[0] < 1.0 and -1 <= values[-1] < 0.5


def test_ssim_constant_images_by_hand():
    # constant inputs: variances vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b, L = 1.0, 2.0, 1.0
    c1 = (0.01 * L) ** 2
    got = ssim(np.full((8, 8, 8), a), np.full((8, 8, 8), b), data_range=L)
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))


def test_ssim_mask_crop_matches_full_map():
    img = _brain()
    rng = np.random.default_rng(5)
    noisy = img + rng.normal(scale=40, size=img.shape)
    mask = np.zeros(img.shape, bool)
    mask[8:14, 9:15, 5:9] = True
    # reference: the full SSIM map averaged over the mask, written out here
    x, y, rng_ = noisy, img, float(np.ptp(img[mask]))
    g = lambda v: gaussian_filter(v, 1.5, mode="reflect", truncate=3.5)  # noqa: E731
    mx, my = g(x), g(y)
    c1, c2 = (0.01 * rng_) ** 2, (0.03 * rng_) ** 2
    smap = ((2 * mx * my + c1) * (2 * (g(x * y) - mx * my) + c2)) / (
        (mx**2 + my**2 + c1) * (g(x * x) - mx**2 + g(y * y) - my**2 + c2))
    assert ssim(noisy, img, mask) == pytest.approx(smap[mask].mean(), rel=1e-10)


# --------------------------------------------------------------------------- evaluate_arrays


def test_evaluate_arrays_image_mode():
    img = _brain()
    out = evaluate_arrays(img + 3.0, img)
    assert out["mode"] == "image"
    assert out["mse"] == pytest.approx(9.0)
    assert out["psnr"] == pytest.approx(10 * math.log10(out["data_range"] ** 2 / 9.0))
    assert 0.99 < out["ssim"] < 1.0
    assert evaluate_arrays(img, img)["psnr"] == math.inf


def test_evaluate_arrays_segmentation_mode_and_mask():
    rng = np.random.default_rng(6)
    ref = np.zeros((10, 10, 10))
    ref[3:6, 3:6, 3:6] = 1
    score = 0.7 * ref + 0.5 * rng.random(ref.shape)
    score[0, 0, 0] = np.nan  # treated as 0
    out = evaluate_arrays(score, ref)
    assert out["mode"] == "segmentation"
    s0 = np.nan_to_num(score)
    assert out["auroc"] == pytest.approx(auroc(s0, ref))
    assert out["auprc"] == pytest.approx(auprc(s0, ref))
    assert (out["best_dice"], out["best_dice_threshold"]) == best_dice(s0, ref)
    assert out["ref_volume_voxels"] == 27 and "dice" not in out
    out = evaluate_arrays(score, ref, threshold=0.6)
    assert out["dice"] == pytest.approx(dice(s0 >= 0.6, ref))
    assert out["pred_volume_voxels"] == int((s0 >= 0.6).sum())
    # binary prediction: Dice at 0.5 and volumes
    pred = np.zeros_like(ref)
    pred[3:6, 3:6, 4:7] = 1
    out = evaluate_arrays(pred, ref)
    assert out["threshold"] == 0.5 and out["dice"] == pytest.approx(2 * 18 / 54)
    assert out["pred_volume_voxels"] == 27 and out["ref_volume_voxels"] == 27
    # mask restricts everything
    mask = np.zeros_like(ref)
    mask[:, :, :5] = 1
    out = evaluate_arrays(pred, ref, mask=mask)
    assert out["n_voxels"] == 500
    assert out["ref_volume_voxels"] == 18 and out["pred_volume_voxels"] == 9
    assert out["dice"] == pytest.approx(2 * 9 / 27)


def test_evaluate_arrays_errors():
    a = np.zeros((4, 4, 4))
    with pytest.raises(ValueError, match="shape mismatch"):
        evaluate_arrays(a, np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="shape mismatch"):
        evaluate_arrays(a, a, mask=np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="empty"):
        evaluate_arrays(a, a, mask=np.zeros_like(a))


# --------------------------------------------------------------------------- the command

app = typer.Typer()
app.command("evaluate")(evaluate)


@app.callback()
def _root() -> None:  # keeps "evaluate" a subcommand, as in the real CLI
    pass


runner = CliRunner()


def _nii(path, data, affine=None):
    nib.Nifti1Image(np.asarray(data, np.float32), np.diag([1.0, 1.2, 2.0, 1.0]) if affine is None else affine
                    ).to_filename(str(path))
    return str(path)


def test_cli_image_pair(tmp_path):
    img = _brain()
    ref = _nii(tmp_path / "ref.nii.gz", img)
    pred = _nii(tmp_path / "pred.nii.gz", img + np.random.default_rng(7).normal(scale=10, size=img.shape))
    res = runner.invoke(app, ["evaluate", "--pred", pred, "--ref", ref])
    assert res.exit_code == 0, res.output
    assert "PSNR" in res.stdout and "SSIM" in res.stdout
    out_json = tmp_path / "m.json"
    res = runner.invoke(app, ["evaluate", "--pred", pred, "--ref", ref, "--json", str(out_json)])
    assert res.exit_code == 0 and "PSNR" in res.stdout
    doc = json.loads(out_json.read_text())
    expect = evaluate_arrays(nib.load(pred).get_fdata(), nib.load(ref).get_fdata())
    assert doc["psnr"] == pytest.approx(expect["psnr"], rel=1e-5)
    assert doc["ssim"] == pytest.approx(expect["ssim"], rel=1e-5)
    assert list(tmp_path.glob(".*part*")) == []
    # identical images: PSNR inf survives strict JSON as "inf"
    res = runner.invoke(app, ["evaluate", "--pred", ref, "--ref", ref, "--json", "-"])
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["psnr"] == "inf" and doc["ssim"] == 1.0


def test_cli_score_map_with_mask(tmp_path):
    rng = np.random.default_rng(8)
    shape = (12, 12, 8)
    lesion = np.zeros(shape)
    lesion[4:8, 4:8, 2:5] = 1
    score = 0.6 * lesion + 0.5 * rng.random(shape)
    brain = np.zeros(shape)
    brain[1:11, 1:11, 1:7] = 1
    paths = [_nii(tmp_path / f"{n}.nii.gz", d) for n, d in (("s", score), ("l", lesion), ("b", brain))]
    res = runner.invoke(app, ["evaluate", "--pred", paths[0], "--ref", paths[1], "--mask", paths[2],
                              "--threshold", "0.55", "--json", "-"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # only JSON on stdout
    s32 = score.astype(np.float32)
    m = brain > 0
    assert doc["mode"] == "segmentation" and doc["n_voxels"] == int(m.sum())
    assert doc["auroc"] == pytest.approx(auroc(s32[m], lesion[m]))
    assert doc["auprc"] == pytest.approx(auprc(s32[m], lesion[m]))
    assert doc["best_dice"] == pytest.approx(best_dice(s32[m], lesion[m])[0])
    assert doc["dice"] == pytest.approx(dice(s32[m] >= 0.55, lesion[m]))
    assert doc["ref_volume_ml"] == pytest.approx(lesion.sum() * 1.0 * 1.2 * 2.0 / 1000, rel=1e-5)
    res = runner.invoke(app, ["evaluate", "--pred", paths[0], "--ref", paths[1]])
    assert res.exit_code == 0 and "AUROC" in res.stdout and "best Dice" in res.stdout


def test_cli_shape_mismatch_and_bad_input(tmp_path):
    a = _nii(tmp_path / "a.nii.gz", np.zeros((6, 6, 6)))
    b = _nii(tmp_path / "b.nii.gz", np.zeros((6, 6, 5)))
    res = runner.invoke(app, ["evaluate", "--pred", a, "--ref", b])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "shape mismatch" in lines[0]
    res = runner.invoke(app, ["evaluate", "--pred", a, "--ref", str(tmp_path / "missing.nii.gz")])
    assert res.exit_code == 2 and res.stderr.startswith("error:")
    res = runner.invoke(app, ["evaluate", "--pred", a, "--ref", a, "--mask", a])  # empty mask
    assert res.exit_code == 2 and "empty" in res.stderr


def test_cli_affine_mismatch_warns(tmp_path):
    img = _brain((10, 10, 6))
    a = _nii(tmp_path / "a.nii.gz", img)
    shifted = np.diag([1.0, 1.2, 2.0, 1.0])
    shifted[0, 3] = 5.0
    b = _nii(tmp_path / "b.nii.gz", img + 1.0, affine=shifted)
    setup_logging()  # as the real CLI's callback does: "warning: ..." lines on stderr
    res = runner.invoke(app, ["evaluate", "--pred", b, "--ref", a])
    assert res.exit_code == 0, res.output
    assert "warning:" in res.stderr and "affine" in res.stderr and "PSNR" in res.stdout
