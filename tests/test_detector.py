"""The detection model: which bundle `detect` loads, its settings (``detect`` section) and its calibration
on held-out synthetic healthy and tumour volumes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from medhdiff.diffusion.bundle import load_bundle
from medhdiff.errors import InputError
from medhdiff.tasks import Predictor, default_weights
from medhdiff.synth import HealthyBrainGenerator
from medhdiff.training import DetectConfig, load_config

pytestmark = pytest.mark.usefixtures("torch_one_thread")

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def test_detect_loads_the_detection_bundle_and_denoise_the_default_one():
    default, detector = default_weights(), default_weights("detector")
    assert default is not None and default.name == "default"
    if detector is None or detector.name != "detector":
        pytest.skip("this installation ships no detection model")
    meta = json.loads((detector / "model.json").read_text())
    cal = meta["calibration"]
    assert set(cal["threshold"]) == {"t1", "t2", "flair"}
    assert cal["steps"] >= 1 and cal["ensemble"] >= 1 and all(0 < s <= 1 for s in cal["strengths"])
    # the detection model's patch stage was fine-tuned from the shipped default model (possibly over
    # several runs); its global stage is the default model's, tensor for tensor
    from safetensors.numpy import load_file

    ours, theirs = load_file(detector / "model.safetensors"), load_file(default / "model.safetensors")
    assert set(ours) == set(theirs)
    glob = [k for k in ours if k.startswith("global.")]
    assert glob and all((ours[k] == theirs[k]).all() for k in glob)
    assert any(not (ours[k] == theirs[k]).all() for k in ours if k.startswith("patch."))
    from medhdiff_cli.jobs import _predictor

    assert _predictor(None, "cpu", 4, None, model="detector").sha256 == load_bundle(detector).sha256
    assert _predictor(None, "cpu", 4, None).sha256 == load_bundle(default).sha256


def test_a_missing_detection_bundle_falls_back_to_the_default_model(tmp_path, monkeypatch):
    from medhdiff.tasks import predictor as predictor_module

    (tmp_path / "models" / "default").mkdir(parents=True)
    (tmp_path / "models" / "default" / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(predictor_module.resources, "files", lambda package: tmp_path)
    assert predictor_module.default_weights("detector") == tmp_path / "models" / "default"
    with pytest.raises(ValueError, match="task"):
        predictor_module.default_weights("segment")


@pytest.mark.parametrize("key, value", [("strengths", [0.0]), ("strengths", []), ("steps", 0), ("ensemble", 0),
                                        ("percentile", 100), ("lesion_volumes", -1), ("threshold", 0.3),
                                        ("grow_percentiles", [99.99]), ("grow_percentiles", [10.0]),
                                        ("seed_percentiles", [100.0]), ("max_healthy_fp_ml", -1)])
def test_detect_settings_are_validated(tmp_path, key, value):
    doc = yaml.safe_load(TINY.read_text())
    doc["detect"] = {key: value}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match=key if key != "threshold" else "detect"):
        load_config(path)


def test_the_shipped_detector_config_parses_with_its_settings():
    cfg = load_config(REPO / "configs" / "detector.yaml")
    assert cfg.data.heal_context_healthy == 0.0 and cfg.data.heal_fraction > 0
    assert cfg.detect.steps == 1 and cfg.detect.lesion_volumes > 0
    assert load_config(TINY).detect == DetectConfig()  # a config without the section keeps the defaults


def test_the_shipped_detector_calibration_follows_its_recipe():
    """model.json's calibration was made with configs/detector.yaml's detect settings, not older ones."""
    import numpy as np

    from medhdiff.tasks.predictor import default_weights

    folder = default_weights("detector")
    if folder is None or folder.name != "detector":
        pytest.skip("this installation has no bundled detection model")
    d = load_config(REPO / "configs" / "detector.yaml").detect
    cal = json.loads((folder / "model.json").read_text())["calibration"]
    assert cal["volumes_per_contrast"] == d.healthy_volumes and cal["lesion_volumes"] == d.lesion_volumes
    for contrast in cal["threshold"]:
        assert cal.get("healthy_volumes", {}).get(contrast, d.healthy_volumes) == d.healthy_count(contrast)
    assert (cal["strengths"], cal["steps"], cal["ensemble"]) == (list(d.strengths), d.steps, d.ensemble)
    assert cal["max_healthy_fp_ml"] == d.max_healthy_fp_ml
    assert cal.get("max_healthy_fp_ml_worst") == d.max_healthy_fp_ml_worst
    assert cal.get("dice_tie_margin", 0.0) == d.dice_tie_margin
    assert cal.get("grow_intensity_percentiles", []) == list(d.grow_intensity_percentiles)
    assert cal.get("grow_opening_mm", 0.0) == d.grow_opening_mm
    for contrast, pick in cal["hysteresis"].items():
        assert cal.get("score_scale", {}).get(contrast, "none") == d.score_scale.get(contrast, "none")
        assert cal.get("score_smooth_mm", {}).get(contrast, 0.0) == d.score_smooth_mm.get(contrast, 0.0)
        assert pick.get("grow_intensity_percentile") in {None, *d.grow_intensity_percentiles}
        assert cal.get("grow_intensity_percentile", {}).get(contrast) == pick.get("grow_intensity_percentile")
        assert cal.get("grow_intensity_level", {}).get(contrast, "scan") == d.intensity_level(contrast)
        synthesis = d.synthesis(contrast)  # the brains it was calibrated on were drawn as the recipe says
        recorded = cal.get("calibration_synthesis", {}).get(contrast, {})
        assert recorded == json.loads(json.dumps(synthesis))
        assert pick["seed_percentile"] in {d.percentile, *d.seed_percentiles}
        # the grow grid: the contrast's own (detect.grow_percentiles_by_contrast), recorded where it differs
        grid = d.grow_grid(contrast)
        assert cal.get("grow_percentiles", {}).get(contrast, list(d.grow_percentiles)) == list(grid)
        assert pick["grow_percentile"] in grid
        assert cal["threshold"][contrast] == pick["threshold"] > cal["grow_threshold"][contrast] == pick["grow_threshold"]
        # the seed floor: the config's tail for the contrast, and the seed threshold never below its floor
        assert (cal.get("seed_tail") or {}).get(contrast) == d.seed_tail.get(contrast) == pick.get("seed_tail")
        assert pick["threshold"] >= pick.get("seed_floor", -np.inf)
        # the seed-volume candidates: the config's, or none for a contrast calibrated before they existed
        # (kept by `calibrate --contrast`), which then seeds at min_volume_ml
        volumes = cal.get("seed_min_volumes_ml", {}).get(contrast, [])
        assert volumes in ([], list(d.seed_volumes(contrast)))
        assert pick.get("seed_min_volume_ml", d.min_volume_ml) in {d.min_volume_ml, *volumes}
        assert cal.get("seed_min_volume_ml", {}).get(contrast) == pick.get("seed_min_volume_ml")
        # every pair of the grid was scored on the synthetic tumours
        table = cal["synthetic_tumour"][contrast]["dice_and_healthy_fp_ml_by_seed_grow_percentile"]
        assert len(table) == (1 + len(d.grow_intensity_percentiles)) * max(1, len(volumes)) * sum(
            g < s for s in {d.percentile, *d.seed_percentiles} for g in grid)


def test_calibration_on_synthetic_tumours_stores_its_settings_and_never_lowers_the_threshold(model_dir, tmp_path):
    from medhdiff.training.calibrate import calibrate_detection

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    cfg = load_config(TINY)
    cfg.data.contrasts = ("t2",)
    healthy_only = calibrate_detection(model, cfg, detect=DetectConfig(strengths=(0.2,), steps=1, ensemble=1,
                                                                       healthy_volumes=1))
    assert "synthetic_tumour" not in healthy_only
    ticks = []
    cal = calibrate_detection(model, cfg, detect=DetectConfig(strengths=(0.2,), steps=1, ensemble=1,
                                                              healthy_volumes=1, lesion_volumes=1),
                              progress=lambda *a: ticks.append(a))
    # one progress call per scored brain: the healthy one, then the tumour
    assert ticks == [("t2", 1, 2), ("t2", 2, 2)]
    assert cal["strengths"] == [0.2] and cal["steps"] == 1 and cal["ensemble"] == 1
    tumour = cal["synthetic_tumour"]["t2"]
    assert 0.0 < tumour["best_dice"] <= 1.0
    # the same seeds give the same healthy percentile, so the stored threshold is the larger of the two
    assert cal["threshold"]["t2"] == pytest.approx(max(healthy_only["threshold"]["t2"], tumour["threshold"]))
    stored = json.loads((model / "model.json").read_text())["calibration"]
    assert stored["threshold"] == cal["threshold"]
    # detect reads the stored settings
    res = Predictor(model, device="cpu").detect(_tiny_scan(), contrast="t2")
    assert res.report["strengths"] == [0.2] and res.report["steps"] == 1
    assert res.report["threshold"] == pytest.approx(cal["threshold"]["t2"])


def test_findings_grow_from_seeds_down_to_the_grow_threshold():
    import numpy as np

    from medhdiff.io import Volume

    score = np.zeros((40, 40, 40), np.float32)
    score[5:15, 5:15, 5:15] = 0.5          # a halo (1 mL) ...
    score[8:12, 8:12, 8:12] = 1.0          # ... around a seed of 64 voxels
    score[25:35, 25:35, 25:35] = 0.5       # a halo with no seed: never reported
    score[25:35, 5:15, 5:15] = 0.5         # a halo whose seed is below the size filter
    score[29, 9, 9] = 1.0
    vol = Volume(score, np.diag([1.0, 1.0, 1.0, 1.0]))
    keep, comps = Predictor._components(score, 0.8, vol, 0.05, score > 0.3)
    assert len(comps) == 1 and comps[0]["volume_ml"] == pytest.approx(1.0)
    assert keep.sum() == 1000 and keep[5:15, 5:15, 5:15].all()
    single, comps = Predictor._components(score, 0.8, vol, 0.05)  # no growth: the seed alone
    assert len(comps) == 1 and single.sum() == 64



def test_multi_contrast_findings_grow_only_through_their_own_contrast(model_dir, monkeypatch):
    """A FLAIR seed must not leak through the T2 grow region, whose level was set for T2's own seeds."""
    import numpy as np

    from medhdiff.io import Volume

    flair = np.zeros((40, 40, 40), np.float32)
    flair[5:15, 5:15, 5:15] = 0.5          # FLAIR halo (1 mL) around a FLAIR seed
    flair[8:12, 8:12, 8:12] = 1.0
    t2 = np.zeros_like(flair)
    t2[2:38, 2:20, 2:20] = 0.5             # a wide T2 grow region touching the FLAIR finding, no T2 seed there
    t2[25:35, 25:35, 25:35] = 0.5          # a T2 finding of its own: halo around a T2 seed
    t2[28:32, 28:32, 28:32] = 2.0
    maps = {"flair": flair, "t2": t2}
    thr = {"flair": 0.8, "t2": 1.6}

    def fake_score(self, volume, *, contrast, grow="auto", **_):
        settings = {"threshold": thr[contrast], "threshold_source": "test", "polarity": "bright",
                    "grow_threshold": None if grow == "off" else 0.3, "grow_intensity_percentile": None,
                    "grow_opening_mm": None if grow == "off" else 0.0, "score_scale": None,
                    "score_smooth_mm": 0.0}
        return maps[contrast], None, settings, None if grow == "off" else maps[contrast] > 0.3

    monkeypatch.setattr(Predictor, "_score", fake_score)
    pred = Predictor(model_dir, device="cpu")
    vol = Volume(np.zeros((40, 40, 40), np.float32), np.eye(4))
    res = pred.detect_multi({"t2": vol, "flair": vol}, min_volume_ml=0.05, combine="union")
    assert res.mask.sum() == 2000                     # the two 1 mL halos, nothing of the wide T2 region
    assert res.mask[5:15, 5:15, 5:15].all() and res.mask[25:35, 25:35, 25:35].all()
    assert [c["volume_ml"] for c in res.report["components"]] == [1.0, 1.0]
    assert res.report["per_contrast"]["t2"]["found_ml"] == 1.0
    assert res.report["per_contrast"]["flair"]["found_ml"] == 1.0
    off = pred.detect_multi({"t2": vol, "flair": vol}, min_volume_ml=0.05, grow="off", combine="union")
    assert off.mask.sum() == 128                      # the two 64-voxel seeds
    np.testing.assert_allclose(res.score_map, np.maximum(flair / 0.8, t2 / 1.6))
    assert res.report["combine"] == "union"
    # the default, consensus: the FLAIR finding lies inside T2's wide region and keeps its halo; the T2 seed's
    # halo lies outside FLAIR's region, so only the seed is left of it
    default = pred.detect_multi({"t2": vol, "flair": vol}, min_volume_ml=0.05)
    assert default.report["combine"] == "consensus" and default.mask.sum() == 1000 + 64
    assert default.report["per_contrast"]["t2"]["found_ml"] == 0.064
    lead = pred.detect_multi({"t2": vol, "flair": vol}, min_volume_ml=0.05, combine="lead")
    assert lead.report["combine"] == "lead" and lead.mask.sum() == 2000  # the findings do not touch
    with pytest.raises(InputError, match="--combine"):
        pred.detect_multi({"t2": vol, "flair": vol}, combine="max")

