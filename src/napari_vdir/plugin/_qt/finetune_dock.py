"""The "Fine-tune (VDIR)" dock: train a model on layers of the viewer, watch its curve, keep the result.

The dock only gathers settings and calls :mod:`napari_vdir.plugin.finetune` (the start model, the checks of
the chosen layers, and :func:`napari_vdir.training.session.finetune` on a napari thread worker, through
:mod:`napari_vdir.plugin._qt.worker`); nothing about training lives here, and the loss plot is
:mod:`napari_vdir.plugin._qt.plot`. Everything the worker needs is read from the layers on the main
thread before it starts (the arrays and contrast limits), and everything it reports comes back as the
worker's ``yielded`` records on the main thread: the worker never touches a napari or Qt object. The saved
model is announced with :func:`napari_vdir.core.models.notify_user_models_changed` from the main thread,
so the Restore dock's model list (and this one's) shows it at once.

Layers dragged from napari's layer list (or image files from a file manager) onto the dock are added to
the noisy layers; one dropped on the clean layer field becomes the clean twin (:mod:`napari_vdir.plugin._qt.drops`).
A drop only chooses: nothing trains until Run.
"""

from __future__ import annotations

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
from qtpy.QtWidgets import QSizePolicy
from superqt import QCollapsible
from superqt.utils import ensure_main_thread

from napari_vdir.plugin import finetune as ft
from napari_vdir.plugin._qt.drops import DropZone
from napari_vdir.plugin._qt.plot import LossPlot
from napari_vdir.plugin._qt.worker import WorkerDock, reported

TITLE = "Fine-tune (VDIR)"
NO_CLEAN = "none: noisy images only (self-supervised)"
METHOD_LABELS = {"Neighbor2Neighbor (recommended)": "neighbor2neighbor", "pseudo-clean": "pseudo-clean",
                 "blind-spot (Noise2Void)": "blind-spot"}  # session.METHODS, the default first
PROGRESS_TICKS = 1000  # the dock's bar in a run with a time budget: its share of the time


def fine_tune_vdir(settings: dict, cancel=None):
    """The worker: :func:`napari_vdir.plugin.finetune.train` in a thread of its own, its step records yielded as
    they come (:func:`~napari_vdir.plugin._qt.worker.reported`); returns its outcome (a ``FineTuneResult``)."""
    from napari_vdir.training.session import TrainingCancelled

    return (yield from reported(lambda report: ft.train(settings, report, cancel), TrainingCancelled,
                                thread_name="napari-vdir fine-tune"))


class FineTuneDock(WorkerDock):
    """Fine-tune a shipped or user model on image layers; the result becomes a user model."""

    title = TITLE
    job_name = "a fine-tune"
    cancelled_text = "cancelled; nothing saved"

    def __init__(self, napari_viewer):
        from napari_vdir.training.session import (  # torch loads with the dock
            DEFAULT_BATCH,
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
                               tooltip="how noisy images alone are used for training: Neighbor2Neighbor from "
                                       "pairs of neighbouring pixels; pseudo-clean from the start model's own "
                                       "restorations, noised again by the noise fitted to your images (learns "
                                       "faster on microscopy, but the held-out check keeps the start longer)")
        self.batch = SpinBox(label="patches per step", value=DEFAULT_BATCH, min=1, max=128)
        self.biases_only = CheckBox(text="train only the biases", value=False,
                                    tooltip="keeps closer to the start model: on data like what it knows (real "
                                            "widefield microscopy) a little better than training every parameter, "
                                            "on data far from it clearly worse")
        self.lr = FloatSpinBox(label="learning rate", value=0.0, min=0.0, max=1e-2, step=1e-5,
                               tooltip="the peak learning rate; auto: a fine-tune's (on noisy layers alone 1e-5 for "
                                       "pseudo-clean, 3e-5 for the others; 1e-4 with a clean layer, 1e-3 for the "
                                       "biases only); 3e-4 learns faster on data far from what the start model knows")
        self.lr.native.setDecimals(6)
        self.lr.native.setSpecialValueText("auto")  # 0 reads "auto": session.finetune's default
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=1)
        self.status = Label(label="status", value="ready")
        # one line that never widens the dock (long text is cut; the tooltip holds all of it)
        self.status.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.status.changed.connect(lambda text: setattr(self.status, "tooltip", text))

        self.advanced = Container(widgets=[self.method, self.by_steps, self.steps, self.batch, self.biases_only,
                                           self.lr], labels=True)
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
        return ft.start_models(pairs=getattr(self, "clean", None) is not None and self.clean.value is not None)

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

    def _suggest_model(self, *_):
        """The start model follows the chosen layers (:func:`napari_vdir.plugin.finetune.suggested_start`)."""
        layers = list(self.noisy.value) if getattr(self, "noisy", None) is not None else []
        model = ft.suggested_start(layers, list(self.model.choices), self.model.value)
        if model is not None:
            self.model.value = model

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
        """What the worker needs, read from the dock and its layers here on the main thread
        (:func:`napari_vdir.plugin.finetune.training_settings`). Raises with a user-facing message."""
        return ft.training_settings(self.noisy.value, self.clean.value, self.model.value, self.name.value,
                                    steps=int(self.steps.value) if self.by_steps.value else None,
                                    minutes=float(self.minutes.value), method=METHOD_LABELS[self.method.value],
                                    batch=int(self.batch.value), lr=float(self.lr.value) or None,
                                    adapt="biases" if self.biases_only.value else None)

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
            where = f"{ft.clock(record.train_seconds)} of {ft.clock(60 * record.minutes)} · step {record.step}"
        else:
            self.progress.value = min(record.step, self.progress.max)
            where = f"step {record.step}/{record.steps}"
        if record.loss is not None:
            val = self.plot.val_points[-1][1] if self.plot.val_points else None
            metric = ft.METRIC_LABELS.get(self.plot.metric, "")
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
        self.status.value = ft.outcome_text(res)
        self._auto_name = self.name.value = ""  # a fresh name for the next run
        self._suggest_name()
        notify_user_models_changed()  # the Restore dock lists it now
        self.notify_info(f"model {res.name!r} saved; choose it in the Restore dock")
