"""Export VDIR models for other tools: a bare ONNX file or a bioimage.io model package (spec 0.5).

``export_model(model, "onnx", out)`` writes the ONNX graph of the deterministic forward pass alone;
``export_model(model, "bioimageio", out)`` writes a bioimage.io model package (a folder, or a zip
when ``out`` ends in ``.zip``) that Fiji/deepImageJ, QuPath, ilastik, the BioEngine and
``bioimageio.core`` can run: ``rdf.yaml``, weights as ONNX, TorchScript and ``pytorch_state_dict``
(with the architecture's source), test input and output tensors, a cover, documentation, the halo
and the size constraints.

The exported graph is VDIR's deterministic forward (c = mu) returning the restored image only:
input ``(N, C, H, W)`` float32 in the model's [0, 1] intensity, H and W multiples of the network's
``cfg.size_multiple`` (4; 8 for the multi-scale "unet" trunk); output
``(N, C, H*s, W*s)``. The graphs are traced by :mod:`napari_vdir.core.graphs`, which also writes the
encoder/restorer graphs of the ONNX Runtime backend (:mod:`napari_vdir.core.backends`).

What the package reproduces of :func:`napari_vdir.restore` and what it cannot (spec 0.5 has no
inverse of a data-dependent range mapping) is written in its documentation (:func:`package_readme`).
Outputs are written atomically: beside their name, then renamed. The hidden names written beside OUT
(``.OUT.partial-<owner>``, the package's staging folder ``.OUT.files-<owner>``; ``<owner>`` is
:func:`napari_vdir.core.io.owner_tag`: host, pid, thread and a random token) are unique across threads and
processes; those left by a killed export are removed by the next export into the same folder
(:func:`sweep_leftovers`).
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import torch

from napari_vdir.core.graphs import ONNX_OPSET, DeterministicVDIR, deterministic, write_onnx, write_torchscript
from napari_vdir.core.io import OWNER_PATTERN, partial_name, sweep_stale
from napari_vdir.core.models import find_model
from napari_vdir.core.nets import LATENT_STRIDE, VDIR
from napari_vdir.core.weights import WEIGHTS_SUFFIX, ModelInfo, WeightsError, load_weights

FORMATS = ("onnx", "bioimageio")
LICENSE = "BSD-3-Clause"
PAPER = ("Soh, J. W. & Cho, N. I. Variational Deep Image Restoration. "
         "IEEE Transactions on Image Processing 31, 4363-4376 (2022)")
PAPER_DOI = "10.1109/TIP.2022.3165296"
PAPER_URL = "https://arxiv.org/abs/2207.01074"
TEST_SIDE = 128          # test input side (input pixels), raised to the declared minimum where needed
INTENSITY_GAIN = 255.0   # the package maps 8-bit data as restore() maps uint8: x / 255, and back x 255
_DEGRADED = {"denoise": "Gaussian noise, sigma 25 of 255", "real-denoise": "Gaussian noise, sigma 25 of 255",
             "sr": "block-mean downsampling", "jpeg": "JPEG quality 10"}
TASK_TAGS = {"denoise": ["denoising"], "real-denoise": ["denoising", "real-noise"],
             "sr": ["super-resolution"], "jpeg": ["jpeg-artifact-removal"]}


class ExportError(ValueError):
    """The model or the output cannot be exported as asked (one-line message)."""


def model_file(model: str | Path) -> Path:
    """A shipped or user model name, or a weights file -> the weights file (as every command finds it:
    :func:`napari_vdir.core.models.find_model`)."""
    try:
        return find_model(model)
    except WeightsError as err:
        raise ExportError(str(err)) from err


def load_model(model: str | Path) -> tuple[VDIR, ModelInfo, Path]:
    """A shipped or user model name or a weights file -> (network on the CPU, its metadata, the file)."""
    path = model_file(model)
    net, info = load_weights(path, "cpu")
    return net.float().eval(), info, path


def architecture_source() -> str:
    """A self-contained Python file (needs torch only) defining :class:`DeterministicVDIR`:
    napari-vdir's ``nets.py`` followed by the wrapper class."""
    from napari_vdir.core import nets

    return (inspect.getsource(nets).rstrip() + "\n\n\n# --- napari-vdir export: the exported forward pass\n\n"
            + inspect.getsource(DeterministicVDIR))


