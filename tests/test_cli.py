"""The command line: restore files, list models, run the demo, and fail in one line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_vdir import weights
from napari_vdir.cli import main


@pytest.fixture
def files(tmp_path, rng):
    """An RGB PNG, a uint16 3-page TIFF stack, a corrupt PNG and a text file."""
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray((rng.random((40, 52, 3)) * 255).astype(np.uint8)).save(src / "photo.png")
    tifffile.imwrite(src / "stack.tif", (rng.random((3, 36, 44)) * 4000 + 100).astype(np.uint16),
                     photometric="minisblack")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (src / "notes.txt").write_text("not an image")
    return src


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("napari-vdir: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_restore_png_and_uint16_stack(capsys, files, tmp_path, tiny_weights):
    out = tmp_path / "out"
    model = tiny_weights[("denoise", 1, 3)]
    code, stdout, err = run(capsys, "restore", files / "photo.png", files / "stack.tif", "--task", "denoise",
                            "-o", out, "--model", model, "--tile-size", "16")
    assert code == 0, err
    restored = np.asarray(Image.open(out / "photo_denoise.png"))
    assert restored.shape == (40, 52, 3) and restored.dtype == np.uint8
    stack = tifffile.imread(out / "stack_denoise.tif")
    assert stack.shape == (3, 36, 44) and stack.dtype == np.uint16
    with tifffile.TiffFile(out / "stack_denoise.tif") as tif:
        assert len(tif.pages) == 3  # still a 3-page stack, not one planar-RGB page
    assert "photo_denoise.png" in stdout and "stack_denoise.tif" in stdout


def test_restore_sr_with_suffix(capsys, files, tmp_path, tiny_weights):
    code, _, err = run(capsys, "restore", files / "photo.png", "--task", "sr", "--scale", "2", "-o", tmp_path,
                       "--model", tiny_weights[("sr", 2, 3)], "--suffix", "_x2", "--precision", "float32")
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "photo_x2.png")).shape == (80, 104, 3)


def test_folder_input(capsys, tmp_path, rng, tiny_weights):
    folder = tmp_path / "pngs"
    folder.mkdir()
    for name in ("a", "b"):
        Image.fromarray((rng.random((24, 28)) * 255).astype(np.uint8)).save(folder / f"{name}.png")
    code, _, err = run(capsys, "restore", folder, "--task", "jpeg", "-o", tmp_path / "out",
                       "--model", tiny_weights[("jpeg", 1, 1)])
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_jpeg.png", "b_jpeg.png"]


def test_never_overwrites(capsys, files, tmp_path, tiny_weights):
    model = tiny_weights[("denoise", 1, 3)]
    before = (files / "photo.png").read_bytes()
    code, _, err = run(capsys, "restore", files / "photo.png", "--task", "denoise", "-o", files, "--suffix", "",
                       "--model", model, "--overwrite")
    assert code != 0 and "overwrite an input" in one_line_error(err)
    assert (files / "photo.png").read_bytes() == before

    existing = tmp_path / "photo_denoise.png"
    existing.write_bytes(b"keep me")
    code, _, err = run(capsys, "restore", files / "photo.png", "--task", "denoise", "-o", tmp_path, "--model", model)
    assert code != 0 and "--overwrite" in one_line_error(err)
    assert existing.read_bytes() == b"keep me"
    code, _, err = run(capsys, "restore", files / "photo.png", "--task", "denoise", "-o", tmp_path, "--model", model,
                       "--overwrite")
    assert code == 0, err
    assert existing.read_bytes() != b"keep me"


@pytest.mark.parametrize("name, message", [("missing.png", "no such file"), ("notes.txt", "unsupported file type"),
                                           ("broken.png", "cannot read image")])
def test_bad_input_one_line(capsys, files, tmp_path, tiny_weights, name, message):
    code, _, err = run(capsys, "restore", files / name, "--task", "denoise", "-o", tmp_path / "out",
                       "--model", tiny_weights[("denoise", 1, 3)])
    assert code != 0
    assert message in one_line_error(err)


def test_wrong_model_one_line(capsys, files, tmp_path, tiny_weights):
    code, _, err = run(capsys, "restore", files / "photo.png", "--task", "jpeg", "-o", tmp_path,
                       "--model", tiny_weights[("denoise", 1, 3)])
    assert code != 0 and "cannot do 'jpeg'" in one_line_error(err)


def test_models_lists_shipped(capsys, monkeypatch, tiny_weights):
    shipped = {p.stem: p for p in (tiny_weights[("denoise", 1, 3)], tiny_weights[("sr", 4, 3)])}
    monkeypatch.setattr(weights, "shipped_models", lambda: shipped)
    code, out, _ = run(capsys, "models")
    assert code == 0
    header, *rows = out.strip().splitlines()
    for column in ("name", "task", "channels", "scale", "params", "trained steps", "quality"):
        assert column in header
    assert len(rows) == 2
    assert rows[1].split()[:4] == ["tiny-sr-x4-3ch", "sr", "3", "x4"]


def test_demo(capsys, tmp_path, tiny_weights):
    code, out, err = run(capsys, "demo", "--size", "48", "--model", tiny_weights[("denoise", 1, 3)],
                         "-o", tmp_path)
    assert code == 0, err
    for expected in ("astronaut", "PSNR", "dB noisy", "estimated sigma", "true 25", "time", "MP/s"):
        assert expected in out
    assert (tmp_path / "demo_restored.png").is_file()


def test_demo_is_reproducible():
    from napari_vdir.cli import demo_images

    clean, noisy = demo_images(32, 25.0, seed=0)
    assert clean.shape == noisy.shape == (32, 32, 3) and noisy.dtype == np.uint8
    np.testing.assert_array_equal(noisy, demo_images(32, 25.0, seed=0)[1])


def test_python_dash_m(tmp_path):
    """`python -m napari_vdir` is the same CLI; errors carry no traceback."""
    proc = subprocess.run([sys.executable, "-m", "napari_vdir", "restore", str(tmp_path / "nope.tif"),
                           "--task", "denoise", "-o", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert one_line_error(proc.stderr).endswith("nope.tif: no such file")
