"""Training survives SIGTERM (clean stop, checkpoint, exit 143) and SIGKILL at random moments.

After five kills, ``--resume`` reaches the schedule's last step, no checkpoint is corrupt and the
loss history holds every step exactly once.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from medhdiff.training import load_config
from medhdiff.training.checkpoint import find_checkpoint
from medhdiff.training.trainer import lr_factor

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STEPS = 40
CKPT_EVERY = 2
TRIALS = 5

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


def records(out: Path) -> list[dict]:
    """The local stage's loss records (a line cut by SIGKILL is skipped)."""
    path = out / "local" / "metrics.jsonl"
    if not path.is_file():
        return []
    recs = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by SIGKILL
            continue
        if "loss" in rec:
            recs.append(rec)
    return recs


def metric_steps(out: Path) -> list[int]:
    return [r["step"] for r in records(out)]


def check_checkpoint(out: Path) -> int:
    """Every file of the checkpoint that a resume would use loads; returns its step."""
    ck = find_checkpoint(out / "local" / "checkpoint")
    assert ck is not None, "no complete checkpoint"
    names = sorted(p.name for p in ck.iterdir())
    assert names == ["ema.safetensors", "model.safetensors", "optimizer.safetensors", "state.json"]
    tensors = {name: load_file(str(ck / name)) for name in names if name.endswith(".safetensors")}
    assert tensors["model.safetensors"].keys() == tensors["ema.safetensors"].keys()
    assert all(torch.isfinite(t).all() for t in tensors["model.safetensors"].values())
    state = json.loads((ck / "state.json").read_text())
    assert state["stage"] == "local" and state["total_steps"] == STEPS
    return int(state["step"])


def assert_history_continuous(out: Path, last: int) -> None:
    """Each step 1..last logged exactly once, in order, with the schedule's learning rate and a finite loss."""
    opt = load_config(TINY).optim
    recs = records(out)
    assert [r["step"] for r in recs] == list(range(1, last + 1))
    for r in recs:
        assert math.isfinite(r["loss"])
        expected = opt.lr * lr_factor(r["step"] - 1, STEPS, opt.warmup_steps, opt.min_lr_ratio)
        assert r["lr"] == pytest.approx(expected, rel=1e-9), r


def kill_at_a_random_moment(config: Path, out: Path, rng: random.Random) -> bool:
    """Start ``--resume`` and SIGKILL it at a random moment; False if it finished first.

    A quarter of the kills land during start-up (before the first step), the
    others after a random number of new steps plus a random fraction of a
    step, so some land while a checkpoint is being written.
    """
    started = time.time()
    proc = start(config, out, "--resume")
    if rng.random() < 0.25:
        time.sleep(rng.uniform(0.0, 2.0))
    else:
        k = rng.randint(1, 5)
        wait_for(lambda: sum(r["time"] >= started for r in records(out)) >= k, proc, what=f"{k} new step(s)")
        time.sleep(rng.uniform(0.0, 0.3))
    if proc.poll() is not None:
        assert proc.returncode == 0, output(proc)
        return False
    proc.send_signal(signal.SIGKILL)
    assert wait(proc, 30) == -signal.SIGKILL
    return True


def test_sigterm_then_five_random_sigkills_then_resume_to_the_end(config, tmp_path):
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
    assert_history_continuous(out, ckpt)

    # 2. SIGKILL at random moments (seeded) of five resumed runs: never a corrupt checkpoint
    rng = random.Random(20240601)
    for trial in range(TRIALS):
        if not kill_at_a_random_moment(config, out, rng):
            break  # finished already: nothing left to interrupt
        step = check_checkpoint(out)
        print(f"trial {trial}: killed at step {max(metric_steps(out), default=0)}, checkpoint {ckpt} -> {step}")
        # the checkpoint it found: the one the run started from, or one the killed run wrote
        assert step == ckpt or (step % CKPT_EVERY == 0 and ckpt < step < STEPS), (trial, ckpt, step)
        ckpt = step

    # 3. a last --resume finishes the schedule, continuing from the last checkpoint
    proc = start(config, out, "--resume")
    assert wait(proc, 240) == 0, output(proc)
    assert f"resuming the local stage at step {ckpt}" in output(proc)
    assert check_checkpoint(out) == STEPS
    # the steps a killed run took after its last checkpoint were dropped from the log and taken again
    assert_history_continuous(out, STEPS)
    model = json.loads((out / "model" / "model.json").read_text())
    assert model["training"]["steps"]["local"] == STEPS
    leftovers = [p.name for p in (out / "local").iterdir() if p.name.startswith(".checkpoint")]
    assert not leftovers  # no half-written checkpoint copies pile up
