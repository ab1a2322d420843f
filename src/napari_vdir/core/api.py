"""``napari_vdir.restore`` — the one public entry point for restoring arrays.

It builds the validated request (:class:`~napari_vdir.core.request.RestoreOptions`), resolves it for the image
(:func:`~napari_vdir.core.request.prepare`) and runs it: plane by plane for numpy, lazily for dask
(:mod:`napari_vdir.core.lazy`).
"""

from __future__ import annotations

from pathlib import Path

from napari_vdir.core.request import Restoration, RestoreOptions, prepare

__all__ = ["restore", "Restoration"]


def restore(image, task: str, *, scale: int | None = None, model: str | Path | None = None,
            channel_axis: int | None | bool = None, alpha: bool | None = None, device="auto",
            tile_size: int | None = None, ensemble: bool = False, samples: int = 1, details: bool = False,
            progress=None, cancel=None, precision: str = "auto", strength: float = 1.0, intensity_range=None,
            seed: int | None = 0, backend: str = "auto"):
    """Restore an image (or an nD stack, plane by plane) with VDIR.

    Parameters
    ----------
    image : array-like or dask array
        2-D gray, RGB ``(H, W, 3)``, RGBA ``(H, W, 4)`` (alpha kept unchanged), ``(H, W, 2)`` two channels,
        or a stack with leading axes (Z, T, ...) and an optional ``channel_axis``. A dask array gives back
        a lazy dask array.
    task : {"denoise", "real-denoise", "sr", "jpeg"}
    scale : 2 or 4, for ``task="sr"``.
    model : shipped model name or path to a ``.safetensors`` weights file (default: the task's shipped model).
    channel_axis : None (default rule: a last axis of 3 is RGB, of 4 RGBA, of 2 two channels), False (no
        channel axis, e.g. a gray stack 3 pixels wide), or the axis (last, or before the two spatial axes).
        3 channels go through the colour model; any other number one by one through the gray model.
    alpha : None (only an auto-detected last axis of 4 is RGBA), True (the last channel is alpha: gray +
        alpha or RGBA) or False (no alpha). Alpha is returned unchanged (repeated x scale for "sr").
    device : "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:N", "mps" or a ``torch.device``.
    tile_size : output tile size in pixels (>= 16); None chooses by memory. Tiles overlap by the receptive field.
    ensemble : average the 8 flips/rotations (x8 self-ensemble).
    samples : average this many draws c ~ q(c|y) (1 = deterministic c = mu).
    details : return a :class:`Restoration` with the latent, the degradation estimate and uncertainty.
    progress : ``progress(done, total)`` called after every tile.
    cancel : callable or ``threading.Event``; checked before every tile and between the network's blocks,
        raises ``RestorationCancelled``.
    precision : "auto" (bf16 autocast on CPUs that support it, AMP on GPUs), "float32", "bfloat16", "float16".
    strength : from 0 to 4; 1 = the plain result; > 1 restores harder (smoother), < 1 more gently. It moves
        the latent c towards (or away from) that of a more degraded copy of the image.
    intensity_range : how values map to the model's [0, 1] intensity (:mod:`napari_vdir.core.intensity`, the
        one policy). None: uint8 / 255, other integers ``"auto"``, floats as they are. ``"auto"``: the 0.1-99.9
        percentile range of the whole array (:func:`napari_vdir.core.intensity.robust_range`; per channel when
        channels are restored one by one), mapped back exactly, values outside it kept. ``"minmax"``: the
        data's min and max (results clipped to them). ``(low, high)`` or one ``(low, high)`` per channel: fixed. ``"layer"``: as the
        plugin maps a layer (the robust range with a 10 % margin, far outliers clipped).
    seed : random seed of the Monte-Carlo draws (``samples > 1``); None draws a fresh one.
    backend : "auto" (ONNX Runtime, the fastest exact path, where the CPU would otherwise run torch in
        float32 and onnxruntime is installed; torch's bf16 path where ``precision`` resolves to bf16),
        "torch" or "onnxruntime" (CPU, float32). See :mod:`napari_vdir.core.backends`.

    Returns the restored array in the input's layout and dtype (x scale spatially for "sr"),
    or a :class:`Restoration` when ``details=True``.
    """
    options = RestoreOptions(task, scale=scale, model=model, channel_axis=channel_axis, alpha=alpha, device=device,
                             tile_size=tile_size, ensemble=ensemble, samples=samples, details=details,
                             progress=progress, cancel=cancel, precision=precision, strength=strength,
                             intensity_range=intensity_range, seed=seed, backend=backend)
    job = prepare(image, options)
    if job.lazy:
        from napari_vdir.core.lazy import restore_dask

        return restore_dask(job)
    return job.run()