# ----------------------------------------------------------------------------- test data

def size_step(net: VDIR) -> int:
    """The step in which the package's input sizes grow: the network's ``cfg.size_multiple`` (the latent
    stride, 4; 8 for the multi-scale "unet" trunk, whose deepest level runs at 1/8), the grid napari-vdir pads
    every plane to, so the exported graphs are only ever given such sizes."""
    return net.cfg.size_multiple


def input_min_side(net: VDIR) -> int:
    """The smallest input side the package declares: twice the halo plus one cell of the network's grid
    (:func:`size_step`); sizes grow in steps of that cell."""
    from napari_vdir.core.inference import tile_margin

    return 2 * tile_margin(net) + size_step(net)


def test_side(net: VDIR) -> int:
    low, step = input_min_side(net), size_step(net)
    return low + max(0, -(-(TEST_SIDE - low) // step)) * step


def test_image(info: ModelInfo, side: int) -> np.ndarray:
    """A degraded uint8 input for the model's task, ``side`` x ``side`` (x C): a crop of
    skimage's bundled astronaut (colour) or camera (gray) image, degraded with a fixed seed."""
    from skimage import data

    from napari_vdir.core import degradations as deg

    s, n = info.scale, side * info.scale
    clean = data.astronaut() if info.channels == 3 else data.camera()
    if n > min(clean.shape[:2]):  # larger than the bundled image: enlarge it (bicubic) first
        from PIL import Image

        clean = np.asarray(Image.fromarray(clean).resize((n, n), Image.BICUBIC))
    top, left = min(16, clean.shape[0] - n), min(144, clean.shape[1] - n)
    crop = clean[top:top + n, left:left + n]
    if info.task == "sr":  # block mean: the area-downsampled low-resolution image
        lr = crop.reshape(side, s, side, s, *crop.shape[2:]).astype(np.float64).mean(axis=(1, 3))
        return np.clip(np.rint(lr), 0, 255).astype(np.uint8)
    if info.task == "jpeg":
        dec = deg.jpeg_roundtrip(crop.astype(np.float32) / 255.0, 10)
        return np.clip(np.rint(dec * 255.0), 0, 255).astype(np.uint8).reshape(crop.shape)
    return deg.noisy_u8(crop, 25.0, seed=0)


def run_forward(net: VDIR, x_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(test input, test output) as the package describes them: (1, C, H, W) float32 in 8-bit units;
    output = 255 * net(input / 255) with c = mu, in float32, unclipped."""
    hwc = x_u8 if x_u8.ndim == 3 else x_u8[..., None]
    x = np.ascontiguousarray(hwc.transpose(2, 0, 1)[None]).astype(np.float32)
    with torch.no_grad():
        y = deterministic(net)(torch.from_numpy(x / np.float32(INTENSITY_GAIN)))
    return x, (y * INTENSITY_GAIN).numpy().astype(np.float32)


def cover_png(x: np.ndarray, y: np.ndarray, path: Path, scale: int) -> Path:
    """Input (nearest-upscaled for SR) beside the output, as one 2:1 uint8 PNG."""
    from PIL import Image

    a = np.repeat(np.repeat(x[0], scale, axis=1), scale, axis=2)
    both = np.concatenate([a, y[0]], axis=2)
    img = np.clip(np.rint(both), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)
    return path


def package_readme(info: ModelInfo, halo: int, min_side: int, step: int = LATENT_STRIDE) -> str:
    s = info.scale
    grid = "the latent grid" if step == LATENT_STRIDE else "the network's deepest grid"
    size = "the same size" if s == 1 else f"{s}x the input's size (each side)"
    return f"""# {info.name} — VDIR ({info.task}{f' x{s}' if s > 1 else ''}), exported by napari-vdir

{info.description or 'A VDIR model shipped with napari-vdir.'}

Variational Deep Image Restoration (Soh & Cho, IEEE TIP 2022, doi:{PAPER_DOI}): an encoder infers a
latent description c of the image's degradation and a restorer network uses it; no noise level, blur
kernel or JPEG quality has to be given. This package runs the deterministic forward pass (c = mean of
q(c|y)).

## Input and output
- `input`: (batch, channel, y, x) float32, {info.channels} channel(s), 8-bit intensity units (0-255).
  y and x: at least {min_side} pixels, in steps of {step} ({grid}); uint8 data can be given directly.
- `output`: (batch, channel, y, x) float32 in the same units, {size}. Values are not clipped.
- halo: {halo} output pixels on each side ({halo // s} input pixels = the network's receptive radius rounded up
  to a multiple of {step}). Tiles overlapping by the halo, cropped by it, give the same result as one pass.

## Intensity mapping compared with napari-vdir
napari-vdir's `restore()` maps uint8 data as x / 255 into the model and back x 255 (rounded, clipped to
0-255). This package declares exactly that: preprocessing `scale_linear` gain 1/255, postprocessing
`scale_linear` gain 255; its output is the float result before rounding, so
`round(clip(output, 0, 255))` equals `napari_vdir.restore` on a uint8 image.
What differs:
- 16-bit and other integer data: `restore()` maps the 0.1-99.9 percentile range of the whole image to
  [0, 1] and maps the result back exactly. Spec 0.5 can express the forward step (`scale_range`) but not
  its inverse, so this package keeps the fixed 8-bit mapping: rescale such data to 0-255 (as float) first.
- Float data in [0, 1] (restore()'s convention for floats): multiply by 255 first, divide the output by 255.
- The border: tools that tile with the halo pad the image themselves, so the outermost halo pixels follow
  their padding, not the network's zero padding of a single pass (inside, tiles equal one pass).
- Not in the package: napari-vdir's padding of any size to a multiple of {step}, its automatic tiling,
  x8 self-ensemble, Monte-Carlo samples of c, `strength` steering, the degradation estimate, and the
  gray-through-colour-model fallback.

## Validation
The test tensors were made by napari-vdir from a crop of scikit-image's bundled
{'astronaut' if info.channels == 3 else 'camera'} image, degraded for the task ({_DEGRADED[info.task]}). napari-vdir's
test suite checks that the package passes `bioimageio test` with all three weight formats and that its
test output equals `napari_vdir.restore` on the test input (to float rounding; for uint8 data after rounding).
Model quality on the standard test sets is in napari-vdir's README (evaluation report).

## Cite
{PAPER}. doi:{PAPER_DOI} (preprint: {PAPER_URL})

Licence: {LICENSE} (napari-vdir).
"""


# ----------------------------------------------------------------------------- bioimage.io

def build_description(net: VDIR, info: ModelInfo, folder: Path):
    """Write the package's files into ``folder`` and return its validated ``ModelDescr``."""
    try:
        from bioimageio.spec.model import v0_5 as bio
    except ImportError as err:
        raise ExportError("--format bioimageio needs bioimageio.spec: pip install 'napari-vdir[bioimageio]'") from err
    from napari_vdir._version import __version__
    from napari_vdir.core.inference import tile_margin

    cfg, s = net.cfg, info.scale
    margin = tile_margin(net)
    min_side, side, step = input_min_side(net), test_side(net), size_step(net)
    x, y = run_forward(net, test_image(info, side))
    np.save(folder / "test_input.npy", x)
    np.save(folder / "test_output.npy", y)
    import tifffile

    tifffile.imwrite(folder / "sample_input.tif", x, photometric="minisblack")
    tifffile.imwrite(folder / "sample_output.tif", y, photometric="minisblack")
    cover_png(x, y, folder / "cover.png", s)
    write_onnx(net, folder / "model.onnx")
    write_torchscript(net, folder / "model.torchscript.pt")
    torch.save({k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()},
               folder / "weights.pt")
    (folder / "vdir_arch.py").write_text(architecture_source(), encoding="utf-8")
    (folder / "README.md").write_text(package_readme(info, margin * s, min_side, step), encoding="utf-8")

    names = ["r", "g", "b"] if cfg.channels == 3 else ["gray"]
    inp, outp = bio.TensorId("input"), bio.TensorId("output")
    data = bio.IntervalOrRatioDataDescr(type="float32")
    in_axes = [bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier(n) for n in names])]
    out_axes = [bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier(n) for n in names])]
    for a in ("y", "x"):
        in_axes.append(bio.SpaceInputAxis(id=bio.AxisId(a), size=bio.ParameterizedSize(min=min_side, step=step)))
        # SR: one output pixel is 1/s of an input pixel, so the size reference makes it input x s
        out_axes.append(bio.SpaceOutputAxisWithHalo(
            id=bio.AxisId(a), size=bio.SizeReference(tensor_id=inp, axis_id=bio.AxisId(a)),
            halo=margin * s, scale=1.0 / s))
    f32 = bio.EnsureDtypeDescr(kwargs=bio.EnsureDtypeKwargs(dtype="float32"))
    inputs = [bio.InputTensorDescr(
        id=inp, axes=in_axes, data=data, test_tensor=bio.FileDescr(source=folder / "test_input.npy"),
        sample_tensor=bio.FileDescr(source=folder / "sample_input.tif"),
        description="degraded image, 8-bit intensity units (0-255)",
        preprocessing=[f32, bio.ScaleLinearDescr(kwargs=bio.ScaleLinearKwargs(gain=1.0 / INTENSITY_GAIN))])]
    outputs = [bio.OutputTensorDescr(
        id=outp, axes=out_axes, data=data, test_tensor=bio.FileDescr(source=folder / "test_output.npy"),
        sample_tensor=bio.FileDescr(source=folder / "sample_output.tif"),
        description="restored image, 8-bit intensity units, unclipped",
        postprocessing=[bio.ScaleLinearDescr(kwargs=bio.ScaleLinearKwargs(gain=INTENSITY_GAIN)), f32])]
    version = bio.Version(torch.__version__.split("+")[0])
    weights = bio.WeightsDescr(
        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=folder / "weights.pt", pytorch_version=version,
            architecture=bio.ArchitectureFromFileDescr(source=folder / "vdir_arch.py",
                                                       callable=bio.Identifier("DeterministicVDIR"),
                                                       kwargs=cfg.to_dict())),
        torchscript=bio.TorchscriptWeightsDescr(source=folder / "model.torchscript.pt", pytorch_version=version,
                                                parent="pytorch_state_dict"),
        onnx=bio.OnnxWeightsDescr(source=folder / "model.onnx", opset_version=ONNX_OPSET,
                                  parent="pytorch_state_dict"))
    task = f"{info.task} x{s}" if s > 1 else info.task
    return bio.ModelDescr(
        name=f"VDIR {info.name} (napari-vdir)",
        description=f"VDIR {task} ({'RGB' if cfg.channels == 3 else 'gray'}), napari-vdir model {info.name}: "
                    "blind restoration, no degradation parameters needed.",
        authors=[bio.Author(name="napari-vdir developers")],
        cite=[bio.CiteEntry(text=PAPER, doi=bio.Doi(PAPER_DOI))],
        license=bio.LicenseId(LICENSE),
        documentation=bio.FileDescr(source=folder / "README.md"),
        covers=[bio.FileDescr(source=folder / "cover.png")],
        tags=["napari-vdir", "vdir", "image-restoration", "2d", "pytorch", "onnx", *TASK_TAGS[info.task]],
        inputs=inputs, outputs=outputs, weights=weights,
        version=bio.Version(__version__),
        config=bio.Config(bioimageio=bio.BioimageioConfig(
            architecture_type="VDIR", model_parameter_count=sum(p.numel() for p in net.parameters()))),
    )


