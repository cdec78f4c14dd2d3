"""The seed floor of detection calibration (``detect.seed_tail``): each healthy brain's highest seed level,
an extreme-value fit to those levels, and the pick that keeps every seed threshold above the fitted tail."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medhdiff.errors import InputError
from medhdiff.tasks.predictor import Predictor
from medhdiff.training import DetectConfig, load_config
from medhdiff.training.calibrate import _pick_hysteresis, gumbel_quantile, seed_floors, seed_levels

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def _blob_map(peaks_and_sizes, shape=(40, 40, 40)) -> np.ndarray:
    """A map of separate cubes, each ``(value, side)``, on a zero background."""
    sc = np.zeros(shape, np.float32)
    for k, (value, side) in enumerate(peaks_and_sizes):
        x = 2 + k * 12
        sc[x:x + side, 5:5 + side, 5:5 + side] = value
    return sc


def test_seed_level_is_the_lowest_threshold_at_which_no_seed_component_remains():
    # 27 voxels at 3.0, 512 at 2.0 (joined to nothing), 1000 at 1.0; 1 uL a voxel
    sc = _blob_map([(3.0, 3), (2.0, 8), (1.0, 10)])
    levels = seed_levels(sc, 0.001, (0.02, 0.1, 0.6, 2.0))
    assert levels == {0.02: 3.0, 0.1: 2.0, 0.6: 1.0, 2.0: 0.0}
    for v, lv in levels.items():  # exactly the edge at which Predictor._findings stops seeding
        if lv > 0:
            assert not Predictor._findings(sc, lv, 0.001, v).any()
            assert Predictor._findings(sc, np.nextafter(np.float32(lv), np.float32(0)), 0.001, v).any()


def test_seed_level_on_a_smooth_map_matches_findings_at_neighbouring_values():
    rng = np.random.default_rng(4)
    from scipy import ndimage

    sc = ndimage.gaussian_filter(rng.standard_normal((30, 30, 30)), 2).astype(np.float32)
    for v, lv in seed_levels(sc, 0.001, (0.005, 0.05)).items():
        below = sc[(sc < lv) & (sc > 0)].max()
        assert not Predictor._findings(sc, lv, 0.001, v).any() and Predictor._findings(sc, below, 0.001, v).any()


def test_gumbel_quantile_golden_value_and_its_tail_on_gumbel_draws():
    # mean 2, sd 1: scale sqrt(6)/pi = 0.779697, location 2 - 0.577216 * scale = 1.549952; -ln(-ln 0.99) = 4.600149
    assert gumbel_quantile([1.0, 2.0, 3.0], 0.01) == pytest.approx(5.136671, abs=1e-5)
    assert gumbel_quantile([1.0, 2.0, 3.0], 0.5) < gumbel_quantile([1.0, 2.0, 3.0], 0.01)
    rng = np.random.default_rng(0)
    draws = rng.gumbel(10.0, 2.0, 20_000)
    q = gumbel_quantile(draws, 0.01)
    assert q == pytest.approx(10.0 + 2.0 * 4.600149, rel=0.02)
    assert (draws > q).mean() == pytest.approx(0.01, abs=0.003)
    with pytest.raises(ValueError, match="3 maxima"):
        gumbel_quantile([1.0, 2.0], 0.01)


def test_the_floor_lifts_a_seed_threshold_the_calibration_brains_only_just_clear():
    """Each healthy brain holds one 1.7 mL spot whose height varies from brain to brain. The percentile grid
    seeds below every spot, so nothing fits the budget and the pick is the least bad; with the floor every
    seed threshold lies above the fitted tail of the spots, the healthy brains stay clean, and a tumour
    standing well above them is still found."""
    heights = (1.0, 1.1, 0.9, 1.05, 0.95)
    healthy = [_blob_map([(h, 12)]) for h in heights]
    lesion = _blob_map([(2.0, 12)])
    ref = lesion > 0
    values = np.linspace(0.0, 0.8, 100_001)
    d = DetectConfig(percentile=99.99, seed_percentiles=(99.9,), grow_percentiles=(99.0,), min_useful_dice=0.0,
                     max_healthy_fp_ml=0.1, max_healthy_fp_ml_worst=0.1, seed_min_volumes_ml=(0.2, 1.0))
    plain = _pick_hysteresis(values, healthy, [(lesion, ref)], d, 0.001)
    assert plain["healthy_fp_ml"] > 1.0 and "seed_floor" not in plain
    floored = _pick_hysteresis(values, healthy, [(lesion, ref)], d, 0.001, seed_tail=0.01)
    floor = gumbel_quantile(heights, 0.01)
    assert floored["seed_floor"] == pytest.approx(floor) and floored["seed_tail"] == 0.01
    assert floored["threshold"] == pytest.approx(floor) and floor > max(heights)
    assert floored["healthy_fp_ml_worst"] == 0.0 and floored["dice"] == 1.0
    assert floored["grow_threshold"] < floored["threshold"]
    # a new healthy brain with a spot a little above every calibration brain's stays clean
    assert not Predictor._findings(_blob_map([(1.15, 12)]), floored["threshold"], 0.001, 1.0).any()
    # the floors per seed volume, and each brain's levels beside them
    floors = seed_floors(healthy, 0.001, (0.2, 1.0), 0.01)
    assert floors[1.0]["levels"] == pytest.approx(list(heights)) and floors[1.0]["floor"] == pytest.approx(floor)


def test_seed_tail_is_validated():
    common = dict(grow_percentiles=(99.0,), healthy_volumes=4)
    assert DetectConfig(**common, seed_tail={"t2": 0.01}).seed_tail == {"t2": 0.01}
    for bad in ({"t2": 0.0}, {"t2": 0.6}, {"t2": "rare"}, 0.01):
        with pytest.raises(InputError, match="seed_tail"):
            DetectConfig(**common, seed_tail=bad)
    with pytest.raises(InputError, match="seed_tail needs grow_percentiles"):
        DetectConfig(healthy_volumes=4, seed_tail={"t2": 0.01})
    with pytest.raises(InputError, match="3 healthy"):
        DetectConfig(grow_percentiles=(99.0,), healthy_volumes=2, seed_tail={"t2": 0.01})
    assert DetectConfig(grow_percentiles=(99.0,), healthy_volumes=2, healthy_volumes_by_contrast={"t2": 3},
                        seed_tail={"t2": 0.01}).seed_tail == {"t2": 0.01}


def test_calibration_applies_and_records_the_seed_floor(model_dir, tmp_path):
    from test_detector import _tiny_scan

    from medhdiff.training.calibrate import calibrate_detection

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    cfg = load_config(TINY)
    cfg.data.contrasts = ("t2",)
    settings = DetectConfig(strengths=(0.2,), steps=1, ensemble=1, healthy_volumes=3, lesion_volumes=1,
                            percentile=99.9, seed_percentiles=(99.5,), grow_percentiles=(99.0, 95.0),
                            max_healthy_fp_ml=0.5, min_useful_dice=0.0, seed_tail={"t2": 0.05})
    cal = calibrate_detection(model, cfg, detect=settings)
    pick = cal["hysteresis"]["t2"]
    assert cal["seed_tail"] == {"t2": 0.05} and pick["seed_tail"] == 0.05
    assert cal["threshold"]["t2"] == pick["threshold"] >= pick["seed_floor"] > 0
    assert "seed_tail" in cal["source"]
    report = Predictor(model, device="cpu").detect(_tiny_scan(), contrast="t2").report
    assert report["threshold"] == pytest.approx(pick["threshold"])  # detect seeds at the floored threshold

