"""The Restore (VDIR) dock, under Xvfb (pytest-xvfb): docking from the menu shortcuts, outputs and their
geometry, plane vs stack, rerun, cancel, bad layers, responsiveness and the strength slider."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari_vdir.plugin import sample_data as samples  # noqa: E402
from napari_vdir.plugin._qt import restore_dock as _widget  # noqa: E402

PLUGIN = "napari-vdir"
TIMEOUT_MS = 60_000


def dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def use_weights(widget, path):
    widget.model.value = _widget.WEIGHTS_FILE
    widget.weights_path.value = path


def run_and_wait(qtbot, widget, layer=None):
    widget.run(layer=layer)
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)


CASES = {
    # display name: (sample maker, tiny-weights key, layer kwargs, output-scale divisor)
    "Denoise": (lambda: samples.noisy_gray(size=64), ("denoise", 1, 1), {"translate": (2.0, 3.0)}, 1),
    "Super-resolve": (lambda: samples.low_resolution(size=32), ("sr", 2, 3), {"translate": (3.0, 5.0)}, 2),
    "Remove JPEG artefacts": (lambda: samples.jpeg_damaged(size=64), ("jpeg", 1, 3), {"scale": (0.5, 0.25)}, 1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_widget_docks_and_restores_a_sample_layer(make_napari_viewer, qtbot, tiny_weights, notes, name):
    make, key, extra, factor = CASES[name]
    viewer = make_napari_viewer()
    data, meta, _ = make()[0]
    layer = viewer.add_image(data, **{**meta, **extra})
    widget = dock(viewer, name)
    assert widget.layer.value is layer
    assert isinstance(widget, _widget.RestoreDock)
    assert widget.core_task[0] == key[0]  # the shortcut presets the one dock on its task
    from napari_vdir.core.devices import device_label, select_device
    from napari_vdir.plugin.layers import backend_label

    assert widget.device_label.value == f"{device_label(select_device('auto'))} · {backend_label('auto')}"
    use_weights(widget, tiny_weights[key])
    widget.show_latent.value = True
    run_and_wait(qtbot, widget)
    assert notes["error"] == []

    out = viewer.layers[f"{layer.name} [{key[0]}]"]
    h, w = data.shape[:2]
    assert out.data.shape == (h * factor, w * factor, *data.shape[2:])
    assert out.data.dtype == data.dtype
    assert out.rgb == layer.rgb
    np.testing.assert_allclose(out.scale, np.asarray(layer.scale) / factor)
    # the tiny weights have no 'blur' recipe, so they are on the pixel-centred grid: the HR pixels' edges meet the input's
    np.testing.assert_allclose(out.translate, np.asarray(layer.translate)
                               - (factor - 1) / (2 * factor) * np.asarray(layer.scale))
    assert tuple(out.units) == tuple(layer.units)
    assert tuple(out.axis_labels) == tuple(layer.axis_labels)
    np.testing.assert_allclose(out.contrast_limits, layer.contrast_limits)

    lat = viewer.layers[f"{layer.name} [{key[0]}] latent c"]
    assert lat.data.shape == (4, (h + 3) // 4, (w + 3) // 4)
    np.testing.assert_allclose(lat.scale, (1, *(4 * np.asarray(layer.scale))))
    np.testing.assert_allclose(lat.translate, (0, *(np.asarray(layer.translate) + 1.5 * np.asarray(layer.scale))))
    # the latent cell centre lands on the centre of the 4 x 4 input block it summarises
    world = lat.data_to_world((0, 2, 3))[1:]
    np.testing.assert_allclose(world, layer.data_to_world((2 * 4 + 1.5, 3 * 4 + 1.5)))

    assert widget.estimate_label.value.startswith("estimated")
    assert widget.status.value.startswith("done")
    assert widget.run_button.enabled and not widget.cancel_button.enabled

    # a rerun updates the same layers instead of piling up new ones
    n_layers = len(viewer.layers)
    run_and_wait(qtbot, widget)
    assert len(viewer.layers) == n_layers


def test_plane_and_stack_with_physical_axes(make_napari_viewer, qtbot, tiny_weights, notes):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    stack = rng.integers(200, 3000, size=(3, 32, 32)).astype(np.uint16)
    viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.5), translate=(10.0, 1.0, 1.0),
                             units=("micrometer",) * 3, axis_labels=("z", "y", "x"))
    widget = dock(viewer, "Denoise")
    use_weights(widget, tiny_weights[("denoise", 1, 1)])
    widget.show_latent.value = True
    widget.show_uncertainty.value = True
    assert widget.samples.value >= 2  # uncertainty needs Monte-Carlo samples

    assert not widget.extent.native.isHidden()  # 'this plane / all planes' is offered for a stack
    widget.extent.value = _widget.PLANE
    viewer.dims.set_current_step(0, 1)
    run_and_wait(qtbot, widget)
    assert notes["error"] == []
    out = viewer.layers["stack [denoise] (plane 1)"]
    assert out.data.shape == (1, 32, 32) and out.data.dtype == np.uint16
    np.testing.assert_allclose(out.translate, (12.0, 1.0, 1.0))  # plane 1 sits at z = 10 + 1 * 2
    plane = out.data[0].copy()
    unc = viewer.layers["stack [denoise] (plane 1) uncertainty"]
    assert unc.data.shape == (1, 32, 32) and (unc.data >= 0).all()

    widget.extent.value = _widget.STACK
    run_and_wait(qtbot, widget)
    # the whole-stack result is a layer of its own: the plane run is not silently replaced
    assert viewer.layers["stack [denoise] (plane 1)"].data.shape == (1, 32, 32)
    out = viewer.layers["stack [denoise]"]
    assert out.data.shape == (3, 32, 32)
    np.testing.assert_allclose(out.translate, (10.0, 1.0, 1.0))
    np.testing.assert_array_equal(out.data[1], plane)  # same normalisation alone or in the stack
    lat = viewer.layers["stack [denoise] latent c"]
    assert lat.data.shape == (4, 3, 8, 8)
    np.testing.assert_allclose(lat.scale, (1.0, 2.0, 2.0, 2.0))
    np.testing.assert_allclose(lat.translate, (0.0, 10.0, 1.75, 1.75))
    assert tuple(lat.axis_labels) == ("latent c", "z", "y", "x")
    assert viewer.layers["stack [denoise] uncertainty"].data.shape == (3, 32, 32)

    # a rerun without the companions removes the earlier run's, which no longer match the output
    widget.show_latent.value = False
    widget.show_uncertainty.value = False
    run_and_wait(qtbot, widget)
    names = [layer.name for layer in viewer.layers]
    assert names == ["stack", "stack [denoise] (plane 1)", "stack [denoise] (plane 1) latent c",
                     "stack [denoise] (plane 1) uncertainty", "stack [denoise]"]


def test_cancel_mid_run_keeps_viewer_and_gui_stays_responsive(make_napari_viewer, qtbot, tiny_weights, notes):
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    stack = np.random.default_rng(2).integers(0, 255, size=(64, 64, 64)).astype(np.uint8)
    viewer.add_image(stack, name="big")
    names = [layer.name for layer in viewer.layers]
    widget = dock(viewer, "Denoise")
    use_weights(widget, tiny_weights[("denoise", 1, 1)])
    assert widget.tile_size.value == "auto"  # one tile per plane: 64 progress ticks

    # record, from the worker thread, which tiles finish after Cancel was pressed
    after_cancel = []
    forward = widget._set_progress

    def record(done, total):
        if widget._cancel_event is not None and widget._cancel_event.is_set():
            after_cancel.append(done)
        forward(done, total)

    widget._set_progress = record

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(5)
    widget.run()
    try:
        qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=TIMEOUT_MS)
        assert widget.running and not widget.run_button.enabled
        # the event loop keeps turning while tiles are computed: timers fire, the dims slider
        # moves, progress advances
        start, first = len(ticks), widget.progress.value
        viewer.dims.set_current_step(0, 40)
        qtbot.waitUntil(lambda: len(ticks) > start + 5 and widget.progress.value > first, timeout=TIMEOUT_MS)
        assert widget.running, "the run should still be in flight"
        assert viewer.dims.current_step[0] == 40

        assert widget.run() is None  # a second run is refused while one is in flight
        assert any("already running" in m for m in notes["info"])

        widget.cancel_button.clicked.emit()
        qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    finally:  # never leave a worker running into the viewer's teardown
        widget.cancel()
        qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
        timer.stop()
    assert widget.progress.value < widget.progress.max
    assert len(after_cancel) <= 1, after_cancel  # stops within the tile in flight
    assert [layer.name for layer in viewer.layers] == names
    assert widget.status.value.startswith("cancelled")
    assert notes["error"] == []
    assert widget.run_button.enabled


def test_bad_layers_give_notifications(make_napari_viewer, qtbot, tiny_weights, notes):
    viewer = make_napari_viewer()
    widget = dock(viewer, "Denoise")
    use_weights(widget, tiny_weights[("denoise", 1, 1)])

    widget.run()  # no layer at all
    labels = viewer.add_labels(np.zeros((16, 16), dtype=np.uint8))
    widget.run(layer=labels)
    # napari accepts an empty stack (0 planes) when it is given contrast limits
    empty = viewer.add_image(np.zeros((0, 16, 16), dtype=np.float32), name="empty", contrast_limits=(0, 1))
    widget.run(layer=empty)
    assert len(notes["error"]) == 3
    assert "image layer" in notes["error"][1] and "empty" in notes["error"][2]

    bad = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    bad[3, 4] = np.nan
    nan_layer = viewer.add_image(bad, name="nan")
    run_and_wait(qtbot, widget, nan_layer)  # fails inside the worker
    assert len(notes["error"]) == 4 and "NaN" in notes["error"][3]
    assert "nan [denoise]" not in viewer.layers
    assert not widget.running and widget.run_button.enabled


def test_strength_neutral_is_plain_and_monotone(make_napari_viewer, qtbot, notes):
    from napari_vdir import restore
    from napari_vdir.core.models import shipped_models

    if "denoise-rgb" not in shipped_models():
        pytest.skip("shipped denoise-rgb model not present")
    viewer = make_napari_viewer()
    noisy = samples.noisy_photo(size=64)[0][0]
    layer = viewer.add_image(noisy, name="photo", rgb=True)
    widget = dock(viewer, "Denoise")
    widget.model.value = "denoise-rgb"
    widget.show_latent.value = False

    residual = {}
    for strength in (1.0, 0.5, 1.5, 2.0):
        widget.strength.value = strength
        run_and_wait(qtbot, widget, layer)
        out = viewer.layers["photo [denoise]"].data
        residual[strength] = np.abs(out.astype(np.float64) - noisy).mean()
        if strength == 1.0:
            np.testing.assert_array_equal(out, restore(noisy, "denoise", model="denoise-rgb"))
    assert notes["error"] == []
    ordered = [residual[s] for s in sorted(residual)]
    assert all(a < b for a, b in zip(ordered, ordered[1:], strict=False)), residual


@pytest.mark.parametrize("key,dtype", [("noisy_photo", np.uint8), ("noisy_gray", np.uint16),
                                       ("low_resolution", np.uint8), ("jpeg_damaged", np.uint8)])
def test_sample_data_opens(make_napari_viewer, key, dtype):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, key)
    assert viewer.layers[-1].data.dtype == dtype


def test_gray_stack_with_width_three_is_not_taken_for_rgb(tiny_weights, make_napari_viewer):
    """napari decides RGB; a gray (Z, Y, X=3) layer is restored as gray planes."""
    from napari_vdir.plugin.layers import restore_layer

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.random.default_rng(0).random((2, 16, 3)).astype(np.float32), rgb=False)
    result = restore_layer(layer, "denoise", model=tiny_weights[("denoise", 1, 1)])
    assert result.layers[0][0].shape == (2, 16, 3)


def test_dask_uint16_plane_matches_stack(tiny_weights):
    """A lazy (dask) uint16 layer is normalised by the robust range of the plane on screen: a plane restored
    alone equals that plane of a (lazy) whole-stack run, and the bright spot in another plane plays no part."""
    import dask.array as da
    from napari.layers import Image

    from napari_vdir.plugin.layers import restore_layer

    stack = np.random.default_rng(2).integers(200, 3000, size=(3, 32, 32)).astype(np.uint16)
    stack[2, :4, :4] = 60000
    layer = Image(da.from_array(stack, chunks=(1, 32, 32)), name="lazy")
    weights = tiny_weights[("denoise", 1, 1)]
    plane = restore_layer(layer, "denoise", model=weights, plane=(0,)).layers[0][0]
    # the dock passes the plane on screen as range_plane, so both runs read their range from it
    result = restore_layer(layer, "denoise", model=weights, range_plane=(0,))
    assert result.lazy and isinstance(result.layers[0][0], da.Array)
    whole = np.asarray(result.layers[0][0])
    assert plane.shape == (1, 32, 32) and whole.shape == (3, 32, 32)
    np.testing.assert_array_equal(plane[0], whole[0])


@pytest.mark.parametrize("where", ["quarter", "after the last block"])
def test_cancel_inside_a_single_pass_rgb_plane_adds_nothing(make_napari_viewer, qtbot, deep_rgb, notes, where,
                                                            monkeypatch):
    """A 1024² RGB layer is one tile. Cancel pressed a quarter of the way into that pass stops it within
    a block; pressed after the network's last cancel check, the finished result is dropped too."""
    import threading

    from napari_vdir.core import backends

    # the torch backend: the hooks below watch its modules (ONNX Runtime would run a graph instead)
    monkeypatch.setattr(backends, "select", lambda net, path, device, backend, precision: (net, "torch", precision))

    viewer = make_napari_viewer()
    image = np.random.default_rng(3).integers(0, 255, size=(1024, 1024, 3)).astype(np.uint8)
    viewer.add_image(image, name="photo", rgb=True)
    names = [layer.name for layer in viewer.layers]
    widget = dock(viewer, "Denoise")
    use_weights(widget, deep_rgb)
    widget.show_latent.value = False

    from napari_vdir.core.inference import cached_model

    net = cached_model(str(deep_rgb), "cpu", deep_rgb.stat().st_mtime)[0]
    reached, tail_ran = threading.Event(), []

    def pause_for_cancel(*_):  # worker thread: let the user press Cancel here, then go on
        reached.set()
        assert widget._cancel_event.wait(30)

    if where == "quarter":
        handle = net.restorer.trunk.groups[1].register_forward_pre_hook(pause_for_cancel)
    else:
        handle = net.restorer.tail.register_forward_hook(pause_for_cancel)
    tail = net.restorer.tail.register_forward_hook(lambda *_: tail_ran.append(1))
    try:
        widget.run()
        qtbot.waitUntil(reached.is_set, timeout=TIMEOUT_MS)
        widget.cancel_button.clicked.emit()
        qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    finally:
        widget.cancel()
        qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
        handle.remove()
        tail.remove()
    assert tail_ran == ([] if where == "quarter" else [1])
    assert [layer.name for layer in viewer.layers] == names
    assert widget.status.value.startswith("cancelled")
    assert notes["error"] == [] and widget.last_result is None and widget.run_button.enabled


