"""Dragging layers into the docks, in a real viewer: the drag-enter and drop events napari's layer list sends
(its ItemMimeData of one and of two layers), a text-only drag, a text/uri-list of a TIFF from a file manager,
the refusal of a labels layer, the highlight while dragging, and that nothing runs until Run is pressed."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from qtpy.QtCore import QMimeData, QPointF, Qt, QUrl  # noqa: E402
from qtpy.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

from napari_vdir.plugin._qt import drops as _drops  # noqa: E402
from napari_vdir.plugin._qt import restore_dock as _widget  # noqa: E402

PLUGIN = "napari-vdir"
TIMEOUT_MS = 60_000
MOVE = Qt.DropAction.MoveAction  # all napari's layer list offers (an internal move)
FILE_MANAGER = Qt.DropAction.CopyAction | Qt.DropAction.MoveAction | Qt.DropAction.LinkAction




def gray(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).random((size, size)).astype(np.float32)


def layer_list_drag(viewer, *layers):
    """The mime data of the drag napari's layer list starts with ``layers`` selected: what its view's
    ``startDrag`` puts in the QDrag, the model's ``mimeData`` of the selected rows."""
    from napari._qt.containers.qt_list_model import ItemMimeData

    view = viewer.window._qt_viewer.layers
    viewer.layers.selection = set(layers)
    mime = view.model().mimeData(view.selectionModel().selectedIndexes())
    assert isinstance(mime, ItemMimeData)  # napari's own, carrying the layer objects
    assert {id(item) for item in mime.items} == {id(layer) for layer in layers}
    return mime


def text_drag(text: str) -> QMimeData:
    mime = QMimeData()
    mime.setText(text)
    return mime


def file_drag(*paths) -> QMimeData:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path)) for path in paths])
    return mime


def target(widget):
    """Where Qt delivers a drag over ``widget``: it, or its nearest parent that accepts drops."""
    while widget is not None and not widget.acceptDrops():
        widget = widget.parentWidget()
    return widget


