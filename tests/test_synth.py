"""Tests for medhdiff.synth: built-in label map, healthy-brain synthesis, lesions, preview."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from medhdiff.synth import (
    HealthyBrainGenerator,
    LesionInjector,
    SynthResult,
    list_labelmaps,
    load_builtin_labelmap,
    prepare_label_grid,
    save_slice_grid,
)
from medhdiff.synth import labels as L
from medhdiff.synth.builtin import builtin_labelmap_path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HEALTHY_DIR = SHARED_DATA / "healthy_labelmaps"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def builtin():
    return load_builtin_labelmap()


@pytest.fixture(scope="module")
def synth(builtin):
    """One synthetic brain per preset contrast (shared across tests for speed)."""
    labels, affine = builtin
    return {c: HealthyBrainGenerator(c).generate(labels, affine, seed=7) for c in ("t1", "t2", "flair")}


def _class_means(res: SynthResult, erode: bool = True) -> dict[str, float]:
    out = {}
    for cls in ("wm", "gm", "deep_gm", "csf"):
        m = L.class_mask(res.labels, cls)
        if erode:  # interior voxels only: limits partial volume at tissue borders
            m = ndi.binary_erosion(m)
        assert m.sum() > 20, f"too few {cls} voxels"
        out[cls] = float(res.image[m].mean())
    return out


def _ring(mask: np.ndarray, brain: np.ndarray, width: int = 2) -> np.ndarray:
    m = mask > 0
    return ndi.binary_dilation(m, iterations=width) & ~m & (brain > 0)


# --------------------------------------------------------------------------- labels


def test_label_sets():
    assert L.CSF in L.BRAIN_LABELS
    assert L.CEREBRAL_WM in L.BRAIN_LABELS and L.CEREBRAL_CORTEX in L.BRAIN_LABELS
    for code in (0, 165, 258, 259):
        assert code not in L.BRAIN_LABELS
    classes = [L.WM_LIKE, L.GM_LIKE, L.DEEP_GM, L.CSF_LIKE, L.EXTRA_CEREBRAL]
    for i, a in enumerate(classes):
        for b in classes[i + 1 :]:
            assert not (a & b)
    assert L.tissue_class(4) == "csf" and L.tissue_class(12) == "deep_gm" and L.tissue_class(258) == "extra_cerebral"
    arr = np.array([0, 2, 24, 165, 258, 259, 99])
    np.testing.assert_array_equal(L.brain_mask_from_labels(arr), [False, True, True, False, False, False, True])


# --------------------------------------------------------------------------- built-in map


def test_builtin_labelmap(builtin):
    labels, affine = builtin
    assert labels.ndim == 3 and np.issubdtype(labels.dtype, np.integer)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.sqrt((affine[:3, :3] ** 2).sum(0)), 2.0)
    vox_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    codes = set(np.unique(labels).tolist())
    for code in (L.CEREBRAL_WM, L.CEREBRAL_CORTEX, L.CSF, L.LATERAL_VENTRICLE):
        assert code in codes
    assert codes <= set(L.BRAIN_LABELS) | {0}
    wm_ml = (labels == L.CEREBRAL_WM).sum() * vox_ml
    brain_ml = L.brain_mask_from_labels(labels).sum() * vox_ml
    assert 350 < wm_ml < 900
    assert 1100 < brain_ml < 2100
    with __import__("importlib").resources.as_file(builtin_labelmap_path()) as p:
        assert Path(p).stat().st_size < 400_000
        notice = Path(p).with_name("NOTICE").read_text(encoding="utf-8")
    assert "McConnell" in notice and "Fonov" in notice


def test_list_labelmaps(tmp_path):
    for name in ("b.nii.gz", "a.nii", "c.txt", "d.nii.gz.bak"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.nii.gz").write_bytes(b"")
    assert [p.name for p in list_labelmaps(tmp_path)] == ["a.nii", "b.nii.gz"]
    with pytest.raises(NotADirectoryError):
        list_labelmaps(tmp_path / "missing")


# --------------------------------------------------------------------------- grid


def test_prepare_grid_reorients_and_crops(builtin):
    labels, affine = builtin
    # the same map stored as LIA (like the SynthSeg training maps) must give the same grid
    tr = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.axcodes2ornt(("L", "I", "A"))
    )
    lia = nib.orientations.apply_orientation(labels, tr)
    lia_aff = affine @ nib.orientations.inv_ornt_aff(tr, labels.shape)
    assert nib.aff2axcodes(lia_aff) == ("L", "I", "A")
    g1, a1 = prepare_label_grid(labels, affine, 2.0)
    g2, a2 = prepare_label_grid(lia.astype(np.float32), lia_aff, 2.0)
    np.testing.assert_array_equal(g1, g2)
    np.testing.assert_allclose(a1, a2)
    # cropped to the brain plus a margin of ~8 mm (4 voxels) on every side
    brain = L.brain_mask_from_labels(g1)
    for ax in range(3):
        prof = brain.any(axis=tuple(a for a in range(3) if a != ax))
        first, last = np.nonzero(prof)[0][[0, -1]]
        assert first == 4 and len(prof) - 1 - last == 4
    # world position of a brain voxel is preserved
    i = np.argwhere(g1 == L.LATERAL_VENTRICLE)[0]
    world = a1 @ np.r_[i, 1.0]
    j = np.rint(np.linalg.solve(affine, world)[:3]).astype(int)
    assert labels[tuple(j)] == L.LATERAL_VENTRICLE
    # 4 mm output spacing
    g4, a4 = prepare_label_grid(labels, affine, 4.0)
    np.testing.assert_allclose(np.sqrt((a4[:3, :3] ** 2).sum(0)), 4.0)
    assert g4.shape[0] < g1.shape[0]


# --------------------------------------------------------------------------- generator


def test_result_fields(synth):
    for contrast, res in synth.items():
        assert res.contrast == contrast
        assert res.image.dtype == np.float32 and res.image.ndim == 3
        assert res.brain_mask.dtype == np.uint8 and set(np.unique(res.brain_mask)) <= {0, 1}
        assert res.labels.dtype == np.int16 and res.labels.shape == res.image.shape
        assert res.affine.shape == (4, 4) and nib.aff2axcodes(res.affine) == ("R", "A", "S")
        brain = res.brain_mask > 0
        np.testing.assert_array_equal(brain, L.brain_mask_from_labels(res.labels))
        assert np.all(res.image[~brain] == 0)
        assert np.all(np.isfinite(res.image)) and res.image.min() >= 0
        p99 = np.percentile(res.image[brain], 99)
        assert 0.9 < p99 < 1.2
        json.dumps(res.params)  # JSON-serialisable
        for key in ("seed", "label_means", "deform", "bias", "blur", "noise_std"):
            assert key in res.params


def test_same_seed_is_bit_exact(builtin):
    labels, affine = builtin
    g = HealthyBrainGenerator("flair")
    a = g.generate(labels, affine, seed=123)
    b = HealthyBrainGenerator("flair").generate(labels, affine, seed=123)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert json.dumps(a.params, sort_keys=True) == json.dumps(b.params, sort_keys=True)
    c = g.generate(labels, affine, seed=124)
    assert not np.array_equal(a.image, c.image)
    # the constructor seed makes the stream of per-call seeds reproducible
    s1 = HealthyBrainGenerator("t1", seed=5)
    s2 = HealthyBrainGenerator("t1", seed=5)
    r1 = [s1.generate(labels, affine) for _ in range(2)]
    r2 = [s2.generate(labels, affine) for _ in range(2)]
    for x, y in zip(r1, r2):
        np.testing.assert_array_equal(x.image, y.image)
    assert not np.array_equal(r1[0].image, r1[1].image)


def test_tissue_order_t1(synth):
    m = _class_means(synth["t1"])
    assert m["wm"] > m["deep_gm"] > m["gm"] > m["csf"]


def test_tissue_order_t2(synth):
    m = _class_means(synth["t2"])
    assert m["csf"] > m["gm"] > m["deep_gm"] > m["wm"]


def test_tissue_order_flair(synth):
    m = _class_means(synth["flair"])
    assert m["gm"] >= m["wm"] > m["csf"]
    assert m["csf"] < 0.35  # suppressed fluid, near-dark
    tol = 0.03
    assert m["wm"] - tol <= m["deep_gm"] <= m["gm"] + tol


@pytest.mark.parametrize("seed", [0, 1])
def test_tissue_order_other_seeds(builtin, seed):
    labels, affine = builtin
    for contrast in ("t1", "t2", "flair"):
        m = _class_means(HealthyBrainGenerator(contrast).generate(labels, affine, seed=seed))
        if contrast == "t1":
            assert m["wm"] > m["gm"] > m["csf"]
        elif contrast == "t2":
            assert m["csf"] > m["gm"] > m["wm"]
        else:
            assert m["gm"] >= m["wm"] > m["csf"]


def test_random_contrast(builtin):
    labels, affine = builtin
    g = HealthyBrainGenerator("random")
    a = g.generate(labels, affine, seed=1)
    b = g.generate(labels, affine, seed=2)
    assert a.contrast == "random"
    assert a.params["label_means"] != b.params["label_means"]
    assert 0.9 < np.percentile(a.image[a.brain_mask > 0], 99) < 1.2


def test_no_augmentation_is_plain_label_painting(builtin):
    labels, affine = builtin
    g = HealthyBrainGenerator("t1", deform=False, bias=False, blur=False, noise=False)
    res = g.generate(labels, affine, seed=0)
    grid, aff = prepare_label_grid(labels, affine, 2.0)
    np.testing.assert_array_equal(res.labels, grid)
    np.testing.assert_allclose(res.affine, aff)
    assert "deform" not in res.params and "noise_std" not in res.params
    # texture only: interior WM stays close to one value
    wm = ndi.binary_erosion(res.labels == L.CEREBRAL_WM, iterations=2)
    vals = res.image[wm]
    assert vals.std() / vals.mean() < 0.12


def test_deformation_changes_labels_mildly(builtin):
    labels, affine = builtin
    res = HealthyBrainGenerator("t1").generate(labels, affine, seed=3)
    grid, gaff = prepare_label_grid(labels, affine, 2.0)
    # both grids share axes and spacing; put them in one frame via the integer offset
    np.testing.assert_allclose(res.affine[:3, :3], gaff[:3, :3])
    off = np.linalg.solve(gaff[:3, :3], res.affine[:3, 3] - gaff[:3, 3])
    assert np.allclose(off, np.rint(off))
    off = np.rint(off).astype(int)
    lo = np.minimum(0, off)
    hi = np.maximum(np.array(grid.shape), off + np.array(res.labels.shape))
    b0 = np.zeros(hi - lo, bool)
    b1 = np.zeros(hi - lo, bool)
    b0[tuple(slice(-l_, -l_ + n) for l_, n in zip(lo, grid.shape))] = L.brain_mask_from_labels(grid)
    b1[tuple(slice(o - l_, o - l_ + n) for o, l_, n in zip(off, lo, res.labels.shape))] = res.brain_mask > 0
    dice = 2 * (b0 & b1).sum() / (b0.sum() + b1.sum())
    assert 0.8 < dice < 0.995  # deformed, but mildly: the anatomy stays recognisable
    assert 0.75 < b1.sum() / b0.sum() < 1.3
    # the brain is never clipped: the 8 mm margin stays free of brain
    m = res.brain_mask > 0
    assert not (m[:4].any() or m[-4:].any() or m[:, :4].any() or m[:, -4:].any() or m[..., :4].any() or m[..., -4:].any())


def test_tissue_ratios_and_texture_spread_the_tissue_as_asked(builtin):
    """``tissue_ratios`` replaces a class's preset range (here white matter nearer grey), ``texture_amplitude``
    the texture's: the same seed, its interior white matter spread wider."""
    labels, affine = builtin
    plain = HealthyBrainGenerator("flair", deform=False, bias=False, blur=False, noise=False)
    wide = HealthyBrainGenerator("flair", deform=False, bias=False, blur=False, noise=False,
                                 texture_amplitude=(0.10, 0.10), tissue_ratios={"wm": (0.9, 0.9)})
    a, b = plain.generate(labels, affine, seed=3), wide.generate(labels, affine, seed=3)
    assert 0.68 <= a.params["class_means"]["wm"] <= 0.84 and b.params["class_means"]["wm"] == 0.9
    assert b.params["texture"]["amplitude"]["wm"] == 0.10 and a.params["texture"]["amplitude"]["wm"] <= 0.05
    wm = ndi.binary_erosion(a.labels == L.CEREBRAL_WM, iterations=2)
    spread = lambda r: r.image[wm].std() / r.image[wm].mean()  # noqa: E731
    assert spread(b) > 1.5 * spread(a)
    m = _class_means(b)
    assert m["gm"] >= m["wm"] > m["csf"]  # the order of the contrast still holds
    assert HealthyBrainGenerator("flair").presets == HealthyBrainGenerator("flair", tissue_ratios={}).presets
    for bad in ({"texture_amplitude": (0.2, 0.1)}, {"texture_amplitude": (0.1, 1.0)},
                {"tissue_ratios": {"myelin": (0.8, 0.9)}}, {"tissue_ratios": {"wm": (0.9, 0.8)}}):
        with pytest.raises(ValueError):
            HealthyBrainGenerator("flair", **bad)
    with pytest.raises(ValueError, match="random"):
        HealthyBrainGenerator("random", tissue_ratios={"wm": (0.8, 0.9)})