def _forged_weights(good, tmp_path):
    """Bad weights files a user might pick: forged sizes, a training checkpoint, truncated, empty."""
    import json

    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
    arch = json.loads(meta["arch"])
    arch["rir_blocks"] = 100000
    files = {"invalid architecture": tmp_path / "forged.safetensors",
             "training checkpoint": tmp_path / "checkpoint.pt",
             "truncated": tmp_path / "cut.safetensors",
             "empty": tmp_path / "empty.safetensors"}
    save_file(load_file(str(good)), str(files["invalid architecture"]), metadata={**meta, "arch": json.dumps(arch)})
    torch.save({"model": load_file(str(good))}, files["training checkpoint"])
    files["truncated"].write_bytes(good.read_bytes()[:200])
    files["empty"].write_bytes(b"")
    return files


def test_bad_weights_file_gives_a_notification_and_napari_keeps_running(make_napari_viewer, qtbot, tiny_weights,
                                                                       notes, tmp_path):
    import time

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.random.default_rng(0).random((32, 32)).astype(np.float32), name="img")
    widget = dock(viewer, "Denoise")
    good = tiny_weights[("denoise", 1, 1)]
    for reason, path in _forged_weights(good, tmp_path).items():
        notes["error"].clear()
        start = time.perf_counter()
        use_weights(widget, path)  # chosen: checked at once
        assert len(notes["error"]) == 1 and reason in notes["error"][0], notes["error"]
        assert widget.run(layer=layer) is None  # Run refuses it before starting a worker
        assert time.perf_counter() - start < 5
        assert len(notes["error"]) == 2 and reason in notes["error"][1]
        assert all("\n" not in m for m in notes["error"])
        assert not widget.running and widget.run_button.enabled
        assert [lay.name for lay in viewer.layers] == ["img"]
    # napari and the widget still work: a good file restores
    notes["error"].clear()
    use_weights(widget, good)
    assert notes["error"] == [] and widget.status.value.startswith("weights: ")
    run_and_wait(qtbot, widget, layer)
    assert notes["error"] == [] and "img [denoise]" in viewer.layers


