"""Weights files: every way a file can be wrong ends in a one-line WeightsError, checked from the
header before any network is built, and nothing is ever unpickled."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import napari_vdir
from napari_vdir.core import weights as W
from napari_vdir.core.nets import VDIR, ArchConfig
from napari_vdir.core.weights import WeightsError, load_weights, read_info


@pytest.fixture
def good(tiny_weights):
    return tiny_weights[("denoise", 1, 1)]


def rewrite(src, dst, *, meta=None, tensors=None):
    """Copy a weights file with its metadata updated by ``meta`` (None values delete a key) and its
    tensors updated by ``tensors``."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        metadata = dict(f.metadata())
    values = load_file(str(src))
    for key, value in (meta or {}).items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    for key, value in (tensors or {}).items():
        if value is None:
            values.pop(key)
        else:
            values[key] = value
    save_file(values, str(dst), metadata=metadata)
    return dst


def arch_json(good, **changes):
    arch = json.loads(read_info(good).to_metadata()["arch"])
    arch.update(changes)
    return json.dumps(arch)


def assert_one_line(err):
    text = str(err.value)
    assert "\n" not in text and len(text) < 400, text


def test_good_file_round_trips(good, tmp_path):
    model, info = load_weights(good)
    assert info.task == "denoise" and info.channels == 1
    again = W.save_weights(tmp_path / "copy.safetensors", model, info, half=False)
    assert [p.name for p in tmp_path.iterdir()] == ["copy.safetensors"]  # no partial file left behind
    model2, _ = load_weights(again)
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x).image, model2(x).image)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty") as err:
        load_weights(path)
    assert_one_line(err)


@pytest.mark.parametrize("keep", [3, 40, "half", -1])
def test_truncated_file(good, tmp_path, keep):
    data = good.read_bytes()
    n = {"half": len(data) // 2}.get(keep, keep)
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:n])
    for reader in (read_info, load_weights):
        with pytest.raises(WeightsError, match="truncated") as err:
            reader(path)
        assert_one_line(err)


def test_junk_bytes(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(WeightsError) as err:
        load_weights(path)
    assert_one_line(err)


def test_header_that_is_not_json(tmp_path):
    path = tmp_path / "bad.safetensors"
    body = b"{not json at all}"
    path.write_bytes(len(body).to_bytes(8, "little") + body)
    with pytest.raises(WeightsError, match="not JSON"):
        read_info(path)


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}, {"format": "napari-vdirx", "name": "x"}])
def test_foreign_safetensors(tmp_path, metadata):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(path), metadata=metadata)
    with pytest.raises(WeightsError, match="not a napari-vdir weights file") as err:
        load_weights(path)
    assert_one_line(err)


def test_shape_mismatch_found_from_the_header(good, tmp_path):
    path = rewrite(good, tmp_path / "shape.safetensors", tensors={"restorer.tail.weight": torch.zeros(1, 8, 5, 5)})
    with pytest.raises(WeightsError, match=r"restorer.tail.weight has shape \(1, 8, 5, 5\)"):
        read_info(path)  # found without loading a single tensor
    with pytest.raises(WeightsError, match="has shape"):
        load_weights(path)


def test_missing_and_unexpected_tensors(good, tmp_path):
    path = rewrite(good, tmp_path / "missing.safetensors", tensors={"restorer.tail.bias": None})
    with pytest.raises(WeightsError, match=r"missing \['restorer.tail.bias'\]"):
        load_weights(path)
    path = rewrite(good, tmp_path / "extra.safetensors", tensors={"decoder.conv.weight": torch.zeros(2)})
    with pytest.raises(WeightsError, match="unexpected"):
        load_weights(path)


def test_metadata_of_another_architecture(good, tmp_path):
    """Honest tensors of a width-8 network under metadata claiming width 16."""
    path = rewrite(good, tmp_path / "wide.safetensors", meta={"arch": arch_json(good, width=16)})
    with pytest.raises(WeightsError, match="the architecture needs"):
        read_info(path)


def test_nan_tensor(good, tmp_path):
    values = load_file(str(good))
    bad = values["restorer.tail.weight"].clone()
    bad.view(-1)[3] = float("nan")
    path = rewrite(good, tmp_path / "nan.safetensors", tensors={"restorer.tail.weight": bad})
    with pytest.raises(WeightsError, match="restorer.tail.weight contains NaN or inf") as err:
        load_weights(path)
    assert_one_line(err)


def test_integer_tensor_refused(good, tmp_path):
    path = rewrite(good, tmp_path / "int.safetensors",
                   tensors={"restorer.tail.bias": torch.zeros(1, dtype=torch.int64)})
    with pytest.raises(WeightsError, match="is I64"):
        read_info(path)


def test_newer_format_version(good, tmp_path):
    path = rewrite(good, tmp_path / "v2.safetensors", meta={"format_version": str(W.FORMAT_VERSION + 1)})
    with pytest.raises(WeightsError, match="newer than this napari-vdir understands.*upgrade"):
        load_weights(path)