def test_invalid_arguments(builtin):
    labels, affine = builtin
    with pytest.raises(ValueError):
        HealthyBrainGenerator("pd")
    with pytest.raises(ValueError):
        HealthyBrainGenerator(spacing=0)
    with pytest.raises(ValueError):
        HealthyBrainGenerator(noise_range=(0.1, 0.0))
    with pytest.raises(ValueError):
        HealthyBrainGenerator().generate(np.zeros((8, 8, 8), np.int16), affine)
    with pytest.raises(ValueError):
        HealthyBrainGenerator().generate(labels[..., 0], affine)


def test_generation_speed(builtin):
    labels, affine = builtin
    g = HealthyBrainGenerator("t2")
    g.generate(labels, affine, seed=0)  # warm-up: imports and label-map cache
    t0 = time.perf_counter()
    n = 3
    for s in range(n):
        g.generate(labels, affine, seed=s + 1)
    per_volume = (time.perf_counter() - t0) / n
    assert per_volume < 3.0, f"{per_volume:.2f} s per volume"


# --------------------------------------------------------------------------- lesions


@pytest.mark.parametrize(
    "contrast,volume",
    [("t2", 20.0), ("flair", 20.0), ("flair", 0.5), ("t2", 0.5), ("t1", 20.0)],
)
def test_tumor(synth, contrast, volume):
    res = synth[contrast]
    inj = LesionInjector("tumor", volume_ml=volume)
    out, mask, info = inj.inject(res.image, res.brain_mask, res.affine, contrast, seed=11)
    assert out.dtype == np.float32 and out.shape == res.image.shape
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert mask.any()
    assert not (mask.astype(bool) & (res.brain_mask == 0)).any()
    assert np.all(out[res.brain_mask == 0] == 0)
    vox_ml = abs(np.linalg.det(res.affine[:3, :3])) / 1000.0
    achieved = mask.sum() * vox_ml
    assert info["requested_volume_ml"] == pytest.approx(volume)
    assert info["volume_ml"] == pytest.approx(achieved)
    assert abs(achieved / volume - 1) <= 0.30
    assert len(info["centre_vox"]) == 3 and mask[tuple(info["centre_vox"])] == 1
    ring = _ring(mask, res.brain_mask)
    lesion_mean, ring_mean = out[mask > 0].mean(), out[ring].mean()
    if contrast in ("t2", "flair"):
        assert lesion_mean > 1.15 * ring_mean
    else:
        assert lesion_mean < 0.95 * ring_mean
    # the image outside the lesion is untouched (no mass effect requested)
    far = ~ndi.binary_dilation(mask > 0, iterations=2)
    np.testing.assert_array_equal(out[far], res.image[far])
    json.dumps(info)


