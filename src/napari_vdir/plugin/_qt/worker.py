"""Running a dock's job off the main thread: the one way both docks (Restore, Fine-tune) start a run, cancel it and
report how it ended.

A job runs on a napari thread worker (``create_worker``) and never raises: :func:`outcome_of` turns what it returns,
the cancel exception of the core or training it calls, any other failure and (on request) the warnings it raised into
an :class:`Outcome`; :func:`reported` does the same for a job that reports records as it goes (a generator worker, so
napari's activity list and the dock see every record). The job gets plain data, never a napari layer or a Qt object.

Back on the main thread, :class:`WorkerDock` decides once whether a run counts as cancelled: the job stopped on its
cancel check, or Cancel was pressed after the job's last check (its result is dropped all the same). Everything else
it reports in the dock's status line and as notifications, each starting with the dock's title.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import warnings
from dataclasses import dataclass, field

from magicgui.widgets import Container
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning

from napari_vdir.plugin import layers as vl


@dataclass
class Outcome:
    """What a job hands back; it never raises, so every failure reaches the user as a notification."""

    result: object | None = None
    error: Exception | None = None
    cancelled: bool = False  # the job stopped on its cancel check
    warnings: list[str] = field(default_factory=list)  # messages of the warnings it raised (when recorded)


def outcome_of(job, cancelled: type[BaseException] | tuple = (), record_warnings: bool = False) -> Outcome:
    """Call ``job()`` (in the worker thread): its result, or ``cancelled=True`` when it raised one of ``cancelled``,
    or the exception it raised. ``record_warnings`` collects the warnings it raised (each message once) instead of
    printing them."""
    recording = warnings.catch_warnings(record=True) if record_warnings else contextlib.nullcontext([])
    with recording as caught:
        if record_warnings:
            warnings.simplefilter("always")
        try:
            outcome = Outcome(result=job())
        except cancelled:
            outcome = Outcome(cancelled=True)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
            outcome = Outcome(error=exc)
    outcome.warnings = list(dict.fromkeys(str(w.message) for w in caught))
    return outcome


def reported(job, cancelled: type[BaseException] | tuple = (), thread_name: str = "napari-vdir job"):
    """A generator worker: runs ``job(report)`` in a thread of its own and yields each record it passes to
    ``report`` as it comes; returns the job's :class:`Outcome` (as :func:`outcome_of`).

    napari advances a generator worker's activity-list bar once per record, and the records reach the dock
    through the worker's ``yielded`` signal on the main thread."""
    records: queue.Queue = queue.Queue()
    done = object()
    box = {"outcome": Outcome()}

    def run():
        try:
            box["outcome"] = outcome_of(lambda: job(records.put), cancelled)
        finally:
            records.put(done)

    thread = threading.Thread(target=run, name=thread_name, daemon=True)
    thread.start()
    while (record := records.get()) is not done:
        yield record
    thread.join()
    return box["outcome"]


class WorkerDock(Container):
    """What both docks share: their viewer's image layers, one run at a time on a worker thread, Cancel, and the
    outcome reported. A dock has ``run_button``, ``cancel_button`` and ``status`` widgets and says what a finished
    run means in :meth:`on_result` (and, where it differs, :meth:`on_error` and :meth:`on_cancelled`)."""

    title = "VDIR"  # before every notification
    job_name = "a run"  # "... is already running"
    cancelled_text = "cancelled"  # the status after a cancelled run

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._worker = None
        self._cancel_event: threading.Event | None = None
        self.last_result = None

    # ------------------------------------------------------------------ choices and notifications

    def _image_layers(self, *_) -> list:
        """(name, layer) choices of the viewer's image layers, top of the layer list first."""
        return [(layer.name, layer) for layer in vl.image_layers(self._viewer)]

    def notify_error(self, message) -> None:
        show_error(f"{self.title}: {message}")

    def notify_info(self, message) -> None:
        show_info(f"{self.title}: {message}")

    def notify_warning(self, message) -> None:
        show_warning(f"{self.title}: {message}")

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        return self._worker is not None

    def refuse_second_run(self) -> bool:
        """True (and a note to the user) while a run is in flight."""
        if self.running:
            self.notify_info(f"{self.job_name} is already running; wait for it or press Cancel")
        return self.running

    def start_worker(self, func, *args, **options):
        """A napari thread worker for ``func(*args, cancel=event, **options)``, ``event`` this run's cancel
        event (``create_worker``'s own options, such as ``_progress``, stay napari's). Not started: the dock
        connects what else it needs, sets its status and calls ``start()``."""
        self._cancel_event = threading.Event()
        worker = create_worker(func, *args, cancel=self._cancel_event, _start_thread=False, **options)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.enabled, self.cancel_button.enabled = False, True
        return worker

    def cancel(self, *_):
        if self._cancel_event is not None:
            self._cancel_event.set()
            self.status.value = "cancelling…"

    @property
    def cancel_requested(self) -> bool:
        """Whether Cancel was pressed (or the dock closed) during this run: the core's one cancel test."""
        from napari_vdir.core.inference import is_cancelled  # torch is loaded by then: a run has started

        return is_cancelled(self._cancel_event)

    def _on_destroyed(self, *_):
        """Closing the dock (or the viewer) mid-run stops the job at its next cancel check."""
        if self._cancel_event is not None:
            self._cancel_event.set()

    def _on_returned(self, outcome: Outcome):
        for message in outcome.warnings:
            self.notify_warning(message)
        if outcome.cancelled or self.cancel_requested:  # pressed after the job's last check: dropped too
            self.status.value = self.cancelled_text
            self.on_cancelled()
        elif outcome.error is not None:
            self.on_error(outcome.error)
        else:
            self.on_result(outcome.result)

    def on_result(self, result) -> None:
        raise NotImplementedError

    def on_error(self, error: Exception) -> None:
        self.status.value = "failed"
        self.notify_error(error)

    def on_cancelled(self) -> None:
        pass

    def _on_finished(self):
        self._worker = None
        self._cancel_event = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