@pytest.mark.parametrize("meta,match", [
    ({"task": "sr"}, "does not match scale"),
    ({"task": "deblur"}, "unknown task"),
    ({"arch": "not json"}, "invalid architecture"),
    ({"arch": "[1, 2]"}, "JSON object"),
    ({"name": None}, "no 'name' entry"),
    ({"trained_steps": "many"}, "invalid metadata"),
    ({"recipe": "[1]"}, "JSON objects"),
])
def test_inconsistent_metadata(good, tmp_path, meta, match):
    path = rewrite(good, tmp_path / "meta.safetensors", meta=meta)
    with pytest.raises(WeightsError, match=match) as err:
        load_weights(path)
    assert_one_line(err)


def test_task_and_scale_of_the_model_must_fit_the_call(tiny_weights):
    image = np.zeros((16, 16), np.float32)
    with pytest.raises(ValueError, match="cannot do 'sr' x4"):
        napari_vdir.restore(image, "sr", scale=4, model=tiny_weights[("sr", 2, 1)])


@pytest.mark.parametrize("changes", [dict(rir_blocks=100000), dict(res_blocks=100000), dict(width=10**6),
                                     dict(encoder_width=10**6), dict(estimate_dims=10**6), dict(channels=1000),
                                     dict(scale=8), dict(width=0), dict(width=8.5), dict(width=True),
                                     dict(width="8")])
def test_oversize_or_malformed_arch_fails_fast(good, tmp_path, monkeypatch, changes):
    """A forged arch of a 100 KB file used to build the network first (OOM at 23 GB): now the sizes are
    bounded and checked before anything is built."""
    path = rewrite(good, tmp_path / "forged.safetensors", meta={"arch": arch_json(good, **changes)})
    built = []
    monkeypatch.setattr(W, "VDIR", lambda cfg: built.append(cfg))
    start = time.perf_counter()
    with pytest.raises(WeightsError, match="invalid architecture") as err:
        load_weights(path)
    assert time.perf_counter() - start < 0.5
    assert built == []
    assert_one_line(err)
    assert next(iter(changes)) in str(err.value)


def test_largest_allowed_arch_is_still_checked_without_allocating(good, tmp_path):
    """At the limits (32 x 32 blocks of width 256: ~1.2 G parameters) the shape check runs on the meta
    device, so a small file claiming it is refused quickly."""
    from napari_vdir.core.nets import ARCH_LIMITS

    big = {k: ARCH_LIMITS[k][1] for k in ("width", "rir_blocks", "res_blocks", "encoder_width")}
    path = rewrite(good, tmp_path / "big.safetensors", meta={"arch": arch_json(good, **big)})
    start = time.perf_counter()
    with pytest.raises(WeightsError, match="do not match the architecture"):
        load_weights(path)
    assert time.perf_counter() - start < 5


class _Tripwire:
    """Unpickling this object creates a file: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("zip_format", [True, False])
def test_training_checkpoint_given_as_model(good, tmp_path, zip_format):
    marker = tmp_path / "unpickled"
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"model": load_file(str(good)), "trap": _Tripwire(marker), "step": 10}, ckpt,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(WeightsError, match=r"training checkpoint.*OUT/<name>\.safetensors") as err:
        load_weights(ckpt)
    assert_one_line(err)
    assert "header too large" not in str(err.value)
    with pytest.raises(WeightsError, match="training checkpoint"):
        napari_vdir.restore(np.zeros((16, 16), np.float32), "denoise", model=ckpt)
    assert not marker.exists()


def test_arch_limits_bound_the_config():
    with pytest.raises(ValueError, match="rir_blocks must be between 1 and 32"):
        ArchConfig(rir_blocks=33)
    VDIR(ArchConfig(width=4, rir_blocks=1, res_blocks=1, encoder_width=4))  # small is fine


@pytest.mark.parametrize("where", ["recipe", "quality", "arch", "header"])
def test_deeply_nested_metadata_is_one_line_not_a_recursion_error(good, tmp_path, where):
    """Issue 31 item 8: a recipe of 5,000 nested brackets gave a RecursionError traceback."""
    deep = "[" * 5000 + "]" * 5000
    path = tmp_path / "deep.safetensors"
    if where == "header":  # the safetensors header itself nests (outside any string)
        body = ('{"__metadata__": {"format": "napari-vdir"}, "x": ' + deep + "}").encode()
        path.write_bytes(len(body).to_bytes(8, "little") + body)
    else:
        rewrite(good, path, meta={where: deep})
    for reader in (read_info, load_weights):
        with pytest.raises(WeightsError, match="nests 5001 levels deep" if where == "header" else
                           f"its {where} nests 5000 levels deep") as err:
            reader(path)
        assert_one_line(err)
    # brackets inside JSON strings are text, not nesting; a shipped-like recipe still reads
    ok = rewrite(good, tmp_path / "ok.safetensors", meta={"recipe": json.dumps({"note": deep, "a": {"b": [[1]]}})})
    assert read_info(ok).recipe["note"] == deep
    assert W.json_depth('{"a": "[[[\\"{{", "b": [{"c": []}]}') == 4


def test_oversize_metadata_entry_refused_before_parsing(good, tmp_path):
    path = rewrite(good, tmp_path / "big.safetensors", meta={"quality": " " * (W.MAX_METADATA_CHARS + 1)})
    with pytest.raises(WeightsError, match="metadata 'quality' has") as err:
        read_info(path)
    assert_one_line(err)
