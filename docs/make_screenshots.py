"""Make the README screenshots: each dock widget beside its result, and the latent c overlay.

Run from the repository root under a (virtual) display::

    xvfb-run -a python docs/make_screenshots.py

It opens the plugin's sample data (cropped so the shipped models run in seconds on a CPU), docks
each widget, runs it with the shipped model, and saves ``docs/images/widget_*.png`` (input and result
side by side in napari's grid mode) and ``docs/images/latent_*.png`` (the input with the latent c
layer overlaid). PNGs are palette-quantised to stay small.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "images"
SIZE = (1280, 760)
SHOTS = [  # (widget display name, sample function, crop, file stem)
    ("Denoise", "noisy_photo", 192, "denoise"),
    ("Super-resolve", "low_resolution", 96, "sr"),
    ("Remove JPEG artifacts", "jpeg_damaged", 192, "jpeg"),
]


def wait_for(widget, timeout=600.0):
    from qtpy.QtWidgets import QApplication

    start = time.monotonic()
    while widget.running:
        QApplication.processEvents()
        time.sleep(0.02)
        if time.monotonic() - start > timeout:
            raise TimeoutError("restoration did not finish")
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


def shoot(widget_name: str, sample: str, crop: int, stem: str):
    import napari

    from napari_vdir import _sample_data

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

    # 1. the widget beside input and result (grid mode puts them side by side)
    viewer.grid.enabled = True
    save_png(viewer, OUT / f"widget_{stem}.png")

    # 2. rerun with the latent c: it updates the result layer and adds the latent, whose channel 0
    #    is overlaid on the input with each cell centred on the 4x4 block it summarises
    widget.show_latent.value = True
    widget.run()
    wait_for(widget)
    viewer.grid.enabled = False
    result.visible = False
    viewer.dims.set_current_step(0, 0)
    save_png(viewer, OUT / f"latent_{stem}.png")
    viewer.close()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for shot in SHOTS:
        shoot(*shot)


if __name__ == "__main__":
    main()