def drag_enter(widget, mime, actions=MOVE):
    """A drag entering ``widget`` and moving over it; returns the accepted drag-move event (or None)."""
    to = target(widget)
    if to is None:
        return None
    where = to.rect().center()
    enter = QDragEnterEvent(where, actions, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(to, enter)
    if not enter.isAccepted():
        return None
    move = QDragMoveEvent(where, actions, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(to, move)
    return move if move.isAccepted() else None


def drop(widget, mime, actions=MOVE):
    """Drag-enter then drop on ``widget``, as Qt sends them; returns the drop event (None: not accepted)."""
    if drag_enter(widget, mime, actions) is None:
        return None
    to = target(widget)
    event = QDropEvent(QPointF(to.rect().center()), actions, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(to, event)
    return event


def restore_dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise")
    return widget


def nothing_ran(qtbot, viewer, widget, n_layers):
    qtbot.wait(50)
    return not widget.running and widget.last_result is None and len(viewer.layers) == n_layers


# ---------------------------------------------------------------------------------------------- Restore dock


def test_one_layer_from_the_layer_list_becomes_the_image(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    bottom = viewer.add_image(gray(0), name="cells 2 (noisy)")  # a name with spaces
    viewer.add_image(gray(1), name="cells")
    widget = restore_dock(viewer)
    assert widget.layer.value is not bottom  # the top layer is the default
    zone = widget.drop_zone
    mime = layer_list_drag(viewer, bottom)

    move = drag_enter(widget.native, mime)
    assert move is not None and move.dropAction() == MOVE  # the layer list offers a move only
    assert zone.highlighted and not zone.refusing  # the drop zone lights up
    event = drop(widget.native, mime)
    assert event is not None and event.isAccepted()
    assert not zone.highlighted
    assert widget.layer.value is bottom  # the drop-down follows
    assert widget.queue == []
    assert widget.status.value == "image: cells 2 (noisy)"
    assert nothing_ran(qtbot, viewer, widget, 2)
    assert notes["error"] == []


def test_two_layers_are_queued_and_restored_one_after_the_other_on_run(make_napari_viewer, qtbot, tiny_weights,
                                                                        notes):
    viewer = make_napari_viewer()
    x, y = viewer.add_image(gray(0), name="x"), viewer.add_image(gray(1), name="y")
    viewer.add_image(gray(2), name="x y")  # what the drag's text "x y" would name: the layers are read, not it
    widget = restore_dock(viewer)
    widget.model.value = _widget.WEIGHTS_FILE
    widget.weights_path.value = tiny_weights[("denoise", 1, 1)]
    mime = layer_list_drag(viewer, x, y)
    assert mime.text() in ("x y", "y x")

    assert drop(widget.native, mime) is not None
    assert widget.layer.value is y  # top of the layer list first
    assert [layer.name for layer in widget.queue] == ["x"]
    assert "2 layers queued" in widget.status.value
    assert nothing_ran(qtbot, viewer, widget, 3)  # nothing runs until Run

    widget.run_button.native.click()
    qtbot.waitUntil(lambda: not widget.running and widget._batch is None, timeout=TIMEOUT_MS)
    assert notes["error"] == []
    assert {"y [denoise]", "x [denoise]"} <= {layer.name for layer in viewer.layers}
    assert "x y [denoise]" not in viewer.layers
    assert widget.status.value.startswith("done (2 of 2)")
    assert widget.layer.value is x and widget.queue == []


def test_a_failed_run_stops_the_queue(make_napari_viewer, qtbot, tiny_weights, notes):
    viewer = make_napari_viewer()
    bad = gray(0)
    bad[3, 4] = np.nan  # fails inside the worker
    good = viewer.add_image(gray(1), name="good")
    nan = viewer.add_image(bad, name="nan")
    widget = restore_dock(viewer)
    widget.model.value = _widget.WEIGHTS_FILE
    widget.weights_path.value = tiny_weights[("denoise", 1, 1)]
    drop(widget.native, layer_list_drag(viewer, good, nan))
    assert widget.layer.value is nan and widget.queue == [good]
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: not widget.running and widget._batch is None, timeout=TIMEOUT_MS)
    assert len(notes["error"]) == 1 and "NaN" in notes["error"][0]
    assert widget.status.value == "failed; queue stopped: 1 queued layer not restored"
    assert widget.queue == [] and "good [denoise]" not in viewer.layers


def test_choosing_another_image_clears_the_queue(make_napari_viewer, notes):
    viewer = make_napari_viewer()
    a, b, c = (viewer.add_image(gray(i), name=name) for i, name in enumerate("abc"))
    widget = restore_dock(viewer)
    drop(widget.native, layer_list_drag(viewer, a, b))
    assert widget.layer.value is b and widget.queue == [a]
    widget.layer.value = c
    assert widget.queue == [] and widget.status.value == "queue cleared"


def test_a_labels_layer_is_refused_and_nothing_changes(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    image = viewer.add_image(gray(0), name="cells")
    labels = viewer.add_labels(np.zeros((32, 32), dtype=np.uint8), name="nuclei")
    widget = restore_dock(viewer)
    mime = layer_list_drag(viewer, labels)

    assert drag_enter(widget.native, mime) is not None  # taken, to say why it is refused
    assert widget.drop_zone.refusing  # the zone shows the warning colour
    assert drop(widget.native, mime) is not None
    assert widget.layer.value is image and widget.queue == []
    assert widget.status.value == "refused 'nuclei': a labels layer, not an image"
    assert drop(widget.native, text_drag("nuclei")) is not None  # named in a text drag: refused alike
    assert widget.status.value == "refused 'nuclei': a labels layer, not an image"
    assert widget.layer.value is image and widget.queue == []
    assert nothing_ran(qtbot, viewer, widget, 2)
    assert notes["error"] == []


def test_a_text_drag_from_elsewhere_names_the_layer(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    wanted = viewer.add_image(gray(0), name="my cells")
    other = viewer.add_image(gray(1), name="other")
    widget = restore_dock(viewer)  # the dock's viewer is napari's public proxy of it
    assert drop(widget.native, text_drag("my cells")) is not None
    assert widget.layer.value is wanted and widget.status.value == "image: my cells"
    assert drop(widget.native, text_drag("other\nmy cells")) is not None  # one name a line
    assert widget.layer.value is other and len(widget.queue) == 1 and widget.queue[0] is wanted

    assert drag_enter(widget.native, text_drag("no such layer")) is None  # not for the dock: not taken
    assert not widget.drop_zone.highlighted
    assert widget.layer.value is other
    assert nothing_ran(qtbot, viewer, widget, 2)


def test_a_tiff_from_the_file_manager_opens_and_becomes_the_image(make_napari_viewer, qtbot, tmp_path, notes):
    import tifffile

    data = (np.random.default_rng(3).random((24, 20)) * 1000).astype(np.uint16)
    path = tmp_path / "from disk.tif"
    tifffile.imwrite(path, data)
    viewer = make_napari_viewer()
    viewer.add_image(gray(0), name="cells")
    widget = restore_dock(viewer)

    move = drag_enter(widget.native, file_drag(path), FILE_MANAGER)
    assert move is not None and move.dropAction() == Qt.DropAction.CopyAction  # the file stays where it is
    assert widget.drop_zone.highlighted
    assert drop(widget.native, file_drag(path), FILE_MANAGER) is not None
    opened = viewer.layers["from disk"]
    np.testing.assert_array_equal(np.asarray(opened.data), data)
    assert widget.layer.value is opened and widget.status.value == "image: from disk"
    assert nothing_ran(qtbot, viewer, widget, 2)

    assert drop(widget.native, file_drag(tmp_path / "missing.tif"), FILE_MANAGER) is not None
    assert widget.status.value.startswith("could not open missing.tif")
    assert widget.layer.value is opened

    second = tmp_path / "second.tif"
    tifffile.imwrite(second, data[::-1])
    assert drop(widget.native, file_drag(path, second), FILE_MANAGER) is not None  # two files: a queue
    assert len(viewer.layers) == 4
    assert widget.layer.value is viewer.layers[2]  # the files in the order dragged: the first is the image
    assert len(widget.queue) == 1 and widget.queue[0] is viewer.layers[3] and viewer.layers[3].name == "second"
    assert nothing_ran(qtbot, viewer, widget, 4)


def test_text_is_split_into_layer_names_with_spaces():
    names = ["my cells", "my", "cells", "noisy"]
    assert _drops.names_in_text("my cells noisy", names) == (["my cells", "noisy"], [])
    assert _drops.names_in_text("my cells\nnoisy\nnope", names) == (["my cells", "noisy"], ["nope"])
    assert _drops.names_in_text("my cells x", names) == ([], ["my cells x"])


# ---------------------------------------------------------------------------------------------- Fine-tune dock


@pytest.fixture
def finetune(make_napari_viewer, models_dir):
    from napari_vdir.plugin._qt.finetune_dock import FineTuneDock

    viewer = make_napari_viewer()
    for i, name in enumerate(["noisy a", "noisy b", "clean a"]):
        viewer.add_image(gray(i), name=name)
    viewer.add_labels(np.zeros((32, 32), dtype=np.uint8), name="nuclei")
    widget = FineTuneDock(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune (VDIR)")
    widget.model.value = "tiny-start"
    widget.noisy.value = []
    return widget


def names(layers) -> list[str]:
    return [layer.name for layer in layers]


def test_finetune_dropped_layers_join_the_noisy_layers(finetune, qtbot):
    viewer = finetune._viewer
    layers = viewer.layers
    assert drop(finetune.native, layer_list_drag(viewer, layers["noisy a"])) is not None
    assert names(finetune.noisy.value) == ["noisy a"]
    assert drop(finetune.native, layer_list_drag(viewer, layers["noisy b"], layers["noisy a"])) is not None
    assert sorted(names(finetune.noisy.value)) == ["noisy a", "noisy b"]  # added, the chosen kept
    assert finetune.status.value == "noisy layers: added noisy b"

    mime = layer_list_drag(viewer, layers["nuclei"])  # a labels layer: refused, nothing changes
    assert drag_enter(finetune.native, mime) is not None and finetune.drop_zone.refusing
    drop(finetune.native, mime)
    assert sorted(names(finetune.noisy.value)) == ["noisy a", "noisy b"]
    assert finetune.status.value == "refused 'nuclei': a labels layer, not an image"
    # a layer drag over the 'save as' field goes to the dock; text dragged there stays the field's own
    assert drag_enter(finetune.name.native, layer_list_drag(viewer, layers["noisy a"])) is not None
    assert finetune.drop_zone.highlighted
    finetune.drop_zone._hide()
    drag_enter(finetune.name.native, text_drag("noisy b"))
    assert not finetune.drop_zone.highlighted
    qtbot.wait(50)
    assert not finetune.running and finetune.last_result is None  # nothing trains until Run


def test_finetune_drop_on_the_clean_field_makes_the_clean_twin(finetune, qtbot):
    viewer = finetune._viewer
    layers = viewer.layers
    drop(finetune.native, layer_list_drag(viewer, layers["noisy a"], layers["clean a"]))
    assert sorted(names(finetune.noisy.value)) == ["clean a", "noisy a"]

    mime = layer_list_drag(viewer, layers["clean a"])
    assert drag_enter(finetune.clean.native, mime) is not None
    assert finetune.clean_drop_zone.highlighted and not finetune.drop_zone.highlighted  # the field lights up
    assert drop(finetune.clean.native, mime) is not None
    assert finetune.clean.value is layers["clean a"]
    assert names(finetune.noisy.value) == ["noisy a"]  # no longer among the noisy layers
    assert finetune.status.value == "clean layer: clean a"
    settings = finetune.settings()  # what Run would train on
    assert settings["labels"] == ["noisy a"] and settings["clean_snap"] is not None

    assert drop(finetune.clean.native, text_drag("noisy b")) is not None  # a text drag from elsewhere
    assert finetune.clean.value is layers["noisy b"]
    qtbot.wait(50)
    assert not finetune.running and finetune.last_result is None


def test_finetune_a_tiff_from_the_file_manager_opens_as_a_noisy_layer(finetune, tmp_path):
    import tifffile

    path = tmp_path / "plate 1.tif"
    tifffile.imwrite(path, (np.random.default_rng(4).random((3, 24, 24)) * 900).astype(np.uint16),
                     photometric="minisblack")
    assert drop(finetune.native, file_drag(path), FILE_MANAGER) is not None
    assert names(finetune.noisy.value) == ["plate 1"]
    assert finetune._viewer.layers["plate 1"].data.shape == (3, 24, 24)
    assert not finetune.running
