"""The command line: restore files, list models, run the demo, and fail in one line."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from napari_vdir.cli import main
from napari_vdir.core import models, weights


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
    monkeypatch.setattr(models, "shipped_models", lambda: shipped)
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


# ----------------------------------------------------------------------------- issue 13: faults and odd files

def test_hard_linked_output_never_overwrites_input(capsys, files, tmp_path, tiny_weights):
    """--overwrite must not replace an input reached through a hard link (or a symlink) in -o."""
    out = tmp_path / "out"
    out.mkdir()
    before = (files / "photo.png").read_bytes()
    os.link(files / "photo.png", out / "photo_denoise.png")
    code, _, err = run(capsys, "restore", files / "photo.png", "--task", "denoise", "-o", out, "--overwrite",
                       "--model", tiny_weights[("denoise", 1, 3)])
    assert code != 0 and "overwrite an input" in one_line_error(err)
    assert (files / "photo.png").read_bytes() == before

    (out / "photo_denoise.png").unlink()
    (out / "photo_denoise.png").symlink_to(files / "photo.png")
    code, _, err = run(capsys, "restore", files / "photo.png", "--task", "denoise", "-o", out, "--overwrite",
                       "--model", tiny_weights[("denoise", 1, 3)])
    assert code != 0 and "overwrite an input" in one_line_error(err)
    assert (files / "photo.png").read_bytes() == before


def _full_disk(monkeypatch):
    """tifffile.imwrite writes a little, then fails as a full disk does."""
    def imwrite(fh, *args, **kwargs):
        fh.write(b"II*\0 truncated")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(tifffile, "imwrite", imwrite)


def test_full_disk_leaves_nothing_half_written(capsys, monkeypatch, files, tmp_path, tiny_weights):
    model = tiny_weights[("denoise", 1, 1)]
    _full_disk(monkeypatch)
    out = tmp_path / "new" / "out"
    code, _, err = run(capsys, "restore", files / "stack.tif", "--task", "denoise", "-o", out, "--model", model)
    assert code != 0 and "No space left on device" in one_line_error(err)
    assert not (tmp_path / "new").exists()  # the folders this run created are gone again

    # an existing output replaced with --overwrite keeps its old content when the write fails
    out = tmp_path / "kept"
    out.mkdir()
    (out / "stack_denoise.tif").write_bytes(b"earlier result")
    code, _, err = run(capsys, "restore", files / "stack.tif", "--task", "denoise", "-o", out, "--model", model,
                       "--overwrite")
    assert code != 0 and "No space left on device" in one_line_error(err)
    assert [p.name for p in out.iterdir()] == ["stack_denoise.tif"]  # no temporary file left
    assert (out / "stack_denoise.tif").read_bytes() == b"earlier result"


def test_failed_run_leaves_no_empty_folder(capsys, files, tmp_path, tiny_weights):
    out = tmp_path / "a" / "b"
    code, _, err = run(capsys, "restore", files / "broken.png", "--task", "denoise", "-o", out,
                       "--model", tiny_weights[("denoise", 1, 3)])
    assert code != 0 and "cannot read image" in one_line_error(err)
    assert not (tmp_path / "a").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    run(capsys, "restore", files / "broken.png", "--task", "denoise", "-o", existing,
        "--model", tiny_weights[("denoise", 1, 3)])
    assert existing.is_dir()  # a folder the user made stays


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_get_ordinary_permissions(capsys, files, tmp_path, tiny_weights, umask, mode):
    old = os.umask(umask)
    try:
        code, _, err = run(capsys, "restore", files / "photo.png", files / "stack.tif", "--task", "denoise",
                           "-o", tmp_path / "out", "--model", tiny_weights[("denoise", 1, 3)])
    finally:
        os.umask(old)
    assert code == 0, err
    for name in ("photo_denoise.png", "stack_denoise.tif"):
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == mode


def _rgba(rng, h=40, w=52):
    rgba = (rng.random((h, w, 4)) * 255).astype(np.uint8)
    rgba[..., 3] = np.linspace(0, 255, w).astype(np.uint8)[None]  # a gradient, not a flat alpha
    return rgba


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_png_keeps_alpha(capsys, tmp_path, rng, tiny_weights, mode):
    """An RGBA screenshot (or a gray + alpha PNG) comes back in its mode with alpha untouched."""
    from napari_vdir import restore

    image = _rgba(rng) if mode == "RGBA" else _rgba(rng)[..., 2:]
    Image.fromarray(image, mode).save(tmp_path / "shot.png")
    model = tiny_weights[("denoise", 1, 3 if mode == "RGBA" else 1)]
    code, _, err = run(capsys, "restore", tmp_path / "shot.png", "--task", "denoise", "-o", tmp_path / "out",
                       "--model", model, "--precision", "float32")
    assert code == 0, err
    with Image.open(tmp_path / "out" / "shot_denoise.png") as im:
        assert im.mode == mode
        restored = np.asarray(im)
    np.testing.assert_array_equal(restored[..., -1], image[..., -1])
    # the colour is restored as one image, not as rows: it equals restoring it without alpha
    colour = image[..., :3] if mode == "RGBA" else image[..., 0]
    np.testing.assert_array_equal(restored[..., :-1].squeeze(-1) if mode == "LA" else restored[..., :3],
                                  restore(colour, "denoise", model=model, precision="float32"))


def test_rgba_tiff_keeps_alpha_and_layout(capsys, tmp_path, rng, tiny_weights):
    rgba = _rgba(rng, 24, 28)
    tifffile.imwrite(tmp_path / "shot.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    code, _, err = run(capsys, "restore", tmp_path / "shot.tif", "--task", "sr", "--scale", "2",
                       "-o", tmp_path / "out", "--model", tiny_weights[("sr", 2, 3)])
    assert code == 0, err
    with tifffile.TiffFile(tmp_path / "out" / "shot_sr.tif") as tif:
        assert tif.series[0].axes == "YXS" and tif.pages[0].extrasamples == (tifffile.EXTRASAMPLE.UNASSALPHA,)
        restored = tif.asarray()
    assert restored.shape == (48, 56, 4) and restored.dtype == np.uint8


@pytest.mark.parametrize("channels, samples", [(2, False), (2, True), (4, True)],
                         ids=["2-pages", "2-contig-samples", "4-samples"])
def test_multichannel_tiff_restored_per_channel(capsys, tmp_path, rng, tiny_weights, channels, samples):
    """(H, W, 2): tifffile's default stores it as H pages of W x 2 pixels; either way it is 2 channels.
    4 samples without alpha are 4 channels too."""
    from napari_vdir import restore

    data = (rng.random((36, 44, channels)) * 255).astype(np.uint8)
    extra = dict(photometric="minisblack", planarconfig="contig") if samples else {}
    tifffile.imwrite(tmp_path / "multi.tif", data, **extra)
    model = tiny_weights[("denoise", 1, 1)]
    code, _, err = run(capsys, "restore", tmp_path / "multi.tif", "--task", "denoise", "-o", tmp_path / "out",
                       "--model", model, "--precision", "float32")
    assert code == 0, err
    restored = tifffile.imread(tmp_path / "out" / "multi_denoise.tif")
    assert restored.shape == data.shape and restored.dtype == np.uint8
    for k in range(channels):
        np.testing.assert_array_equal(restored[..., k], restore(data[..., k], "denoise", model=model,
                                                                precision="float32"))
    with tifffile.TiffFile(tmp_path / "multi.tif") as a, tifffile.TiffFile(tmp_path / "out" / "multi_denoise.tif") as b:
        assert a.series[0].axes == b.series[0].axes and len(a.pages) == len(b.pages)  # layout written back


def test_rerun_into_input_folder_skips_earlier_outputs(capsys, tmp_path, rng, tiny_weights):
    folder = tmp_path / "pngs"
    folder.mkdir()
    for name in ("a", "b"):
        Image.fromarray((rng.random((24, 28)) * 255).astype(np.uint8)).save(folder / f"{name}.png")
    model = tiny_weights[("denoise", 1, 1)]
    code, _, err = run(capsys, "restore", folder, "--task", "denoise", "-o", folder, "--model", model)
    assert code == 0, err
    code, out, err = run(capsys, "restore", folder, "--task", "denoise", "-o", folder, "--model", model,
                         "--overwrite")
    assert code == 0, err
    note, = err.strip().splitlines()
    assert note.startswith("napari-vdir: note: ") and "skipped 2 files ending in '_denoise'" in note
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a_denoise.png", "b.png", "b_denoise.png"]
    assert "a_denoise.png ->" not in out
    code, _, err = run(capsys, "restore", folder, "--task", "denoise", "-o", folder, "--model", model)
    assert code != 0 and "--overwrite" in err.strip().splitlines()[-1]  # still never replaced unasked


@pytest.mark.parametrize("argv, message", [
    (["--task", "sr"], "--task sr needs --scale 2 or --scale 4"),
    (["--task", "denoise", "--scale", "2"], "--scale only applies to --task sr"),
    (["--task", "denoise", "--strength", "nan"], "--strength must be a finite number"),
    (["--task", "denoise", "--device", "bogus"], "--device must be auto, cpu, cuda, cuda:N or mps, got 'bogus'"),
    (["--task", "denoise", "--tile-size", "8"], "--tile-size must be at least 16"),
    (["--task", "denoise", "--samples", "0"], "--samples must be at least 1"),
])
def test_bad_option_one_line_in_cli_words(capsys, files, tmp_path, tiny_weights, argv, message):
    code, _, err = run(capsys, "restore", files / "photo.png", *argv, "-o", tmp_path / "out",
                       "--model", tiny_weights[("denoise", 1, 3)])
    assert code != 0 and message in one_line_error(err)
    assert not (tmp_path / "out").exists()


def test_api_messages_are_put_in_cli_words(capsys, monkeypatch, files, tmp_path, tiny_weights):
    from napari_vdir.cli import CLI_WORDS
    from napari_vdir.core import request
    from napari_vdir.core.errors import OptionTypeError, OptionValueError

    scale = OptionValueError("scale", "{task='sr'} needs {scale=2} or {scale=4}, got {value}", None)
    assert str(scale) == "task='sr' needs scale=2 or scale=4, got None"  # one message: the API's words ...
    assert scale.render(CLI_WORDS) == "--task sr needs --scale 2 or --scale 4, got None"  # ... and the CLI's
    tile = OptionValueError("tile_size", "{tile_size=} is too small; {strength=4.5}", 8)
    assert str(tile) == "tile_size=8 is too small; strength=4.5"
    assert tile.render(CLI_WORDS) == "--tile-size 8 is too small; --strength 4.5"

    def refuse(*args, **kwargs):
        raise OptionTypeError("samples", "{samples=}: {samples} must be a whole number", 2.5)
    monkeypatch.setattr(request, "prepare", refuse)
    code, _, err = run(capsys, "restore", files / "photo.png", "--task", "denoise", "-o", tmp_path / "out",
                       "--model", tiny_weights[("denoise", 1, 3)])
    assert code != 0 and one_line_error(err).endswith("--samples 2.5: --samples must be a whole number")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_one_line(capsys, files, tmp_path, tiny_weights):
    code, _, err = run(capsys, "restore", files / "photo.png", "--task", "denoise", "-o", tmp_path / "out",
                       "--model", tiny_weights[("denoise", 1, 3)], "--device", "cuda")
    assert code != 0 and "no CUDA GPU" in one_line_error(err)


def test_bad_weights_file_one_line(capsys, files, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(300))
    code, _, err = run(capsys, "restore", files / "photo.png", "--task", "denoise", "-o", tmp_path / "out",
                       "--model", junk)
    assert code != 0 and "junk.safetensors" in one_line_error(err)


def test_training_checkpoint_as_model_names_the_weights(capsys, files, tmp_path, tiny_weights):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"step": 10, "model": {"w": torch.zeros(2)}}, run_dir / "checkpoint.pt")
    shutil.copy(tiny_weights[("denoise", 1, 3)], run_dir / "my-denoiser.safetensors")
    for name in ("checkpoint.pt", "renamed.safetensors"):  # named or disguised, it is found by content
        if name != "checkpoint.pt":
            shutil.copy(run_dir / "checkpoint.pt", tmp_path / name)
        path = run_dir / name if name == "checkpoint.pt" else tmp_path / name
        code, _, err = run(capsys, "restore", files / "photo.png", "--task", "denoise", "-o", tmp_path / "out",
                           "--model", path)
        line = one_line_error(err)
        assert code != 0 and "training checkpoint" in line
    code, _, err = run(capsys, "restore", files / "photo.png", "--task", "denoise", "-o", tmp_path / "out",
                       "--model", run_dir / "checkpoint.pt")
    assert str(run_dir / "my-denoiser.safetensors") in one_line_error(err)


def test_strength_option(capsys, files, tmp_path, tiny_weights):
    model = tiny_weights[("denoise", 1, 3)]
    for strength in ("1", "1.5"):
        code, _, err = run(capsys, "restore", files / "photo.png", "--task", "denoise", "-o", tmp_path / strength,
                           "--model", model, "--strength", strength, "--precision", "float32")
        assert code == 0, err
    plain, harder = (np.asarray(Image.open(tmp_path / s / "photo_denoise.png")) for s in ("1", "1.5"))
    assert not np.array_equal(plain, harder)


def test_readme_apt_command_works_on_a_fresh_machine():
    """A fresh machine has no apt lists: `apt-get install` must follow `apt-get update`, here and in CI."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    commands = [line for line in readme.splitlines() if "apt-get install" in line]
    assert commands and all("apt-get update && apt-get install" in c for c in commands), commands
    ci = (root / ".ci" / "run").read_text()
    assert ci.index("apt-get update") < ci.index("apt-get install")


