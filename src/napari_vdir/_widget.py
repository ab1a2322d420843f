"""The three dock widgets: Denoise, Super-resolve, Remove JPEG artifacts.

Each is a magicgui ``Container`` that only gathers settings and calls the core through
:func:`napari_vdir.layers.restore_layer` on a napari thread worker. Progress comes back per tile
(and plane) through ``ensure_main_thread``; Cancel sets a ``threading.Event`` the core checks
before every tile and between the network's blocks, so a cancelled run stops within one block and
adds nothing to the viewer. A bad weights file is reported as a notification when it is chosen and
when Run is pressed; napari keeps running.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
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
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from superqt.utils import ensure_main_thread

from . import layers as vl

AUTO_MODEL = "auto (shipped, by colour)"
WEIGHTS_FILE = "weights file…"
PLANE, STACK = "current plane", "whole stack"


@dataclass
class _Outcome:
    """What the worker hands back; it never raises, so errors reach the user as notifications."""

    result: vl.LayerRestoration | None = None
    error: Exception | None = None
    cancelled: bool = False


def _run_job(kwargs: dict) -> _Outcome:
    from .inference import RestorationCancelled

    cancel = kwargs.get("cancel")
    try:
        result = vl.restore_layer(**kwargs)
        if cancel is not None and cancel.is_set():  # pressed after the last check: still add nothing
            return _Outcome(cancelled=True)
        return _Outcome(result=result)
    except RestorationCancelled:
        return _Outcome(cancelled=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
        return _Outcome(error=exc)


def _device_choices() -> list[str]:
    import torch

    choices = ["auto", "cpu"]
    if torch.cuda.is_available():
        choices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        choices.append("mps")
    return choices


def _models_for(tasks: tuple[str, ...]) -> list[str]:
    from .weights import WeightsError, read_info, shipped_models

    names = []
    for name, path in shipped_models().items():
        try:
            if read_info(path).task in tasks:
                names.append(name)
        except WeightsError:
            continue
    return names


class RestoreWidget(Container):
    """Shared body of the three widgets; subclasses set the tasks they accept."""

    tasks: tuple[str, ...] = ("denoise",)
    title = "Restore"

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._worker = None
        self._cancel_event: threading.Event | None = None
        self.last_result: vl.LayerRestoration | None = None

        self.layer = ComboBox(label="input layer", choices=self._image_layers,
                              tooltip="an image layer: gray or RGB, 2-D or a stack (Z, T, ...)")
        self.model = ComboBox(label="model", choices=[AUTO_MODEL, *_models_for(self.tasks), WEIGHTS_FILE],
                              value=AUTO_MODEL, tooltip="shipped model, or a .safetensors weights file")
        self.weights_path = FileEdit(label="weights file", filter="*.safetensors", visible=False)
        self.device = ComboBox(label="device", choices=_device_choices(), value="auto")
        self.device_label = Label(label="runs on")
        self.extent = RadioButtons(label="restore", choices=[PLANE, STACK], value=STACK,
                                   orientation="horizontal")
        self.tile_size = SpinBox(label="tile size", value=0, min=0, max=4096, step=16,
                                 tooltip="0 = automatic (by memory); smaller tiles use less memory")
        self.ensemble = CheckBox(text="x8 self-ensemble (slower, slightly better)")
        self.samples = SpinBox(label="MC samples", value=1, min=1, max=64,
                               tooltip="average this many draws of the latent c (1 = deterministic)")
        self.show_latent = CheckBox(text="add latent c layer", value=True)
        self.show_uncertainty = CheckBox(text="add uncertainty layer (needs ≥ 2 samples)")
        self.strength = FloatSlider(label="strength", value=1.0, min=0.25, max=2.0, step=0.05,
                                    tooltip="1 = plain result; > 1 restores harder (smoother), < 1 more gently")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.status = Label(label="status", value="ready")
        self.estimate_label = Label(label="estimate", value="–")

        self.extend([self.layer, *self._task_widgets(), self.model, self.weights_path, self.device,
                     self.device_label, self.extent, self.tile_size, self.ensemble, self.samples,
                     self.show_latent, self.show_uncertainty, self.strength, self.run_button,
                     self.cancel_button, self.progress, self.status, self.estimate_label])

        self.model.changed.connect(self._on_model)
        self.weights_path.changed.connect(self._on_weights_path)
        self.device.changed.connect(self._update_device_label)
        self.show_uncertainty.changed.connect(self._on_uncertainty)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self._set_progress = ensure_main_thread(self._set_progress_now)
        self.native.destroyed.connect(self._on_destroyed)
        self._update_device_label()
        for event in (self._viewer.layers.events.inserted, self._viewer.layers.events.removed):
            event.connect(self.layer.reset_choices)
        self.layer.reset_choices()

    # ------------------------------------------------------------------ settings

    def _task_widgets(self) -> list:
        return []

    def _image_layers(self, *_) -> list:
        from napari.layers import Image

        # top of the layer list first, as napari shows it
        return [(layer.name, layer) for layer in reversed(self._viewer.layers) if isinstance(layer, Image)]

    def _on_model(self, value):
        self.weights_path.visible = value == WEIGHTS_FILE

    def _on_weights_path(self, value):
        """Check a chosen weights file at once (header and metadata only: fast, allocates nothing)."""
        from .weights import WeightsError, read_info

        path = Path(value)
        if not path.is_file():
            return
        try:
            info = read_info(path)
        except WeightsError as exc:
            self.status.value = "bad weights file"
            show_error(f"{self.title}: {exc}")
            return
        if info.task not in self.tasks:
            self.status.value = "weights file for another task"
            show_error(f"{self.title}: {path.name} is a {info.task!r} model; this widget runs {', '.join(self.tasks)}")
            return
        self.status.value = f"weights: {info.name} ({info.task}, {'RGB' if info.channels == 3 else 'gray'})"

    def _on_uncertainty(self, checked):
        if checked and self.samples.value < 2:
            self.samples.value = 4

    def _update_device_label(self, *_):
        from .devices import device_label, select_device

        try:
            self.device_label.value = device_label(select_device(self.device.value))
        except Exception as exc:  # noqa: BLE001
            self.device_label.value = f"unavailable: {exc}"

    def _model_and_task(self) -> tuple[object, str, int | None]:
        """(model argument for the core, task, scale) from the chooser."""
        from .weights import read_info, shipped_models

        choice = self.model.value
        if choice == AUTO_MODEL:
            return None, self.tasks[0], self._auto_scale()
        path = Path(self.weights_path.value) if choice == WEIGHTS_FILE else shipped_models()[choice]
        if choice == WEIGHTS_FILE and not path.is_file():
            raise ValueError("choose a .safetensors weights file")
        info = read_info(path)
        if info.task not in self.tasks:
            raise ValueError(f"{path.name} is a {info.task!r} model; this widget runs {', '.join(self.tasks)}")
        return str(path), info.task, (info.scale if info.task == "sr" else None)

    def _auto_scale(self) -> int | None:
        return None

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        return self._worker is not None

    def job(self, layer) -> dict:
        """The keyword arguments for ``restore_layer``; raises with a user-facing message."""
        model, task, scale = self._model_and_task()
        data = vl.layer_array(layer)  # rejects labels, empty layers, ...
        plane = None
        if self.extent.value == PLANE and data.ndim > (3 if layer.rgb else 2):
            plane = vl.current_plane(layer, self._viewer.dims.point)
        strength = round(float(self.strength.value), 3)  # slider float noise must not move 1.0 off neutral
        return dict(layer=layer, task=task, scale=scale, model=model, device=self.device.value, plane=plane,
                    tile_size=self.tile_size.value or None, ensemble=self.ensemble.value,
                    samples=self.samples.value, latent=self.show_latent.value,
                    uncertainty=self.show_uncertainty.value, strength=strength)

    def run(self, *_, layer=None):
        """Start a restoration of ``layer`` (default: the chosen input layer) on a worker thread."""
        if self.running:
            show_info(f"{self.title}: a restoration is already running; wait for it or press Cancel")
            return None
        layer = self.layer.value if layer is None else layer
        try:
            kwargs = self.job(layer)
        except Exception as exc:  # noqa: BLE001
            show_error(f"{self.title}: {exc}")
            return None
        self._cancel_event = threading.Event()
        kwargs.update(progress=self._set_progress, cancel=self._cancel_event)
        self._worker = create_worker(_run_job, kwargs, _start_thread=False)
        self._worker.returned.connect(self._on_returned)
        self._worker.finished.connect(self._on_finished)
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.progress.value, self.progress.max = 0, 1
        self.status.value = f"running on {self.device_label.value}…"
        self._worker.start()
        return self._worker

    def cancel(self, *_):
        if self._cancel_event is not None:
            self._cancel_event.set()
            self.status.value = "cancelling…"

    def _on_destroyed(self, *_):
        """Closing the dock (or the viewer) mid-run stops the worker at the next tile."""
        if self._cancel_event is not None:
            self._cancel_event.set()

    def _set_progress_now(self, done: int, total: int):
        if self._worker is None:  # a late tick after the run ended (or the widget closed)
            return
        self.progress.max = max(int(total), 1)
        self.progress.value = int(done)

    def _on_returned(self, outcome: _Outcome):
        if outcome.cancelled or (self._cancel_event is not None and self._cancel_event.is_set()):
            self.status.value = "cancelled; viewer unchanged"
            self.progress.value = 0
            return
        if outcome.error is not None:
            self.status.value = "failed"
            show_error(f"{self.title}: {outcome.error}")
            return
        res = outcome.result
        for layer_data in res.layers:
            vl.add_or_update(self._viewer, layer_data)
        vl.remove_stale(self._viewer, res)
        self.last_result = res
        self.estimate_label.value = res.summary()
        self.device_label.value = res.device
        self.status.value = f"done: {res.model} on {res.device}"

    def _on_finished(self):
        self._worker = None
        self._cancel_event = None
        self.run_button.enabled, self.cancel_button.enabled = True, False


class DenoiseWidget(RestoreWidget):
    """Gaussian / Poisson-Gaussian noise ("auto"), or camera noise with the real-denoise model."""

    tasks = ("denoise", "real-denoise")
    title = "Denoise"


class SuperResolveWidget(RestoreWidget):
    tasks = ("sr",)
    title = "Super-resolve"

    def _task_widgets(self) -> list:
        self.factor = ComboBox(label="factor", choices=[2, 4], value=2,
                               tooltip="used with the automatic model; a chosen model brings its own factor")
        return [self.factor]

    def _auto_scale(self) -> int | None:
        return int(self.factor.value)


class JpegWidget(RestoreWidget):
    tasks = ("jpeg",)
    title = "Remove JPEG artifacts"
