"""Training: config validation, the LR schedule, datasets, and ``medhdiff train`` end to end."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from medhdiff.errors import InputError
from medhdiff.training import TrainConfig, load_config
from medhdiff.training.trainer import lr_factor

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
# One intra-op thread per process: on a small, busy machine torch's default
# thread pool spins against other processes and a 0.2 s step takes seconds.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def medhdiff(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medhdiff_cli.main", *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def train(out: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return medhdiff("train", "-c", TINY, "--out", out, "--device", "cpu", "--threads", "1", *extra,
                    timeout=timeout)


def metrics(run: Path, stage: str) -> list[dict]:
    lines = (run / stage / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def step_records(run: Path, stage: str) -> list[dict]:
    return [r for r in metrics(run, stage) if "loss" in r]


def ckpt_step(run: Path, stage: str) -> int:
    return json.loads((run / stage / "checkpoint" / "state.json").read_text())["step"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def write_yaml(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def tiny_doc() -> dict:
    return yaml.safe_load(TINY.read_text())


# -- config ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where, key", [((), "bogus_top"), (("optim",), "lr_typo"),
                                        (("model", "patch_net"), "chanels")])
def test_unknown_key_is_an_error_naming_it(tmp_path, where, key):
    doc = tiny_doc()
    node = doc
    for part in where:
        node = node[part]
    node[key] = 1
    with pytest.raises(InputError, match=key):
        load_config(write_yaml(tmp_path / "bad.yaml", doc))


def test_tiny_config_loads_and_round_trips_through_json():
    cfg = load_config(TINY)
    assert cfg.optim.steps_global == 4 and cfg.model.patch_size == (16, 16, 16)
    d = cfg.to_dict()
    again = TrainConfig.from_dict(json.loads(json.dumps(d)))
    assert again == cfg
    assert again.to_dict() == d


def test_pad_multiple_must_fit_the_global_network(tmp_path):
    doc = tiny_doc()
    doc["preprocess"]["pad_multiple"] = 6  # coarse_factor 2 x 2^(2 levels - 1) = 4 does not divide 6
    with pytest.raises(InputError, match="pad_multiple"):
        load_config(write_yaml(tmp_path / "bad.yaml", doc))


def test_missing_config_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such config"):
        load_config(tmp_path / "absent.yaml")



def test_set_overrides_config_values_at_any_depth():
    base = load_config(TINY)
    cfg = load_config(TINY, ["optim.lr=1e-4", "optim.seed=13", "model.patch_net.channels=[4, 8]",
                             "detect.grow_percentiles=[95, 90]", "data.contrasts=[t2]", "optim.amp=true"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float) and cfg.optim.seed == 13
    assert tuple(base.model.patch_net.channels) != (4, 8) and tuple(cfg.model.patch_net.channels) == (4, 8)
    assert tuple(cfg.detect.grow_percentiles) == (95, 90)
    assert tuple(cfg.data.contrasts) == ("t2",)
    assert cfg.optim.amp is True and base.optim.amp is False
    unchanged = cfg.to_dict()
    for section, key in (("optim", "lr"), ("optim", "seed"), ("optim", "amp"), ("data", "contrasts"),
                         ("detect", "grow_percentiles"), ("model", "patch_net")):
        unchanged[section][key] = base.to_dict()[section][key]
    assert unchanged == base.to_dict()  # nothing else moved
    assert load_config(TINY, ["data.labelmaps=inf"]).data.labelmaps == "inf"  # text stays text


@pytest.mark.parametrize("section", ["data", "model"])
def test_a_single_string_for_contrasts_is_refused_not_split_into_letters(tmp_path, section):
    doc = tiny_doc()
    doc[section]["contrasts"] = "t2"
    with pytest.raises(InputError, match="sequence of names"):
        load_config(write_yaml(tmp_path / "scalar.yaml", doc))


@pytest.mark.parametrize("item,match", [("optim.lr", "SECTION.KEY=VALUE"), ("lr=1", "SECTION.KEY=VALUE"),
                                        ("optim.=1", "SECTION.KEY=VALUE"), ("optim.bogus=1", "bogus"),
                                        ("optim.lr.x=1", "not a section"), ("optim.lr=[1", "YAML"),
                                        ("optim.lr=-1", "lr"), ("optim.init_weights.x=1", "init_weights"),
                                        ("optim.amp=maybe", "amp"), ("optim.steps_local=3.7", "whole number"),
                                        ("optim.seed=true", "whole number"),
                                        ("data.contrasts=t2", "sequence of names")])
def test_bad_set_overrides_are_input_errors(item, match):
    with pytest.raises(InputError, match=match):
        load_config(TINY, [item])


def test_train_cli_rejects_a_bad_set_in_one_line(tmp_path):
    res = train(tmp_path / "run", "--set", "optim.bogus=1")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "bogus" in res.stderr and not (tmp_path / "run").exists()

# -- learning-rate schedule -----------------------------------------------------------------------------


def test_lr_warmup_is_linear():
    warmup = 10
    values = [lr_factor(s, 100, warmup, 0.05) for s in range(warmup)]
    assert values == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    steps = np.diff(values)
    assert np.allclose(steps, 1 / warmup)
    assert lr_factor(warmup, 100, warmup, 0.05) == pytest.approx(1.0)


@pytest.mark.parametrize("min_ratio", [0.0, 0.05, 0.3])
def test_lr_cosine_ends_at_min_ratio_and_decays_monotonically(min_ratio):
    total, warmup = 200, 20
    assert lr_factor(total, total, warmup, min_ratio) == pytest.approx(min_ratio)
    assert lr_factor(total + 50, total, warmup, min_ratio) == pytest.approx(min_ratio)
    after = [lr_factor(s, total, warmup, min_ratio) for s in range(warmup, total + 1)]
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:]))
    assert after[0] == pytest.approx(1.0) and after[-1] == pytest.approx(min_ratio)
    mid = warmup + (total - warmup) // 2
    assert lr_factor(mid, total, warmup, min_ratio) == pytest.approx(min_ratio + (1 - min_ratio) * 0.5)


def test_lr_without_warmup_starts_at_one():
    assert lr_factor(0, 10, 0, 0.1) == pytest.approx(1.0)
    assert all(0.1 - 1e-12 <= lr_factor(s, 10, 0, 0.1) <= 1.0 for s in range(12))


# -- datasets ---------------------------------------------------------------------------------------------


def test_global_and_patch_items_have_the_configured_shapes(one_thread):
    from medhdiff.training.datasets import GlobalDataset, PatchDataset

    cfg = load_config(TINY)
    item = next(iter(GlobalDataset(cfg, seed=3)))
    assert set(item) == {"x0", "weight", "label"}  # "target" only in healing runs (data.heal_fraction > 0)
    assert tuple(item["x0"].shape) == (1, *cfg.data.coarse_shape)
    assert tuple(item["weight"].shape) == (1, *cfg.data.coarse_shape)
    assert torch.isfinite(item["x0"]).all() and item["x0"].abs().max() > 0
    assert 0 <= int(item["label"]) < len(cfg.model.contrasts)

    ps = tuple(cfg.model.patch_size)
    it = iter(PatchDataset(cfg, seed=3))
    items = [next(it) for _ in range(cfg.data.patches_per_volume)]
    for item in items:
        assert set(item) == {"x0", "cond", "coords", "weight", "label"}
        assert tuple(item["x0"].shape) == (1, *ps)
        assert tuple(item["cond"].shape) == (1, *ps)
        assert tuple(item["coords"].shape) == (3, *ps)
        assert tuple(item["weight"].shape) == (1, *ps)
        assert item["coords"].min() >= -1.0 and item["coords"].max() <= 1.0
        assert set(torch.unique(item["weight"]).tolist()) <= {0.0, 1.0}
        assert torch.isfinite(item["x0"]).all() and torch.isfinite(item["cond"]).all()
    # patches of one volume sit at different places: their coordinates differ
    assert not all(torch.equal(items[0]["coords"], other["coords"]) for other in items[1:])


def test_workers_and_ranks_draw_different_volumes(one_thread):
    from medhdiff.training.datasets import GlobalDataset

    cfg = load_config(TINY)
    loader = DataLoader(GlobalDataset(cfg, seed=5), batch_size=None, num_workers=2, timeout=120)
    it = iter(loader)
    first = next(it)   # from worker 0
    second = next(it)  # from worker 1
    del it
    assert not torch.equal(first["x0"], second["x0"])
    # worker 0 draws what the same dataset draws in the main process (seeded, reproducible)
    same = next(iter(GlobalDataset(cfg, seed=5)))
    assert torch.equal(same["x0"], first["x0"])
    other_rank = next(iter(GlobalDataset(cfg, seed=5, rank=1, world=2)))
    assert not torch.equal(other_rank["x0"], first["x0"])


def _folder_with_lesion(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 2 mm ellipsoidal 'brain' and a lesion cube mask beside it; returns (affine, lesion world box)."""
    rng = np.random.default_rng(0)
    shape = (56, 64, 52)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-56.0, -64.0, -52.0]
    idx = np.indices(shape).astype(float)
    centre = (np.asarray(shape) - 1) / 2
    r = np.sqrt((((idx - centre[:, None, None, None]) / (np.asarray(shape)[:, None, None, None] * 0.4)) ** 2).sum(0))
    image = np.where(r < 1.0, 500.0 + 100.0 * rng.random(shape), 0.0).astype(np.float32)
    lesion = np.zeros(shape, np.uint8)
    lo, hi = np.array([30, 30, 24]), np.array([36, 36, 30])  # 12 mm cube, inside the brain
    lesion[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1
    image[lesion > 0] = 900.0
    nib.Nifti1Image(image, affine).to_filename(str(folder / "sub01_t1.nii.gz"))
    nib.Nifti1Image(lesion, affine).to_filename(str(folder / "sub01_t1_mask.nii.gz"))
    world_lo = (affine @ np.r_[lo - 0.5, 1])[:3]
    world_hi = (affine @ np.r_[hi - 0.5, 1])[:3]
    return affine, np.stack([world_lo, world_hi])


def test_folder_source_zeroes_the_loss_weight_on_dilated_lesions(tmp_path, one_thread):
    from medhdiff.io import Volume
    from medhdiff.preprocess import Preprocessor
    from medhdiff.training.datasets import FolderSource, PatchDataset, to_model_space

    data = tmp_path / "data"
    data.mkdir()
    _, box = _folder_with_lesion(data)
    doc = tiny_doc()
    doc["data"].update(source="folder", folder=str(data))
    cfg = TrainConfig.from_dict(doc)
    src = FolderSource(cfg)
    assert len(src) == 1  # the mask is not a training volume
    raw = src.draw(np.random.default_rng(0))
    assert raw.lesion_mask is not None and raw.contrast == "t1"
    pre = Preprocessor(cfg.preprocess)
    vol = to_model_space(raw, cfg, pre)
    weight = vol.weight[0].numpy()
    assert set(np.unique(weight).tolist()) == {0.0, 1.0}

    # independent of the code under test: where do the zero-weight voxels lie in world space?
    model_affine = pre.forward(Volume(raw.image.astype(np.float32), raw.affine)).record.model_affine
    zeros = np.argwhere(weight == 0)
    world = (model_affine @ np.c_[zeros, np.ones(len(zeros))].T).T[:, :3]
    spacing = cfg.preprocess.spacing[0]
    slack = 2 * spacing + spacing  # two dilation iterations plus one voxel of resampling
    assert (world >= box[0] - slack).all() and (world <= box[1] + slack).all()
    # the whole lesion, and more (dilated), carries no weight
    centre = box.mean(axis=0)
    ijk = np.round(np.linalg.solve(model_affine, np.r_[centre, 1])[:3]).astype(int)
    assert weight[tuple(ijk)] == 0
    lesion_voxels = np.prod((box[1] - box[0]) / spacing)  # 27 model voxels
    assert len(zeros) > 2 * lesion_voxels
    # most of the brain still counts
    assert weight[vol.brain[0].numpy() > 0].mean() > 0.8

    # the patch stream carries the weights through
    it = iter(PatchDataset(cfg, seed=0))
    patches = [next(it) for _ in range(8)]
    for p in patches:
        assert set(torch.unique(p["weight"]).tolist()) <= {0.0, 1.0}
    assert any((p["weight"] == 0).any() for p in patches)


# -- medhdiff train, end to end -----------------------------------------------------------------------------


class Launched:
    """A ``medhdiff train`` run started in the background (runs overlap with the in-process tests)."""

    def __init__(self, out: Path, *extra: str):
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self._stdout = open(out.parent / f"{out.name}.stdout", "w+")
        self._stderr = open(out.parent / f"{out.name}.stderr", "w+")
        cmd = [sys.executable, "-m", "medhdiff_cli.main", "train", "-c", str(TINY), "--out", str(out),
               "--device", "cpu", "--threads", "1", *extra]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=self._stdout, stderr=self._stderr, text=True)

    def result(self, timeout: float = 300) -> subprocess.CompletedProcess:
        rc = self.proc.wait(timeout=timeout)
        self._stdout.seek(0)
        self._stderr.seek(0)
        return subprocess.CompletedProcess(self.proc.args, rc, self._stdout.read(), self._stderr.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stdout.close()
        self._stderr.close()


@pytest.fixture(scope="module", autouse=True)
def launched(request, tmp_path_factory):
    """Start the module's training runs at once, if any selected test needs them."""
    wanted = any({"full_run", "resumed_run"} & set(item.fixturenames)
                 for item in request.session.items if item.module is request.module)
    if not wanted:
        yield {}
        return
    root = tmp_path_factory.mktemp("train")
    runs = {"full": Launched(root / "full"), "part1": Launched(root / "resumed", "--max-steps", "2", "--no-calibrate")}
    yield runs
    for run in runs.values():
        run.stop()


@pytest.fixture(scope="module")
def full_run(launched) -> Path:
    res = launched["full"].result()
    assert res.returncode == 0, res.stderr
    return launched["full"].out


@pytest.fixture(scope="module")
def resumed_run(launched) -> Path:
    """Two steps per stage, then ``--resume`` to the end of the schedule (4 steps)."""
    first = launched["part1"].result()
    out = launched["part1"].out
    assert first.returncode == 0, first.stderr
    for stage in ("global", "local"):
        assert ckpt_step(out, stage) == 2
        assert [r["step"] for r in step_records(out, stage)] == [1, 2]
    second = train(out, "--resume", "--no-calibrate")
    assert second.returncode == 0, second.stderr
    assert "resuming the global stage at step 2" in second.stderr
    return out


@pytest.mark.slow
def test_resume_of_a_finished_run_trains_no_more(resumed_run):
    # (first of the run tests: the resumed run's steps overlap with the full run's calibration)
    before = {s: (resumed_run / s / "metrics.jsonl").read_text() for s in ("global", "local")}
    ck_before = {s: sha256(resumed_run / s / "checkpoint" / "model.safetensors") for s in ("global", "local")}
    res = train(resumed_run, "--resume", "--no-calibrate")
    assert res.returncode == 0, res.stderr
    for s in ("global", "local"):
        assert (resumed_run / s / "metrics.jsonl").read_text() == before[s]
        assert ckpt_step(resumed_run, s) == 4
        assert sha256(resumed_run / s / "checkpoint" / "model.safetensors") == ck_before[s]


@pytest.mark.slow
def test_train_end_to_end(full_run):
    from medhdiff.diffusion.bundle import load_bundle
    from medhdiff.training.checkpoint import find_checkpoint

    cfg = load_config(TINY)
    assert json.loads((full_run / "config.json").read_text()) == cfg.to_dict()
    for stage in ("global", "local"):
        ck = find_checkpoint(full_run / stage / "checkpoint")
        assert ck == full_run / stage / "checkpoint"
        for name in ("model", "ema", "optimizer"):
            assert load_file(str(ck / f"{name}.safetensors"))
        state = json.loads((ck / "state.json").read_text())
        assert state["step"] == 4 and state["stage"] == stage
        records = metrics(full_run, stage)
        steps = [r["step"] for r in records if "loss" in r]
        assert steps == [1, 2, 3, 4]
        assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
        assert [r["step"] for r in records if "val_loss" in r] == [4]
        # steps never go back in the log
        assert all(b["step"] >= a["step"] for a, b in zip(records, records[1:]))

    doc = json.loads((full_run / "model" / "model.json").read_text())
    assert doc["sha256"] == sha256(full_run / "model" / "model.safetensors")
    assert doc["training"]["steps"] == {"global": 4, "local": 4}
    thresholds = doc["calibration"]["threshold"]
    assert set(thresholds) == set(cfg.data.contrasts)
    assert all(math.isfinite(v) and v > 0 for v in thresholds.values())
    bundle = load_bundle(full_run / "model")
    assert bundle.sha256 == doc["sha256"]


@pytest.mark.slow
def test_train_refuses_an_existing_run_without_resume(full_run):
    before = (full_run / "global" / "metrics.jsonl").read_text()
    res = train(full_run, "--no-calibrate")
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--resume" in lines[0]
    assert (full_run / "global" / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_resume_continues_the_schedule_exactly(resumed_run, full_run):
    cfg = load_config(TINY).optim
    for stage in ("global", "local"):
        assert ckpt_step(resumed_run, stage) == 4
        resumed = step_records(resumed_run, stage)
        straight = step_records(full_run, stage)
        assert [r["step"] for r in resumed] == [1, 2, 3, 4]
        for a, b in zip(resumed, straight):
            assert a["lr"] == pytest.approx(b["lr"], rel=1e-12, abs=0)
            assert a["lr"] == pytest.approx(cfg.lr * lr_factor(a["step"] - 1, 4, cfg.warmup_steps, cfg.min_lr_ratio))
    # (the weights may differ: data streams are reseeded from the step on resume, by design)
    doc = json.loads((resumed_run / "model" / "model.json").read_text())
    assert doc["training"]["steps"] == {"global": 4, "local": 4}


def test_checkpoint_save_recovers_when_only_the_old_copy_survived(tmp_path):
    """A save killed between its two renames leaves only ``.checkpoint.old``; the next save must keep it
    until the new checkpoint is in place."""
    import torch

    from medhdiff.training.checkpoint import find_checkpoint, save_checkpoint

    model = torch.nn.Linear(2, 2)
    ema = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, model=model, ema=ema, optimizer=opt, state={"step": 1})
    folder.rename(tmp_path / ".checkpoint.old")  # the state a kill between the renames leaves
    assert find_checkpoint(folder) == tmp_path / ".checkpoint.old"
    save_checkpoint(folder, model=model, ema=ema, optimizer=opt, state={"step": 2})
    found = find_checkpoint(folder)
    assert found == folder and json.loads((found / "state.json").read_text())["step"] == 2


def test_a_resumed_run_names_the_config_keys_that_changed():
    from medhdiff.training.run import _changed_keys

    old = load_config(TINY).to_dict()
    new = load_config(TINY, ["optim.lr=5e-4", "model.patch_net.channels=[4, 8]"]).to_dict()
    assert _changed_keys(old, new) == ["model.patch_net.channels", "optim.lr"]
    assert _changed_keys(old, old) == []