def test_a_model_name_is_never_hidden_by_a_file_or_folder_here(capsys, files, tmp_path, monkeypatch, tiny_weights):
    """Issue 31 item 9: after `export denoise-rgb ... -o denoise-rgb`, `restore p.png --model denoise-rgb` said
    "weights file not found: denoise-rgb". A name means the model; text is a path only when it looks like one."""
    import napari_vdir

    monkeypatch.setenv(models.ENV_VAR, str(tmp_path / "user models"))
    tiny = tiny_weights[("denoise", 1, 3)]
    mine = models.save_user_model("mine", *weights.load_weights(tiny))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "denoise-rgb").mkdir()  # what `export denoise-rgb --format bioimageio -o denoise-rgb` leaves
    (work / "mine").write_bytes(b"a file of the user's")
    shutil.copy(tiny, work / "tiny")  # a weights file without the suffix
    image = np.asarray(Image.open(files / "photo.png"))
    for model, path, outdir in (("denoise-rgb", models.shipped_models()["denoise-rgb"], "out-shipped"),
                                ("mine", mine, "out-user"), ("./tiny", work / "tiny", "out-file")):
        code, out, err = run(capsys, "restore", files / "photo.png", "--task", "denoise", "-o", outdir,
                             "--model", model, "--backend", "torch")
        assert code == 0, err
        got = np.asarray(Image.open(work / outdir / "photo_denoise.png"))
        assert np.array_equal(got, napari_vdir.restore(image, "denoise", model=path, backend="torch")), model
    assert models.resolve_model("denoise-rgb", "denoise", 3) == models.shipped_models()["denoise-rgb"]
    assert models.resolve_model("mine", "denoise", 3) == mine
    for model, message in (("tiny", "for the file or folder 'tiny' here, write ./tiny"),
                           ("./denoise-rgb", "weights file not found: denoise-rgb"),
                           ("denoise-rgb.safetensors", "for the model 'denoise-rgb', give its name without")):
        code, _, err = run(capsys, "restore", files / "photo.png", "--task", "denoise", "-o", "never",
                           "--model", model)
        assert code == 1 and message in one_line_error(err), model
    assert sorted(p.name for p in work.iterdir()) == ["denoise-rgb", "mine", "out-file", "out-shipped", "out-user",
                                                      "tiny"]
