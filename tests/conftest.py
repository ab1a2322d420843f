"""Shared fixtures. Datasets live in ../shared/datasets beside the clone (CI has them, a user's clone
may not): tests that need them skip cleanly when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NAPARI_VDIR_SHARED", REPO.parent / "shared"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def datasets() -> Path:
    path = SHARED / "datasets"
    if not path.is_dir():
        if os.environ.get("NAPARI_VDIR_REQUIRE_DATASETS"):  # CI (.ci/run): missing datasets are an error
            pytest.fail(f"{path} is missing and NAPARI_VDIR_REQUIRE_DATASETS is set")
        pytest.skip("../shared/datasets is not beside this clone")
    return path


class TinyVDIR:
    """The tests' one tiny-model factory (the ``tiny_vdir`` fixture).

    ``tiny_vdir(channels=3, scale=1, task="denoise", seed=0, **arch)``: a VDIR of width 8 with one block of one
    residual block (fast; ``arch`` sets any other ``ArchConfig`` field), its estimator sized for ``task``,
    initialised from ``seed`` (None: from torch's current random state), in eval mode.
    ``tiny_vdir.save(model, path, task="denoise", half=False, **info)``: the model as a weights file named after
    ``path`` (``info``: more ``ModelInfo`` fields).
    """

    ARCH = dict(width=8, rir_blocks=1, res_blocks=1, encoder_width=8)

    def __call__(self, channels: int = 3, scale: int = 1, task: str = "denoise", seed: int | None = 0, **arch):
        from napari_vdir.core.nets import VDIR, ArchConfig
        from napari_vdir.core.tasks import ESTIMATES

        if seed is not None:
            torch.manual_seed(seed)
        arch = {**self.ARCH, "estimate_dims": len(ESTIMATES[task]), **arch}
        return VDIR(ArchConfig(channels=channels, scale=scale, **arch)).eval()

    @staticmethod
    def save(model, path, task: str = "denoise", half: bool = False, **info) -> Path:
        from napari_vdir.core.weights import ModelInfo, save_weights

        path = Path(path)
        info = ModelInfo(**{"name": path.stem, "task": task, "arch": model.cfg, **info})
        return save_weights(path, model, info, half=half)


@pytest.fixture(scope="session")
def tiny_vdir() -> TinyVDIR:
    return TinyVDIR()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory, tiny_vdir) -> dict:
    """Randomly initialised, very small weights files for every task (fast tests of plumbing)."""
    out = tmp_path_factory.mktemp("weights")
    files = {}
    for task, scale in (("denoise", 1), ("real-denoise", 1), ("jpeg", 1), ("sr", 2), ("sr", 4)):
        for channels in (1, 3):
            name = f"tiny-{task}-x{scale}-{channels}ch"
            files[(task, scale, channels)] = tiny_vdir.save(tiny_vdir(channels, scale, task),
                                                            out / f"{name}.safetensors", task)
    return files


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run the tests marked slow (minutes)")


def pytest_collection_modifyitems(config, items):
    """``slow`` tests run with --runslow or when selected by marker (``-m slow``)."""
    if config.getoption("--runslow") or "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow (or -m slow) to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def deep_rgb(tmp_path_factory, tiny_vdir):
    """A small random RGB denoiser with 4 RIR groups, so "a quarter of the way" is a block boundary."""
    model = tiny_vdir(rir_blocks=4, res_blocks=2)
    return tiny_vdir.save(model, tmp_path_factory.mktemp("deep") / "deep.safetensors")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """Three 128² crops of scikit-image's astronaut as PNG: a small clean training folder."""
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("clean")
    photo = data.astronaut()
    for i, (top, left) in enumerate([(0, 0), (200, 200), (300, 50)]):
        Image.fromarray(photo[top:top + 128, left:left + 128]).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="session", autouse=True)
def private_user_folders(tmp_path_factory):
    """Tests get folders of their own for what napari-vdir keeps per user: the ONNX graphs it exports into the
    user cache folder, and the user models folder (model lists read it), never the real ones."""
    folders = {"XDG_CACHE_HOME": "cache", "NAPARI_VDIR_MODELS": "user-models"}
    before = {name: os.environ.get(name) for name in folders}
    for name, folder in folders.items():
        os.environ[name] = str(tmp_path_factory.mktemp(folder))
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped): a leftover named after it is stale."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_leftover(folder: Path, name: str, age: float | None = None, is_dir: bool = False,
                   inner: str = "model.onnx") -> Path:
    """A file of 1000 zero bytes named ``name`` in ``folder`` (a folder holding ``inner`` when ``is_dir``), as a
    killed export or graph build leaves it; ``age``: its modification time (seconds since the epoch)."""
    p = folder / name
    if is_dir:
        p.mkdir()
        (p / inner).write_bytes(b"\0" * 1000)
    else:
        p.write_bytes(b"\0" * 1000)
    if age is not None:
        os.utime(p, (age, age))
    return p
