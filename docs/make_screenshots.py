"""Make the README screenshots of the napari plugin.

Run from the repository root under a (virtual) display::

    xvfb-run -a python docs/make_screenshots.py

It writes, in ``docs/images/``:

* ``widget_*.png``: the Restore (VDIR) dock beside input and result (napari's grid mode) for a task,
  opened from its Plugins-menu shortcut and run with the shipped model on a cropped sample;
  ``latent_*.png``: the input with the degradation map (latent c) overlaid;
* ``dock_collapsed.png`` / ``dock_expanded.png``: the dock alone, its Advanced section closed and open;
* ``context_menu.png``: the layer list's right-click menu with the VDIR actions;
* ``finetune_dock.png``: the Fine-tune (VDIR) dock after a short run, with its loss plot (skipped
  when ``napari_vdir.plugin._qt.finetune_dock.FineTuneDock`` does not exist). The model it trains is saved to a
  temporary folder, never the user's models folder.

Viewer PNGs are palette-quantised to stay small.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "images"
SIZE = (1280, 760)
SHOTS = [  # (Plugins-menu entry, sample function, crop, file stem)
    ("Denoise", "noisy_photo", 192, "denoise"),
    ("Super-resolve", "low_resolution", 96, "sr"),
    ("Remove JPEG artefacts", "jpeg_damaged", 192, "jpeg"),
]


def wait_for(widget, timeout=900.0):
    from qtpy.QtWidgets import QApplication

    start = time.monotonic()
    while widget.running:
        QApplication.processEvents()
        time.sleep(0.02)
        if time.monotonic() - start > timeout:
            raise TimeoutError("the run did not finish")
    for _ in range(10):
        QApplication.processEvents()


def settle(seconds=0.5):
    """Let Qt lay out the docks and resize the canvas before the view is fitted."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def save_png(viewer, path: Path):
    from PIL import Image

    settle()
    viewer.reset_view()
    settle()
    array = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(np.asarray(array)[..., :3]).quantize(colors=128).save(path, optimize=True)
    print(f"{path} ({path.stat().st_size // 1024} KB)")


def save_widget(qwidget, path: Path):
    """A PNG of one Qt widget (a dock, a menu) as it is drawn on screen, without the empty dock area below."""
    from qtpy.QtCore import QRect

    settle(0.3)
    height = min(qwidget.height(), qwidget.sizeHint().height() + 8)
    qwidget.grab(QRect(0, 0, qwidget.width(), height)).save(str(path), "PNG")
    print(f"{path} ({path.stat().st_size // 1024} KB)")


def shoot(widget_name: str, sample: str, crop: int, stem: str):
    import napari

    from napari_vdir.plugin import sample_data as _sample_data

    viewer = napari.Viewer(title=f"napari-vdir: {widget_name}")
    viewer.window.resize(*SIZE)
    for data, meta, _ in getattr(_sample_data, sample)(size=crop):
        layer = viewer.add_image(data, **meta)
    _, widget = viewer.window.add_plugin_dock_widget("napari-vdir", widget_name)
    widget.layer.value = layer
    widget.show_latent.value = False
    widget.run()
    wait_for(widget)
    result = viewer.layers[f"{layer.name} [{widget.last_result.task}]"]

    # 1. the dock beside input and result (grid mode puts them side by side)
    viewer.canvas.grid.enabled = True
    save_png(viewer, OUT / f"widget_{stem}.png")

    # 2. rerun with the degradation map: it updates the result layer and adds the latent, whose channel 0
    #    is overlaid on the input with each cell centred on the 4x4 block it summarises
    widget.show_latent.value = True
    widget.run()
    wait_for(widget)
    viewer.canvas.grid.enabled = False
    result.visible = False
    viewer.dims.set_current_step(0, 0)
    save_png(viewer, OUT / f"latent_{stem}.png")
    viewer.close()


def shoot_dock_and_menu():
    """The dock alone (Advanced closed and open) after a run on a uint16 microscopy-like image, and the
    layer list's right-click menu with the VDIR actions."""
    import napari
    from qtpy.QtCore import QPoint

    from napari_vdir.plugin import commands as _commands

    from napari_vdir.plugin import sample_data as _sample_data

    viewer = napari.Viewer(title="napari-vdir: Restore (VDIR)")
    viewer.window.resize(*SIZE)
    data, meta, _ = _sample_data.noisy_gray(size=128)[0]
    layer = viewer.add_image(data, **meta)
    _, widget = viewer.window.add_plugin_dock_widget("napari-vdir", "Restore (VDIR)")
    widget.layer.value = layer
    widget.run()
    wait_for(widget)
    save_widget(widget.native, OUT / "dock_collapsed.png")
    widget.set_advanced_visible(True)
    save_widget(widget.native, OUT / "dock_expanded.png")
    widget.set_advanced_visible(False)

    from napari._app_model.context import get_context
    from napari._qt._qapp_model import build_qmodel_menu

    _commands.add_layer_context_menu()
    viewer.layers.selection.active = layer
    menu = build_qmodel_menu("napari/layers/context", parent=viewer.window._qt_window)
    menu.update_from_context(get_context(viewer.layers))
    menu.popup(QPoint(200, 200))
    save_widget(menu, OUT / "context_menu.png")
    menu.close()
    viewer.close()


def shoot_finetune(minutes: float = 0.5):
    import napari

    from napari_vdir.plugin import sample_data as _sample_data

    viewer = napari.Viewer(title="napari-vdir: Fine-tune (VDIR)")
    viewer.window.resize(*SIZE)
    data, meta, _ = _sample_data.noisy_gray(size=256)[0]
    # four 128 px tiles as a stack: one plane is held out, so the plot has its held-out curve and start line
    tiles = np.stack([data[y:y + 128, x:x + 128] for y in (0, 128) for x in (0, 128)])
    viewer.add_image(tiles, name="camera tiles (uint16, Poisson-Gaussian)", colormap="gray")
    _, widget = viewer.window.add_plugin_dock_widget("napari-vdir", "Fine-tune (VDIR)")
    widget.minutes.value = minutes  # the dock's training time (its default is minutes too)
    widget.run()
    wait_for(widget)
    save_widget(widget.native, OUT / "finetune_dock.png")
    viewer.close()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    # a fine-tune run saves a model: keep it out of the user's models folder
    os.environ.setdefault("NAPARI_VDIR_MODELS", tempfile.mkdtemp(prefix="napari-vdir-shots-"))
    shoot_dock_and_menu()
    shoot_finetune()
    for shot in SHOTS:
        shoot(*shot)


if __name__ == "__main__":
    main()