def test_tumor_components_and_defaults(synth):
    res = synth["t2"]
    out, mask, info = LesionInjector("tumor", seed=0).inject(res.image, res.brain_mask, res.affine, "t2")
    lo, hi = 0.5, 60.0
    assert lo <= info["requested_volume_ml"] <= hi
    comp = info["components_ml"]
    assert comp["edema"] > 0 and comp["rim"] > 0 and comp["necrosis"] > 0
    assert sum(comp.values()) == pytest.approx(info["volume_ml"], rel=0.01)
    _, _, info2 = LesionInjector("tumor", necrosis=False, edema=False).inject(
        res.image, res.brain_mask, res.affine, "t2", seed=0
    )
    assert info2["components_ml"]["necrosis"] == 0 and info2["components_ml"]["edema"] == 0


def test_tumor_mass_effect(synth):
    res = synth["flair"]
    inj = LesionInjector("tumor", volume_ml=30.0, mass_effect=True)
    out, mask, info = inj.inject(res.image, res.brain_mask, res.affine, "flair", seed=2)
    assert info["mass_effect_max_mm"] > 0
    near = ndi.binary_dilation(mask > 0, iterations=4) & ~ndi.binary_dilation(mask > 0, iterations=1)
    near &= res.brain_mask > 0
    assert np.abs(out[near] - res.image[near]).mean() > 0.005  # tissue around it moved
    assert np.all(out[res.brain_mask == 0] == 0)
    assert abs(mask.sum() * 0.008 / 30.0 - 1) <= 0.30


