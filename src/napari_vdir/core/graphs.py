"""The traced graphs of a VDIR network: ONNX (for ONNX Runtime and for export) and TorchScript.

``write_onnx(net, path, "forward")`` writes VDIR's deterministic forward (c = mu) returning the restored image
alone, the graph of an exported model; ``"encoder"`` (y -> mu, logvar) and ``"restorer"`` ((y, c) -> image[,
estimate]) are the two graphs the ONNX Runtime backend (:mod:`napari_vdir.core.backends`) runs.
:mod:`napari_vdir.export.package` packages them for other tools.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import torch

from napari_vdir.core.io import written_then_renamed
from napari_vdir.core.nets import LATENT_CHANNELS, LATENT_STRIDE, VDIR, ArchConfig

ONNX_OPSET = 17


class DeterministicVDIR(VDIR):
    """VDIR's deterministic forward (c = mu) returning only the restored image.

    Same parameters and state-dict keys as :class:`VDIR`, built from the architecture's keyword
    arguments (this is the ``pytorch_state_dict`` architecture of the bioimage.io package).
    Input ``(N, C, H, W)`` float32 in [0, 1] intensity with H, W multiples of ``size_multiple`` (4; 8 for
    the "unet" trunk).
    """

    def __init__(self, **arch):
        super().__init__(ArchConfig(**arch))

    def forward(self, y):
        return super().forward(y).image


class EncoderGraph(torch.nn.Module):
    """y -> (mu, logvar) of q(c|y), at 1/4 resolution."""

    def __init__(self, net: VDIR):
        super().__init__()
        self.net = net

    def forward(self, y):
        return self.net.encoder(y)


class RestorerGraph(torch.nn.Module):
    """(y, c) -> restored image (and EST(c) where the model has an estimator)."""

    def __init__(self, net: VDIR):
        super().__init__()
        self.net = net

    def forward(self, y, c):
        image = self.net.restorer(y, c)
        if self.net.estimator is None:
            return image
        return image, self.net.estimator(c)


def deterministic(net: VDIR) -> DeterministicVDIR:
    """A float32, contiguous-layout :class:`DeterministicVDIR` copy of ``net`` on the CPU."""
    out = DeterministicVDIR(**net.cfg.to_dict())
    out.load_state_dict({k: v.detach().float().cpu() for k, v in net.state_dict().items()})
    return out.eval()


# torch.onnx.export and torch.jit.trace keep global tracing state (GLOBALS.in_onnx_export): one at a time.
_TRACE_LOCK = threading.RLock()


def write_onnx(net: VDIR, path: str | Path, graph: str = "forward") -> Path:
    """Write one ONNX graph of ``net`` (float32, dynamic batch, height and width), atomically.

    ``graph``: ``"forward"`` (y -> image, c = mu), ``"encoder"`` (y -> mu, logvar) or
    ``"restorer"`` ((y, c) -> image[, estimate]). Uses torch's TorchScript-based exporter
    (sub-second, no extra packages); the file is checked by nothing here — ONNX Runtime or
    ``bioimageio test`` do that.
    """
    cfg = net.cfg
    cpu = deterministic(net)
    y = torch.rand(1, cfg.channels, 64, 64)
    c = torch.zeros(1, LATENT_CHANNELS, 64 // LATENT_STRIDE, 64 // LATENT_STRIDE)
    image_axes = {0: "batch", 2: "out_height", 3: "out_width"}
    input_axes = {0: "batch", 2: "height", 3: "width"}
    latent_axes = {0: "batch", 2: "height_4", 3: "width_4"}
    if graph == "forward":
        module, args = cpu, (y,)
        names_in, names_out = ["input"], ["output"]
        dynamic = {"input": input_axes, "output": image_axes}
    elif graph == "encoder":
        module, args = EncoderGraph(cpu), (y,)
        names_in, names_out = ["input"], ["mu", "logvar"]
        dynamic = {"input": input_axes, "mu": latent_axes, "logvar": latent_axes}
    elif graph == "restorer":
        module, args = RestorerGraph(cpu), (y, c)
        names_in = ["input", "c"]
        names_out = ["output"] + (["estimate"] if cpu.estimator is not None else [])
        dynamic = {"input": input_axes, "c": latent_axes, "output": image_axes, "estimate": input_axes}
        dynamic = {k: v for k, v in dynamic.items() if k in names_in + names_out}
    else:
        raise ValueError(f"graph must be 'forward', 'encoder' or 'restorer', got {graph!r}")
    path = Path(path)
    with written_then_renamed(path) as partial, _TRACE_LOCK, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(module.eval(), args, str(partial), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=names_in, output_names=names_out, dynamic_axes=dynamic,
                          do_constant_folding=True)
    return path


def write_torchscript(net: VDIR, path: str | Path) -> Path:
    """Trace the deterministic forward to TorchScript (dynamic H, W and batch), atomically."""
    cpu = deterministic(net)
    y = torch.rand(1, net.cfg.channels, 64, 64)
    path = Path(path)
    with written_then_renamed(path) as partial, _TRACE_LOCK, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notes
        traced = torch.jit.trace(cpu, y, check_trace=False)
        torch.jit.save(traced, str(partial))
    return path