def test_weights_file_for_another_task_is_named_when_chosen(make_napari_viewer, tiny_weights, notes):
    viewer = make_napari_viewer()
    widget = dock(viewer, "Denoise")
    use_weights(widget, tiny_weights[("jpeg", 1, 1)])
    assert len(notes["error"]) == 1 and "'jpeg' model" in notes["error"][0]


# ---------------------------------------------------------------------------- issue 17: the one dock

SEGFAULT_SEQUENCE = r'''
import sys, time
import numpy as np, napari
from qtpy.QtWidgets import QApplication

weights, guard = sys.argv[1], sys.argv[2] == "guard"
viewer = napari.Viewer(show=True)
_, dock = viewer.window.add_plugin_dock_widget("napari-vdir", "Restore (VDIR)")
if not guard:
    dock._flush_guard.disconnect()
dock.model.value = "weights file…"
dock.weights_path.value = weights
rng = np.random.default_rng(0)

def run_and_wait():
    dock.run()
    while dock.running:
        QApplication.processEvents()
        time.sleep(0.01)
    for _ in range(20):
        QApplication.processEvents()

for i in range(2):  # some runs
    viewer.add_image(rng.integers(0, 4000, (128, 128)).astype(np.uint16), name=f"img{i}")
    dock.layer.value = viewer.layers[f"img{i}"]
    run_and_wait()
viewer.layers.clear()  # remove all layers, add an image and press Run at once
viewer.add_image(rng.integers(0, 4000, (128, 128)).astype(np.uint16), name="fresh")
run_and_wait()
for layer in list(viewer.layers):  # the same, removing the layers one by one
    viewer.layers.remove(layer)
viewer.add_image(rng.integers(0, 4000, (128, 128)).astype(np.uint16), name="fresh2")
run_and_wait()
print("layers:", [layer.name for layer in viewer.layers], flush=True)
viewer.close()
'''