@pytest.mark.parametrize("contrast,volume", [("flair", 0.05), ("flair", 1.5), ("t2", 0.8)])
def test_focal(synth, contrast, volume):
    res = synth[contrast]
    wm = L.class_mask(res.labels, "wm")
    inj = LesionInjector("focal", volume_ml=volume)
    out, mask, info = inj.inject(res.image, res.brain_mask, res.affine, contrast, seed=4, wm_mask=wm)
    assert mask.any() and not (mask.astype(bool) & (res.brain_mask == 0)).any()
    achieved = mask.sum() * abs(np.linalg.det(res.affine[:3, :3])) / 1000.0
    assert abs(achieved / volume - 1) <= 0.30
    assert info["n_lesions"] >= 1
    assert wm[mask > 0].mean() > 0.5  # mostly in white matter
    ring = _ring(mask, res.brain_mask, width=1)
    assert out[mask > 0].mean() > 1.15 * out[ring].mean()


def test_focal_without_wm_mask_and_defaults(synth):
    res = synth["flair"]
    out, mask, info = LesionInjector("focal", seed=3).inject(res.image, res.brain_mask, res.affine, "flair")
    assert 0.05 * 0.7 <= info["volume_ml"] <= 2.0 * 1.3
    assert abs(info["relative_volume_error"]) <= 0.30
    wm = L.class_mask(res.labels, "wm")
    assert wm[mask > 0].mean() > 0.5


