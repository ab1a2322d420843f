"""`napari-vdir restore` writes exactly what `restore(read_image(src), ...)` returns (values, not only shapes)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_vdir import restore
from napari_vdir.cli import main
from napari_vdir.core.io import read_image


@pytest.fixture
def sources(tmp_path, rng):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray((rng.random((40, 52, 3)) * 255).astype(np.uint8)).save(src / "photo.png")
    Image.fromarray((rng.random((36, 30)) * 255).astype(np.uint8)).save(src / "gray.png")
    Image.fromarray((rng.random((32, 40, 3)) * 255).astype(np.uint8)).save(src / "shot.jpg", quality=40)
    Image.fromarray((rng.random((28, 36, 3)) * 255).astype(np.uint8)).save(src / "scan.JPEG", quality=40)
    tifffile.imwrite(src / "stack.tif", (rng.random((3, 36, 44)) * 4000 + 100).astype(np.uint16),
                     photometric="minisblack")
    tifffile.imwrite(src / "float.tif", (rng.random((28, 32)) * 1.4 - 0.2).astype(np.float32),
                     photometric="minisblack")
    return src


def run_cli(*argv) -> None:
    assert main([str(a) for a in argv]) == 0


def read_back(path):
    return tifffile.imread(path) if path.suffix == ".tif" else np.asarray(Image.open(path))


@pytest.mark.parametrize("name,output,channels", [("photo.png", "photo_denoise.png", 3),
                                                  ("gray.png", "gray_denoise.png", 1),
                                                  ("stack.tif", "stack_denoise.tif", 1),
                                                  ("float.tif", "float_denoise.tif", 1),
                                                  ("shot.jpg", "shot_denoise.png", 3),
                                                  ("scan.JPEG", "scan_denoise.png", 3)])
def test_output_is_restore_of_the_input(sources, tmp_path, tiny_weights, name, output, channels):
    model = tiny_weights[("denoise", 1, channels)]
    run_cli("restore", sources / name, "--task", "denoise", "-o", tmp_path / "out", "--model", model,
            "--tile-size", "16")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [output]  # a JPEG comes back as PNG
    expected = restore(read_image(sources / name), "denoise", model=model, tile_size=16)
    got = read_back(tmp_path / "out" / output)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, read_image(sources / name))  # the network did change the image


@pytest.mark.parametrize("flags,kwargs", [(["--samples", "3"], {"samples": 3}), (["--ensemble"], {"ensemble": True}),
                                          (["--precision", "float32"], {"precision": "float32"})])
def test_options_reach_restore(sources, tmp_path, tiny_weights, flags, kwargs):
    model = tiny_weights[("denoise", 1, 3)]
    run_cli("restore", sources / "photo.png", "--task", "denoise", "-o", tmp_path, "--model", model, *flags)
    expected = restore(read_image(sources / "photo.png"), "denoise", model=model, **kwargs)
    np.testing.assert_array_equal(read_back(tmp_path / "photo_denoise.png"), expected)
    plain = restore(read_image(sources / "photo.png"), "denoise", model=model)
    if kwargs.get("precision") != "float32":  # float32 may equal the fast path on a CPU without bf16
        assert not np.array_equal(expected, plain)


def test_sr_and_jpeg_outputs_are_restore(sources, tmp_path, tiny_weights):
    sr, jpeg = tiny_weights[("sr", 2, 3)], tiny_weights[("jpeg", 1, 3)]
    run_cli("restore", sources / "photo.png", "--task", "sr", "--scale", "2", "-o", tmp_path, "--model", sr)
    expected = restore(read_image(sources / "photo.png"), "sr", scale=2, model=sr)
    np.testing.assert_array_equal(read_back(tmp_path / "photo_sr.png"), expected)
    run_cli("restore", sources / "shot.jpg", "--task", "jpeg", "-o", tmp_path, "--model", jpeg)
    np.testing.assert_array_equal(read_back(tmp_path / "shot_jpeg.png"),
                                  restore(read_image(sources / "shot.jpg"), "jpeg", model=jpeg))


def test_two_inputs_with_one_output_name_are_refused(tmp_path, rng, tiny_weights, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray((rng.random((24, 28, 3)) * 255).astype(np.uint8)).save(tmp_path / folder / "same.png")
    code = main(["restore", str(tmp_path / "a" / "same.png"), str(tmp_path / "b" / "same.png"), "--task", "denoise",
                 "-o", str(tmp_path / "out"), "--model", str(tiny_weights[("denoise", 1, 3)])])
    assert code != 0
    assert "same output" in capsys.readouterr().err
    assert not (tmp_path / "out" / "same_denoise.png").exists()


@pytest.mark.parametrize("broken,good", [(["broken.png"], ["photo.png"]),
                                         (["broken.png", "bad.png"], ["photo.png", "shot.jpg"])])
def test_an_unreadable_file_does_not_stop_the_others(sources, tmp_path, tiny_weights, capsys, broken, good):
    for name in broken:
        (sources / name).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    model = tiny_weights[("denoise", 1, 3)]
    code = main(["restore", *[str(sources / n) for n in broken + good], "--task", "denoise",
                 "-o", str(tmp_path / "out"), "--model", str(model)])
    assert code == 1
    err = capsys.readouterr().err
    assert all(name in err for name in broken)
    assert f"error: {len(broken)} of {len(broken) + len(good)} files could not be read" in err
    for name in good:
        output = tmp_path / "out" / f"{name.rsplit('.', 1)[0]}_denoise.png"
        np.testing.assert_array_equal(read_back(output), restore(read_image(sources / name), "denoise", model=model))


def test_planar_rgb_tiff_is_restored_as_colour(tmp_path, rng, tiny_weights):
    """A (3, H, W) TIFF with planar RGB samples is one colour image (the file's own channel axis)."""
    planes = (rng.random((3, 32, 40)) * 60000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", planes, photometric="rgb", planarconfig="separate")
    model = tiny_weights[("denoise", 1, 3)]
    run_cli("restore", tmp_path / "planar.tif", "--task", "denoise", "-o", tmp_path / "out", "--model", model)
    got = tifffile.imread(tmp_path / "out" / "planar_denoise.tif")
    expected = np.moveaxis(restore(np.moveaxis(planes, 0, -1), "denoise", model=model), -1, 0)
    assert got.shape == planes.shape
    np.testing.assert_array_equal(got, expected)
