"""Distributed training on CPU: torchrun with two gloo ranks.

Both torchrun jobs start when the module starts and run side by side (each
worker uses one thread), which keeps the module's wall time short.
"""

from __future__ import annotations

import json
import re
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMEOUT = 85.0

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Torchrun:
    """``torchrun --nproc_per_node=2 -m medhdiff_cli.main train ...`` in its own process group."""

    def __init__(self, config: Path, out: Path, *extra: str):
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self._stdout = open(out.parent / "torchrun.stdout", "w+")
        self._stderr = open(out.parent / "torchrun.stderr", "w+")
        self.cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                    "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                    "-m", "medhdiff_cli.main", "train", "-c", str(config), "--out", str(out),
                    "--device", "cpu", "--no-calibrate", "--threads", "1", *extra]
        # a new session, so that a hang can be ended with the workers, not just the launcher
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=ENV, stdout=self._stdout, stderr=self._stderr,
                                     text=True, start_new_session=True)

    def _kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def result(self, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # a rank waiting forever on the other: a hang
            self._kill()
            rc = None
        self._stdout.seek(0)
        self._stderr.seek(0)
        out, err = self._stdout.read(), self._stderr.read()
        if rc is None:
            pytest.fail(f"torchrun hung (> {timeout} s):\n{out}\n{err}")
        return subprocess.CompletedProcess(self.cmd, rc, out, err)

    def close(self) -> None:
        self._kill()
        self._stdout.close()
        self._stderr.close()


def long_config(folder: Path) -> Path:
    """tiny.yaml with a long patch stage, validated by rank 0 after every step."""
    doc = yaml.safe_load(TINY.read_text())
    doc["optim"].update(steps_local=10_000, validate_every=1, checkpoint_every=1000)
    path = folder / "long.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    started = {
        "tiny": Torchrun(TINY, root / "tiny" / "run"),
        "time_limit": Torchrun(long_config(root), root / "time_limit" / "run", "--stage", "local",
                               "--time-limit", "12"),
    }
    yield started
    for job in started.values():
        job.close()


def records(run: Path, stage: str) -> list[dict]:
    return [json.loads(line) for line in (run / stage / "metrics.jsonl").read_text().splitlines()]


def loss_steps(run: Path, stage: str) -> list[int]:
    return [r["step"] for r in records(run, stage) if "loss" in r]


def test_torchrun_two_ranks_trains_and_exports_once(jobs):
    from medhdiff.diffusion.bundle import load_bundle

    res = jobs["tiny"].result()
    out = jobs["tiny"].out
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    for stage in ("global", "local"):
        # only rank 0 logs, checkpoints and validates
        assert loss_steps(out, stage) == [1, 2, 3, 4]
        assert [r["step"] for r in records(out, stage) if "val_loss" in r] == [4]
        assert json.loads((out / stage / "checkpoint" / "state.json").read_text())["step"] == 4
        assert [p.name for p in (out / stage).iterdir() if p.name.startswith(".")] == []
    # exported once, by rank 0: one pair, no leftover temporary files, one run record
    assert sorted(p.name for p in (out / "model").iterdir()) == ["model.json", "model.safetensors"]
    run_docs = list(out.glob("run_*.json"))
    assert len(run_docs) == 1 and json.loads(run_docs[0].read_text())["world_size"] == 2
    doc = json.loads((out / "model" / "model.json").read_text())
    assert doc["training"]["steps"] == {"global": 4, "local": 4}
    load_bundle(out / "model")


def test_torchrun_time_limit_stops_all_ranks_at_the_same_step(jobs):
    """Rank 0 validates every step; the time limit must stop both ranks after the same step.

    Before the ranks agreed on stopping, rank 0 (whose deadline check comes after
    its validation) could leave the loop one step before rank 1, which then waited
    in the gradient all-reduce for a peer that had gone on to export and exit.
    """
    res = jobs["time_limit"].result()
    out = jobs["time_limit"].out
    assert res.returncode == 0, res.stdout + res.stderr
    # the two ranks write to one stderr, so their lines may run together: match, don't split
    stops = [int(s) for s in re.findall(r"time limit reached at step (\d+)", res.stderr)]
    assert len(stops) == 2 and stops[0] == stops[1], res.stderr
    step = json.loads((out / "local" / "checkpoint" / "state.json").read_text())["step"]
    assert 1 <= step < 10_000 and stops[0] == step
    assert loss_steps(out, "local") == list(range(1, step + 1))
    assert (out / "model" / "model.json").is_file()
