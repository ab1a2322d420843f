"""examples/batch_napari.py runs headless (under Xvfb) and writes what the widgets would show."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui
SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "batch_napari.py"


def test_batch_script_restores_files_and_samples(tmp_path, tiny_weights):
    tifffile = pytest.importorskip("tifffile")
    stack = np.random.default_rng(0).integers(100, 4000, size=(2, 40, 48)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "cells.tif", stack)
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), str(tmp_path / "cells.tif"), "--task", "denoise", "--latent",
           "--model", str(tiny_weights[("denoise", 1, 1)]), "--device", "cpu", "--out", str(out)]
    # pytest-xvfb exports DISPLAY, so the child's hidden viewer gets the virtual display too
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cells:" in done.stdout and "estimated noise" in done.stdout

    restored = tifffile.imread(out / "cells [denoise].tif")
    assert restored.shape == stack.shape and restored.dtype == np.uint16
    latent = tifffile.imread(out / "cells [denoise] latent c.tif")
    assert latent.shape == (4, 2, 10, 12)
