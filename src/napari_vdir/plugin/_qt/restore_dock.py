"""The "Restore (VDIR)" dock: one dock for every task, in words a biologist uses.

The dock only gathers settings and calls the core through :func:`napari_vdir.plugin.layers.restore_layer` on a
napari thread worker. Everything the worker needs is read from the layer on the main thread first
(:func:`napari_vdir.plugin.layers.snapshot`): the worker never touches a napari layer or a Qt object. What the
dock offers (the image layers, the models of a task, the channel axes, the devices) comes from the layer logic too,
and the run goes through the worker base both docks share (:mod:`napari_vdir.plugin._qt.worker`). Progress
comes back per tile (and plane) through ``ensure_main_thread`` and is shown in the dock and in napari's
activity list; warnings the core raises in the worker are collected there and shown as notifications
on the main thread. Cancel sets a ``threading.Event`` the core checks before every tile and between the
network's blocks, so a cancelled run stops within one block and adds nothing to the viewer.

Layers dragged from napari's layer list (or image files from a file manager) onto the dock become its
input (:mod:`napari_vdir.plugin._qt.drops`): one layer is chosen in the drop-down; several are queued, and Run
restores them one after the other with the dock's settings. A drop only chooses: nothing runs until Run.

The three menu entries Denoise / Super-resolve / Remove JPEG artefacts open the same dock preset on
their task (:class:`DenoiseDock`, :class:`SuperResolveDock`, :class:`JpegDock`).
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    Label,
    ProgressBar,
    PushButton,
    RadioButtons,
    SpinBox,
)
from superqt.utils import ensure_main_thread

from napari_vdir.plugin import layers as vl
from napari_vdir.plugin._qt.drops import DropZone
from napari_vdir.plugin._qt.worker import Outcome, WorkerDock, outcome_of

AUTO_MODEL = "auto (shipped, by colour)"
WEIGHTS_FILE = "weights file…"
PLANE, STACK = "this plane", "all planes"
TILE_CHOICES = ("auto", 64, 128, 256, 512, 1024)
DOCK_WIDTH = 400  # px: the dock never widens past this, whatever the text it shows

# task chooser label -> (core task, scale)
TASKS = {
    "Denoise": ("denoise", None),
    "Camera noise": ("real-denoise", None),
    "Super-resolve ×2": ("sr", 2),
    "Super-resolve ×4": ("sr", 4),
    "Remove JPEG artefacts": ("jpeg", None),
}
TASK_ALIASES = {"denoise": "Denoise", "real-denoise": "Camera noise", "camera": "Camera noise",
                "sr": "Super-resolve ×2", "sr2": "Super-resolve ×2", "sr4": "Super-resolve ×4",
                "jpeg": "Remove JPEG artefacts"}


def task_label(task: str) -> str:
    if task in TASKS:
        return task
    if task in TASK_ALIASES:
        return TASK_ALIASES[task]
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def _run_job(kwargs: dict, cancel=None) -> Outcome:
    """Worker thread: restore a :class:`~napari_vdir.plugin.layers.LayerSnapshot` (never a napari layer) with
    ``restore_layer(**kwargs)``; ``cancel`` (the run's event, else ``kwargs``' own) is checked before every tile
    and between the network's blocks. The warnings the core raises come back in the outcome."""
    from napari_vdir.core.inference import RestorationCancelled

    if cancel is not None:
        kwargs = {**kwargs, "cancel": cancel}
    return outcome_of(lambda: vl.restore_layer(**kwargs), RestorationCancelled, record_warnings=True)


class _Text(Label):
    """A word-wrapped label whose tooltip holds its whole text (the dock never widens for it)."""

    @property
    def value(self):
        return Label.value.fget(self)

    @value.setter
    def value(self, text):
        Label.value.fset(self, text)
        self.tooltip = str(text)