# bioimageio.spec writes rdf.yaml through one shared YAML emitter: two threads saving at once interleave its events
# (EmitterError "expected DocumentStartEvent"), so packages are saved one at a time
_SAVE_LOCK = threading.Lock()


def export_model(model: str | Path, fmt: str, out: str | Path, *, overwrite: bool = False) -> Path:
    """Export a shipped or user model (by name) or a weights file.

    Parameters
    ----------
    model : shipped or user model name (see ``napari-vdir models``) or a ``.safetensors`` weights file
        (found as every command finds it: :func:`napari_vdir.core.models.find_model`).
    fmt : ``"onnx"`` (the ONNX file alone) or ``"bioimageio"`` (a bioimage.io model package: a folder,
        or a zip file when ``out`` ends in ``.zip``).
    out : where to write it; nothing is left under this name if the export fails. Never a weights file
        (:func:`check_output`).
    overwrite : replace an existing ``out``: a file, or a package folder this function wrote earlier and
        that holds nothing else.

    Returns the path written. Raises :class:`ExportError` (or ``WeightsError``) with a one-line message.
    """
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    source = model_file(model)
    check_output(out, fmt, source, overwrite=overwrite)
    net, info, _ = load_model(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(out)
    if fmt == "onnx":
        return write_onnx(net, out)
    try:
        from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder
    except ImportError as err:
        raise ExportError("--format bioimageio needs bioimageio.spec: pip install 'napari-vdir[bioimageio]'") from err
    staging = partial_name(out, "files")
    staging.mkdir(mode=0o700)
    partial = partial_name(out)
    try:
        descr = build_description(net, info, staging)
        with _SAVE_LOCK:
            if out.suffix == ".zip":
                save_bioimageio_package(descr, output_path=partial)
            else:
                save_bioimageio_package_as_folder(descr, output_path=partial)
        _replace(partial, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
    return out


# every file of a package folder this module writes (rdf.yaml and what it names); --overwrite replaces a
# folder only when it holds these and nothing else
PACKAGE_FILES = frozenset({"rdf.yaml", "README.md", "cover.png", "model.onnx", "model.torchscript.pt", "weights.pt",
                           "vdir_arch.py", "test_input.npy", "test_output.npy", "sample_input.tif",
                           "sample_output.tif"})
MAX_RDF_BYTES = 1024 * 1024


def check_output(out: Path, fmt: str, source: Path, *, overwrite: bool) -> None:
    """Refuse, before any work, an ``out`` whose writing would lose something.

    Never a weights file: any ``.safetensors`` name, the model being exported, or a shipped or user model's
    file (the same file by inode, so hard and symbolic links count). With ``overwrite``, an existing folder
    is replaced only when it is a package this module wrote (:func:`is_earlier_package`), and never the
    working folder, the user models folder, a shipped models folder or a folder holding the model.
    """
    if out.name.lower().endswith(WEIGHTS_SUFFIX):
        raise ExportError(f"{out}: OUT must not be a {WEIGHTS_SUFFIX} file (export writes ONNX or a package, "
                          "and would destroy weights); choose another name")
    if not (out.exists() or out.is_symlink()):
        return
    if out.exists() and _same_file(out, source):
        raise ExportError(f"{out}: is the model being exported ({source}); choose another OUT")
    weights = _protected_weights()
    if out.exists() and any(_same_file(out, w) for w in weights):
        raise ExportError(f"{out}: is the weights file of a shipped or user model; choose another OUT")
    if not overwrite:
        raise ExportError(f"{out}: already exists; pass overwrite=True (--overwrite) to replace it")
    folder_out = fmt == "bioimageio" and out.suffix != ".zip"
    if out.is_symlink():
        raise ExportError(f"{out}: is a link; --overwrite does not replace links, choose another OUT")
    if out.is_dir() != folder_out:
        raise ExportError(f"{out}: exists and is a {'folder' if out.is_dir() else 'file'}; choose another output")
    if not folder_out:
        return
    real = out.resolve()
    if real == Path.cwd().resolve() or real in Path.cwd().resolve().parents:
        raise ExportError(f"{out}: is the current folder{'' if real == Path.cwd().resolve() else ' or holds it'}; "
                          "--overwrite only replaces an earlier package folder: choose a new OUT")
    from napari_vdir.core.models import shipped_dirs, user_models_dir

    for kept, what in ((source, "the model being exported"), (user_models_dir(), "the user models folder"),
                       *((d, "the shipped models") for d in shipped_dirs()),
                       *((w, "a model's weights") for w in weights)):
        kept = Path(kept).resolve()
        if real == kept or real in kept.parents:
            raise ExportError(f"{out}: {'is' if real == kept else 'holds'} {what}; --overwrite only replaces an "
                              "earlier package folder: choose a new OUT")
    foreign = _foreign_entries(out)
    if foreign is not None:
        raise ExportError(f"{out}: not a package folder written by napari-vdir export ({foreign}); --overwrite only "
                          "replaces such a folder, never other files: choose a new OUT")


def is_earlier_package(folder: Path) -> bool:
    """Whether ``folder`` is a bioimage.io package folder written by this module, holding nothing else."""
    return folder.is_dir() and not folder.is_symlink() and _foreign_entries(folder) is None


def _foreign_entries(folder: Path) -> str | None:
    """None for a package folder of this module; else why not, in a few words."""
    import yaml

    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        return f"cannot list it: {' '.join(str(err).split())}"
    other = [p.name for p in entries if p.name not in PACKAGE_FILES or p.is_symlink() or not p.is_file()]
    if other:
        more = f" and {len(other) - 3} more" if len(other) > 3 else ""
        return f"it holds {', '.join(other[:3])}{more}"
    rdf = folder / "rdf.yaml"
    try:
        if not rdf.is_file() or rdf.stat().st_size > MAX_RDF_BYTES:
            return "no rdf.yaml of napari-vdir"
        descr = yaml.safe_load(rdf.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "its rdf.yaml cannot be read"
    ours = (isinstance(descr, dict) and isinstance(descr.get("tags"), list) and "napari-vdir" in descr["tags"]
            and str(descr.get("name", "")).endswith("(napari-vdir)"))
    return None if ours else "its rdf.yaml is not one napari-vdir wrote"


def _protected_weights() -> list[Path]:
    """Every shipped weights file and every file in the user models folder (valid or not)."""
    from napari_vdir.core.models import shipped_models, user_models_dir

    found = list(shipped_models().values())
    try:
        found += [p for p in user_models_dir().iterdir() if p.name.lower().endswith(WEIGHTS_SUFFIX)]
    except OSError:
        pass
    return found


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# leftovers of killed exports: this version's names (any OUT: they carry their writer), and the older
# per-process names of the OUT being written (.OUT.partial-<pid>, .OUT.files-<mkdtemp's 8 characters>)
_LEFTOVER = re.compile(rf"\..+\.(?:partial|files)-{OWNER_PATTERN}")


def sweep_leftovers(out: Path) -> list[Path]:
    """Remove, beside ``out``, partial files and staging folders that killed exports left: their process is
    gone from this host, or they are older than :data:`napari_vdir.core.io.STALE_AGE_S`. Those of running exports
    (other threads of this process included) stay, and so does every name this module does not write.
    Returns what was removed."""
    name = re.escape(out.name)
    older = [re.compile(rf"\.{name}\.partial-(?P<pid>\d+)"), re.compile(rf"\.{name}\.files-[a-z0-9_]{{8}}")]
    return sweep_stale(out.parent, [_LEFTOVER, *older])


def _replace(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing folder is moved aside first and removed after."""
    if target.is_dir():
        old = partial_name(target, "old")
        os.replace(target, old)
        try:
            os.replace(new, target)
        except OSError:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)