def test_combination_rules_for_several_contrasts():
    """union: each contrast grows through its own region; consensus: through the voxels every region holds;
    lead: the leading contrast's findings, plus another's only where it touches none of them."""
    import numpy as np

    shape = (30, 30, 30)
    t2, flair = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    t2[10:14, 10:14, 10:14] = 2.0                     # a T2 seed (64 voxels) ...
    t2_grow = np.zeros(shape, bool)
    t2_grow[6:20, 6:20, 6:20] = True                  # ... whose own region over-grows (2744 voxels)
    flair[11:15, 11:15, 11:15] = 2.0                  # the FLAIR seed of the same lesion
    flair_grow = np.zeros(shape, bool)
    flair_grow[9:16, 9:16, 9:16] = True               # a tighter region (343 voxels)
    t2[24:27, 24:27, 24:27] = 2.0                     # a second lesion only T2 sees (27 voxels)
    t2_grow[23:28, 23:28, 23:28] = True               # its region: 125 voxels
    norms, grows = {"t2": t2, "flair": flair}, {"t2": t2_grow, "flair": flair_grow}
    ml = {"t2": 0.0, "flair": 0.0}

    def mask(rule, order=None):
        found = Predictor.combine_findings(norms, grows, ml, 0.001, 1.0, rule, order)
        return found, np.logical_or.reduce(list(found.values()))

    found, union = mask("union")
    assert found["t2"].sum() == 2744 + 125 and found["flair"].sum() == 343 and union.sum() == 2744 + 125
    found, consensus = mask("consensus")
    # the first lesion is bounded by both regions; the second, where FLAIR has no region, keeps only its seed
    assert found["flair"].sum() == 343 and (found["t2"][:20] == flair_grow[:20]).all()
    assert consensus[24:27, 24:27, 24:27].all() and consensus.sum() == 343 + 27
    found, lead = mask("lead", ["flair", "t2"])
    assert (found["flair"] == flair_grow).all() and found["t2"].sum() == 125  # T2's over-grown copy is dropped
    assert lead.sum() == 343 + 125
    assert (mask("lead", ["t2", "flair"])[1] == union).all()  # T2 first: FLAIR's finding touches T2's
    with pytest.raises(InputError, match="combination rule"):
        Predictor.combine_findings(norms, grows, ml, 0.001, 1.0, "intersection")
    # consensus bounded by FLAIR alone (T2 found no tumours at calibration): T2's region no longer cuts anything
    found = Predictor.combine_findings(norms, grows, ml, 0.001, 1.0, "consensus", None, ["flair"])
    assert (found["flair"] == flair_grow).all() and found["t2"][23:28, 23:28, 23:28].sum() == 27


def test_lead_drops_a_later_finding_that_borders_a_kept_one():
    """Bordering counts as touching (the faces ndimage.label joins through), not only sharing voxels."""
    import numpy as np

    shape = (20, 20, 20)
    a, b = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    a[5:10, 5:10, 5:10] = 2.0
    b[10:13, 5:10, 5:10] = 2.0                        # face to face with a's finding, no shared voxel
    b[15:18, 15:18, 15:18] = 2.0                      # and one well apart
    found = Predictor.combine_findings({"a": a, "b": b}, {"a": None, "b": None}, {"a": 0.0, "b": 0.0}, 0.001,
                                       1.0, "lead", ["a", "b"])
    assert found["a"].sum() == 125 and found["b"].sum() == 27 and found["b"][15:18, 15:18, 15:18].all()


def test_lead_order_ranks_by_calibrated_dice_and_lists_useful_contrasts():
    cal = {"hysteresis": {"t1": {"useful": False}, "t2": {"useful": True}, "flair": {}},
           "synthetic_tumour": {"t1": {"dice_at_calibrated": 0.0}, "t2": {"dice_at_calibrated": 0.63},
                                "flair": {"best_dice": 0.82}}}
    order, useful = Predictor.lead_order(cal, ["t1", "t2", "flair"])
    assert order == ["flair", "t2", "t1"] and useful == ["t2", "flair"]
    assert Predictor.lead_order({}, ["t2", "flair"]) == (["t2", "flair"], ["t2", "flair"])  # uncalibrated


