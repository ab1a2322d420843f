"""Export: the ONNX file computes the torch forward; the bioimage.io package passes `bioimageio test`,
reproduces napari_vdir.restore on its test input, tiles correctly with its halo, and is written atomically."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_vdir.core.inference import tile_margin
from napari_vdir.core.models import shipped_models
from napari_vdir.core.weights import load_weights
from napari_vdir.export import package as export
from napari_vdir.export.package import ExportError, export_model
from tests.conftest import dead_pid, write_leftover


def _torch_forward(path, x: np.ndarray) -> np.ndarray:
    net, _ = load_weights(path)
    with torch.no_grad():
        return net(torch.from_numpy(x)).image.numpy()


@pytest.mark.parametrize("key", [("denoise", 1, 3), ("sr", 2, 1), ("sr", 4, 3)])
def test_onnx_file_computes_the_deterministic_forward(tiny_weights, tmp_path, key):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = export_model(tiny_weights[key], "onnx", tmp_path / "m.onnx")
    assert out == tmp_path / "m.onnx" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    _, scale, channels = key
    for shape in ((1, channels, 40, 56), (2, channels, 64, 36)):  # dynamic batch, height and width
        x = rng.random(shape, dtype=np.float32)
        got = session.run(None, {"input": x})[0]
        assert got.shape == (shape[0], channels, shape[2] * scale, shape[3] * scale)
        np.testing.assert_allclose(got, _torch_forward(tiny_weights[key], x), atol=1e-5, rtol=0)


def test_export_refuses_bad_requests_and_leaves_nothing(tiny_weights, tmp_path):
    path = tiny_weights[("denoise", 1, 3)]
    with pytest.raises(ExportError, match="format must be one of onnx, bioimageio"):
        export_model(path, "tflite", tmp_path / "x")
    with pytest.raises(ExportError, match="no shipped model named 'nope'"):
        export_model("nope", "onnx", tmp_path / "x.onnx")
    (tmp_path / "taken.onnx").write_bytes(b"keep")
    with pytest.raises(ExportError, match="already exists"):
        export_model(path, "onnx", tmp_path / "taken.onnx")
    assert (tmp_path / "taken.onnx").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.onnx"]


def test_failed_package_export_leaves_no_partial_output(tiny_weights, tmp_path, monkeypatch):
    pytest.importorskip("bioimageio.spec")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "write_torchscript", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(tiny_weights[("denoise", 1, 3)], "bioimageio", tmp_path / "pkg")
    assert list(tmp_path.iterdir()) == []  # no package, no staging folder, no partial file


# ----------------------------------------------------------------------------- bioimage.io packages

def _check_package(folder: Path, weights: Path) -> None:
    """What the rdf declares: halo, size constraints, SR scale, weights formats, citation, licence,
    and that the test output is restore()'s result on the test input."""
    import yaml

    import napari_vdir

    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    net, info = load_weights(weights)
    s, margin = info.scale, tile_margin(net)
    assert rdf["format_version"].startswith("0.5") and rdf["license"] == "BSD-3-Clause"
    assert rdf["cite"][0]["doi"] == "10.1109/TIP.2022.3165296"
    assert set(rdf["weights"]) == {"onnx", "torchscript", "pytorch_state_dict"}
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"] == info.arch.to_dict()
    y_in = rdf["inputs"][0]["axes"][2]
    y_out = rdf["outputs"][0]["axes"][2]
    assert y_in["size"] == {"min": 2 * margin + 4, "step": 4}
    assert y_out["halo"] == margin * s and y_out["halo"] // s >= net.cfg.receptive_radius
    assert y_out["size"] == {"tensor_id": "input", "axis_id": "y"} and y_out.get("scale", 1.0) == 1.0 / s
    from PIL import Image

    cover = Image.open(folder / rdf["covers"][0]["source"])
    assert cover.size[0] == 2 * cover.size[1]
    x = np.load(folder / "test_input.npy")
    y = np.load(folder / "test_output.npy")
    assert x.dtype == y.dtype == np.float32
    assert y.shape == (1, info.channels, x.shape[2] * s, x.shape[3] * s)
    assert np.array_equal(x, np.rint(x)) and 0 <= x.min() and x.max() <= 255  # 8-bit values
    hwc = x[0].transpose(1, 2, 0)
    img = hwc.astype(np.uint8) if info.channels == 3 else hwc[..., 0].astype(np.uint8)
    ref = y[0].transpose(1, 2, 0) if info.channels == 3 else y[0, 0]
    # uint8 through restore(): the package's output rounded and clipped
    got = napari_vdir.restore(img, info.task, scale=s if s > 1 else None, model=weights, precision="float32",
                              backend="torch")
    expect = np.clip(np.rint(ref), 0, 255)
    close_to_half = np.abs(np.abs(ref - np.floor(ref)) - 0.5) < 1e-3
    assert np.array_equal(got[~close_to_half], expect[~close_to_half])
    # floats in [0, 1]: restore()'s float result x 255 equals the package's output to float rounding
    f = napari_vdir.restore(img.astype(np.float32) / 255, info.task, scale=s if s > 1 else None, model=weights,
                            precision="float32", backend="torch")
    np.testing.assert_allclose(f * 255, ref, rtol=0, atol=2e-3 * max(1.0, float(np.abs(ref).max()) / 255))


