"""Training does what it says: a fine-tune starts from --init, DDP ranks stay identical, Ctrl-C then --resume
continues the same run (through the real command line, as a user runs it)."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import torch

from napari_vdir.training.__main__ import main as training_main
from napari_vdir.core.weights import load_weights, read_info

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_steps(path) -> list[int]:
    with open(path, newline="") as fh:
        return [int(row["step"]) for row in csv.DictReader(fh)]


def test_fine_tune_starts_from_init(image_folder, tmp_path, tiny_vdir):
    """The exported model has the --init architecture (not the from-scratch one), counts the init's steps,
    and with a negligible learning rate keeps the init's tensors."""
    model = tiny_vdir(seed=3, res_blocks=2)
    cfg = model.cfg
    start = tiny_vdir.save(model, tmp_path / "start.safetensors", trained_steps=7)
    out = tmp_path / "run"
    assert training_main(["--task", "denoise", "--data", str(image_folder), "--init", str(start), "--steps", "2",
                          "--patch", "32", "--batch", "2", "--lr", "1e-9", "--out", str(out), "--quiet",
                          "--device", "cpu", "--name", "tuned"]) == 0
    tuned, info = load_weights(out / "tuned.safetensors")
    assert info.arch == cfg
    assert info.trained_steps == 7 + 2
    initial, _ = load_weights(start)
    for (key, a), b in zip(initial.state_dict().items(), tuned.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, atol=2e-3, rtol=1e-3, msg=key)  # float16 export, lr 1e-9


DDP_DRIVER = """
import json, sys, torch
from napari_vdir.training.config import Recipe
from napari_vdir.training.trainer import Trainer

trainer = Trainer(Recipe.model_validate(json.loads(sys.argv[1])), sys.argv[2], device="cpu", precision="float32")
trainer.fit()
state = {f"{part}.{k}": v.detach().cpu().clone() for part in ("model", "decoder", "discriminator")
         for k, v in getattr(trainer, part).state_dict().items()}
torch.save(state, f"{sys.argv[2]}/rank{trainer.rank}-of-{trainer.world}.pt")
"""


def test_ddp_ranks_end_with_identical_parameters(image_folder, tmp_path, tiny_vdir):
    """torchrun, two gloo processes on a free port: each rank sees other patches, DDP averages the gradients,
    so after training both ranks hold the very same parameters (and they did move)."""
    recipe = dict(name="ddp", task="denoise", channels=3, arch=tiny_vdir.ARCH, steps=3, patch=32, batch=2, lr=1e-3,
                  val_every=3, checkpoint_every=3, data={"train": [str(image_folder)]})
    driver = tmp_path / "driver.py"
    driver.write_text(DDP_DRIVER)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(driver), json.dumps(recipe), str(out)]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(out / f"rank{r}-of-2.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    _, info = load_weights(out / "ddp.safetensors")
    assert info.trained_steps == 3
    fresh = tiny_vdir(seed=0).state_dict()  # the recipe's seed: the parameters both ranks started from
    moved = [k for k in fresh if not torch.equal(fresh[k], rank0[f"model.{k}"])]
    assert len(moved) > len(fresh) // 2


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(image_folder, tmp_path):
    out = tmp_path / "run"
    common = ["--task", "denoise", "--data", str(image_folder), "--patch", "32", "--batch", "2", "--val-every", "1",
              "--out", str(out), "--quiet", "--device", "cpu", "--threads", "1", "--precision", "float32"]
    proc = subprocess.Popen([sys.executable, "-m", "napari_vdir.training", *common, "--steps", "10000"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "log.csv").is_file() and len(log_steps(out / "log.csv")) >= 4:  # step 0 and 3 training steps
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    stopped = int(state["step"])
    assert stopped >= 3 and f"interrupted at step {stopped}" in err
    assert log_steps(out / "log.csv") == list(range(stopped + 1))

    resumed = subprocess.run([sys.executable, "-m", "napari_vdir.training", *common, "--steps", str(stopped + 2),
                              "--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {stopped}" in resumed.stdout
    assert log_steps(out / "log.csv") == list(range(stopped + 3))  # the log goes on where it stopped
    assert read_info(out / "denoise.safetensors").trained_steps == stopped + 2
    assert int(torch.load(out / "checkpoint.pt", weights_only=True)["step"]) == stopped + 2