def test_grow_thresholds_are_calibrated_on_synthetic_tumours_and_read_by_detect(model_dir, tmp_path):
    from medhdiff.training.calibrate import calibrate_detection

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    cfg = load_config(TINY)
    cfg.data.contrasts = ("t2",)
    settings = DetectConfig(strengths=(0.2,), steps=1, ensemble=1, healthy_volumes=1, lesion_volumes=1,
                            percentile=99.9, seed_percentiles=(99.5,), grow_percentiles=(99.7, 95.0, 90.0),
                            max_healthy_fp_ml=0.5, min_useful_dice=0.0)
    cal = calibrate_detection(model, cfg, detect=settings)
    tumour = cal["synthetic_tumour"]["t2"]
    table = tumour["dice_and_healthy_fp_ml_by_seed_grow_percentile"]
    # every pair with the grow percentile below the seed one was scored (99.7 cannot grow from a 99.5 seed)
    assert set(table) == {"99.9/99.7", "99.9/95.0", "99.9/90.0", "99.5/95.0", "99.5/90.0"}
    chosen = cal["hysteresis"]["t2"]
    key = f"{chosen['seed_percentile']}/{chosen['grow_percentile']}"
    assert table[key] == [tumour["dice_at_calibrated"], chosen["healthy_fp_ml"], chosen["healthy_fp_ml_worst"]]
    assert all(worst >= mean for _, mean, worst in table.values())  # the worst healthy brain, beside the mean
    fits = [v for v in table.values() if v[1] <= 0.5]
    if fits:  # the best Dice within the false-positive budget
        assert chosen["healthy_fp_ml"] <= 0.5 and tumour["dice_at_calibrated"] == max(v[0] for v in fits)
    else:
        assert chosen["healthy_fp_ml"] == min(v[1] for v in table.values())
    assert cal["grow_threshold"]["t2"] == chosen["grow_threshold"] < chosen["threshold"] == cal["threshold"]["t2"]
    predictor = Predictor(model, device="cpu")
    scan = _tiny_scan()
    grown = predictor.detect(scan, contrast="t2")
    assert grown.report["grow_threshold"] == pytest.approx(cal["grow_threshold"]["t2"])
    assert grown.report["threshold"] == pytest.approx(cal["threshold"]["t2"])
    off = predictor.detect(scan, contrast="t2", grow="off")
    assert off.report["grow_threshold"] is None
    assert (grown.mask >= off.mask).all()  # growth only ever adds connected voxels
    with pytest.raises(InputError, match="--grow"):
        predictor.detect(scan, contrast="t2", grow="lots")



def test_a_contrast_without_useful_dice_keeps_the_most_conservative_pair():
    """Loosening the thresholds for a few % Dice on synthetic tumours is not worth real false positives."""
    import numpy as np

    from medhdiff.io import Volume
    from medhdiff.training.calibrate import _pick_hysteresis

    rng = np.random.default_rng(0)
    healthy = [rng.random((30, 30, 30)).astype(np.float32) for _ in range(2)]
    lesion = rng.random((30, 30, 30)).astype(np.float32)
    ref = np.zeros(lesion.shape, bool)
    ref[10:20, 10:20, 10:20] = True
    lesion[ref] += 0.3 * rng.random(int(ref.sum())).astype(np.float32)   # a faint, patchy lesion
    values = np.concatenate([h.ravel() for h in healthy])
    # the most conservative seed is the highest candidate, here one of seed_percentiles, not `percentile`
    d = DetectConfig(percentile=99.9, seed_percentiles=(99.99, 99.0), grow_percentiles=(99.5, 95.0, 90.0),
                     max_healthy_fp_ml=1e9, min_useful_dice=0.0, min_volume_ml=0.001)
    free = _pick_hysteresis(values, healthy, [(lesion, ref)], d, 0.001)
    assert free["useful"] and free["dice"] == max(v[0] for v in free["table"].values()) > 0
    strict = _pick_hysteresis(values, healthy, [(lesion, ref)], DetectConfig(**{**d.__dict__, "min_useful_dice": 1.0}),
                              0.001)
    assert not strict["useful"]
    assert (strict["seed_percentile"], strict["grow_percentile"]) == (99.99, 99.5) != (
        free["seed_percentile"], free["grow_percentile"])
    assert strict["threshold"] == pytest.approx(np.percentile(values, 99.99))
    with pytest.raises(InputError, match="min_useful_dice"):
        DetectConfig(min_useful_dice=1.5)

def _calibrated_copy(model_dir, tmp_path, **entries):
    """A copy of the tiny model whose stored calibration has ``entries`` set; returns it and that calibration."""
    from medhdiff.diffusion.bundle import update_bundle_meta

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    cal = dict(json.loads((model / "model.json").read_text()).get("calibration", {}), **entries)
    update_bundle_meta(model, calibration=cal)
    return model, cal


def _tiny_scan():
    from test_tasks import small_scan

    from medhdiff.io import Volume

    data, affine = small_scan(seed=3)
    return Volume(data, affine)


def test_hysteresis_pick_honours_the_worst_healthy_brain_and_breaks_near_ties_conservatively(monkeypatch):
    """One healthy brain with a large false positive vetoes a pair even when the mean looks fine; and pairs
    within the tie margin of the best Dice count as tied, the most conservative one winning."""
    import numpy as np

    from medhdiff.training import calibrate

    values = np.linspace(0.0, 1.0, 100_001)
    seeds, grows = (99.99, 99.9), (99.0, 95.0)
    level = {p: float(np.percentile(values, p)) for p in (*seeds, *grows)}
    healthy = [np.full((10, 10, 10), 1.0, np.float32), np.full((10, 10, 10), 2.0, np.float32)]
    lesion = np.full((10, 10, 10), 3.0, np.float32)
    ref = np.zeros(1000, bool)
    ref[:100] = True
    ref = ref.reshape(lesion.shape)
    # per pair: false-positive voxels on healthy brain 1 and 2, and the found voxels inside the 100-voxel lesion
    design = {(99.99, 99.0): (0, 0, 43), (99.99, 95.0): (0, 0, 44), (99.9, 99.0): (0, 3, 67), (99.9, 95.0): (1, 1, 45)}
    by_level = {(level[s], level[g]): v for (s, g), v in design.items()}

    def masks(sc, seeds, grow_level, bright, *_):  # (opening and its cached seed rims: unused here)
        out = {}
        for key in seeds:  # (seed level, seed volume)
            found = np.zeros(1000, bool)
            found[:by_level[(key[0], grow_level)][int(sc.flat[0]) - 1]] = True
            out[key] = found.reshape(sc.shape)
        return out

    monkeypatch.setattr(calibrate, "_hysteresis_masks", masks)

    def pick(**kw):
        d = DetectConfig(percentile=99.99, seed_percentiles=(99.9,), grow_percentiles=grows, min_useful_dice=0.0,
                         **{"max_healthy_fp_ml": 2.0, **kw})
        best = calibrate._pick_hysteresis(values, healthy, [(lesion, ref)], d, 1.0)
        return best["seed_percentile"], best["grow_percentile"]

    assert pick() == (99.9, 99.0)  # mean 1.5 mL fits the budget although one brain holds 3 mL
    assert pick(max_healthy_fp_ml_worst=2.0) == (99.9, 95.0)  # the worst brain vetoes it
    assert pick(max_healthy_fp_ml_worst=2.0, dice_tie_margin=0.01) == (99.99, 95.0)
    assert pick(max_healthy_fp_ml_worst=2.0, dice_tie_margin=0.02) == (99.99, 99.0)
    # a zero budget: only pairs without a false positive on any healthy brain
    assert pick(max_healthy_fp_ml=0.0, max_healthy_fp_ml_worst=0.0)[0] == 99.99
    with pytest.raises(InputError, match="max_healthy_fp_ml_worst"):
        DetectConfig(max_healthy_fp_ml=1.0, max_healthy_fp_ml_worst=0.5)
    with pytest.raises(InputError, match="dice_tie_margin"):
        DetectConfig(dice_tie_margin=-0.1)


