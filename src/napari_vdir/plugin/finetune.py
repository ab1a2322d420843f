"""Fine-tuning on napari layers, without Qt: what the Fine-tune dock decides and prepares.

The dock (:mod:`napari_vdir.plugin._qt.finetune_dock`) only gathers its settings and calls these: the models a run
can start from and the one that fits the chosen layers, the checks of the chosen layers before anything trains
(:func:`training_settings`), the layers prepared as the Restore dock prepares them (:func:`training_inputs`), the
training itself in the dock's worker (:func:`train`, which calls :func:`napari_vdir.training.session.finetune`) and
the verdict after a run (:func:`outcome_text`).
"""

from __future__ import annotations

SELF_SUPERVISED_TASKS = ("denoise", "real-denoise")  # what noisy images alone can train
METRIC_LABELS = {"val_loss": "held-out loss", "val_psnr": "validation PSNR (dB)"}


# ---------------------------------------------------------------------------------------------- the start model


def start_models(pairs: bool) -> list[str]:
    """The models a fine-tune can start from (shipped and user models); without a clean twin (``pairs`` False:
    self-supervised training) only denoisers."""
    from napari_vdir.core.models import available_models
    from napari_vdir.core.weights import WeightsError, read_info

    names = []
    for name, path in available_models().items():
        try:
            task = read_info(path).task
        except WeightsError:
            continue
        if pairs or task in SELF_SUPERVISED_TASKS:
            names.append(name)
    return names


def model_channels(name) -> int | None:
    """A model's channels by name (1 gray, 3 RGB); None for no model, or one that cannot be read."""
    from napari_vdir.core.models import available_models
    from napari_vdir.core.weights import WeightsError, read_info

    path = available_models().get(name)
    try:
        return read_info(path).channels if path is not None else None
    except (WeightsError, OSError):
        return None


def suggested_start(layers: list, choices: list, current) -> str | None:
    """The start model for the chosen noisy ``layers``, or None to keep ``current``: RGB layers start from an RGB
    model (``denoise-rgb``), gray and multichannel layers from a gray one (``denoise-gray``; their channels are
    trained one by one). A current model that fits the layers is kept."""
    if not layers or not choices:
        return None
    rgb = any(bool(layer.rgb) for layer in layers)
    wanted = 3 if rgb else 1
    if model_channels(current) == wanted:
        return None
    default = "denoise-rgb" if rgb else "denoise-gray"
    fitting = [default] if default in choices else [n for n in choices if model_channels(n) == wanted]
    return fitting[0] if fitting else None


# ---------------------------------------------------------------------------------------------- a run


def training_settings(noisy_layers, clean_layer, model, name: str, *, method: str, batch: int, lr: float | None,
                      steps: int | None = None, minutes: float | None = None, adapt: str | None = None) -> dict:
    """What the worker needs, from the dock's choices (on the main thread): layer snapshots (plain data, no
    napari object) and ``session.finetune``'s other arguments; ``steps``, when given, replace ``minutes``.
    Raises ``ValueError`` with a user-facing message."""
    from napari_vdir.plugin.layers import snapshot
    from napari_vdir.training.session import check_destination

    noisy_layers = list(noisy_layers)
    if not noisy_layers:
        raise ValueError("choose at least one noisy layer")
    if model is None:
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
    if rgb == {True} and model_channels(model) == 1:
        raise ValueError(f"{model} is a gray model; choose an RGB model (e.g. denoise-rgb) for RGB layers")
    try:  # the name, and a models folder that can take the result: before training, not after it
        name = check_destination(name).stem
    except FileExistsError:
        raise ValueError(f"a model named {name.strip()!r} exists in your models folder; choose another "
                         "name") from None
    budget = dict(steps=int(steps)) if steps is not None else dict(minutes=float(minutes))
    return dict(noisy_snaps=snaps, clean_snap=clean_snap, name=name, init=model, **budget, method=method,
                batch=int(batch), lr=None if lr is None else float(lr), adapt=adapt, rgb=rgb.pop(),
                labels=[layer.name for layer in noisy_layers])


def training_inputs(noisy_snaps: list, clean_snap=None) -> dict:
    """Layer snapshots -> ``finetune``'s ``noisy``, ``clean`` and ``intensity_range``, prepared as the Restore
    dock prepares a layer (``layers.restore_layer``): the layer's range (contrast limits narrowed to the robust
    range) padded by ``napari_vdir.core.intensity.RANGE_HEADROOM``, and far outliers (hot pixels) clipped. A clean layer gets its
    noisy twin's range. No napari or Qt object: this runs in the worker."""
    from napari_vdir.plugin.layers import guess_channel_axis, layer_intensity_range, prepare_for_model

    axes = [guess_channel_axis(snap) for snap in noisy_snaps]  # as the Restore dock finds a layer's channels
    layer_ranges = [layer_intensity_range(snap, axis) for snap, axis in zip(noisy_snaps, axes, strict=True)]
    prepared = [prepare_for_model(snap.data, rng, snap.rgb, axis)
                for snap, rng, axis in zip(noisy_snaps, layer_ranges, axes, strict=True)]
    noisy, ranges = [data for data, _ in prepared], [rng for _, rng in prepared]
    clean = None
    if clean_snap is not None:  # mapped by its noisy twin's range
        clean = [prepare_for_model(clean_snap.data, layer_ranges[0], clean_snap.rgb, axes[0])[0]]
    channel_axis = [False if axis is None else axis for axis in axes]  # False: no channels (never guessed again)
    return dict(noisy=noisy, clean=clean, intensity_range=ranges, channel_axis=channel_axis)


def train(settings: dict, report=None, cancel=None):
    """The fine-tune :func:`training_settings` set up, run in the dock's worker thread: its layer snapshots
    prepared by :func:`training_inputs`, then ``session.finetune`` with the rest. ``report`` gets each step
    record; ``cancel`` is checked before every step. Returns the ``FineTuneResult``."""
    from napari_vdir.training.session import finetune

    options = dict(settings)
    options.update(training_inputs(options.pop("noisy_snaps"), options.pop("clean_snap")))
    return finetune(**options, callback=report, cancel=cancel, notify=False)


# ---------------------------------------------------------------------------------------------- what the dock says


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


def clock(seconds: float) -> str:
    """``m:ss`` of a number of seconds."""
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"