@pytest.mark.parametrize("guard", ["guard", "no guard (control)"])
def test_remove_all_add_and_run_at_once_does_not_crash(tmp_path, tiny_weights, guard):
    """The issue's segfault: after some runs, remove all layers, add an image and press Run with no event
    processing in between; the main thread died in vispy's glDrawArrays when the result was drawn. It is
    napari's (the same happens with any layer added after such a sequence, without this plugin); the dock
    lets Qt flush the removed layers' GL objects right after a removal. Run in a child process with a shown
    viewer (GL drawing), so a crash fails the test instead of killing pytest. The control, without the
    guard, shows the sequence does reproduce the crash here."""
    import os
    import subprocess
    import sys

    script = tmp_path / "sequence.py"
    script.write_text(SEGFAULT_SEQUENCE)
    arg = "guard" if guard == "guard" else "none"
    done = subprocess.run([sys.executable, str(script), str(tiny_weights[("denoise", 1, 1)]), arg],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))
    if arg == "guard":
        assert done.returncode == 0, done.stderr[-3000:]
        assert "layers: ['fresh2', 'fresh2 [denoise]']" in done.stdout
    elif done.returncode == 0:
        pytest.skip("this napari/GL no longer crashes without the guard")
    else:
        assert done.returncode == -11, done.stderr[-3000:]  # SIGSEGV