def test_hysteresis_pick_chooses_the_seed_volume_that_drops_small_healthy_spots():
    """With seed_min_volumes_ml, a small strong spot on a healthy brain (bright CSF) stops seeding at the
    larger seed volume while a larger tumour still seeds; without the candidates the spot vetoes every
    pair, and the calibrated volume is what detect then uses for that contrast."""
    import numpy as np

    from medhdiff.tasks.predictor import Predictor
    from medhdiff.training.calibrate import _pick_hysteresis

    values = np.linspace(0.0, 0.9, 100_001)  # every seed and grow level lies below the spots' score of 1
    healthy = np.zeros((30, 30, 30), np.float32)
    healthy[5:12, 5:12, 5:12] = 1.0  # 343 voxels: 0.343 mL at 1 uL a voxel
    lesion = np.zeros_like(healthy)
    lesion[10:22, 10:22, 10:22] = 1.0  # 1728 voxels: 1.728 mL
    ref = lesion > 0
    common = dict(percentile=99.99, seed_percentiles=(99.9,), grow_percentiles=(99.0,), min_useful_dice=0.0,
                  max_healthy_fp_ml=0.1, max_healthy_fp_ml_worst=0.1)
    pick = _pick_hysteresis(values, [healthy], [(lesion, ref)], DetectConfig(**common), 0.001)
    assert pick["seed_min_volume_ml"] == 0.2 and pick["healthy_fp_ml"] > 0.3  # nothing fits: the fewest FP
    pick = _pick_hysteresis(values, [healthy], [(lesion, ref)],
                            DetectConfig(**common, seed_min_volumes_ml=(0.2, 1.0)), 0.001)
    assert pick["seed_min_volume_ml"] == 1.0 and pick["healthy_fp_ml"] == 0.0 and pick["dice"] == 1.0
    assert len(pick["table"]) == 2 * 2 and all(k.endswith(("/s0.2", "/s1.0")) for k in pick["table"])
    with pytest.raises(InputError, match="seed_min_volumes_ml"):
        DetectConfig(grow_percentiles=(99.0,), seed_min_volumes_ml=(0.1,))
    # one list per contrast: a contrast the mapping does not name has no candidates (it seeds at min_volume_ml)
    per = DetectConfig(**common, seed_min_volumes_ml={"t2": [0.2, 1.0, 2.0], "flair": [0.5]})
    assert per.seed_volumes("t2") == (0.2, 1.0, 2.0) and per.seed_volumes("t1") == ()
    assert per.for_contrast("flair").seed_min_volumes_ml == (0.5,) and per.seed_volumes("flair") == (0.5,)
    pick = _pick_hysteresis(values, [healthy], [(lesion, ref)], per.for_contrast("t2"), 0.001)
    assert pick["seed_min_volume_ml"] == 1.0 and pick["dice"] == 1.0  # 2 mL loses the 1.7 mL lesion
    with pytest.raises(TypeError, match="for_contrast"):
        _pick_hysteresis(values, [healthy], [(lesion, ref)], per, 0.001)
    with pytest.raises(InputError, match="seed_min_volumes_ml"):
        DetectConfig(**common, seed_min_volumes_ml={"t2": [0.1]})
    with pytest.raises(InputError, match="seed_min_volumes_ml"):
        DetectConfig(**common, seed_min_volumes_ml={"t2": 1.0})
    with pytest.raises(InputError, match="seed_min_volumes_ml"):
        DetectConfig(**common, seed_min_volumes_ml=["x"])
    # and per-contrast healthy counts
    assert DetectConfig(healthy_volumes=8, healthy_volumes_by_contrast={"t2": 16}).healthy_count("t2") == 16
    assert DetectConfig(healthy_volumes=8, healthy_volumes_by_contrast={"t2": 16}).healthy_count("t1") == 8
    for bad in ({"t2": 0}, {"t2": "many"}, [16]):
        with pytest.raises(InputError, match="healthy_volumes_by_contrast"):
            DetectConfig(healthy_volumes_by_contrast=bad)

    class Calibrated:  # what _min_volume reads: the bundle's calibration
        bundle = type("B", (), {"meta": {"calibration": {"min_volume_ml": 0.2, "seed_min_volume_ml": {"t2": 1.0}}}})
    assert Predictor._min_volume(Calibrated(), None, "t2") == 1.0
    assert Predictor._min_volume(Calibrated(), None, "flair") == 0.2  # calibrated before the candidates existed
    assert Predictor._min_volume(Calibrated(), None, "t2", calibrated=False) == 0.2  # a user threshold
    assert Predictor._min_volume(Calibrated(), 0.5, "t2") == 0.5  # --min-volume wins


def test_calibrate_command_rewrites_only_the_calibration(model_dir, tmp_path):
    """`medhdiff calibrate MODEL -c CONFIG` stores new thresholds; the weights and their sha256 stay."""
    from typer.testing import CliRunner

    from medhdiff_cli.main import app

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    before = json.loads((model / "model.json").read_text())
    weights = (model / "model.safetensors").read_bytes()
    sets = ["data.contrasts=[t2]", "detect.strengths=[0.2]", "detect.steps=1", "detect.ensemble=1",
            "detect.healthy_volumes=2", "detect.lesion_volumes=1", "detect.percentile=99.9",
            "detect.seed_percentiles=[99.5]", "detect.grow_percentiles=[95.0]", "detect.max_healthy_fp_ml_worst=3.0",
            "detect.dice_tie_margin=0.02"]
    args = ["calibrate", str(model), "-c", str(TINY), "--device", "cpu"]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "t2" in result.output and "healthy FP" in result.output
    after = json.loads((model / "model.json").read_text())
    assert {k: v for k, v in after.items() if k != "calibration"} == {k: v for k, v in before.items()
                                                                      if k != "calibration"}
    assert (model / "model.safetensors").read_bytes() == weights
    cal = after["calibration"]
    assert set(cal["threshold"]) == {"t2"} and cal["volumes_per_contrast"] == 2
    assert cal["max_healthy_fp_ml_worst"] == 3.0 and cal["dice_tie_margin"] == 0.02
    # --contrast recalibrates one contrast and keeps the others' stored entries
    sets[0] = "data.contrasts=[t1,t2]"
    sets.append("detect.seed_min_volumes_ml={t1: [0.2, 0.5]}")  # per-contrast seed-volume candidates
    sets.append("detect.healthy_volumes_by_contrast={t1: 1}")  # and healthy brains
    args = ["calibrate", str(model), "-c", str(TINY), "--device", "cpu", "--contrast", "t1"]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    merged = json.loads((model / "model.json").read_text())["calibration"]
    assert set(merged["threshold"]) == {"t1", "t2"} and merged["recalibrated"] == ["t1"]
    assert merged["threshold"]["t2"] == cal["threshold"]["t2"] and merged["hysteresis"]["t2"] == cal["hysteresis"]["t2"]
    assert merged["seed_min_volumes_ml"] == {"t1": [0.2, 0.5], "t2": []}
    assert merged["healthy_volumes"] == {"t1": 1} and merged["volumes_per_contrast"] == 2  # t2 drew the shared 2
    assert "healthy calibration brains: 1 on t1, 2 otherwise" in " ".join(result.output.split())
    assert merged["seed_min_volume_ml"]["t1"] in (0.2, 0.5) and len(
        merged["synthetic_tumour"]["t1"]["dice_and_healthy_fp_ml_by_seed_grow_percentile"]) == 2 * len(
        merged["synthetic_tumour"]["t2"]["dice_and_healthy_fp_ml_by_seed_grow_percentile"])
    # a shared setting that differs from the stored calibration's: exit 2, nothing written
    result = CliRunner().invoke(app, [*args, "--set", "detect.healthy_volumes=1"])
    assert result.exit_code == 2 and "volumes_per_contrast" in result.output
    assert json.loads((model / "model.json").read_text())["calibration"] == merged
    result = CliRunner().invoke(app, [*args[:-2], "--contrast", "pd"])
    assert result.exit_code == 2 and "--contrast" in result.output
    assert cal["hysteresis"]["t2"]["healthy_fp_ml_worst"] >= cal["hysteresis"]["t2"]["healthy_fp_ml"]
    bad = CliRunner().invoke(app, ["calibrate", str(tmp_path), "-c", str(TINY)])
    assert bad.exit_code == 2 and "not a model folder" in bad.output


def test_one_labelling_per_grow_region_matches_detects_findings_for_every_seed_level():
    """Calibration scores all seed levels through one labelling of the grow region; it must give exactly the
    masks `detect` forms (Predictor._findings), with and without an intensity grow region."""
    import numpy as np
    from scipy import ndimage

    from medhdiff.training.calibrate import _hysteresis_masks

    rng = np.random.default_rng(1)
    score = ndimage.gaussian_filter(rng.random((40, 40, 40)), 2).astype(np.float32)
    bright = ndimage.gaussian_filter(rng.random(score.shape), 2) > 0.52
    levels = [float(np.quantile(score, q)) for q in (0.999, 0.99, 0.97)]
    grow = float(np.quantile(score, 0.8))
    seeds = {lv: Predictor._findings(score, lv, 0.001, 0.005) for lv in levels}
    for region in (None, bright):
        masks = _hysteresis_masks(score, seeds, grow, region)
        for lv in levels:
            grow_mask = (score > grow) if region is None else (score > grow) | region
            want = Predictor._findings(score, lv, 0.001, 0.005, grow_mask)
            # and independently of the shared code: the components of the grow region that hold a seed voxel
            labels, n = ndimage.label(grow_mask | seeds[lv])
            held = ndimage.maximum(seeds[lv], labels, np.arange(1, n + 1)) > 0
            assert seeds[lv].any() and (masks[lv] == want).all()
            assert (want == np.concatenate([[False], held])[labels]).all()
        if region is not None:  # the intensity region only ever adds voxels connected to a seed
            assert all((masks[lv] >= _hysteresis_masks(score, seeds, grow, None)[lv]).all() for lv in levels)


