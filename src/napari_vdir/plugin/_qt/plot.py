"""The Fine-tune dock's live plot of a run: training loss and the validation metric, drawn with QPainter."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

from napari_vdir.plugin.finetune import METRIC_LABELS


def _y_of(box: QRectF, value: float, low: float, high: float) -> float:
    span = (high - low) or max(abs(high), 1e-12)
    return box.bottom() - box.height() * (0.05 + 0.9 * (value - low) / span)


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