def test_dock_fits_a_small_screen_and_never_widens(make_napari_viewer, qtbot, tiny_weights, notes):
    from qtpy.QtWidgets import QDockWidget

    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.random.default_rng(0).random((3, 64, 64)).astype(np.float32), name="cells")
    widget = dock(viewer, "Restore (VDIR)")
    use_weights(widget, tiny_weights[("denoise", 1, 1)])
    frame = widget.native
    while not isinstance(frame, QDockWidget):
        frame = frame.parentWidget()
    qtbot.wait(50)
    collapsed = widget.native.sizeHint()
    assert collapsed.height() < 600  # all panels collapsed: well inside a 1000 px screen
    width = frame.width()
    assert width <= _widget.DOCK_WIDTH + 50
    widget.set_advanced_visible(True)
    qtbot.wait(50)
    expanded = widget.native.sizeHint()
    assert collapsed.height() < expanded.height() < 1000
    widget.set_advanced_visible(False)
    run_and_wait(qtbot, widget)
    widget.estimate_label.value = widget.estimate_label.value + " and a very long explanation " * 20
    widget.status.value = "done: " + "a-model-with-a-long-name" * 10
    qtbot.wait(50)
    assert frame.width() == width  # long texts wrap; the dock does not grow
    assert widget.estimate_label.tooltip.endswith("explanation ")  # the whole text stays readable
    assert notes["error"] == []