def test_bright_region_is_the_scans_own_top_intensities_inside_the_scored_region():
    import numpy as np

    brain = np.zeros((30, 30, 30), bool)
    brain[3:27, 3:27, 3:27] = True
    image = np.where(brain, 0.5, 0.0).astype(np.float32)
    image[10:16, 10:16, 10:16] = 0.9                  # 216 bright voxels of the 8000 scored ones
    image[3:6, 3:6, 3:6] = 5.0                        # brighter still, but on the brain's rim (not scored)
    regions = Predictor.bright_regions(image, brain, (97.0, 99.9))
    region = regions[97.0]
    # the 3x3x3 median keeps the cube's interior and faces (216 - 8 corners - 48 edge voxels); the 97th
    # percentile of the 8000 scored voxels is the background level, so exactly those are above it
    assert region.sum() == 160 and region[11:15, 11:15, 11:15].all()
    assert not region[3:6, 3:6, 3:6].any() and not region[~brain].any()
    assert not regions[99.9].any()  # its level is the cube's own intensity
    assert (Predictor.bright_regions(image, brain, [97.0])[97.0] == region).all()  # one at a time: the same
    assert Predictor.bright_regions(image, brain, []) == {}  # nothing asked: no filtering


def test_robust_bright_level_is_not_raised_by_a_large_bright_lesion():
    """A lesion filling the scan's upper tail raises its empirical percentile into the lesion, which then
    keeps only its brightest core; the percentile of a normal fitted by median and MAD stays at the
    healthy tissue's level and takes the whole lesion."""
    import numpy as np

    from scipy import ndimage

    rng = np.random.default_rng(0)
    brain = np.zeros((40, 40, 40), bool)
    brain[2:38, 2:38, 2:38] = True
    image = np.where(brain, 1.0 + 0.05 * rng.standard_normal(brain.shape), 0.0).astype(np.float32)
    lesion = np.zeros_like(brain)
    lesion[8:22, 8:22, 8:22] = True                  # 2744 of the ~32800 scored voxels: 8 %
    ramp = np.linspace(1.6, 2.4, 14, dtype=np.float32)[:, None, None]  # brighter towards one side
    image[8:22, 8:22, 8:22] = ramp + 0.05 * rng.standard_normal((14, 14, 14)).astype(np.float32)
    scan = Predictor.bright_regions(image, brain, [98.0])[98.0]
    robust = Predictor.bright_regions(image, brain, [98.0], "robust")[98.0]
    inner = ndimage.binary_erosion(brain, iterations=2)
    tissue = inner & ~lesion
    assert (robust & lesion).sum() > 2600  # the whole lesion, less its median-filtered corners
    # and of the healthy tissue about its nominal 2 %, scattered noise voxels that no seed reaches
    assert 0.01 < (robust & tissue).sum() / tissue.sum() < 0.03
    assert (scan & lesion).sum() < 0.3 * lesion.sum() and not (scan & tissue).any()  # the lesion's bright end
    # without a lesion the fit is the tissue's own distribution: its 99.9th percentile marks about 0.1 %
    healthy = np.where(brain, 1.0 + 0.05 * rng.standard_normal(brain.shape), 0.0).astype(np.float32)
    assert Predictor.bright_regions(healthy, brain, [99.9], "robust")[99.9].sum() < 0.003 * inner.sum()
    with pytest.raises(InputError, match="robust"):
        Predictor.bright_regions(image, brain, [98.0], "mad")


def _tail_phantom(seed: int, heavy: bool):
    """A cube brain of unit tissue (5 % noise) with a bright lesion of 8 % of the scored region (1.6-2.4,
    brighter towards one side) and a seed score in its bright corner; with ``heavy``, a heavy healthy tail
    as well: about 10 % of the tissue in 4-voxel cubes of 1.3, away from the lesion, as real FLAIR's bright
    healthy tissue is (periventricular caps, choroid plexus), and unlike a normal's tail."""
    import numpy as np

    rng = np.random.default_rng(seed)
    brain = np.zeros((40, 40, 40), bool)
    brain[2:38, 2:38, 2:38] = True
    image = np.where(brain, 1.0 + 0.05 * rng.standard_normal(brain.shape), 0.0).astype(np.float32)
    if heavy:
        for x in (25, 31):
            for y in range(4, 34, 6):
                for z in range(4, 34, 6):
                    image[x:x + 4, y:y + 4, z:z + 4] = 1.3
    lesion = np.zeros_like(brain)
    lesion[8:22, 8:22, 8:22] = True
    image[8:22, 8:22, 8:22] = (np.linspace(1.6, 2.4, 14, dtype=np.float32)[:, None, None]
                               + 0.05 * rng.standard_normal((14, 14, 14)).astype(np.float32))
    score = np.zeros(brain.shape, np.float32)
    score[17:21, 10:14, 10:14] = 1.0  # the reconstruction flags only the lesion's brightest corner
    return image, brain, lesion, score


@pytest.mark.parametrize("heavy", [False, True])
def test_outside_level_grows_through_a_large_lesion_that_lifts_the_scan_level(heavy):
    """The scan's own p98 lies inside a lesion of 8 % of the brain, so findings grown through it keep only
    the lesion's bright end; taken again outside the findings, the level falls to the tissue's own tail and
    the finding takes the whole lesion. A heavy healthy tail keeps the level up (a normal fit would not):
    the tissue's bright blobs stay out. A scan without a finding keeps the scan level exactly."""
    import numpy as np

    from scipy import ndimage

    image, brain, lesion, score = _tail_phantom(3, heavy)
    filtered = Predictor.filtered_region(image, brain)
    none = np.zeros(brain.shape, bool)
    scan = Predictor.bright_regions(image, brain, [98.0], filtered=filtered)[98.0]
    found_scan = Predictor._findings(score, 0.5, 0.001, 0.0, scan)
    bright, rounds = Predictor.outside_findings_region(score, 0.5, none, filtered, 98.0, 0.001, 0.0)
    found = Predictor._findings(score, 0.5, 0.001, 0.0, bright)
    tissue = filtered[1] & ~lesion
    assert (found_scan & lesion).sum() < 0.5 * lesion.sum()
    assert (found & lesion).sum() > 0.93 * lesion.sum() and 2 <= rounds <= 8  # less median-filtered edges
    if heavy:  # the bright tissue holds the level above the tissue's noise and the median-filtered rim
        assert not (found & tissue).any() and not (bright & tissue & (image < 1.2)).any()
        # where a normal fitted by median and MAD puts its p98 among the noise
        assert (Predictor.bright_regions(image, brain, [98.0], "robust")[98.0] & tissue & (image < 1.2)).sum() > 100
    else:  # the tissue it takes is mostly the lesion's rim, which the median filter brightens, and few noise
        # voxels beyond it
        assert (found & tissue).sum() < 0.35 * lesion.sum()
        assert (found & tissue & ~ndimage.binary_dilation(lesion)).sum() < 0.05 * lesion.sum()
    # no seed: no finding, and the region is the scan level's, taken once
    clean, once = Predictor.outside_findings_region(np.zeros_like(score), 0.5, none, filtered, 98.0, 0.001, 0.0)
    assert once == 1 and np.array_equal(clean, scan)
    # the rounds are capped, and an empty scored region gives an empty one
    assert Predictor.outside_findings_region(score, 0.5, none, filtered, 98.0, 0.001, 0.0, rounds=1)[1] == 1
    empty = (filtered[0], np.zeros_like(brain))
    assert Predictor.outside_findings_region(score, 0.5, none, empty, 98.0, 0.001, 0.0)[0].sum() == 0
    with pytest.raises(InputError):
        Predictor.bright_regions(image, brain, [98.0], "outside")


def test_intensity_tail_sd_flags_a_lesion_that_fills_the_scans_upper_tail():
    import numpy as np

    from medhdiff.tasks.predictor import LESION_TAIL_SD

    rng = np.random.default_rng(1)
    brain = np.zeros((40, 40, 40), bool)
    brain[2:38, 2:38, 2:38] = True
    image = np.where(brain, 1.0 + 0.05 * rng.standard_normal(brain.shape), 0.0).astype(np.float32)
    healthy = Predictor.intensity_tail_sd(image, brain, 98.0)
    assert 1.7 < healthy < 2.4  # a normal's p98 is 2.05 SDs up
    image[8:22, 8:22, 8:22] += 1.0                    # a bright lesion of 8 % of the scored region
    assert Predictor.intensity_tail_sd(image, brain, 98.0) > LESION_TAIL_SD > healthy
    assert Predictor.intensity_tail_sd(image, np.zeros_like(brain), 98.0) is None


