"""npe2 commands: one-click restorations with the defaults, for menus, scripts and napari-workflows.

Two kinds, for the two ways napari calls a command:

* ``denoise`` / ``remove_jpeg_artefacts`` / ``super_resolve_x2`` take and return ``napari.types.ImageData``
  (plain arrays): what scripts and napari-workflows call. RGB is a last axis of 3 (or 4, RGBA); intensities
  are mapped by the same policy as the Restore dock's (``intensity_range="layer"``,
  :mod:`napari_vdir.core.intensity`), so an array gives what the dock gives for a layer of it.
* ``denoise_layer`` / ``remove_jpeg_artefacts_layer`` / ``super_resolve_x2_layer`` take the active image
  layer (napari injects it) and return a ``LayerDataTuple`` that keeps the layer's metadata (scale,
  units, axis labels, colormap, blending, contrast limits; SR geometry), exactly as the Restore dock does.
  These are the menu entries: Layers → Filter → Restore (VDIR), and the layer list's right-click menu.

npe2 in napari 0.9.2 does not let plugins contribute to the layer list's context menu
(``napari/layers/context`` is not among ``MenuId.contributables()``), so :func:`activate` — the plugin's
``on_activate`` — adds the same three commands to it through napari's app-model when it can.
Menu commands run on the main thread: for large data or a stack use the Restore dock (it runs in the
background, with progress and Cancel).
"""

from __future__ import annotations

import numpy as np

CONTEXT_MENU = "napari/layers/context"
CONTEXT_GROUP = "8_vdir"
# command id -> (title, core task, scale)
LAYER_COMMANDS = {
    "napari-vdir.denoise_layer": ("Denoise with VDIR", "denoise", None),
    "napari-vdir.jpeg_layer": ("Remove JPEG artefacts (VDIR)", "jpeg", None),
    "napari-vdir.sr2_layer": ("Super-resolve ×2 (VDIR)", "sr", 2),
}


def _restore_array(image, task: str, scale: int | None = None):
    from napari_vdir.core.request import RestoreOptions, prepare

    return prepare(np.asarray(image), RestoreOptions(task, scale=scale, intensity_range="layer")).run()


def denoise(image):
    """Denoise an image array with the shipped model (gray or RGB by the last axis)."""
    return _restore_array(image, "denoise")


def remove_jpeg_artefacts(image):
    """Remove JPEG blocking and ringing with the shipped model."""
    return _restore_array(image, "jpeg")


def super_resolve_x2(image):
    """Super-resolve ×2 with the shipped model (twice the pixels on each image axis)."""
    return _restore_array(image, "sr", 2)


def _restore_active_layer(layer, task: str, scale: int | None):
    from napari.layers import Image
    from napari.utils.notifications import show_error

    from napari_vdir.plugin.layers import restore_layer

    if not isinstance(layer, Image):
        show_error(f"VDIR: choose an image layer (got {type(layer).__name__ if layer is not None else 'nothing'})")
        return None
    try:
        result = restore_layer(layer, task, scale=scale)
    except Exception as exc:  # noqa: BLE001 - a notification, never a traceback dialog
        show_error(f"VDIR: {exc}")
        return None
    data, meta, kind = result.layers[0]
    meta = dict(meta)
    # napari's processor sets every key on a layer of the same name, and 'rgb' may not be settable after a
    # layer is created: it is only passed where napari's own guess for the data would be wrong
    if bool(meta.get("rgb")) == _napari_guesses_rgb(np.shape(data)):
        meta.pop("rgb", None)
    return (data, meta, kind)


def _napari_guesses_rgb(shape: tuple[int, ...]) -> bool:
    """What napari (public ``napari.layers.Image``) makes of data of this shape without an ``rgb`` argument; asked
    of a zero-strided stand-in, so nothing the size of the data is allocated or computed."""
    from napari.layers import Image

    return bool(Image(np.broadcast_to(np.zeros((), np.uint8), shape), contrast_limits=(0, 1)).rgb)


def _annotate(func):
    """Give a layer command napari's types (imported lazily: this module must import without napari)."""
    import napari.layers
    import napari.types

    func.__annotations__ = {"layer": napari.layers.Layer, "return": napari.types.LayerDataTuple}
    return func


def denoise_layer(layer):
    """Denoise the active image layer (shipped model, defaults); a new layer keeps its metadata."""
    return _restore_active_layer(layer, "denoise", None)


def remove_jpeg_artefacts_layer(layer):
    """Remove JPEG artefacts from the active image layer (shipped model, defaults)."""
    return _restore_active_layer(layer, "jpeg", None)


def super_resolve_x2_layer(layer):
    """Super-resolve the active image layer ×2 (shipped model); scale halved, overlaid on the input."""
    return _restore_active_layer(layer, "sr", 2)


for _func in (denoise_layer, remove_jpeg_artefacts_layer, super_resolve_x2_layer):
    try:
        _annotate(_func)
    except ImportError:  # napari absent: the array commands still work for scripts
        pass

try:  # ImageData -> ImageData, as napari-workflows and magicgui read them
    import napari.types as _types

    for _func in (denoise, remove_jpeg_artefacts, super_resolve_x2):
        _func.__annotations__ = {"image": _types.ImageData, "return": _types.ImageData}
except ImportError:
    pass


def add_layer_context_menu(app=None) -> bool:
    """Add the three layer commands to the layer list's right-click menu (image layers only).

    ``app``: napari's app-model application; by default the one app-model knows as ``"napari"``
    (``app_model.Application.get_app``: public app-model API; napari 0.9.2 has no manifest route to that menu).
    Returns False, changing nothing, where that is not possible; safe to call more than once.
    """
    try:
        from app_model import Application
        from app_model.expressions import parse_expression
        from app_model.types import CommandRule, MenuItem
    except ImportError:
        return False
    if app is None:
        app = Application.get_app("napari")
    if app is None or not all(cmd in app.commands for cmd in LAYER_COMMANDS):
        return False
    present = {getattr(getattr(item, "command", None), "id", None) for item in app.menus.get_menu(CONTEXT_MENU)}
    if set(LAYER_COMMANDS) <= present:
        return True
    when = parse_expression("active_layer_type == 'image'")
    items = [(CONTEXT_MENU, MenuItem(command=CommandRule(id=cmd, title=title), when=when, group=CONTEXT_GROUP,
                                     order=i))
             for i, (cmd, (title, _, _)) in enumerate(LAYER_COMMANDS.items())]
    app.menus.append_menu_items(items)
    return True


def activate(context=None) -> None:
    """npe2 ``on_activate``: the layer list's right-click entries (best effort, never raises)."""
    try:
        add_layer_context_menu()
    except Exception:  # noqa: BLE001 - an optional convenience must never break the plugin
        pass