def test_task_chooser_model_list_and_plain_words(make_napari_viewer_proxy):
    from napari_vdir.core.models import shipped_models

    viewer = make_napari_viewer_proxy()
    widget = dock(viewer, "Restore (VDIR)")
    assert list(widget.task.choices) == ["Denoise", "Camera noise", "Super-resolve ×2", "Super-resolve ×4",
                                         "Remove JPEG artefacts"]
    texts = " ".join(w.text if hasattr(w, "text") else str(w.label) for w in widget.advanced)
    for words in ("degradation map", "uncertainty samples", "8× test-time averaging"):
        assert words in texts
    assert "auto" in widget.tile_size.choices
    widget.task.value = "Super-resolve ×4"
    assert widget.core_task == ("sr", 4)
    for name in widget.model.choices[1:-1]:
        assert name in shipped_models() and "x4" in name
    widget.task.value = "Remove JPEG artefacts"
    assert all("jpeg" in name for name in widget.model.choices[1:-1])
    # a 2-D image has no 'this plane / all planes' choice
    viewer.add_image(np.zeros((32, 32), dtype=np.uint8), name="flat")
    assert widget.extent.native.isHidden()


def test_channel_axis_is_prefilled_and_used(make_napari_viewer_proxy, qtbot, tiny_weights, notes):
    viewer = make_napari_viewer_proxy()
    data = np.random.default_rng(1).integers(100, 3000, size=(2, 48, 48)).astype(np.uint16)
    layer = viewer.add_image(data, name="two channels", axis_labels=("C", "y", "x"))
    widget = dock(viewer, "Restore (VDIR)")
    assert widget.channel_axis.value == 0
    assert widget.extent.native.isHidden()  # the channels are not planes to browse
    use_weights(widget, tiny_weights[("denoise", 1, 1)])
    run_and_wait(qtbot, widget, layer)
    assert notes["error"] == []
    out = viewer.layers["two channels [denoise]"]
    assert out.data.shape == data.shape and out.metadata["vdir"]["channel_axis"] == 0
    assert np.asarray(out.metadata["vdir"]["intensity_range"]).shape == (2, 2)  # one range per channel


def test_output_keeps_blending_and_colormap(make_napari_viewer_proxy, qtbot, tiny_weights, notes):
    viewer = make_napari_viewer_proxy()
    layer = viewer.add_image(np.random.default_rng(2).random((48, 48)).astype(np.float32), name="gfp",
                             colormap="green", blending="additive", opacity=0.6)
    widget = dock(viewer, "Denoise")
    use_weights(widget, tiny_weights[("denoise", 1, 1)])
    run_and_wait(qtbot, widget, layer)
    out = viewer.layers["gfp [denoise]"]
    assert out.blending == "additive" and out.colormap.name == "green" and out.opacity == pytest.approx(0.6)
    assert "layer's units" in widget.estimate_label.value and "0-255" not in widget.estimate_label.value


def test_core_warnings_reach_the_user(make_napari_viewer_proxy, qtbot, tiny_weights, notes, monkeypatch):
    import warnings

    from napari_vdir.core.request import Prepared

    original = Prepared.run

    def warning_run(self):  # the core warns in the worker thread
        warnings.warn("the core has something to say", UserWarning, stacklevel=2)
        return original(self)

    monkeypatch.setattr(Prepared, "run", warning_run)
    viewer = make_napari_viewer_proxy()
    layer = viewer.add_image(np.random.default_rng(3).random((32, 32)).astype(np.float32), name="img")
    widget = dock(viewer, "Denoise")
    use_weights(widget, tiny_weights[("denoise", 1, 1)])
    run_and_wait(qtbot, widget, layer)
    assert any("the core has something to say" in m for m in notes["warning"]), notes
    assert "img [denoise]" in viewer.layers


