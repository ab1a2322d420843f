"""Dropping layers and files on a dock: the one place both docks (Restore, Fine-tune) take drops from.

What a drop can carry, in the order it is read:

1. **A drag from napari's layer list.** napari's layer list (``QtLayerList``, its model ``QtListModel``)
   starts its drags with an ``ItemMimeData``: the dragged layer *objects* as its ``items`` attribute,
   the ``application/x-list-index`` format (the pickled rows, which mean something only to the list
   they came from) and, as text, the layer names joined by single spaces. The layers are taken from
   ``items``, never from the text: names may contain spaces. Only layers of this dock's viewer are
   taken; they are ordered as the layer list shows them, top first (as the docks' drop-downs are).
2. **Files from a file manager** (``text/uri-list`` of local files): each is opened with napari's
   readers, as a drop on the canvas opens it (the reader the user chose for that kind of file or the
   only one that can read it; with several and no choice, napari's own), and the new layers are taken.
3. **Text** from anywhere else: a layer name, one name per line, or names joined by spaces (split
   into names of this viewer's layers, names with spaces included).

A :class:`DropZone` makes a widget accept these drags: it highlights while a drag is over it (its
highlight colour; a warning colour when what is dragged has no image layer to take), and on the drop
hands the image layers to the dock (``take``) and writes a one-line note of what happened, and of what was
refused, in the dock's status line. Nothing here starts a run: the docks only change their settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qtpy.QtCore import QEvent, QObject, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QWidget

LAYER_LIST_FORMAT = "application/x-list-index"  # the format napari's layer-list drags carry
ZONE_PROPERTY = "napari_vdir_drop_zone"
REFUSE_COLOUR = QColor(220, 70, 60)
ACCEPT_COLOUR = QColor(69, 96, 196)  # napari's dark-theme accent, when the viewer's theme cannot be read


# ---------------------------------------------------------------------------------------------- reading


def _is_layer(obj) -> bool:
    from napari.layers import Layer

    return isinstance(obj, Layer)


def _is_image(layer) -> bool:
    from napari.layers import Image

    return isinstance(layer, Image)


def _in_viewer(layer, viewer) -> bool:
    return any(layer is other for other in viewer.layers)


def _by_name(viewer) -> dict:
    """name -> layer. Iterating gives the layers themselves: a plugin's viewer is napari's public proxy, whose
    ``layers[name]`` is a proxy of the layer (not ``is`` the layer a drop-down or the layer list holds)."""
    return {layer.name: layer for layer in viewer.layers}


def dragged_layers(mime) -> list | None:
    """The layer objects of a drag started in napari's layer list (its ``ItemMimeData.items``); None when
    ``mime`` is not such a drag (or came from another process, where only its text is left)."""
    if mime is None or not mime.hasFormat(LAYER_LIST_FORMAT):
        return None
    items = getattr(mime, "items", None)
    if not items or not all(_is_layer(item) for item in items):
        return None
    return list(items)


def local_files(mime) -> list[Path]:
    """The local files of a ``text/uri-list`` drag (a file manager's), in the order dragged."""
    if mime is None or not mime.hasUrls():
        return []
    return [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()]


def _split_names(line: str, known: set[str]) -> list[str] | None:
    """``line`` as known names joined by single spaces, the fewest (longest) names; None when it is not."""
    words = line.split(" ")
    best: list[list[str] | None] = [None] * len(words) + [[]]  # best[i]: the names of words[i:]
    for start in range(len(words) - 1, -1, -1):
        for end in range(len(words), start, -1):
            name = " ".join(words[start:end])
            rest = best[end]
            if name in known and rest is not None and (best[start] is None or len(rest) + 1 < len(best[start])):
                best[start] = [name, *rest]
    return best[0]


def names_in_text(text: str, names) -> tuple[list[str], list[str]]:
    """(layer names found in ``text``, pieces of text that name no layer). A line is a name, or names joined
    by single spaces as napari's layer list writes them (a name with spaces is kept whole)."""
    known = set(names)
    found, unknown = [], []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        parts = [line] if line in known else _split_names(line, known)
        if parts is None:
            unknown.append(line)
        else:
            found.extend(parts)
    return list(dict.fromkeys(found)), unknown


def open_files(viewer, paths) -> tuple[list, list[str]]:
    """Open ``paths`` with napari's readers as new layers: (the layers added, one note per file that failed)."""
    from napari.errors import MultipleReaderError

    before = {id(layer) for layer in viewer.layers}
    failed = []
    for path in paths:
        try:
            try:  # as a drop on the canvas: the reader chosen for this kind of file, or the only one
                viewer.open(str(path), plugin=None)
            except MultipleReaderError:  # several can read it and none was chosen: napari's own
                viewer.open(str(path))
        except Exception as exc:  # noqa: BLE001 - one line for the user
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            failed.append(f"could not open {Path(path).name}: {reason}")
    # the new layers as the viewer holds them (what ``open`` returns through a plugin's proxy viewer are proxies)
    return [layer for layer in viewer.layers if id(layer) not in before], failed


@dataclass
class Dropped:
    """What a drop brings to a dock: the image layers to take, and why anything else was not taken."""

    images: list = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def note(self) -> str:
        return "; ".join(self.refused)


def _kind(layer) -> str:
    return layer.__class__.__name__.lower()


def sort_images(layers: list, dropped: Dropped) -> Dropped:
    """Split ``layers`` into the image layers taken and the others, refused by name and kind."""
    for layer in layers:
        if _is_image(layer):
            if not any(layer is seen for seen in dropped.images):
                dropped.images.append(layer)
        else:
            dropped.refused.append(f"refused {layer.name!r}: a {_kind(layer)} layer, not an image")
    return dropped


def _top_first(layers: list, viewer) -> list:
    position = {id(layer): i for i, layer in enumerate(viewer.layers)}
    return sorted(layers, key=lambda layer: -position[id(layer)])


def _viewer_layers(layers: list, viewer, dropped: Dropped) -> list:
    ours = [layer for layer in layers if _in_viewer(layer, viewer)]
    for layer in layers:
        if not _in_viewer(layer, viewer):
            dropped.refused.append(f"refused {layer.name!r}: not a layer of this viewer")
    return _top_first(ours, viewer)


def read_drop(mime, viewer) -> Dropped:
    """A drop's image layers of ``viewer`` (files are opened into it first) and its refusals."""
    dropped = Dropped()
    layers = dragged_layers(mime)
    if layers is not None:
        return sort_images(_viewer_layers(layers, viewer, dropped), dropped)
    files = local_files(mime)
    if files:
        added, dropped.refused = open_files(viewer, files)
        return sort_images(added, dropped)
    if mime is not None and mime.hasText():
        layers = _by_name(viewer)
        names, unknown = names_in_text(mime.text(), layers)
        dropped.refused.extend(f"no layer named {piece!r}" for piece in unknown)
        return sort_images([layers[name] for name in names], dropped)
    dropped.refused.append("nothing to take: drop layers from the layer list, or image files")
    return dropped


def preview(mime, viewer) -> bool | None:
    """While dragging: True when the drop would bring image layers (or files, to be opened), False when it
    brings only layers a dock refuses, None when it is nothing for a dock (the drag is not accepted)."""
    layers = dragged_layers(mime)
    if layers is not None:
        return any(_is_image(layer) and _in_viewer(layer, viewer) for layer in layers)
    if local_files(mime):
        return True
    if mime is not None and mime.hasText():
        layers = _by_name(viewer)
        names, _ = names_in_text(mime.text(), layers)
        if names:
            return any(_is_image(layers[name]) for name in names)
    return None


# ---------------------------------------------------------------------------------------------- the zone


def _accent(viewer) -> QColor:
    """The viewer theme's accent (the colour of napari's current-layer frame)."""
    try:
        from napari.utils.theme import get_theme

        return QColor(*get_theme(viewer.theme).current.as_rgb_tuple()[:3])
    except Exception:  # noqa: BLE001 - a theme napari cannot give: the default accent
        return QColor(ACCEPT_COLOUR)


class _Highlight(QWidget):
    """Drawn over the zone while a drag is over it: a dashed frame and a tint of the accent colour (of the
    warning colour when the drop would be refused). Lets every mouse event through."""

    def __init__(self, parent: QWidget):
        super().__init__(parent)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.refusing = False
        self.accent = QColor(ACCEPT_COLOUR)
        self.hide()

    def paintEvent(self, event):  # noqa: N802 - Qt's name
        colour = QColor(REFUSE_COLOUR) if self.refusing else QColor(self.accent)
        p = QPainter(self)
        fill = QColor(colour)
        fill.setAlpha(45)
        p.fillRect(self.rect(), fill)
        p.setPen(QPen(colour, 2, Qt.PenStyle.DashLine))
        p.drawRect(QRectF(self.rect()).adjusted(1, 1, -1, -1))
        p.end()


def _inside_another_zone(widget: QWidget, root: QWidget) -> bool:
    while widget is not None and widget is not root:
        if widget.property(ZONE_PROPERTY):
            return True
        widget = widget.parentWidget()
    return False


class DropZone(QObject):
    """Makes ``widget`` (and what it holds) a drop target for layers and image files.

    ``take(images)`` gets the dropped image layers of ``viewer`` (never empty) and returns a line saying
    what the dock did with them; the dock's ``status`` line (a widget with a ``value``) shows it, with the
    refusals. A drop with no image layer only writes the refusals there (the dock changes nothing). Children that take text drops of
    their own (a line edit) keep them, but a layer or file drag over them goes to the zone. A zone inside
    another (a field of the dock) takes the drags over it; the outer zone takes the rest.
    """

    def __init__(self, widget: QWidget, viewer, take, status):
        super().__init__(widget)
        self.widget = widget
        self._viewer = viewer
        self._take = take
        self._status = status
        self._overlay = _Highlight(widget)
        self.dropping = False  # True while a drop is read (files opening into the viewer)
        widget.setAcceptDrops(True)
        widget.setProperty(ZONE_PROPERTY, True)
        widget.installEventFilter(self)
        # children that would take the drag themselves: layer and file drags over them are the zone's
        self._children = [child for child in widget.findChildren(QWidget)
                          if child.acceptDrops() and child is not self._overlay
                          and not _inside_another_zone(child, widget)]
        for child in self._children:
            child.installEventFilter(self)

    @property
    def highlighted(self) -> bool:
        return not self._overlay.isHidden()

    @property
    def refusing(self) -> bool:
        return self.highlighted and self._overlay.refusing

    def _ours(self, obj, mime) -> bool:
        """Whether a drag over ``obj`` is for the zone: always over the zone itself; over a child that takes
        drops, only layer and file drags (its own text drops stay its own)."""
        return obj is self.widget or dragged_layers(mime) is not None or bool(local_files(mime))

    def _show(self, refusing: bool):
        self._overlay.refusing = refusing
        self._overlay.accent = _accent(self._viewer)
        self._overlay.setGeometry(self.widget.rect())
        self._overlay.raise_()
        self._overlay.show()
        self._overlay.update()

    def _hide(self):
        self._overlay.hide()

    @staticmethod
    def _accept(event):
        """Accept as a copy where the source offers one (nothing is taken from a file manager or an editor);
        napari's layer list offers only a move, which it carries out only for drops on its own rows."""
        if event.possibleActions() & Qt.DropAction.CopyAction:
            event.setDropAction(Qt.DropAction.CopyAction)
            event.accept()
        else:
            event.acceptProposedAction()

    def eventFilter(self, obj, event):  # noqa: N802 - Qt's name
        kind = event.type()
        if kind in (QEvent.Type.DragEnter, QEvent.Type.DragMove):
            mime = event.mimeData()
            if not self._ours(obj, mime):
                return False
            verdict = preview(mime, self._viewer)
            if verdict is None:
                self._hide()
                event.ignore()
                return True
            self._show(refusing=not verdict)
            self._accept(event)
            return True
        if kind == QEvent.Type.DragLeave:
            self._hide()
            return False
        if kind == QEvent.Type.Drop:
            mime = event.mimeData()
            if not self._ours(obj, mime):
                return False
            self._hide()
            self._accept(event)
            self.drop(mime)
            return True
        if kind == QEvent.Type.Resize and obj is self.widget and self.highlighted:
            self._overlay.setGeometry(self.widget.rect())
        return False

    def drop(self, mime) -> Dropped:
        """Take what ``mime`` brings (as a drop on the zone does) and report it."""
        self.dropping = True
        try:
            dropped = read_drop(mime, self._viewer)
        finally:
            self.dropping = False
        lines = [self._take(list(dropped.images))] if dropped.images else []
        if dropped.note:
            lines.append(dropped.note)
        self._status.value = "; ".join(line for line in lines if line)
        return dropped