def test_grow_intensity_level_is_per_contrast_and_needs_intensity_percentiles():
    d = DetectConfig(percentile=99.9, grow_percentiles=(99.0,), grow_intensity_percentiles=(98.0,),
                     grow_intensity_level={"flair": "robust"})
    assert d.intensity_level("flair") == "robust" and d.intensity_level("t2") == "scan"
    assert d.for_contrast("flair").intensity_level("flair") == "robust"
    assert DetectConfig(percentile=99.9, grow_percentiles=(99.0,), grow_intensity_percentiles=(98.0,),
                        grow_intensity_level={"flair": "outside"}).intensity_level("flair") == "outside"
    d = DetectConfig(calibration_synthesis={"flair": {"texture_amplitude": [0.06, 0.12],
                                                      "tissue_ratios": {"wm": [0.8, 0.9]}}})
    assert d.synthesis("flair") == {"texture_amplitude": (0.06, 0.12), "tissue_ratios": {"wm": (0.8, 0.9)}}
    assert d.synthesis("t2") == {} and d.for_contrast("flair").synthesis("flair") == d.synthesis("flair")
    for bad, why in (({"flair": {"texture": [0.1, 0.2]}}, "only texture_amplitude"),
                     ({"flair": {"tissue_ratios": {"wm": [0.9, 0.8]}}}, "low <= high"), (["flair"], "")):
        with pytest.raises(InputError, match=f"calibration_synthesis.*{why}"):
            DetectConfig(calibration_synthesis=bad)
    with pytest.raises(InputError, match="scan, robust, outside"):
        DetectConfig(percentile=99.9, grow_percentiles=(99.0,), grow_intensity_percentiles=(98.0,),
                     grow_intensity_level={"flair": "mad"})
    with pytest.raises(InputError, match="needs grow_intensity_percentiles"):
        DetectConfig(percentile=99.9, grow_percentiles=(99.0,), grow_intensity_level={"flair": "robust"})


@pytest.mark.parametrize("key, value", [("calibration_synthesis", "{flari: {texture_amplitude: [0.06, 0.12]}}"),
                                        ("grow_intensity_level", "{flari: robust}")])
def test_a_per_contrast_setting_must_name_a_configured_contrast(key, value):
    """A typo in a contrast name would otherwise leave the setting silently unused."""
    with pytest.raises(InputError, match=f"detect.{key} names contrasts .'flari'."):
        load_config(TINY, [f"detect.{key}={value}", "detect.grow_percentiles=[99.0]",
                           "detect.grow_intensity_percentiles=[98.0]"])


def test_detect_applies_the_calibrated_intensity_level(model_dir, tmp_path):
    """With the calibration's grow_intensity_level, detect forms the intensity grow region at that level, and
    the report says which."""
    from medhdiff.diffusion.bundle import update_bundle_meta

    model, base = _calibrated_copy(model_dir, tmp_path, threshold={"t2": 0.05}, grow_threshold={"t2": 0.04})
    scan = _tiny_scan()
    seen, filters = [], []
    real, real_filter = Predictor.bright_regions, Predictor.filtered_region

    def spy(image, brain, percentiles, level="scan", filtered=None):
        seen.append(level)
        return real(image, brain, percentiles, level, filtered)

    def count(image, brain):
        filters.append(1)
        return real_filter(image, brain)

    real_outside = Predictor.outside_findings_region

    def outside(*args, **kw):
        seen.append("outside")
        return real_outside(*args, **kw)

    for level in ("scan", "robust", "outside"):
        update_bundle_meta(model, calibration=dict(base, grow_intensity_percentile={"t2": 90.0},
                                                   grow_intensity_level={"t2": level}))
        pred = Predictor(model, device="cpu")
        pred.bright_regions, pred.filtered_region, pred.outside_findings_region = spy, count, outside
        filters.clear()
        res = pred.detect(scan, contrast="t2", min_volume_ml=0.0)
        assert seen[-1] == level and res.report["grow_intensity_level"] == level
        assert len(filters) == 1  # the region and the tail check share one median filter
        # the scan's own tail is reported (the robust level is not lifted by a lesion: nothing to report)
        assert (res.report["grow_intensity_tail_sd"] is None) == (level == "robust")
        rounds = res.report["grow_intensity_rounds"]
        assert rounds is None if level != "outside" else 1 <= rounds <= 8
    off = pred.detect(scan, contrast="t2", min_volume_ml=0.0, grow="off")
    assert off.report["grow_intensity_level"] is None and off.report["grow_intensity_tail_sd"] is None


def test_detect_joins_the_calibrated_intensity_grow_region(model_dir, tmp_path):
    """A calibrated grow_intensity_percentile widens the grow region (never the seeds); --grow off or a value
    leaves it out, and the report says which applied."""
    from medhdiff.diffusion.bundle import update_bundle_meta

    model, base = _calibrated_copy(model_dir, tmp_path, threshold={"t2": 0.05}, grow_threshold={"t2": 0.04})
    scan = _tiny_scan()
    plain = Predictor(model, device="cpu").detect(scan, contrast="t2", min_volume_ml=0.0)
    update_bundle_meta(model, calibration=dict(base, grow_intensity_percentile={"t2": 50.0}))
    pred = Predictor(model, device="cpu")
    wide = pred.detect(scan, contrast="t2", min_volume_ml=0.0)
    assert plain.report["grow_intensity_percentile"] is None and wide.report["grow_intensity_percentile"] == 50.0
    assert (wide.mask >= plain.mask).all()
    if plain.mask.any():
        assert wide.mask.sum() > plain.mask.sum()
    for grow in ("off", 0.04):
        other = pred.detect(scan, contrast="t2", min_volume_ml=0.0, grow=grow)
        assert other.report["grow_intensity_percentile"] is None and (other.mask <= wide.mask).all()


def test_opening_the_grow_region_stops_growth_along_a_thin_ribbon_but_keeps_a_compact_lesion():
    """detect.grow_opening_mm: a seed in a compact halo keeps the halo; a 2-voxel ribbon of the grow region
    attached to it (bright cortex) is no longer followed. The ball is measured in mm."""
    import numpy as np

    from medhdiff.io import Volume

    score = np.zeros((40, 40, 40), np.float32)
    score[5:15, 5:15, 5:15] = 0.5                    # compact halo, 1000 voxels
    score[8:12, 8:12, 8:12] = 1.0                    # its seed
    score[14:16, 5:35, 5:35] = 0.5                   # a ribbon 2 voxels thick touching the halo
    grow = score > 0.3
    vol = Volume(score, np.eye(4))
    plain = Predictor._findings(score, 0.8, vol.voxel_volume_ml, 0.01, grow)
    opened = Predictor._findings(score, 0.8, vol.voxel_volume_ml, 0.01, Predictor.open_region(grow, vol.spacing, 1.5))
    assert plain[14:16, 30:35, 30:35].all()          # without the opening the finding runs along the ribbon
    assert not opened[14:16, 20:35, 20:35].any()     # with it, it stays at the lesion
    assert opened[6:14, 6:14, 6:14].all() and opened.sum() >= 0.9 * 1000
    # nothing changes at radius 0, or below every voxel size
    assert (Predictor.open_region(grow, (1.0, 1.0, 1.0), 0.0) == grow).all()
    assert (Predictor.open_region(grow, (1.0, 1.0, 1.0), 0.9) == grow).all()
    # on 1 x 1 x 4 mm voxels a 1.5 mm ball spans no neighbour along the third axis: a ribbon thin along the
    # first axis still goes, one thin only along the third (a single slice) stays
    slab = np.zeros((20, 20, 20), bool)
    slab[3:17, 3:17, 10] = True
    assert (Predictor.open_region(slab, (1.0, 1.0, 4.0), 1.5)[4:16, 4:16, 10]).all()
    assert not Predictor.open_region(slab, (1.0, 1.0, 1.0), 1.5).any()