class _FlushAfterRemoval:
    """Let Qt paint once after layers are removed, before anything else can be added.

    napari 0.9.2 (vispy, Mesa's llvmpipe) crashes in ``glDrawArrays`` when layers are removed and an image
    is added with no event processing in between, and then another layer is added: the removed layers'
    GL objects are deleted in the same GL flush that creates the new layer's, and the next draw dies. It
    happens without this plugin (``viewer.layers.clear(); viewer.add_image(a)`` then, later,
    ``viewer.add_image(b)``); the dock's result is simply that next layer. Processing the pending
    (non-input) events right after a removal flushes the deletions first. Connected last, so napari's own
    handlers have run; inside a batch (``layers.clear()``) it waits for the batch's end.
    """

    def __init__(self, layers_events):
        self._events = layers_events
        self._depth = 0
        layers_events.begin_batch.connect(self._begin, position="last")
        layers_events.end_batch.connect(self._end, position="last")
        layers_events.removed.connect(self._removed, position="last")

    def _begin(self, *_):
        self._depth += 1

    def _end(self, *_):
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self._flush()

    def _removed(self, *_):
        if self._depth == 0:
            self._flush()

    @staticmethod
    def _flush():
        from qtpy.QtCore import QEventLoop
        from qtpy.QtWidgets import QApplication

        if QApplication.instance() is not None:
            QApplication.processEvents(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents)

    def disconnect(self):
        for name, callback in (("begin_batch", self._begin), ("end_batch", self._end),
                               ("removed", self._removed)):
            getattr(self._events, name).disconnect(callback)


