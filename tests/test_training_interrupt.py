"""Training survives SIGTERM (clean stop, checkpoint, exit 143) and SIGKILL (no corrupt checkpoint)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from medhdiff.training.checkpoint import find_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STEPS = 40
CKPT_EVERY = 2

pytestmark = pytest.mark.slow


@pytest.fixture
def config(tmp_path) -> Path:
    doc = yaml.safe_load(TINY.read_text())
    doc["optim"].update(steps_local=STEPS, checkpoint_every=CKPT_EVERY, validate_every=0)
    path = tmp_path / "interrupt.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def start(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    log = open(out.parent / f"{out.name}.{time.monotonic_ns()}.log", "w")
    cmd = [sys.executable, "-m", "medhdiff_cli.main", "train", "-c", str(config), "--out", str(out),
           "--stage", "local", "--device", "cpu", "--no-calibrate", "--threads", "1", *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    proc.log_path = Path(log.name)  # type: ignore[attr-defined]
    return proc


def output(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text()  # type: ignore[attr-defined]


def wait_for(cond, proc: subprocess.Popen, timeout: float = 120.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before {what}:\n{output(proc)}")
        if time.monotonic() > end:
            proc.kill()
            proc.wait()
            pytest.fail(f"timed out waiting for {what}:\n{output(proc)}")
        time.sleep(0.02)


def wait(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"training did not end within {timeout} s:\n{output(proc)}")


def metric_steps(out: Path) -> list[int]:
    path = out / "local" / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by SIGKILL
            continue
        if "loss" in rec:
            steps.append(rec["step"])
    return steps


def check_checkpoint(out: Path) -> int:
    """Every file of the checkpoint that a resume would use loads; returns its step."""
    ck = find_checkpoint(out / "local" / "checkpoint")
    assert ck is not None, "no complete checkpoint"
    names = sorted(p.name for p in ck.iterdir())
    assert names == ["ema.safetensors", "model.safetensors", "optimizer.safetensors", "state.json"]
    tensors = {name: load_file(str(ck / name)) for name in names if name.endswith(".safetensors")}
    assert tensors["model.safetensors"].keys() == tensors["ema.safetensors"].keys()
    state = json.loads((ck / "state.json").read_text())
    assert state["stage"] == "local" and state["total_steps"] == STEPS
    return int(state["step"])


def resume_started_at(out: Path, n_before: int, ckpt: int) -> None:
    """The steps a resumed run logged start right after the checkpoint's and have no gap."""
    new = metric_steps(out)[n_before:]
    assert new, "the resumed run logged no step"
    assert new == list(range(ckpt + 1, ckpt + 1 + len(new))), (ckpt, new)


def test_sigterm_then_sigkills_then_resume_to_the_end(config, tmp_path):
    out = tmp_path / "run"
    ck_file = out / "local" / "checkpoint" / "state.json"

    # 1. SIGTERM after the first checkpoint: a clean stop with a fresh checkpoint and exit 143
    proc = start(config, out)
    wait_for(ck_file.is_file, proc, what="the first checkpoint")
    proc.send_signal(signal.SIGTERM)
    assert wait(proc, 60) == 128 + signal.SIGTERM, output(proc)
    text = output(proc)
    assert "error: training stopped by signal 15" in text and "Traceback" not in text
    ckpt = check_checkpoint(out)
    assert CKPT_EVERY <= ckpt < STEPS
    # the checkpoint written on SIGTERM holds the last step taken: nothing logged is lost
    assert metric_steps(out) == list(range(1, ckpt + 1))

    # 2. SIGKILL at random moments (seeded) of resumed runs: never a corrupt checkpoint
    rng = random.Random(20240601)
    for _ in range(2):
        n_before = len(metric_steps(out))
        proc = start(config, out, "--resume")
        # let this run get into its training loop, where checkpoints are written
        wait_for(lambda: len(metric_steps(out)) > n_before, proc, what="a training step")
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is not None:  # finished already: nothing left to interrupt
            assert proc.returncode == 0, output(proc)
            break
        proc.send_signal(signal.SIGKILL)
        assert wait(proc, 30) == -signal.SIGKILL
        assert f"resuming the local stage at step {ckpt}" in output(proc)
        resume_started_at(out, n_before, ckpt)
        step = check_checkpoint(out)
        # the checkpoint it found: the one the run started from, or one the killed run wrote
        assert step == ckpt or (step % CKPT_EVERY == 0 and ckpt < step < STEPS)
        ckpt = step

    # 3. a last --resume finishes the schedule, continuing from the last checkpoint
    n_before = len(metric_steps(out))
    proc = start(config, out, "--resume")
    assert wait(proc, 240) == 0, output(proc)
    assert f"resuming the local stage at step {ckpt}" in output(proc)
    resume_started_at(out, n_before, ckpt)
    assert metric_steps(out)[-1] == STEPS
    assert check_checkpoint(out) == STEPS
    model = json.loads((out / "model" / "model.json").read_text())
    assert model["training"]["steps"]["local"] == STEPS