def test_calibration_opens_the_grow_region_as_detect_does():
    import numpy as np
    from scipy import ndimage

    from medhdiff.training.calibrate import _hysteresis_masks, _shared_settings

    rng = np.random.default_rng(2)
    score = ndimage.gaussian_filter(rng.random((40, 40, 40)), 1.5).astype(np.float32)
    levels = [float(np.quantile(score, q)) for q in (0.999, 0.99)]
    grow = float(np.quantile(score, 0.85))
    seeds = {lv: Predictor._findings(score, lv, 0.001, 0.005) for lv in levels}
    masks = _hysteresis_masks(score, seeds, grow, None, 1.5, 1.0)
    loose = _hysteresis_masks(score, seeds, grow, None)
    for lv in levels:
        want = Predictor._findings(score, lv, 0.001, 0.005, Predictor.open_region(score > grow, (1.0,) * 3, 1.5))
        assert (masks[lv] == want).all() and (masks[lv] <= loose[lv]).all() and seeds[lv].any()
    assert sum(m.sum() for m in masks.values()) < sum(m.sum() for m in loose.values())
    # the setting is written with the calibration only when on, so records made before it still match
    d = DetectConfig(grow_percentiles=(95.0,), seed_percentiles=(99.9,))
    assert "grow_opening_mm" not in _shared_settings(d)
    assert _shared_settings(DetectConfig(grow_percentiles=(95.0,), grow_opening_mm=1.5))["grow_opening_mm"] == 1.5
    with pytest.raises(InputError, match="grow_opening_mm"):
        DetectConfig(grow_opening_mm=1.5)            # no hysteresis: nothing to open
    with pytest.raises(InputError, match="grow_opening_mm"):
        DetectConfig(grow_percentiles=(95.0,), grow_opening_mm=-1.0)


def test_detect_opens_the_grow_region_when_the_calibration_says_so(model_dir, tmp_path):
    from medhdiff.diffusion.bundle import update_bundle_meta

    model, base = _calibrated_copy(model_dir, tmp_path, threshold={"t2": 0.05}, grow_threshold={"t2": 0.01})
    scan = _tiny_scan()
    plain = Predictor(model, device="cpu").detect(scan, contrast="t2", min_volume_ml=0.0)
    update_bundle_meta(model, calibration=dict(base, grow_opening_mm=2.0))
    pred = Predictor(model, device="cpu")
    opened = pred.detect(scan, contrast="t2", min_volume_ml=0.0)
    assert plain.report["grow_opening_mm"] == 0.0 and opened.report["grow_opening_mm"] == 2.0
    assert (opened.mask <= plain.mask).all()
    seeds = pred.detect(scan, contrast="t2", min_volume_ml=0.0, grow="off")
    assert seeds.report["grow_opening_mm"] is None and (seeds.mask <= opened.mask).all()