class RestoreDock(WorkerDock):
    """One dock for all tasks: layer, task, Run/Cancel, progress and the estimate; the rest under Advanced."""

    title = "Restore (VDIR)"
    job_name = "a restoration"
    cancelled_text = "cancelled; viewer unchanged"

    def __init__(self, napari_viewer, task: str = "denoise"):
        super().__init__(napari_viewer)
        self._activity = None  # napari.utils.progress shown in the activity list while a run is in flight
        self.queue: list = []  # dropped layers waiting for Run, after the one in the drop-down
        self._batch: list[int] | None = None  # [number, of] while Run works through the queue
        self._last_ok = False  # whether the last run added its result
        self._choosing = False  # the dock itself is changing the drop-down (a drop, the queue)

        # -- essentials
        self.layer = ComboBox(label="image", choices=self._image_layers,
                              tooltip="an image layer: gray, RGB or several channels; 2-D or a stack (Z, T, ...)")
        self.task = ComboBox(label="task", choices=list(TASKS), value=task_label(task),
                             tooltip="Denoise: noise of any camera or microscope, estimated from the image. "
                                     "Camera noise: real photo-sensor noise (RGB). Super-resolve: 2 or 4 times "
                                     "more pixels, sharper. Remove JPEG artefacts: blocks and ringing.")
        self.extent = RadioButtons(label="restore", choices=[PLANE, STACK], value=STACK, orientation="horizontal",
                                   tooltip="this plane: only the plane on screen (quick look); all planes: the "
                                           "whole stack")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.status = _Text(label="status", value="ready")
        self.estimate_label = _Text(label="estimated", value="–")
        self.device_label = _Text(label="runs on")

        # -- advanced
        self.model = ComboBox(label="model", choices=self._model_choices, value=AUTO_MODEL,
                              tooltip="auto: the shipped model for the task and the image's colours; or a "
                                      "shipped / your fine-tuned model, or a .safetensors weights file")
        self.weights_path = FileEdit(label="weights file", filter="*.safetensors", visible=False)
        self.device = ComboBox(label="device", choices=vl.device_choices(), value="auto")
        self.channel_axis = ComboBox(label="channels", choices=self._channel_choices,
                                     tooltip="the axis holding the channels of a multichannel layer; each channel "
                                             "is restored and normalised on its own")
        self.tile_size = ComboBox(label="tile size", choices=list(TILE_CHOICES), value="auto",
                                  tooltip="auto: by memory; smaller tiles use less memory and give the same result")
        self.ensemble = CheckBox(text="8× test-time averaging (slower)",
                                 tooltip="average the results of the 8 flips and rotations of the image")
        self.samples = SpinBox(label="uncertainty samples", value=1, min=1, max=64,
                               tooltip="1 = one deterministic result; more: average this many plausible "
                                       "restorations, and their spread is the uncertainty map")
        self.show_latent = CheckBox(text="add degradation map layer", value=False,
                                    tooltip="the network's code of how the image is degraded (noise, blur, JPEG), "
                                            "4 channels at 1/4 resolution")
        self.show_uncertainty = CheckBox(text="add uncertainty map (≥ 2 samples)")
        self.strength = FloatSlider(label="strength", value=1.0, min=0.25, max=2.0, step=0.05,
                                    tooltip="1 = as trained; higher restores harder (smoother), lower more gently")
        strength_help = Label(value="strength 1 = as trained · higher: smoother · lower: gentler")
        self._wrapped = [strength_help]
        self.advanced = Container(widgets=[self.model, self.weights_path, self.device, self.channel_axis,
                                           self.tile_size, self.ensemble, self.samples, self.show_latent,
                                           self.show_uncertainty, self.strength, strength_help], labels=True)

        self.extend([self.layer, self.task, self.extent, buttons, self.progress, self.status,
                     self.estimate_label, self.device_label])
        self._collapsible = self._add_collapsible("Advanced", self.advanced)
        self._fix_size()

        self.model.changed.connect(self._on_model)
        self.task.changed.connect(self._on_task)
        self.weights_path.changed.connect(self._on_weights_path)
        self.device.changed.connect(self._update_device_label)
        self.layer.changed.connect(self._on_layer)
        self.layer.changed.connect(self._on_layer_chosen)
        self.channel_axis.changed.connect(self._update_extent)
        self.show_uncertainty.changed.connect(self._on_uncertainty)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self._set_progress = ensure_main_thread(self._set_progress_now)
        self._refresh_models_soon = ensure_main_thread(self._refresh_models)
        self.native.destroyed.connect(self._on_destroyed)
        self._update_device_label()
        for event in (self._viewer.layers.events.inserted, self._viewer.layers.events.removed):
            event.connect(self.layer.reset_choices)
        self._flush_guard = _FlushAfterRemoval(self._viewer.layers.events)
        self._unsubscribe_models = self._subscribe_user_models()
        self.layer.reset_choices()
        self._on_layer(self.layer.value)
        self.drop_zone = DropZone(self.native, self._viewer, take=self.take_layers, status=self.status)

    # ------------------------------------------------------------------ layout

    def _add_collapsible(self, title: str, content: Container):
        from superqt import QCollapsible

        box = QCollapsible(title)
        box.setDuration(0)
        content.margins = (0, 0, 0, 0)
        box.addWidget(content.native)
        box.collapse(animate=False)
        self.native.layout().addWidget(box)
        return box

    def _fix_size(self):
        """Long texts wrap (and are cut to a tooltip) instead of widening the dock."""
        from qtpy.QtWidgets import QSizePolicy

        self.native.setMaximumWidth(DOCK_WIDTH)
        for label in (self.status, self.estimate_label, self.device_label, *self._wrapped):
            label.native.setWordWrap(True)
            label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        for combo in (self.layer, self.model, self.channel_axis):
            combo.native.setSizeAdjustPolicy(combo.native.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.native.setMinimumContentsLength(12)

    def set_advanced_visible(self, shown: bool):
        """Open or close the Advanced section (as clicking its title does)."""
        if shown:
            self._collapsible.expand(animate=False)
        else:
            self._collapsible.collapse(animate=False)
        self._collapsible.updateGeometry()
        self.native.layout().invalidate()

    # ------------------------------------------------------------------ settings

    @property
    def core_task(self) -> tuple[str, int | None]:
        return TASKS[self.task.value]

    def _model_choices(self, *_) -> list[str]:
        return [AUTO_MODEL, *vl.models_for(*self.core_task), WEIGHTS_FILE]

    def _channel_choices(self, *_) -> list:
        return vl.channel_choices(self.layer.value if hasattr(self, "layer") else None)

    def _on_layer(self, layer):
        """New input layer: its channel axis guess, and 'this plane / all planes' only for stacks."""
        self.channel_axis.reset_choices()
        try:
            snap = vl.snapshot(layer)
        except (TypeError, ValueError):
            self.extent.visible = False
            return
        guess = vl.guess_channel_axis(snap)
        if guess in self.channel_axis.choices:
            self.channel_axis.value = guess
        self._update_extent()

    def _update_extent(self, *_):
        try:
            snap = vl.snapshot(self.layer.value)
            self.extent.visible = bool(vl.plane_axes(snap, self.channel_axis.value))
        except (TypeError, ValueError):
            self.extent.visible = False

    def _on_task(self, *_):
        self._refresh_models()
        self.estimate_label.value = "–"

    def _refresh_models(self):
        """The model list for the task, in order (a plain reset would append new names at the end)."""
        current = self.model.value
        self.model.choices = []
        self.model.choices = self._model_choices
        if current in self.model.choices:
            self.model.value = current

    def _subscribe_user_models(self):
        """Refresh the model list when a fine-tuned model is saved (``napari_vdir.core.models``)."""
        from napari_vdir.core.models import on_user_models_changed

        return on_user_models_changed(self._user_models_changed)  # a bound method: held weakly

    def _user_models_changed(self):
        self._refresh_models_soon()  # called in the saving thread: marshal to the main thread

    def _on_model(self, value):
        self.weights_path.visible = value == WEIGHTS_FILE

    def _on_weights_path(self, value):
        """Check a chosen weights file at once (header and metadata only: fast, allocates nothing)."""
        from napari_vdir.core.weights import WeightsError, read_info

        path = Path(value)
        if not path.is_file():
            return
        try:
            info = read_info(path)
        except WeightsError as exc:
            self.status.value = "bad weights file"
            self.notify_error(exc)
            return
        try:
            vl.check_model_task(path, info, self.core_task[0], self.task.value)
        except ValueError as exc:
            self.status.value = "weights file for another task"
            self.notify_error(exc)
            return
        self.status.value = f"weights: {info.name} ({info.task}, {'RGB' if info.channels == 3 else 'gray'})"

    def _on_uncertainty(self, checked):
        if checked and self.samples.value < 2:
            self.samples.value = 4

    def _update_device_label(self, *_):
        from napari_vdir.core.devices import device_label, select_device

        try:
            self.device_label.value = f"{device_label(select_device(self.device.value))} · " \
                                      f"{vl.backend_label(self.device.value)}"
        except Exception as exc:  # noqa: BLE001
            self.device_label.value = f"unavailable: {exc}"

    def _model_and_task(self) -> tuple[object, str, int | None]:
        """(model argument for the core, task, scale) from the choosers (:func:`.layers.chosen_model`)."""
        choice = self.model.value
        if choice == AUTO_MODEL:
            choice = None
        elif choice == WEIGHTS_FILE:
            choice = Path(self.weights_path.value)
        return vl.chosen_model(choice, *self.core_task, task_label=self.task.value)

    # ------------------------------------------------------------------ drops

    def _choose(self, layer):
        """Put ``layer`` in the drop-down (its channel guess follows) without clearing the queue."""
        self._choosing = True
        try:
            self.layer.value = layer
        finally:
            self._choosing = False

    def _on_layer_chosen(self, *_):
        """The user chose another image: the dropped queue no longer applies."""
        if not self._choosing and self.queue and self._batch is None:
            self.queue = []
            self.status.value = "queue cleared"

    def take_layers(self, layers: list) -> str:
        """Dropped image layers (top of the layer list first): the first becomes the image; the others wait,
        and Run restores them one after the other with the settings in the dock. Nothing runs here."""
        first, *rest = layers
        self._batch = None  # a queue being run stops after its current layer: the new one waits for Run
        self._choose(first)
        self.queue = rest
        if not rest:
            return f"image: {first.name}"
        names = ", ".join(layer.name for layer in layers)
        return f"{len(layers)} layers queued ({names}); Run restores them one after the other"

    def _end_batch(self, reason: str | None = None):
        left = len(self.queue)
        self._batch, self.queue = None, []
        if reason and left:
            self.status.value = f"{self.status.value}; {reason}: {left} queued layer{'s' * (left > 1)} not restored"

    def _next_in_queue(self):
        """After a run of the queue: the next queued layer still in the viewer becomes the image and runs."""
        while self.queue:
            layer = self.queue.pop(0)
            if any(layer is other for other in self._viewer.layers):
                self._batch[0] += 1
                self._choose(layer)
                self.run()
                return
            self._batch[1] -= 1  # removed from the viewer meanwhile
        self._batch = None

    # ------------------------------------------------------------------ running

    def job(self, layer) -> dict:
        """The keyword arguments for ``restore_layer``, read on the main thread (the worker gets a snapshot
        of the layer, never the layer); raises with a user-facing message."""
        model, task, scale = self._model_and_task()
        snap = vl.snapshot(layer)  # rejects labels, empty layers, ...
        channel_axis = vl.check_channel_axis(snap, self.channel_axis.value)
        here = vl.current_plane(layer, self._viewer.dims.point, channel_axis)
        plane = here if (self.extent.value == PLANE and here) else None
        strength = round(float(self.strength.value), 3)  # slider float noise must not move 1.0 off neutral
        tile = self.tile_size.value
        return dict(layer=snap, task=task, scale=scale, model=model, device=self.device.value, plane=plane,
                    channel_axis=channel_axis, range_plane=here or None,
                    tile_size=None if tile == "auto" else int(tile), ensemble=self.ensemble.value,
                    samples=self.samples.value, latent=self.show_latent.value,
                    uncertainty=self.show_uncertainty.value, strength=strength)

    def run(self, *_, layer=None):
        """Start a restoration of ``layer`` (default: the chosen input layer) on a worker thread."""
        from napari.utils import progress

        if self.refuse_second_run():
            return None
        if layer is None and self.queue and self._batch is None:  # Run: the image, then the queue
            self._batch = [1, 1 + len(self.queue)]
        layer = self.layer.value if layer is None else layer
        try:
            kwargs = self.job(layer)
        except Exception as exc:  # noqa: BLE001
            self.notify_error(exc)
            if self._batch is not None:
                self._end_batch(f"stopped at {getattr(layer, 'name', layer)!r}")
            return None
        self._last_ok = False
        kwargs.update(progress=self._set_progress)
        worker = self.start_worker(_run_job, kwargs)
        self._activity = progress(total=0, desc=f"{self.task.value}: {kwargs['layer'].name}")
        self.progress.value, self.progress.max = 0, 1
        of = f" ({self._batch[0]} of {self._batch[1]}: {kwargs['layer'].name})" if self._batch else ""
        self.status.value = f"running{of} on {self.device_label.value}…"
        worker.start()
        return worker

    def _on_destroyed(self, *_):
        """Closing the dock (or the viewer) mid-run stops the worker at the next tile."""
        super()._on_destroyed()
        if self._unsubscribe_models is not None:
            self._unsubscribe_models()
        try:
            self._flush_guard.disconnect()
        except Exception:  # noqa: BLE001 - the viewer may be gone already
            pass

    def _set_progress_now(self, done: int, total: int):
        if self._worker is None:  # a late tick after the run ended (or the widget closed)
            return
        self.progress.max = max(int(total), 1)
        self.progress.value = int(done)
        if self._activity is not None:
            self._activity.total = max(int(total), 1)
            self._activity.update(int(done) - self._activity.n)

    def on_cancelled(self):
        self.progress.value = 0

    def on_result(self, res: vl.LayerRestoration):
        for layer_data in res.layers:
            vl.add_or_update(self._viewer, layer_data)
        vl.remove_stale(self._viewer, res)
        self.last_result = res
        self._last_ok = True
        self.estimate_label.value = res.summary()
        of = f" ({self._batch[0]} of {self._batch[1]})" if self._batch else ""
        self.status.value = f"done{of}: {res.model} on {res.device}" + (f" ({res.backend})" if res.backend else "")

    def _on_finished(self):
        super()._on_finished()
        if self._activity is not None:
            self._activity.close()
            self._activity = None
        if self._batch is not None:
            if self._last_ok:
                self._next_in_queue()
            else:
                self._end_batch("queue stopped")


class DenoiseDock(RestoreDock):
    """Plugins menu shortcut: the Restore dock preset on Denoise (napari instantiates widget classes)."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer, task="denoise")


class SuperResolveDock(RestoreDock):
    """Plugins menu shortcut: the Restore dock preset on Super-resolve ×2."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer, task="sr2")


class JpegDock(RestoreDock):
    """Plugins menu shortcut: the Restore dock preset on Remove JPEG artefacts."""

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer, task="jpeg")
