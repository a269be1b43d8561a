"""Distributed training: 2 CPU processes (gloo) via `mal train --devices 2` and via torchrun stay in
sync, only rank 0 writes the model, --resume continues from the last checkpoint, and human masks
(--masks) train the same way."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mal.demo import make_scenes
from mal.train import ReplicaSyncCheck, ReplicaSyncError

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "vit_tiny_patch16_224", "--timm-kwargs",
        '{"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 8}', "--crop-size", "32",
        "--decoder-dim", "16", "--min-area", "10", "--batch-size", "2", "--num-workers", "0",
        "--accelerator", "cpu"]
DIGEST = re.compile(r"rank (\d+)/(\d+): parameter digest (\w+) after step (\d+) \((\w+) at the start")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
                        "TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT")}
    # One thread per process: 2 processes share the CI machine's cores.
    return {**env, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}


def _run(launcher: list[str], args: list[str]) -> str:
    proc = subprocess.run(launcher + ["-m", "mal.cli", "train", *args, *TINY], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _digests(out: str) -> dict[int, tuple[str, int, str]]:
    """rank -> (final digest, final step, digest at the start of the run)."""
    found = {int(m[1]): (m[3], int(m[4]), m[5]) for m in DIGEST.finditer(out)}
    assert all(m[2] == "2" for m in DIGEST.finditer(out)), out[-2000:]
    return found


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_scenes(tmp_path_factory.mktemp("ddp"), num_images=4, size=(64, 80))


@pytest.fixture(scope="module")
def data(scenes):
    images, _, boxes = scenes
    return ["--images", str(images), "--annotations", str(boxes)]


@pytest.fixture(scope="module")
def first_run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    out = _run([sys.executable], [*data, "--out", str(run), "--devices", "2", "--max-steps", "3"])
    return run, out


@pytest.mark.slow
def test_two_processes_stay_in_sync_and_only_rank0_writes(first_run):
    run, out = first_run
    d = _digests(out)
    assert sorted(d) == [0, 1]
    (end0, step0, start0), (end1, step1, start1) = d[0], d[1]
    assert end0 == end1 and start0 == start1 and step0 == step1 == 3
    assert end0 != start0  # the weights did train
    assert out.count("replicas in sync: all 2 processes") == 1
    # Only rank 0 saves the labeler and prints the result line.
    assert out.count("labeler saved to") == 1 and out.count("trained labeler:") == 1
    assert (run / "model.safetensors").is_file() and (run / "config.json").is_file()
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 3


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(first_run, data):
    run, out = first_run
    end = _digests(out)[0][0]
    out2 = _run([sys.executable], [*data, "--out", str(run), "--devices", "2", "--max-steps", "6", "--resume"])
    d = _digests(out2)
    assert "Restored all states from the checkpoint" in out2
    # Starts from exactly the weights the first run ended with (teacher included), ends at step 6.
    assert d[0][2] == d[1][2] == end
    assert d[0][:2] == d[1][:2] and d[0][1] == 6 and d[0][0] != end
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 6
    assert not list((run / "checkpoints").glob("last-v*.ckpt"))


@pytest.mark.slow
def test_torchrun_launch_trains_the_same_job(first_run, data, tmp_path):
    _, out = first_run
    port = _free_port()
    # No --devices: taken from torchrun (Lightning's CPU default of 1 would train 2 unrelated models).
    out_tr = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                   "--master_addr", "127.0.0.1", "--master_port", str(port)],
                  [*data, "--out", str(tmp_path / "run"), "--max-steps", "3"])
    d = _digests(out_tr)
    assert sorted(d) == [0, 1] and d[0] == d[1]
    # Same seed, same shards, same steps: bit-identical to the Lightning-launched run.
    assert d[0] == _digests(out)[0]
    assert (tmp_path / "run/model.safetensors").is_file()


@pytest.mark.slow
def test_given_masks_train_in_sync(first_run, data, scenes, tmp_path):
    _, out = first_run
    out_m = _run([sys.executable], [*data, "--masks", str(scenes[1]), "--out", str(tmp_path / "run"),
                                    "--devices", "2", "--max-steps", "3"])
    d = _digests(out_m)
    assert sorted(d) == [0, 1] and d[0] == d[1]
    assert "replicas in sync: all 2 processes" in out_m
    # The masks changed the loss: same seed and steps, other weights than the boxes-only run.
    assert d[0][2] == _digests(out)[0][2] and d[0][0] != _digests(out)[0][0]


def _fake_trainer(rank: int) -> SimpleNamespace:
    return SimpleNamespace(global_rank=rank, world_size=2, global_step=5, strategy=None)


def test_sync_check_fails_loudly_on_diverged_replicas(monkeypatch, caplog):
    module = torch.nn.Linear(3, 2)
    check = ReplicaSyncCheck()
    check.on_train_start(_fake_trainer(0), module)
    other = {"value": None}

    def fake_all_gather(out, mine):  # rank 1 reports `other`, or the same digest as ours
        out[0].copy_(mine)
        out[1].copy_(mine if other["value"] is None else torch.tensor([other["value"]]))

    monkeypatch.setattr(torch.distributed, "all_gather", fake_all_gather)
    with caplog.at_level("INFO", logger="mal"):
        check.on_train_end(_fake_trainer(0), module)
    assert "replicas in sync: all 2 processes" in caplog.text
    other["value"] = 12345
    with pytest.raises(ReplicaSyncError, match=r"different weights .*1: 000000000003039"):
        check.on_train_end(_fake_trainer(0), module)
