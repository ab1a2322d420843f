"""benchmarks/heldout_check.py (issue 33): the held-out tiles are paired with their true clean twins, so the report's
'true' column measures what the check estimates. The real comparison (fine-tuned weights) is a benchmark."""

from __future__ import annotations

import re

import pytest
import torch

from tests.benchmarks.test_finetune_w2s import _load


def test_the_start_against_itself_and_the_noise_on_the_held_out_tiles(datasets, tmp_path):
    """denoise-gray scored against itself: every change is exactly zero. The tiles' clean twins are the right
    crops: the true noise variance lies within 10 % of both fits (a tile paired with another crop's average would
    add that crop's whole signal difference)."""
    if not (datasets / "W2S" / "noisy").is_dir():
        pytest.skip("no W2S in ../shared/datasets")
    from napari_vdir.core.models import find_model

    threads = torch.get_num_threads()
    try:
        out = tmp_path / "check.md"
        assert _load("heldout_check").main([str(find_model("denoise-gray")), "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    true, residual, detail = (float(x) for x in re.search(
        r"true ([0-9.]+) .*residual fit ([0-9.]+) .*detail fit ([0-9.]+)", text).groups())
    assert abs(residual / true - 1) < 0.1 and abs(detail / true - 1) < 0.1
    row = [line for line in text.splitlines() if line.startswith("| ") and "denoise-gray" in line][0]
    assert set(re.findall(r"[+-][0-9.]+", row)) <= {"+0.000", "-0.000"}