@pytest.mark.parametrize("kind, contrast", [("tumor", "flair"), ("tumor", "t2"), ("focal", "flair"), ("tumor", "t1")])
def test_contrast_scale_makes_the_same_lesion_fainter(synth, kind, contrast):
    res = synth[contrast]
    full = LesionInjector(kind, volume_ml=15.0 if kind == "tumor" else 1.0)
    faint = LesionInjector(kind, volume_ml=15.0 if kind == "tumor" else 1.0, contrast_scale=0.4)
    a, mask_a, info_a = full.inject(res.image, res.brain_mask, res.affine, contrast, seed=5)
    b, mask_b, info_b = faint.inject(res.image, res.brain_mask, res.affine, contrast, seed=5)
    np.testing.assert_array_equal(mask_a, mask_b)  # same lesion, only its conspicuity changes
    assert info_a["contrast_scale"] == 1.0 and info_b["contrast_scale"] == pytest.approx(0.4)
    on = mask_a > 0
    ref = info_a["reference_intensity"]
    assert info_b["reference_intensity"] == pytest.approx(ref)
    # the lesion's mean departure from the surrounding tissue shrinks with the scale, keeping its sign
    ratio = (b[on].mean() - ref) / (a[on].mean() - ref)
    assert 0.25 < ratio < 0.6, ratio
    # the texture fades with the lesion: on a flat brain (no anatomy, no noise) all of the lesion's
    # spread is its own structure and texture, and it shrinks with the scale
    flat = np.where(res.brain_mask > 0, 0.5, 0.0).astype(np.float32)
    fa, fmask, _ = full.inject(flat, res.brain_mask, res.affine, contrast, seed=5, wm_mask=res.brain_mask)
    fb, _, _ = faint.inject(flat, res.brain_mask, res.affine, contrast, seed=5, wm_mask=res.brain_mask)
    core = ndi.binary_erosion(fmask > 0, iterations=1) if kind == "tumor" else fmask > 0
    assert fb[core].std() < 0.6 * fa[core].std()
    # a range is drawn per lesion, inside its bounds, without moving or reshaping the lesion
    ranged = LesionInjector(kind, volume_ml=15.0 if kind == "tumor" else 1.0, contrast_scale=(0.3, 0.7))
    drawn = []
    for s in (5, 6, 7):
        _, mask_r, info_r = ranged.inject(res.image, res.brain_mask, res.affine, contrast, seed=s)
        _, mask_1, _ = full.inject(res.image, res.brain_mask, res.affine, contrast, seed=s)
        np.testing.assert_array_equal(mask_r, mask_1)
        drawn.append(info_r["contrast_scale"])
    assert all(0.3 <= v <= 0.7 for v in drawn) and len(set(drawn)) == 3


