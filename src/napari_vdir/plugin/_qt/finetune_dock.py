"""The "Fine-tune (VDIR)" dock: train a model on layers of the viewer, watch its curve, keep the result.

The dock only gathers settings and calls :func:`napari_vdir.training.session.finetune` on a napari thread
worker; nothing about training lives here. Everything the worker needs is read from the layers on the main
thread before it starts (the arrays and contrast limits), and everything it reports comes back as the
worker's ``yielded`` records on the main thread: the worker never touches a napari or Qt object. The saved
model is announced with :func:`napari_vdir.core.models.notify_user_models_changed` from the main thread,
so the Restore dock's model list (and this one's) shows it at once.

Layers dragged from napari's layer list (or image files from a file manager) onto the dock are added to
the noisy layers; one dropped on the clean layer field becomes the clean twin (:mod:`napari_vdir.plugin._qt.drops`).
A drop only chooses: nothing trains until Run.
"""

from __future__ import annotations

import math

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)
from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget
from superqt import QCollapsible
from superqt.utils import ensure_main_thread

from napari_vdir.plugin._qt.drops import DropZone
from napari_vdir.plugin._qt.worker import WorkerDock, reported

TITLE = "Fine-tune (VDIR)"
NO_CLEAN = "none: noisy images only (self-supervised)"
METHOD_LABELS = {"Neighbor2Neighbor (recommended)": "neighbor2neighbor", "blind-spot (Noise2Void)": "blind-spot"}
SELF_SUPERVISED_TASKS = ("denoise", "real-denoise")
METRIC_LABELS = {"val_loss": "held-out loss", "val_psnr": "validation PSNR (dB)"}
PROGRESS_TICKS = 1000  # the dock's bar in a run with a time budget: its share of the time


def training_inputs(noisy_snaps: list, clean_snap=None) -> dict:
    """Layer snapshots -> ``finetune``'s ``noisy``, ``clean`` and ``intensity_range``, prepared as the Restore
    dock prepares a layer (``layers.restore_layer``): the layer's range (contrast limits narrowed to the robust
    range) padded by ``layers.RANGE_HEADROOM``, and far outliers (hot pixels) clipped. A clean layer gets its
    noisy twin's range. No napari or Qt object: this runs in the worker."""
    from napari_vdir.plugin.layers import guess_channel_axis, layer_intensity_range, prepare_for_model

    axes = [guess_channel_axis(snap) for snap in noisy_snaps]  # as the Restore dock finds a layer's channels
    layer_ranges = [layer_intensity_range(snap, axis) for snap, axis in zip(noisy_snaps, axes, strict=True)]
    prepared = [prepare_for_model(snap.data, rng, snap.rgb, axis, snap.lazy)
                for snap, rng, axis in zip(noisy_snaps, layer_ranges, axes, strict=True)]
    noisy, ranges = [data for data, _ in prepared], [rng for _, rng in prepared]
    clean = None
    if clean_snap is not None:  # mapped by its noisy twin's range
        clean = [prepare_for_model(clean_snap.data, layer_ranges[0], clean_snap.rgb, axes[0], clean_snap.lazy)[0]]
    channel_axis = [False if axis is None else axis for axis in axes]  # False: no channels (never guessed again)
    return dict(noisy=noisy, clean=clean, intensity_range=ranges, channel_axis=channel_axis)


def fine_tune_vdir(settings: dict, cancel=None):
    """The worker: runs the session in a thread of its own and yields its step records as they come
    (:func:`~napari_vdir.plugin._qt.worker.reported`); returns its outcome (a ``FineTuneResult``).

    ``settings`` holds layer snapshots (``noisy_snaps``, ``clean_snap``), prepared here by
    :func:`training_inputs`, and ``finetune``'s other arguments.
    """
    from napari_vdir.training.session import TrainingCancelled, finetune

    def train(report):
        options = dict(settings)
        options.update(training_inputs(options.pop("noisy_snaps"), options.pop("clean_snap")))
        return finetune(**options, callback=report, cancel=cancel, notify=False)

    return (yield from reported(train, TrainingCancelled, thread_name="napari-vdir fine-tune"))