def test_detect_reports_how_the_calibration_fared_on_the_contrast_and_warns_where_it_found_nothing(
        model_dir, tmp_path, caplog):
    """A contrast whose calibration found no synthetic tumours (``useful: false``, as T1 in the bundled
    model) gets a warning, since an empty result there means little; the report carries the figures."""
    import logging

    pick = {"seed_percentile": 99.9, "grow_percentile": 95.0, "threshold": 0.05, "grow_threshold": 0.04}
    model, _ = _calibrated_copy(
        model_dir, tmp_path, threshold={"t1": 0.05, "t2": 0.05}, grow_threshold={"t1": 0.04, "t2": 0.04},
        hysteresis={"t1": dict(pick, useful=False), "t2": dict(pick, useful=True)},
        synthetic_tumour={"t1": {"dice_at_calibrated": 0.0}, "t2": {"dice_at_calibrated": 0.6}})
    pred = Predictor(model, device="cpu")
    scan = _tiny_scan()
    with caplog.at_level(logging.WARNING, logger="medhdiff"):
        t1 = pred.detect(scan, contrast="t1")
    assert t1.report["calibration_check"] == {"synthetic_tumour_dice": 0.0, "useful": False}
    assert any("found no synthetic tumours on t1" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medhdiff"):
        t2 = pred.detect(scan, contrast="t2")
    assert t2.report["calibration_check"] == {"synthetic_tumour_dice": 0.6, "useful": True}
    assert not any("synthetic tumours" in r.getMessage() for r in caplog.records)


def test_score_scale_divides_by_the_scans_own_statistic_inside_the_scored_region():
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(4)
    mask = np.zeros((30, 30, 30), bool)
    mask[4:26, 4:26, 4:26] = True
    inner = Predictor.scored_region(mask)
    assert (inner == ndimage.binary_erosion(mask, iterations=2)).all()
    score = np.where(inner, rng.gamma(2.0, 0.05, mask.shape), 0.0).astype(np.float32)
    same, none = Predictor.scale_score(score, inner, "none")
    assert none is None and same is score
    scaled, mean = Predictor.scale_score(score, inner, "mean")
    assert mean == pytest.approx(float(score[inner].mean())) and scaled[inner].mean() == pytest.approx(1.0, rel=1e-5)
    scaled, p75 = Predictor.scale_score(score, inner, "p75")
    assert p75 == pytest.approx(float(np.percentile(score[inner], 75))) and (scaled[~inner] == 0).all()
    # a perfect reconstruction scores zero everywhere: nothing to divide by, the score stays as it is
    zero = np.zeros_like(score)
    assert Predictor.scale_score(zero, inner, "mean")[1] is None
    assert Predictor.scale_score(score, np.zeros_like(inner), "mean")[1] is None  # nothing scored
    for bad in ("max", "p0", "p100", "pxx", "75"):
        with pytest.raises(InputError, match="score_scale"):
            DetectConfig(score_scale={"t2": bad})
    with pytest.raises(InputError, match="score_scale"):
        DetectConfig(score_scale="mean")


def test_a_score_scale_for_a_contrast_the_config_does_not_train_is_refused(tmp_path):
    doc = yaml.safe_load(TINY.read_text())
    doc["detect"] = {"score_scale": {"pd": "mean"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match="score_scale"):
        load_config(path)
    doc["detect"] = {"grow_percentiles": [99.0], "seed_min_volumes_ml": {"pd": [0.5]}}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match="seed_min_volumes_ml"):
        load_config(path)


def test_detect_scales_the_score_of_the_contrasts_the_calibration_scaled(model_dir, tmp_path):
    """With ``score_scale: {t2: mean}`` stored, ``detect`` on T2 divides its score by the scan's own mean
    score and says so; other contrasts, and a model without the entry, keep intensity units."""
    from medhdiff.diffusion.bundle import update_bundle_meta

    model, base = _calibrated_copy(model_dir, tmp_path, threshold={"t1": 0.05, "t2": 0.05},
                                   grow_threshold={"t1": 0.02, "t2": 0.02})
    scan = _tiny_scan()
    plain = Predictor(model, device="cpu").detect(scan, contrast="t2", min_volume_ml=0.0)
    update_bundle_meta(model, calibration=dict(base, score_scale={"t2": "mean", "t1": "none"}))
    pred = Predictor(model, device="cpu")
    scaled = pred.detect(scan, contrast="t2", min_volume_ml=0.0)
    assert plain.report["score_scale"] is None
    info = scaled.report["score_scale"]
    assert info["statistic"] == "mean" and info["divisor"] > 0
    import numpy as np

    np.testing.assert_allclose(scaled.score_map * info["divisor"], plain.score_map, rtol=1e-4, atol=1e-6)
    assert pred.detect(scan, contrast="t1", min_volume_ml=0.0).report["score_scale"] is None
    multi = pred.detect_multi({"t2": scan, "t1": scan}, min_volume_ml=0.0)
    assert multi.report["per_contrast"]["t2"]["score_scale"]["statistic"] == "mean"
    assert multi.report["per_contrast"]["t1"]["score_scale"] is None


def test_calibration_scores_scaled_contrasts_as_detect_does_and_records_the_scale(model_dir, tmp_path, monkeypatch):
    from medhdiff.training.calibrate import calibrate_detection

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    cfg = load_config(TINY)
    cfg.data.contrasts = ("t2",)
    calls = []
    original = Predictor.scale_score

    def spy(score, region, how):
        calls.append(how)
        return original(score, region, how)

    monkeypatch.setattr(Predictor, "scale_score", staticmethod(spy))
    settings = DetectConfig(strengths=(0.2,), steps=1, ensemble=1, healthy_volumes=2, lesion_volumes=0,
                            percentile=99.0, score_scale={"t2": "mean"})
    cal = calibrate_detection(model, cfg, detect=settings)
    assert calls == ["mean", "mean"] and cal["score_scale"] == {"t2": "mean"}
    # the threshold is a percentile of scores whose in-brain mean is 1 on each brain: above 1
    assert cal["threshold"]["t2"] > 1.0
    # recalibrating without the scale says so for that contrast rather than keeping the stored one
    cal = calibrate_detection(model, cfg, detect=DetectConfig(**{**settings.__dict__, "score_scale": {}}),
                              contrasts=["t2"])
    assert cal["score_scale"] == {"t2": "none"} and cal["threshold"]["t2"] < 1.0


def test_residual_score_unsmoothed_is_the_median_filtered_polarity_of_the_ensemble_median():
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(5)
    mask = np.zeros((24, 24, 24), bool)
    mask[3:21, 3:21, 3:21] = True
    res = [rng.normal(0, 0.1, mask.shape).astype(np.float32) for _ in range(3)]
    inner = Predictor.scored_region(mask)
    expect = ndimage.median_filter(np.median(np.maximum(np.stack(res), 0), axis=0), size=3)
    np.testing.assert_allclose(Predictor.residual_score(res, mask, "bright"), np.where(inner, expect, 0), atol=1e-7)
    expect = ndimage.median_filter(np.median(np.abs(np.stack(res)), axis=0), size=3)
    np.testing.assert_allclose(Predictor.residual_score(res, mask, "both"), np.where(inner, expect, 0), atol=1e-7)
    dark = Predictor.residual_score([-r for r in res], mask, "dark")
    np.testing.assert_allclose(dark, Predictor.residual_score(res, mask, "bright"), atol=1e-7)


def test_smoothing_the_signed_residual_cancels_misplaced_edges_and_keeps_a_healed_lesion():
    """A reconstruction with its edges one voxel off leaves bright and dark stripes side by side; a lesion
    it heals leaves a bright blob. Unsmoothed, both score alike; smoothed (signed, then the bright part),
    the stripes cancel and the lesion stands out."""
    import numpy as np

    mask = np.zeros((48, 48, 48), bool)
    mask[4:44, 4:44, 4:44] = True
    res = np.zeros(mask.shape, np.float32)
    for x in range(8, 40, 4):  # alternating rims, as sulci drawn a voxel off leave
        res[x:x + 2, 8:40, 8:22] = 0.3
        res[x + 2:x + 4, 8:40, 8:22] = -0.3
    zz, yy, xx = np.mgrid[:48, :48, :48]
    lesion = (xx - 30) ** 2 + (yy - 30) ** 2 + (zz - 30) ** 2 <= 5 ** 2
    res[lesion] = 0.3
    plain = Predictor.residual_score([res], mask, "bright")
    smooth = Predictor.residual_score([res], mask, "bright", smooth_mm=2.0)
    edges = np.zeros(mask.shape, bool)
    edges[12:36, 12:36, 12:18] = True  # away from where the pattern starts and ends
    assert plain[lesion].mean() < 2 * plain[edges].max()
    assert smooth[lesion].max() > 5 * smooth[edges].max()
    # the mm are physical: 2 mm on a 2 mm grid is one voxel's sigma
    assert np.allclose(Predictor.residual_score([res], mask, "bright", 2.0, spacing=(2.0, 2.0, 2.0)),
                       Predictor.residual_score([res], mask, "bright", 1.0), atol=1e-6)
    # normalised inside the brain: a constant residual stays constant up to the brain's edge
    flat = Predictor.residual_score([np.full(mask.shape, 0.2, np.float32)], mask, "bright", 4.0)
    inner = Predictor.scored_region(mask)
    assert np.allclose(flat[inner], 0.2, atol=1e-5) and (flat[~inner] == 0).all()


def test_score_smooth_mm_is_validated_and_must_name_trained_contrasts(tmp_path):
    assert DetectConfig(score_smooth_mm={"t2": 4}).score_smooth_mm == {"t2": 4.0}
    for bad in ({"t2": -1}, {"t2": 25}, {"t2": "wide"}, 4.0):
        with pytest.raises(InputError, match="score_smooth_mm"):
            DetectConfig(score_smooth_mm=bad)
    doc = yaml.safe_load(TINY.read_text())
    doc["detect"] = {"score_smooth_mm": {"pd": 4}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(InputError, match="score_smooth_mm"):
        load_config(path)


def test_detect_and_calibration_smooth_the_contrasts_the_calibration_smoothed(model_dir, tmp_path, monkeypatch):
    """``score_smooth_mm`` reaches the score in calibration and in detect alike, per contrast, and is
    recorded and reported."""
    from medhdiff.diffusion.bundle import update_bundle_meta
    from medhdiff.training.calibrate import calibrate_detection

    model, base = _calibrated_copy(model_dir, tmp_path, threshold={"t1": 0.05, "t2": 0.05},
                                   grow_threshold={"t1": 0.02, "t2": 0.02})
    update_bundle_meta(model, calibration=dict(base, score_smooth_mm={"t2": 3.0, "t1": 0.0}))
    calls = []
    original = Predictor.residual_score.__func__

    def spy(cls, residuals, mask, polarity, smooth_mm=0.0, spacing=(1.0, 1.0, 1.0)):
        calls.append(smooth_mm)
        return original(cls, residuals, mask, polarity, smooth_mm, spacing)

    monkeypatch.setattr(Predictor, "residual_score", classmethod(spy))
    pred = Predictor(model, device="cpu")
    scan = _tiny_scan()
    assert pred.detect(scan, contrast="t2", min_volume_ml=0.0).report["score_smooth_mm"] == 3.0
    assert pred.detect(scan, contrast="t1", min_volume_ml=0.0).report["score_smooth_mm"] == 0.0
    multi = pred.detect_multi({"t2": scan, "t1": scan}, min_volume_ml=0.0)
    assert multi.report["per_contrast"]["t2"]["score_smooth_mm"] == 3.0
    assert calls == [3.0, 0.0, 3.0, 0.0]

    calls.clear()
    cfg = load_config(TINY)
    cfg.data.contrasts = ("t2",)
    settings = DetectConfig(strengths=(0.2,), steps=1, ensemble=1, healthy_volumes=2, lesion_volumes=0,
                            percentile=99.0, score_smooth_mm={"t2": 2.5})
    cal = calibrate_detection(model, cfg, detect=settings)
    assert calls == [2.5, 2.5] and cal["score_smooth_mm"] == {"t2": 2.5}


def test_a_contrast_can_have_its_own_grow_grid():
    d = DetectConfig(percentile=99.9, seed_percentiles=(99.5,), grow_percentiles=(99.0, 95.0),
                     grow_percentiles_by_contrast={"t2": [99.8, 99.0]})
    assert d.grow_grid("t2") == (99.8, 99.0) and d.grow_grid("flair") == (99.0, 95.0)
    assert d.for_contrast("t2").grow_percentiles == (99.8, 99.0)
    assert d.for_contrast("flair").grow_percentiles == (99.0, 95.0)
    for bad in ({"t2": [99.95]}, {"t2": []}, {"t2": [40.0]}, [99.0]):
        with pytest.raises(InputError, match="grow_percentiles_by_contrast"):
            DetectConfig(percentile=99.9, grow_percentiles=(99.0,), grow_percentiles_by_contrast=bad)
    with pytest.raises(InputError, match="needs grow_percentiles"):
        DetectConfig(grow_percentiles_by_contrast={"t2": [99.0]})


def test_calibration_scores_and_records_a_contrasts_own_grow_grid(model_dir, tmp_path):
    from medhdiff.training.calibrate import calibrate_detection

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    cfg = load_config(TINY)
    cfg.data.contrasts = ("t2", "flair")
    settings = DetectConfig(strengths=(0.2,), steps=1, ensemble=1, healthy_volumes=2, lesion_volumes=1,
                            percentile=99.9, seed_percentiles=(99.5,), grow_percentiles=(99.0, 95.0),
                            grow_percentiles_by_contrast={"t2": (99.8, 99.0, 95.0)}, min_useful_dice=0.0,
                            grow_intensity_percentiles=(98.0,),
                            grow_intensity_level={"flair": "robust"},
                            calibration_synthesis={"flair": {"texture_amplitude": [0.02, 0.03]}})
    drawn = []
    real_init = HealthyBrainGenerator.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        drawn.append((self.contrast, self.texture_amplitude))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HealthyBrainGenerator, "__init__", spy)
        cal = calibrate_detection(model, cfg, detect=settings)
    # each contrast's brains are drawn as its calibration_synthesis says, and the record keeps it
    assert ("flair", (0.02, 0.03)) in drawn and ("t2", HealthyBrainGenerator.texture_amplitude) in drawn
    assert ("flair", HealthyBrainGenerator.texture_amplitude) not in drawn
    assert cal["calibration_synthesis"] == {"t2": {}, "flair": {"texture_amplitude": [0.02, 0.03]}}
    assert cal["grow_percentiles"] == {"t2": [99.8, 99.0, 95.0], "flair": [99.0, 95.0]}
    grows = {c: {float(k.split("/")[1]) for k in cal["synthetic_tumour"][c]["dice_and_healthy_fp_ml_by_seed_grow_percentile"]}
             for c in ("t2", "flair")}
    assert grows == {"t2": {99.8, 99.0, 95.0}, "flair": {99.0, 95.0}}
    assert cal["grow_intensity_level"] == {"t2": "scan", "flair": "robust"}
    with pytest.raises(InputError, match="'outside' .*cannot be calibrated"):  # refused before any scoring
        calibrate_detection(model, cfg, detect=dataclasses.replace(settings, grow_intensity_level={"t2": "outside"}))
    assert cal["hysteresis"]["t2"]["grow_percentile"] in grows["t2"]