def test_lesion_reproducible_and_validated(synth):
    res = synth["t2"]
    inj = LesionInjector("tumor", volume_ml=(1.0, 10.0))
    a = inj.inject(res.image, res.brain_mask, res.affine, "t2", seed=9)
    b = inj.inject(res.image, res.brain_mask, res.affine, "t2", seed=9)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = inj.inject(res.image, res.brain_mask, res.affine, "t2", seed=10)
    assert not np.array_equal(a[1], c[1])
    with pytest.raises(ValueError):
        LesionInjector("cyst")
    with pytest.raises(ValueError):
        LesionInjector("tumor", volume_ml=(5.0, 1.0))
    for bad in (0.0, -1.0, (0.8, 0.4), 1.5, float("inf"), float("nan"), (0.5, float("inf"))):
        with pytest.raises(ValueError, match="contrast_scale"):
            LesionInjector("tumor", contrast_scale=bad)
    with pytest.raises(ValueError):
        inj.inject(res.image, res.brain_mask, res.affine, "pd")
    with pytest.raises(ValueError):
        inj.inject(res.image, res.brain_mask[:-1], res.affine, "t2")


def test_random_contrast_lesion(builtin):
    labels, affine = builtin
    res = HealthyBrainGenerator("random").generate(labels, affine, seed=4)
    out, mask, info = LesionInjector("tumor", volume_ml=5.0).inject(
        res.image, res.brain_mask, res.affine, res.contrast, seed=1
    )
    assert mask.any() and abs(info["relative_volume_error"]) <= 0.30


# --------------------------------------------------------------------------- preview


def test_save_slice_grid(tmp_path, synth):
    from PIL import Image

    res = synth["t1"]
    mask = np.zeros(res.image.shape, np.uint8)
    mask[30:35, 40:45, 40:45] = 1
    path = save_slice_grid([res.image, synth["t2"].image], tmp_path / "grid.png", titles=["t1", "t2"], masks=[mask, None])
    img = Image.open(path)
    assert img.size[0] == 3 * 192 and img.size[1] > 2 * 192
    arr = np.asarray(img.convert("RGB")).astype(int)
    assert (arr[..., 0] - arr[..., 1] > 60).any()  # red overlay drawn
    with pytest.raises(ValueError):
        save_slice_grid([res.image], tmp_path / "x.png", titles=["a", "b"])


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not HEALTHY_DIR.is_dir(), reason="shared data (../shared/data) not available")
def test_real_labelmap():
    files = list_labelmaps(HEALTHY_DIR)
    assert len(files) >= 1
    img = nib.load(str(files[0]))
    assert nib.aff2axcodes(img.affine) == ("L", "I", "A")
    labels = np.asarray(img.dataobj)
    gen = HealthyBrainGenerator("t1")
    res = gen.generate(labels, img.affine, seed=0)
    assert nib.aff2axcodes(res.affine) == ("R", "A", "S")
    assert res.image.shape == res.labels.shape and res.image.shape[0] < 128
    assert not np.isin(res.labels[res.brain_mask > 0], list(L.EXTRA_CEREBRAL)).any()
    m = _class_means(res)
    assert m["wm"] > m["gm"] > m["csf"]
    t0 = time.perf_counter()
    res2 = HealthyBrainGenerator("flair").generate(labels, img.affine, seed=1)
    gen.generate(labels, img.affine, seed=2)  # cached grid
    assert time.perf_counter() - t0 < 8.0
    out, mask, info = LesionInjector("tumor", volume_ml=15.0).inject(
        res2.image, res2.brain_mask, res2.affine, "flair", seed=0, wm_mask=L.class_mask(res2.labels, "wm")
    )
    assert abs(info["relative_volume_error"]) <= 0.30
    assert out[mask > 0].mean() > out[_ring(mask, res2.brain_mask)].mean()