def outcome_text(result) -> str:
    """The status after a run, the verdict first (a long name is cut at the end, not the verdict): whether the
    saved model beat the model it started from, from ``FineTuneResult.start_kept`` and ``FineTuneResult.outcome``
    (the saved weights are the best validated ones, the start's included, so the saved model is either better
    than the start on the held-out data or the start itself), then its name and folder."""
    where = f"{result.name} ({result.path.parent})"
    if result.start_kept:
        return f"not better than the start: {result.outcome or 'saved unchanged'} as {where}"
    if result.outcome is None:  # nothing held out (a single plane): not compared
        return f"saved {where}; not compared with the start (no held-out data)"
    return f"better than the start: {result.outcome}; saved {where}"


def _y_of(box: QRectF, value: float, low: float, high: float) -> float:
    span = (high - low) or max(abs(high), 1e-12)
    return box.bottom() - box.height() * (0.05 + 0.9 * (value - low) / span)


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class LossPlot(QWidget):
    """A small live plot: training loss (grey) and the validation metric (orange), each on its own scale, with
    the starting model's validation level as a dashed line (blue): the orange curve below it (held-out loss)
    or above it (PSNR) is a model better than the start.

    Its x axis is steps, or training seconds in a run with a time budget (``reset(minutes=...)``)."""

    TRAIN, VAL, START = QColor(150, 150, 150), QColor(255, 140, 0), QColor(40, 120, 255)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.train_points: list[tuple[float, float]] = []  # (x, value): x a step, or seconds of training
        self.val_points: list[tuple[float, float]] = []
        self.start_level: float | None = None  # the starting model's validation (step 0)
        self.steps = 1
        self.minutes: float | None = None
        self.metric = "val_loss"
        # never wider than the dock gives it: the dock must not grow with what is drawn
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(160)

    def sizeHint(self) -> QSize:
        return QSize(240, 160)

    def reset(self, steps: int | None, metric: str, minutes: float | None = None) -> None:
        """A new run of ``steps`` steps, or of ``minutes`` of training (then x is seconds of training)."""
        self.train_points, self.val_points, self.start_level = [], [], None
        self.steps, self.minutes, self.metric = max(1, int(steps or 1)), minutes, metric
        self.update()

    @property
    def extent(self) -> float:
        """The x axis' end: the run's steps, or its budget in seconds."""
        return 60 * self.minutes if self.minutes else self.steps

    def add(self, record) -> None:
        x = record.train_seconds if self.minutes else record.step
        if record.loss is not None and math.isfinite(record.loss):
            self.train_points.append((x, float(record.loss)))
        if record.val is not None and math.isfinite(record.val):
            self.val_points.append((x, float(record.val)))
            if record.step == 0:
                self.start_level = float(record.val)
        self.update()

    def plot_box(self) -> QRectF:
        return QRectF(8, 18, max(10, self.width() - 16), max(10, self.height() - 40))

    def _val_range(self) -> tuple[float, float]:
        values = [v for _, v in self.val_points] + ([self.start_level] if self.start_level is not None else [])
        return min(values), max(values)

    def start_y(self) -> float | None:
        """Where the start line is drawn (None before the start is validated)."""
        if self.start_level is None:
            return None
        return _y_of(self.plot_box(), self.start_level, *self._val_range())

    def paintEvent(self, event):  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        text = self.palette().windowText().color()
        box = self.plot_box()
        p.setPen(QPen(text, 1))
        p.drawRect(box)
        p.setPen(self.TRAIN)
        p.drawText(QPointF(box.left(), 13), "training loss")
        p.setPen(self.VAL)
        label = METRIC_LABELS.get(self.metric, self.metric)
        p.drawText(QPointF(box.right() - p.fontMetrics().horizontalAdvance(label), 13), label)
        y = self.start_y()
        if y is not None:  # the starting model's level, on the validation curve's scale
            p.setPen(QPen(self.START, 1.5, Qt.PenStyle.DashLine))
            p.drawLine(QPointF(box.left(), y), QPointF(box.right(), y))
            p.setPen(self.START)
            below = y - box.top() < p.fontMetrics().ascent() + 4  # no room above the line
            label_y = y + p.fontMetrics().ascent() + 2 if below else y - 3
            p.drawText(QPointF(box.center().x() - p.fontMetrics().horizontalAdvance("start") / 2, label_y), "start")
        self._series(p, box, self.train_points, self.TRAIN, "left")
        if self.val_points:
            self._series(p, box, self.val_points, self.VAL, "right", self._val_range())
        p.setPen(text)
        p.drawText(QPointF(box.left(), box.bottom() + 15), "0")
        end = f"{self.minutes:g} min" if self.minutes else f"{self.steps} steps"
        p.drawText(QPointF(box.right() - p.fontMetrics().horizontalAdvance(end), box.bottom() + 15), end)
        p.end()

    def _series(self, p: QPainter, box: QRectF, points, colour: QColor, side: str, limits=None) -> None:
        if not points:
            return
        values = [v for _, v in points]
        low, high = limits or (min(values), max(values))
        extent = self.extent

        def at(step, value):
            x = box.left() + box.width() * min(step, extent) / extent
            return QPointF(x, _y_of(box, value, low, high))

        path = QPainterPath(at(*points[0]))
        for step, value in points[1:]:
            path.lineTo(at(step, value))
        p.setPen(QPen(colour, 1.5))
        p.drawPath(path)
        if len(points) < 40:
            p.setBrush(colour)
            for step, value in points:
                p.drawEllipse(at(step, value), 2.0, 2.0)
            p.setBrush(Qt.BrushStyle.NoBrush)
        backdrop = self.palette().window().color()
        backdrop.setAlpha(200)  # the range labels stay readable over the curves
        metrics = p.fontMetrics()
        p.setPen(colour)
        for value, y in ((high, box.top() + 12), (low, box.bottom() - 4)):
            label = f"{value:.4g}"
            width = metrics.horizontalAdvance(label)
            x = box.left() + 4 if side == "left" else box.right() - 4 - width
            p.fillRect(QRectF(x - 1, y - metrics.ascent(), width + 2, metrics.height()), backdrop)
            p.drawText(QPointF(x, y), label)