def test_a_saved_user_model_appears_in_the_model_list(make_napari_viewer_proxy, tiny_weights, tmp_path, monkeypatch):
    import shutil

    from napari_vdir.core import models

    monkeypatch.setenv(models.ENV_VAR, str(tmp_path / "models"))
    viewer = make_napari_viewer_proxy()
    widget = dock(viewer, "Restore (VDIR)")
    assert "my-denoiser" not in widget.model.choices
    (tmp_path / "models").mkdir()
    shutil.copy(tiny_weights[("denoise", 1, 1)], tmp_path / "models" / "my-denoiser.safetensors")
    models.notify_user_models_changed()
    assert "my-denoiser" in widget.model.choices
    widget.task.value = "Remove JPEG artefacts"
    assert "my-denoiser" not in widget.model.choices  # listed for its own task only


def test_progress_shows_in_the_activity_list(make_napari_viewer_proxy, qtbot, tiny_weights):
    from napari.utils import progress

    viewer = make_napari_viewer_proxy()
    layer = viewer.add_image(np.random.default_rng(4).random((8, 32, 32)).astype(np.float32), name="stack")
    widget = dock(viewer, "Denoise")
    use_weights(widget, tiny_weights[("denoise", 1, 1)])
    seen = []
    original = widget._set_progress_now

    def record(done, total):
        original(done, total)
        seen.extend(p.desc for p in progress._all_instances)

    widget._set_progress_now = record
    widget._set_progress = record
    run_and_wait(qtbot, widget, layer)
    assert any(desc == "Denoise: stack" for desc in seen)
    assert not any(p.desc == "Denoise: stack" for p in progress._all_instances)  # closed when done


def test_layer_commands_run_as_napari_runs_menu_items(make_napari_viewer, monkeypatch):
    """The menu / right-click actions, executed through napari's app-model (as a click does): they restore
    the active layer with the defaults and add a layer that keeps its metadata."""
    from napari._app_model import get_app_model

    from napari_vdir.core.models import shipped_models
    from napari_vdir.plugin import commands as _commands

    if "denoise-gray" not in shipped_models():
        pytest.skip("shipped denoise-gray model not present")
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.random.default_rng(5).integers(100, 3000, (48, 48)).astype(np.uint16),
                             name="cells", scale=(0.2, 0.2), colormap="magenta", blending="additive")
    viewer.layers.selection.active = layer
    app = get_app_model()  # napari's test app (the plugin's on_activate finds the real one by its name)
    assert _commands.add_layer_context_menu(app)
    in_context_menu = {getattr(item, "command", None) and item.command.id
                       for item in app.menus.get_menu(_commands.CONTEXT_MENU)}
    assert set(_commands.LAYER_COMMANDS) <= in_context_menu
    app.commands.execute_command("napari-vdir.denoise_layer").result()
    out = viewer.layers["cells [denoise]"]
    assert out.data.shape == layer.data.shape and out.data.dtype == np.uint16
    np.testing.assert_allclose(out.scale, (0.2, 0.2))
    assert out.colormap.name == "magenta" and out.blending == "additive"

    viewer.layers.selection.active = layer
    app.commands.execute_command("napari-vdir.sr2_layer").result()
    sr = viewer.layers["cells [sr]"]
    assert sr.data.shape == (96, 96)
    np.testing.assert_allclose(sr.scale, (0.1, 0.1))


def test_imagedata_commands_for_scripts_and_workflows():
    import napari.types
    from npe2 import PluginManager

    from napari_vdir.core.models import shipped_models
    from napari_vdir.plugin import commands as _commands

    for func in (_commands.denoise, _commands.remove_jpeg_artefacts, _commands.super_resolve_x2):
        assert func.__annotations__ == {"image": napari.types.ImageData, "return": napari.types.ImageData}
    if "jpeg-gray" not in shipped_models():
        pytest.skip("shipped jpeg-gray model not present")
    image = np.random.default_rng(6).integers(0, 255, (32, 32)).astype(np.uint8)
    pm = PluginManager.instance()
    out = pm.commands.execute("napari-vdir.remove_jpeg_artefacts", args=(image,))
    assert out.shape == image.shape and out.dtype == np.uint8