def test_bioimageio_package_passes_bioimageio_test_cli(tiny_weights, tmp_path):
    pytest.importorskip("bioimageio.core")
    pytest.importorskip("onnxruntime")
    weights = tiny_weights[("denoise", 1, 3)]
    out = export_model(weights, "bioimageio", tmp_path / "pkg")
    assert out.is_dir() and not [p for p in tmp_path.iterdir() if p.name != "pkg"]
    assert {"rdf.yaml", "model.onnx", "model.torchscript.pt", "weights.pt", "vdir_arch.py", "test_input.npy",
            "test_output.npy", "cover.png", "README.md"} <= {p.name for p in out.iterdir()}
    _check_package(out, weights)
    cli = Path(sys.executable).with_name("bioimageio")
    done = subprocess.run([str(cli), "test", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "❌" not in done.stdout
    for fmt in ("onnx", "pytorch_state_dict", "torchscript"):  # every weight format was run
        assert f"weights.{fmt}" in done.stdout


def _passes(folder: Path) -> None:
    from bioimageio.core import test_model

    summary = test_model(folder)
    failed = [d for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", [(d.name, [e.msg for e in d.errors]) for d in failed]
    reproduced = {tuple(d.loc)[1] for d in summary.details
                  if d.name.startswith("Reproduce test outputs") and d.status == "passed"}
    assert reproduced == {"onnx", "pytorch_state_dict", "torchscript"}


def test_sr_gray_package_as_zip_passes_and_declares_scaled_output(tiny_weights, tmp_path):
    pytest.importorskip("bioimageio.core")
    pytest.importorskip("onnxruntime")
    weights = tiny_weights[("sr", 4, 1)]
    out = export_model(weights, "bioimageio", tmp_path / "sr4.zip")
    assert out.is_file() and [p.name for p in tmp_path.iterdir()] == ["sr4.zip"]
    _passes(out)
    import zipfile

    folder = tmp_path / "unzipped"
    zipfile.ZipFile(out).extractall(folder)
    _check_package(folder, weights)


def test_package_tiles_with_its_halo_like_one_pass(tiny_weights, tmp_path):
    """bioimage.io consumers tile with the declared halo: blocks must give the one-pass result away from
    the image border (where a consumer's padding, not the network's zero padding, decides)."""
    core = pytest.importorskip("bioimageio.core")
    pytest.importorskip("onnxruntime")
    from bioimageio.spec import load_model_description

    weights = tiny_weights[("sr", 2, 3)]
    out = export_model(weights, "bioimageio", tmp_path / "pkg")
    descr = load_model_description(out / "rdf.yaml")
    rng = np.random.default_rng(3)
    x = np.rint(rng.random((1, 3, 160, 148), dtype=np.float32) * 255).astype(np.float32)
    whole = _torch_forward(weights, x / np.float32(255)) * 255
    sample = core.predict(model=descr, inputs={"input": core.Tensor.from_numpy(x, dims=("batch", "channel", "y", "x"))},
                          blocksize_parameter=0)
    got = sample.members["output"].data.values
    net, _ = load_weights(weights)
    m = 2 * tile_margin(net)  # output pixels near the border that a consumer's padding decides
    assert got.shape == whole.shape
    np.testing.assert_allclose(got[..., m:-m, m:-m], whole[..., m:-m, m:-m], atol=1e-3, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(shipped_models()))
def test_every_shipped_model_exports_a_passing_package(name, tmp_path):
    pytest.importorskip("bioimageio.core")
    pytest.importorskip("onnxruntime")
    out = export_model(name, "bioimageio", tmp_path / name)
    _check_package(out, shipped_models()[name])
    _passes(out)


# ----------------------------------------------------------------------------- command line

def test_cli_export_writes_onnx_and_reports_errors_in_one_line(tiny_weights, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from napari_vdir.cli import main

    path = tiny_weights[("jpeg", 1, 1)]
    out = tmp_path / "jpeg.onnx"
    assert main(["export", str(path), "--format", "onnx", "-o", str(out)]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    for argv, message in ((["export", "no-such-model", "--format", "onnx", "-o", str(tmp_path / "a.onnx")],
                           "no shipped model named 'no-such-model'"),
                          (["export", str(path), "--format", "onnx", "-o", str(out)], "already exists")):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("napari-vdir: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "a.onnx").exists()
    assert main(["export", str(path), "--format", "onnx", "-o", str(out), "--overwrite"]) == 0


def test_cli_backend_reaches_restore(tiny_weights, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from PIL import Image

    import napari_vdir
    from napari_vdir.cli import main

    img = (np.random.default_rng(5).random((36, 44, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "in.png")
    path = tiny_weights[("denoise", 1, 3)]
    for backend in ("onnxruntime", "torch"):
        out = tmp_path / backend
        assert main(["restore", str(tmp_path / "in.png"), "--task", "denoise", "--model", str(path), "-o", str(out),
                     "--precision", "float32", "--backend", backend]) == 0
        got = np.asarray(Image.open(out / "in_denoise.png"))
        assert np.array_equal(got, napari_vdir.restore(img, "denoise", model=path, precision="float32",
                                                       backend=backend))
    assert main(["restore", str(tmp_path / "in.png"), "--task", "denoise", "--model", str(path), "-o",
                 str(tmp_path / "bad"), "--precision", "bfloat16", "--backend", "onnxruntime"]) == 1


# ----------------------------------------------------------------------------- what --overwrite may replace

def _tree(folder: Path) -> dict:
    """Every path under ``folder`` (hidden ones too) -> its bytes (None for a folder)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def _one_line_refusal(capsys, argv, message) -> None:
    from napari_vdir.cli import main

    assert main([str(a) for a in argv]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("napari-vdir: error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err and "Traceback" not in captured.err and captured.out == ""


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    from napari_vdir.core import models

    folder = tmp_path / "user models"
    monkeypatch.setenv(models.ENV_VAR, str(folder))
    return folder


def test_overwrite_never_deletes_a_folder_that_is_not_an_earlier_package(tiny_weights, tmp_path, capsys,
                                                                         models_dir):
    """Issue 31 item 1: `export ... -o d --overwrite` deleted d/thesis.txt; -o at the user models folder
    deleted every user model; `-o . --overwrite` would replace the working folder."""
    pytest.importorskip("bioimageio.spec")
    from napari_vdir.core.models import save_user_model

    weights = tiny_weights[("denoise", 1, 3)]
    d = tmp_path / "d"
    d.mkdir()
    (d / "thesis.txt").write_text("x")
    models_dir.mkdir()
    save_user_model("mine", *load_weights(weights))
    home = tmp_path / "home"
    (home / "model").mkdir(parents=True)
    inside = home / "model" / "w.safetensors"  # a folder holding the model being exported
    inside.write_bytes(weights.read_bytes())
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        for out, model, message in ((d, weights, "it holds thesis.txt"),
                                    (models_dir, weights, "the user models folder"),
                                    (models_dir, "mine", "the model being exported"),
                                    (home, inside, "holds the model being exported"),
                                    (".", weights, "is the current folder"),
                                    ("..", weights, "is the current folder or holds it")):
            _one_line_refusal(capsys, ["export", model, "--format", "bioimageio", "-o", out, "--overwrite"],
                              message)
    assert _tree(tmp_path) == before  # nothing deleted, nothing left behind (no staging, no partial)

    # an earlier package is replaced; once the user has put a file of theirs into it, it no longer is
    pkg = export_model(weights, "bioimageio", tmp_path / "pkg")
    assert export.is_earlier_package(pkg) and {p.name for p in pkg.iterdir()} <= export.PACKAGE_FILES
    assert export_model(weights, "bioimageio", pkg, overwrite=True) == pkg and export.is_earlier_package(pkg)
    (pkg / "my-results.csv").write_text("1,2")
    with pytest.raises(ExportError, match="holds my-results.csv"):
        export_model(weights, "bioimageio", pkg, overwrite=True)
    assert (pkg / "my-results.csv").read_text() == "1,2"
    (pkg / "my-results.csv").unlink()
    (pkg / "rdf.yaml").write_text("name: someone else's model\ntags: [other]\n")  # not our rdf.yaml
    with pytest.raises(ExportError, match="not one napari-vdir wrote"):
        export_model(weights, "bioimageio", pkg, overwrite=True)


def test_export_never_writes_over_weights(tiny_weights, tmp_path, capsys, models_dir, monkeypatch):
    """Issue 31 item 2: `export c.safetensors --format onnx -o c.safetensors --overwrite` replaced the weights
    with ONNX bytes; the same through a link, over a shipped or a user model's file, or any .safetensors."""
    from napari_vdir.core import models
    from napari_vdir.core import weights as W
    from napari_vdir.core.models import save_user_model

    c = tmp_path / "c.safetensors"
    c.write_bytes(tiny_weights[("denoise", 1, 3)].read_bytes())
    (tmp_path / "shipped").mkdir()
    shipped = tmp_path / "shipped" / "denoise-rgb.safetensors"
    shipped.write_bytes(c.read_bytes())
    monkeypatch.setattr(models, "shipped_models", lambda: {"denoise-rgb": shipped})
    user = save_user_model("mine", *load_weights(c))
    (tmp_path / "c-link.onnx").hardlink_to(c)
    (tmp_path / "c-symlink.onnx").symlink_to(c)
    (tmp_path / "shipped-link.onnx").hardlink_to(shipped)
    (tmp_path / "user-link.zip").hardlink_to(user)
    before = _tree(tmp_path)
    for model, out, fmt, message in (
            (c, c, "onnx", "must not be a .safetensors file"),
            (c, tmp_path / "c-link.onnx", "onnx", "is the model being exported"),
            (c, tmp_path / "c-symlink.onnx", "onnx", "is the model being exported"),
            ("denoise-rgb", tmp_path / "shipped-link.onnx", "onnx", "is the model being exported"),
            (c, tmp_path / "shipped-link.onnx", "onnx", "weights file of a shipped or user model"),
            (c, tmp_path / "user-link.zip", "bioimageio", "weights file of a shipped or user model"),
            (c, shipped, "onnx", "must not be a .safetensors file"),
            (c, user, "onnx", "must not be a .safetensors file"),
            (c, tmp_path / "new.safetensors", "onnx", "must not be a .safetensors file"),
            (c, tmp_path / "NEW.SAFETENSORS", "bioimageio", "must not be a .safetensors file")):
        _one_line_refusal(capsys, ["export", model, "--format", fmt, "-o", out, "--overwrite"], message)
    assert _tree(tmp_path) == before
    assert W.read_info(c).task == "denoise" and W.read_info(user).name == "mine"


def test_user_models_export_by_name(tiny_weights, tmp_path, capsys, models_dir, monkeypatch):
    """Issue 31 item 10: `napari-vdir export mine ...` said "no shipped model named 'mine'" though
    `napari-vdir models` lists it; a folder named like the model in the working folder does not hide it."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from napari_vdir.cli import main
    from napari_vdir.core.models import save_user_model

    path = save_user_model("mine", *load_weights(tiny_weights[("sr", 2, 1)]))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    assert main(["export", "mine", "--format", "onnx", "-o", "mine.onnx"]) == 0
    assert "mine -> mine.onnx" in capsys.readouterr().out
    x = np.random.default_rng(2).random((1, 1, 32, 40), dtype=np.float32)
    got = ort.InferenceSession("mine.onnx", providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, _torch_forward(path, x), atol=1e-5, rtol=0)
    assert export.load_model("mine")[2] == path


# ----------------------------------------------------------------------------- concurrent and killed exports

def test_partial_names_are_unique_across_threads_and_calls(tmp_path):
    """Names written beside OUT carry host, pid, thread and a random token: two threads (or two calls) never
    share one, and the sweep can tell whose it is."""
    import os
    import threading

    from napari_vdir.core.io import host_tag, partial_name

    out = tmp_path / "m.onnx"
    names = {}

    def name(key):
        names[key] = (partial_name(out), threading.get_ident())

    threads = [threading.Thread(target=name, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    name("main-1")
    name("main-2")
    assert len({n for n, _ in names.values()}) == len(names)
    for partial, ident in names.values():
        assert partial.parent == tmp_path
        assert partial.name.startswith(f".m.onnx.partial-{host_tag()}-{os.getpid()}-{ident}-")
        assert export._LEFTOVER.fullmatch(partial.name)
    assert partial_name(out, "files").name.startswith(".m.onnx.files-")


def test_threads_export_to_one_folder_at_once(tiny_weights, tmp_path, monkeypatch):
    """Real threads export packages and ONNX files into one folder at the same time: every export succeeds, and
    none sweeps away another's staging folder or partial file (same process, so same pid). The first package
    export holds its staging folder open until the others are done, so their sweeps run beside it."""
    pytest.importorskip("bioimageio.spec")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import threading

    weights = tiny_weights[("denoise", 1, 3)]
    folder = tmp_path / "out"
    staged, others_done = threading.Event(), threading.Event()
    build = export.build_description

    def slow_first(net, info, staging):
        if threading.current_thread().name == "first":
            staged.set()
            assert others_done.wait(300)
            assert staging.is_dir()
        return build(net, info, staging)

    monkeypatch.setattr(export, "build_description", slow_first)
    outs = {"first": folder / "first", "pkg": folder / "pkg", "zip": folder / "p.zip",
            "a": folder / "a.onnx", "b": folder / "b.onnx"}
    errors, start = {}, threading.Barrier(len(outs) - 1)

    def run(key):
        try:
            if key != "first":
                assert staged.wait(300)
                start.wait(60)
            fmt = "onnx" if outs[key].suffix == ".onnx" else "bioimageio"
            assert export_model(weights, fmt, outs[key]) == outs[key]
        except BaseException as err:  # reported below, per thread
            errors[key] = repr(err)

    threads = {key: threading.Thread(target=run, args=(key,), name=key) for key in outs}
    for t in threads.values():
        t.start()
    for key, t in threads.items():
        if key != "first":
            t.join(300)
    others_done.set()
    threads["first"].join(300)
    assert errors == {}
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in outs.values())  # no leftovers
    assert (folder / "first" / "rdf.yaml").is_file() and (folder / "pkg" / "rdf.yaml").is_file()
    x = np.random.default_rng(2).random((1, 3, 40, 48), dtype=np.float32)
    for key in ("a", "b"):
        got = ort.InferenceSession(str(outs[key]), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        np.testing.assert_allclose(got, _torch_forward(weights, x), atol=1e-5, rtol=0)


def test_leftovers_of_killed_exports_are_removed_by_the_next_export(tiny_weights, tmp_path):
    """A killed export leaves a hidden staging folder and a partial file beside OUT: the next export into that
    folder removes those whose process is gone (this host) or that are over an hour old, and nothing else."""
    pytest.importorskip("bioimageio.spec")
    import os
    import time

    from napari_vdir.core.io import STALE_AGE_S, host_tag

    folder = tmp_path / "d"
    folder.mkdir()
    host, me, dead, alive = host_tag(), os.getpid(), dead_pid(), os.getppid()
    old = time.time() - 2 * STALE_AGE_S

    def leftover(name, age=None, is_dir=False):
        return write_leftover(folder, name, age, is_dir)

    gone = [leftover(f".pkg.files-{host}-{dead}-140-0a1b2c3d", is_dir=True),    # staging of a killed export
            leftover(f".pkg.partial-{host}-{dead}-140-0a1b2c3e"),               # its partial package (a zip)
            leftover(f".m.onnx.partial-{host}-{dead}-9-77aa"),                  # another OUT's, same folder
            leftover(f".x.zip.partial-{host}-{alive}-9-0f0f0f0f", old),         # alive pid, but hours old
            leftover(f".y.files-otherhost-{dead}-9-0f0f0f0f", old, True),       # another host, hours old
            leftover(f".pkg.partial-{dead}"),                                   # an older version's partial
            leftover(".pkg.files-k3j_x9a2", old, True)]                         # its staging (mkdtemp), old
    kept = [leftover(f".pkg.files-{host}-{alive}-140-0a1b2c3f", is_dir=True),   # another process exporting
            leftover(f".q.onnx.partial-{host}-{me}-141-01234567"),              # another thread of this process
            leftover(f".q.files-otherhost-{dead}-9-0f0f0f0f", is_dir=True),     # another host, young: can't tell
            leftover(f".pkg.partial-{alive}"),                                  # older version, process running
            leftover(".pkg.files-k3j_x9a3", is_dir=True),                       # older version, young
            leftover("thesis.txt", old), leftover(f"notes.partial-{dead}", old),  # not ours: never touched
            leftover(f".data.partial-{dead}", old), leftover(".pkg.files-backup", old, True),
            leftover(f".pkg.partial-{dead}.txt", old), leftover(f".pkg.old-{host}-{dead}-1-0a", old, True)]
    out = export_model(tiny_weights[("denoise", 1, 3)], "bioimageio", folder / "pkg")
    assert (out / "rdf.yaml").is_file()
    assert [p.name for p in gone if p.exists()] == []
    assert [p.name for p in kept if not p.exists()] == []
    assert sorted(p.name for p in folder.iterdir()) == sorted([p.name for p in kept] + ["pkg"])
    assert export.sweep_leftovers(folder / "pkg") == []  # nothing more to remove, the kept ones stay


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_an_export_killed_with_sigkill_is_cleaned_up_by_the_next_one(tiny_weights, tmp_path):
    """The issue's repro: ``kill -9`` during a package export leaves its hidden staging folder beside OUT; the
    next export into that folder removes it."""
    pytest.importorskip("bioimageio.spec")
    import signal

    folder = tmp_path / "d"
    script = (
        "import sys, time\n"
        "from napari_vdir.export import package as export\n"
        "def hang(net, info, staging):\n"
        "    (staging / 'model.onnx').write_bytes(bytes(1000))\n"
        "    print('staged', flush=True)\n"
        "    time.sleep(600)\n"
        "export.build_description = hang\n"
        "export.export_model(sys.argv[1], 'bioimageio', sys.argv[2])\n")
    child = subprocess.Popen([sys.executable, "-c", script, str(tiny_weights[("denoise", 1, 3)]), str(folder / "pkg")],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "staged"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(60)
    left = [p.name for p in folder.iterdir()]
    assert len(left) == 1 and left[0].startswith(".pkg.files-"), left
    export_model(tiny_weights[("denoise", 1, 3)], "onnx", folder / "m.onnx")
    assert [p.name for p in folder.iterdir()] == ["m.onnx"]
