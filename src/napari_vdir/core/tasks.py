"""The restoration tasks and what their estimator head reports, in user units."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from napari_vdir.core.errors import OptionValueError

Task = Literal["denoise", "real-denoise", "sr", "jpeg"]  # recipes and options are validated against it
TASKS: tuple[str, ...] = get_args(Task)


@dataclass(frozen=True)
class EstimateField:
    name: str
    unit_scale: float  # network output (training target units) x unit_scale = user units
    description: str


ESTIMATES: dict[str, tuple[EstimateField, ...]] = {
    "denoise": (EstimateField("noise_sigma", 255.0, "noise std on the 0-255 scale"),),
    "real-denoise": (),
    "sr": (
        EstimateField("blur_sigma_major", 5.0, "blur-kernel std along its long axis, HR pixels"),
        EstimateField("blur_sigma_minor", 5.0, "blur-kernel std along its short axis, HR pixels"),
    ),
    "jpeg": (EstimateField("jpeg_quality", 100.0, "JPEG quality factor"),),
}


def check_task(task: str, scale: int | None) -> int:
    """Validate a task/scale pair and return the scale the model must have."""
    if task not in TASKS:
        raise OptionValueError("task", "unknown {task} {value}; choose {choices}", task, TASKS)
    if task == "sr":
        if scale not in (2, 4):
            raise OptionValueError("scale", "{task='sr'} needs {scale=2} or {scale=4}, got {value}", scale)
        return int(scale)
    if scale not in (None, 1):
        raise OptionValueError("scale", "{scale} only applies to {task='sr'}, got {scale=}", scale)
    return 1