class FineTuneDock(WorkerDock):
    """Fine-tune a shipped or user model on image layers; the result becomes a user model."""

    title = TITLE
    job_name = "a fine-tune"
    cancelled_text = "cancelled; nothing saved"

    def __init__(self, napari_viewer):
        from napari_vdir.training.session import (  # torch loads with the dock
            DEFAULT_BATCH,
            DEFAULT_LR,
            DEFAULT_MINUTES,
            DEFAULT_STEPS,
        )

        super().__init__(napari_viewer)
        self._auto_name = ""

        self.noisy = Select(label="noisy layers", choices=self._image_layers,
                            tooltip="the images to learn from: their noise is what the model learns to remove")
        self.noisy.native.setMaximumHeight(90)
        self.clean = ComboBox(label="clean layer", choices=self._clean_choices,
                              tooltip="optional: a clean twin of the noisy layer (same size) for supervised "
                                      "training; without it the model learns from the noisy images alone")
        self.model = ComboBox(label="start from", choices=self._model_choices,
                              tooltip="the shipped or your own model that training starts from")
        self.minutes = FloatSpinBox(label="training time (minutes)", value=DEFAULT_MINUTES, min=0.05, max=24 * 60,
                                    step=1, tooltip="how long to train (wall clock): longer usually fits your data "
                                    "better; the model is checked on held-out planes about 20 times along the way "
                                    "(that adds a little time) and the best one, the start included, is saved")
        self.minutes.native.setDecimals(2)
        self.by_steps = CheckBox(text="count steps instead of time", value=False,
                                 tooltip="train exactly a number of steps, however long they take; the training "
                                         "time above is then not used")
        self.steps = SpinBox(label="training steps", value=DEFAULT_STEPS, min=1, max=100_000, step=10, enabled=False,
                             tooltip="with 'count steps instead of time': how many steps to train")
        self.name = LineEdit(label="save as", tooltip="name of the new model in your models folder")
        self.method = ComboBox(label="method", choices=list(METHOD_LABELS), value=next(iter(METHOD_LABELS)),
                               tooltip="how noisy images alone are used for training")
        self.batch = SpinBox(label="patches per step", value=DEFAULT_BATCH, min=1, max=128)
        self.lr = FloatSpinBox(label="learning rate", value=DEFAULT_LR, min=1e-6, max=1e-2, step=1e-4)
        self.lr.native.setDecimals(6)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.status = Label(label="status", value="ready")
        # one line that never widens the dock (long text is cut; the tooltip holds all of it)
        self.status.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.status.changed.connect(lambda text: setattr(self.status, "tooltip", text))

        self.advanced = Container(widgets=[self.method, self.by_steps, self.steps, self.batch, self.lr], labels=True)
        self.extend([self.noisy, self.clean, self.model, self.minutes, self.name, self.run_button,
                     self.cancel_button, self.progress, self.status])
        self._collapsible = QCollapsible("Advanced")
        self._collapsible.addWidget(self.advanced.native)
        self.native.layout().addWidget(self._collapsible)
        self.plot = LossPlot()
        self.native.layout().addWidget(self.plot)

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.noisy.changed.connect(self._suggest_model)  # before the name: it names the model too
        self.noisy.changed.connect(self._suggest_name)
        self.model.changed.connect(self._suggest_name)
        self.clean.changed.connect(self._on_clean)
        self.by_steps.changed.connect(self._on_by_steps)
        self.native.destroyed.connect(self._on_destroyed)
        layers = self._viewer.layers.events
        for event in (layers.inserted, layers.removed, layers.moved):
            event.connect(self._refresh_layers)
        from napari_vdir.core.models import on_user_models_changed

        self._unsubscribe = on_user_models_changed(self._on_user_models_changed)  # held weakly
        self._refresh_layers()
        self._on_clean(self.clean.value)
        # the clean layer field (its label and drop-down) first: the dock's own zone leaves it alone
        self.clean_drop_zone = DropZone(self.clean.native.parentWidget(), self._viewer, take=self.take_clean,
                                        status=self.status)
        self.drop_zone = DropZone(self.native, self._viewer, take=self.take_noisy, status=self.status)

    # ------------------------------------------------------------------ choices

    def _clean_choices(self, *_) -> list:
        return [(NO_CLEAN, None), *self._image_layers()]

    def _model_choices(self, *_) -> list[str]:
        """Shipped and user models; without a clean layer, only denoisers (self-supervised training)."""
        from napari_vdir.core.models import available_models
        from napari_vdir.core.weights import WeightsError, read_info

        pairs = getattr(self, "clean", None) is not None and self.clean.value is not None
        names = []
        for name, path in available_models().items():
            try:
                task = read_info(path).task
            except WeightsError:
                continue
            if pairs or task in SELF_SUPERVISED_TASKS:
                names.append(name)
        return names

    def _refresh_layers(self, *_):
        self.noisy.reset_choices()
        self.clean.reset_choices()
        dropping = any(getattr(getattr(self, zone, None), "dropping", False)
                       for zone in ("drop_zone", "clean_drop_zone"))  # files opening: the drop chooses
        if not self.noisy.value and self.noisy.choices and not dropping:
            self.noisy.value = [self.noisy.choices[0]]
        self._suggest_name()

    def _refresh_models(self, *_):
        current = self.model.value
        self.model.reset_choices()
        if current in self.model.choices:
            self.model.value = current
        self._suggest_model()

    def _layers_rgb(self) -> bool | None:
        """Whether the chosen noisy layers are RGB (None: none chosen)."""
        layers = list(self.noisy.value) if getattr(self, "noisy", None) is not None else []
        return any(bool(layer.rgb) for layer in layers) if layers else None

    @staticmethod
    def _model_channels(name) -> int | None:
        from napari_vdir.core.models import available_models
        from napari_vdir.core.weights import WeightsError, read_info

        path = available_models().get(name)
        try:
            return read_info(path).channels if path is not None else None
        except (WeightsError, OSError):
            return None

    def _suggest_model(self, *_):
        """The start model follows the chosen layers: RGB layers start from an RGB model (``denoise-rgb``), gray
        and multichannel layers from a gray one (``denoise-gray``; their channels are trained one by one). A chosen
        model that fits the layers is kept."""
        rgb = self._layers_rgb()
        choices = list(self.model.choices)
        if rgb is None or not choices:
            return
        wanted = 3 if rgb else 1
        if self._model_channels(self.model.value) == wanted:
            return
        default = "denoise-rgb" if rgb else "denoise-gray"
        fitting = [default] if default in choices else [n for n in choices if self._model_channels(n) == wanted]
        if fitting:
            self.model.value = fitting[0]

    @ensure_main_thread
    def _on_user_models_changed(self):
        """A model was saved (by this dock, or by a script in any thread): list it."""
        self._refresh_models()

    def _on_by_steps(self, value):
        """Steps, when chosen, replace the training time (which is greyed out)."""
        self.minutes.enabled, self.steps.enabled = not value, bool(value)

    def _on_clean(self, value):
        self.method.enabled = value is None
        self._refresh_models()

    def _suggest_name(self, *_):
        """A fresh name from the first noisy layer and the model, unless the user typed one."""
        from napari_vdir.core.models import unique_model_name

        if self.name.value and self.name.value != self._auto_name:
            return
        first = self.noisy.value[0].name if self.noisy.value else "model"
        self._auto_name = unique_model_name(f"{first}-{self.model.value or 'model'}")
        self.name.value = self._auto_name

    # ------------------------------------------------------------------ drops

    def take_noisy(self, layers: list) -> str:
        """Dropped image layers join the noisy layers (those chosen stay chosen); one that was the clean layer
        is no longer the clean layer. Nothing trains here."""
        chosen = list(self.noisy.value)
        new = [layer for layer in layers if not any(layer is c for c in chosen)]
        self.noisy.value = chosen + new
        text = (f"noisy layers: added {', '.join(layer.name for layer in new)}" if new
                else "already chosen as noisy layers")
        if any(self.clean.value is layer for layer in layers):
            self.clean.value = None
            text += "; no clean layer now"
        return text

    def take_clean(self, layers: list) -> str:
        """A layer dropped on the clean layer field becomes the clean twin (and is no longer a noisy layer)."""
        first = layers[0]
        self.clean.value = first
        noisy = list(self.noisy.value)
        if any(first is layer for layer in noisy):
            self.noisy.value = [layer for layer in noisy if layer is not first]
        more = f" (the first of the {len(layers)} dropped)" if len(layers) > 1 else ""
        return f"clean layer: {first.name}{more}"

    # ------------------------------------------------------------------ running

    def settings(self) -> dict:
        """What the worker needs, read from the layers here on the main thread: layer snapshots (plain data,
        no napari object) and ``session.finetune``'s other arguments. Raises with a user-facing message."""
        from napari_vdir.plugin.layers import snapshot
        from napari_vdir.training.session import check_destination

        noisy_layers = list(self.noisy.value)
        if not noisy_layers:
            raise ValueError("choose at least one noisy layer")
        clean_layer = self.clean.value
        if self.model.value is None:
            raise ValueError("no model to start from")
        rgb = {bool(layer.rgb) for layer in noisy_layers}
        if len(rgb) > 1:
            raise ValueError("the noisy layers mix RGB and gray images; choose one kind")
        snaps = [snapshot(layer) for layer in noisy_layers]  # checks each layer
        clean_snap = None
        if clean_layer is not None:
            if len(noisy_layers) != 1:
                raise ValueError("with a clean layer, choose exactly one noisy layer (its noisy twin)")
            if clean_layer in noisy_layers:
                raise ValueError("the clean layer is also chosen as noisy; choose its noisy twin")
            clean_snap = snapshot(clean_layer)
        if rgb == {True} and self._model_channels(self.model.value) == 1:
            raise ValueError(f"{self.model.value} is a gray model; choose an RGB model (e.g. denoise-rgb) for RGB layers")
        try:  # the name, and a models folder that can take the result: before training, not after it
            name = check_destination(self.name.value).stem
        except FileExistsError:
            raise ValueError(f"a model named {self.name.value.strip()!r} exists in your models folder; choose another "
                             "name") from None
        budget = dict(steps=int(self.steps.value)) if self.by_steps.value else dict(minutes=float(self.minutes.value))
        return dict(noisy_snaps=snaps, clean_snap=clean_snap, name=name, init=self.model.value, **budget,
                    method=METHOD_LABELS[self.method.value],
                    batch=int(self.batch.value), lr=float(self.lr.value), rgb=rgb.pop(),
                    labels=[layer.name for layer in noisy_layers])

    def run(self, *_):
        """Start a fine-tune on a worker thread; returns the worker (None when refused)."""
        if self.refuse_second_run():
            return None
        try:
            settings = self.settings()
        except Exception as exc:  # noqa: BLE001 - one line for the user
            self.notify_error(exc)
            return None
        from napari_vdir.training.session import metric_of

        metric = metric_of(settings["clean_snap"])
        steps, minutes = settings.get("steps"), settings.get("minutes")
        self.plot.reset(steps, metric, minutes)
        # napari's activity list counts the records of a run of known steps (step 0 and each step); a run with
        # a time budget shows there as busy, and in the dock's own bar as its share of the time
        worker = self.start_worker(fine_tune_vdir, settings,
                                   _progress={"total": steps + 1 if steps else 0, "desc": TITLE})
        worker.yielded.connect(self._on_record)
        worker.aborted.connect(self._on_aborted)  # stopped from outside (napari's task list)
        self.progress.max, self.progress.value = steps or PROGRESS_TICKS, 0
        length = f"{steps} steps" if steps else f"{minutes:g} min"
        self.status.value = f"training {settings['name']} from {settings['init']} ({length})…"
        worker.start()
        return worker

    def _on_aborted(self, *_):
        """The worker was quit before training ended: stop training too; nothing is saved."""
        self.cancel()
        self.status.value = "cancelled; nothing saved"

    def _on_destroyed(self, *_):
        """Closing the dock (or the viewer) mid-run stops training at the next step."""
        super()._on_destroyed()
        self._unsubscribe()

    def _on_record(self, record):
        if self._worker is None:
            return
        self.plot.add(record)
        if record.minutes:
            share = record.train_seconds / (60 * record.minutes)
            self.progress.value = min(round(share * PROGRESS_TICKS), self.progress.max)
            where = f"{_clock(record.train_seconds)} of {_clock(60 * record.minutes)} · step {record.step}"
        else:
            self.progress.value = min(record.step, self.progress.max)
            where = f"step {record.step}/{record.steps}"
        if record.loss is not None:
            val = self.plot.val_points[-1][1] if self.plot.val_points else None
            metric = METRIC_LABELS.get(self.plot.metric, "")
            self.status.value = (f"{where} · loss {record.loss:.4g}"
                                 + (f" · {metric} {val:.4g}" if val is not None else ""))

    def on_error(self, error: Exception):
        from napari_vdir.training.session import ModelNotSaved

        if isinstance(error, ModelNotSaved):  # trained, but kept outside the models folder
            self.status.value = f"not saved; kept at {error.path}"
        else:
            self.status.value = "failed"
        self.notify_error(" ".join(str(error).split()))

    def on_result(self, res):
        """A saved ``session.FineTuneResult``: announced, so every dock lists the new model."""
        from napari_vdir.core.models import notify_user_models_changed

        self.last_result = res
        self.progress.value = self.progress.max
        self.status.value = outcome_text(res)
        self._auto_name = self.name.value = ""  # a fresh name for the next run
        self._suggest_name()
        notify_user_models_changed()  # the Restore dock lists it now
        self.notify_info(f"model {res.name!r} saved; choose it in the Restore dock")
